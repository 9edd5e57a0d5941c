#!/usr/bin/env bash
# Build runc from the Go module proxy, with seccomp, and cache it by version.
#
# Usage: scripts/node/build-runc.sh [VERSION]     (default: scripts/node/runc.version)
# Prints the binary's path as the last line of stdout; progress goes to stderr. A cached build returns at
# once. Needs libseccomp-dev (scripts/node/install-deps.sh installs it). Environment: LPM_CACHE_DIR
# (default REPO/.cache), GOTOOLCHAIN (default local).
#
# The lab's nodes restore through containerd's runc shim, so the OCI runtime is runc: Debian 12's runc
# 1.1.5 fails on this kernel ("can't get final child's PID from pipe: EOF"), and crun under the runc shim
# cannot restore (it is handed flags it does not take). Without the seccomp tag every pod fails ("seccomp:
# config provided but seccomp not supported"): the kubelet asks for RuntimeDefault. cgo links libseccomp
# dynamically; the nodes run in the trixie rootfs, whose libseccomp2 has the same soname.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
version=${1:-$(<"$here/runc.version")}
if [[ ! $version =~ ^v1\.[0-9]+\.[0-9]+$ ]]; then
	echo "build-runc: VERSION must look like v1.MINOR.PATCH, got '$version'" >&2
	exit 2
fi

bin_dir=${LPM_CACHE_DIR:-$repo/.cache}/runc/$version
if [[ -x $bin_dir/runc ]]; then
	echo "$bin_dir/runc"
	exit 0
fi
if [[ ! -f /usr/include/seccomp.h ]]; then
	echo "build-runc: libseccomp-dev is missing (scripts/node/install-deps.sh installs it)" >&2
	exit 1
fi

# shellcheck source=../lib/go.sh
. "$repo/scripts/lib/go.sh"
use_go build-runc

start=$(date +%s)
echo "build-runc: building runc $version with $(go version)" >&2
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
CGO_ENABLED=1 GOBIN=$scratch go install -trimpath -tags seccomp \
	-ldflags "-s -w -X main.version=${version#v}" "github.com/opencontainers/runc@$version"
mkdir -p "$bin_dir"
mv "$scratch/runc" "$bin_dir/runc.partial"
mv "$bin_dir/runc.partial" "$bin_dir/runc"

echo "build-runc: built $("$bin_dir/runc" --version | head -n1) in $(($(date +%s) - start)) s" >&2
echo "$bin_dir/runc"
