#!/usr/bin/env bash
# What the live-migration test needs besides the control plane, on a fresh Debian 12 machine (root):
#   bindfs   two FUSE views of one directory stand for two NFS clients of the shared store
#            (inotify on one view does not see writes made through the other, as with NFS)
#   rootfs   Debian trixie with CRIU 4, crun, podman, skopeo (build-rootfs.sh, cached in .cache/)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if ! command -v bindfs >/dev/null; then
	if ((EUID != 0)); then
		echo "install-deps: bindfs is missing and installing it needs root" >&2
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	apt-get install -y -q --no-install-recommends bindfs fuse3
fi
"$here/build-rootfs.sh" >/dev/null
echo "install-deps: $(bindfs --version | head -n1); rootfs $("$here/build-rootfs.sh")" >&2
