#!/usr/bin/env bash
# What lab/'s real nodes need, on a fresh Debian 12 machine, as root. Idempotent.
#
#   libseccomp-dev   runc is built with seccomp (cgo)
#   kubernetes       kubelet, kube-controller-manager, kube-scheduler beside kube-apiserver (build-kube.sh)
#   containerd       v2.3.x with ctr and containerd-shim-runc-v2 (scripts/restore/build-containerd.sh)
#   runc             with seccomp (build-runc.sh)
#   CRI-O            v1.36.3, crio and pinns (build-crio.sh; pinns is C, built with the machine's gcc)
#   rootfs           each node runs in the trixie rootfs: CRIU 4, iptables, the CNI plugins
#                    (scripts/criu/build-rootfs.sh)
# Everything built is cached under .cache/.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

if [[ ! -f /usr/include/seccomp.h ]]; then
	if ((EUID != 0)); then
		echo "install-deps: libseccomp-dev is missing and installing it needs root" >&2
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	apt-get install -y -q --no-install-recommends libseccomp-dev
fi
"$repo/scripts/kube/build-kube.sh" >/dev/null
"$repo/scripts/restore/build-containerd.sh" >/dev/null
"$here/build-runc.sh" >/dev/null
"$here/build-crio.sh" >/dev/null
"$repo/scripts/criu/build-rootfs.sh" >/dev/null
echo "install-deps: real nodes: kubernetes $(<"$repo/scripts/kube/kubernetes.version"), containerd" \
	"$(<"$repo/scripts/restore/containerd.version"), runc $(<"$here/runc.version"), CRI-O $(<"$here/crio.version")" >&2
