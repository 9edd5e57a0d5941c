#!/usr/bin/env bash
# Build (or find in the cache) the Debian trixie rootfs that carries CRIU 4, crun, podman, buildah,
# skopeo and the CNI plugins for lpm's restore tests and the lab's real nodes
# (../shared/docs/REAL-STACK.md: bookworm's CRIU 3.17 fails `criu check` on this kernel; trixie's 4.1
# works, but cannot dump a process holding any TCP or UDP socket on Linux 6.16+, which refuses
# getsockopt(SO_PASSCRED) on them: CRIU 4.2 asks only unix and netlink sockets, so CRIU comes from
# forky, the one package with its own libcompel1 and a newer libnl-3-200, through apt and its keyring). Nothing is installed on the host: bookworm's
# debootstrap is unpacked with dpkg -x (scripts/lib/debootstrap.sh).
# Prints the rootfs path as its last line. Needs root.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
version=trixie-v5   # bump when the package list changes
cache=${LPM_CACHE_DIR:-$repo/.cache}/rootfs
root=$cache/$version
# shellcheck source=../lib/debootstrap.sh
. "$repo/scripts/lib/debootstrap.sh"
packages=criu,libcriu2,crun,iproute2,iptables,busybox-static,python3,podman,buildah,skopeo,conmon,catatonit,containernetworking-plugins,libseccomp2

if [[ -f $root/.lpm-complete ]]; then
	echo "$root"
	exit 0
fi
if ((EUID != 0)); then
	echo "build-rootfs: needs root (debootstrap, chroot)" >&2
	exit 1
fi

mkdir -p "$cache"
# One build at a time: a second caller (a test, a helper's setup) waits, then finds the rootfs built.
exec 9>"$cache/.lock"
flock 9
if [[ -f $root/.lpm-complete ]]; then
	echo "$root"
	exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf "$root.partial"
started=$SECONDS
debootstrap_trixie "$work" "$root.partial" --include="$packages"
ln -sfn ../proc/self/mounts "$root.partial/etc/mtab"
# CRIU (and the libraries it needs newer) from forky, everything else stays trixie's.
# Signatures are checked; freshness is not: a mirror that is a snapshot of the archive serves a forky
# Release whose Valid-Until has passed, and that date is all check-valid-until=no lets through.
echo "deb [check-valid-until=no] $(debian_mirror) forky main" >"$root.partial/etc/apt/sources.list.d/forky.list"
{ chroot "$root.partial" apt-get update -q &&
	chroot "$root.partial" apt-get install -y -q --no-install-recommends -t forky criu libcriu2; } \
	>"$work/criu-forky.log" 2>&1 || {
	tail -n 30 "$work/criu-forky.log" >&2
	exit 1
}
# The resolv.conf debootstrap copied from the host stays: the sandboxes that build images resolve with it.
rm -f "$root.partial/etc/apt/sources.list.d/forky.list"
rm -rf "$root.partial"/var/lib/apt/lists/* "$root.partial"/var/cache/apt/*.bin
# podman inside the private mount namespace: cgroupfs (no systemd), file events, crun, no netns
# (the restored process keeps its original network namespace view; lpm tests need no network).
mkdir -p "$root.partial/etc/containers"
cat >"$root.partial/etc/containers/containers.conf" <<'CONF'
[containers]
netns = "none"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "crun"
CONF
touch "$root.partial/.lpm-complete"
mv "$root.partial" "$root"
echo "build-rootfs: trixie rootfs with CRIU in $((SECONDS - started)) s" >&2
echo "$root"
