#!/usr/bin/env bash
# Install the real tools the checkpoint-image tests check lpm's OCI writer with, on a fresh Debian 12
# machine, as root. Idempotent: a second run installs nothing and returns quickly.
#
#   skopeo           inspects OCI layouts and copies them to registries (and, later, into
#                    containers-storage for CRI-O and podman)
#   docker-registry  Debian's build of the CNCF distribution registry; tests/restore starts its own on
#                    loopback with a temporary storage directory
set -euo pipefail

need=()
command -v skopeo >/dev/null || need+=(skopeo)
[[ -x /usr/bin/docker-registry ]] || need+=(docker-registry)

if ((${#need[@]})); then
	if ((EUID != 0)); then
		echo "install-deps: missing ${need[*]}; installing them needs root" >&2
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	apt-get install -y -q --no-install-recommends "${need[@]}"
	# The package enables a system-wide registry on port 5000 where systemd runs; the tests start their
	# own on a free port, and an idle registry open on the machine would only hold a port.
	if [[ -d /run/systemd/system ]]; then
		systemctl disable --now docker-registry.service >&2 || true
	fi
fi
echo "install-deps: $(skopeo --version)" >&2
echo "install-deps: docker-registry $(dpkg-query -W -f='${Version}' docker-registry)" >&2
"$(dirname "${BASH_SOURCE[0]}")/build-containerd.sh" >/dev/null
