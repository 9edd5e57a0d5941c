# Sourced, not run: put the machine's Go toolchain on PATH for a build script, or fail naming it.
#
#   use_go NAME     NAME prefixes the error message (the calling script's name)
#
# GOTOOLCHAIN=local: build with the Go the machine has, never download another one behind our back.

use_go() {
	if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
		export PATH=/usr/local/go/bin:$PATH
	fi
	if ! command -v go >/dev/null; then
		echo "$1: no Go toolchain (looked in PATH and /usr/local/go/bin)" >&2
		return 1
	fi
	export GOTOOLCHAIN=${GOTOOLCHAIN:-local}
}
