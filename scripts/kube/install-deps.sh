#!/usr/bin/env bash
# Install what lpm's real local control plane (lab/) needs on a fresh Debian 12 machine, as root,
# then build (or find in the cache) the Kubernetes components. Idempotent: a second run installs nothing and
# returns quickly.
#
#   etcd            Debian's etcd-server (3.4 on bookworm), started by lab/controlplane.py
#   kubernetes      kube-apiserver, kubelet, kube-controller-manager and kube-scheduler, built from the
#                   Go module proxy by build-kube.sh, cached under .cache/
#   Go              comes with the machine; Debian's golang (1.19) is too old for kubernetes v1.37
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [[ ! -x /usr/bin/etcd ]]; then
	if ((EUID != 0)); then
		echo "install-deps: /usr/bin/etcd is missing and installing it needs root" >&2
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	apt-get install -y -q --no-install-recommends etcd-server
	# The package enables a system-wide etcd on the default ports where systemd runs; the tests start
	# their own on free ports, so a second, unused etcd would only hold memory and ports.
	if [[ -d /run/systemd/system ]]; then
		systemctl disable --now etcd.service >&2 || true
	fi
fi
echo "install-deps: $(/usr/bin/etcd --version | head -n1)" >&2

"$here/build-kube.sh" >/dev/null
