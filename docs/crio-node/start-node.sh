#!/bin/sh
# Start a CRI-O node's holder: a private mount/uts/net/pid namespace rooted in the trixie rootfs.
# Usage: start-node.sh LAB ROOTFS CRIO_DIR RUNC_DIR CRICTL_DIR HOSTNAME
# Nothing is created in the (shared) rootfs: every mount point is an existing directory of it, or lies in
# a tmpfs mounted inside this namespace.
set -e
L=$1 R=$2 CRIO=$3 RUNC=$4 CRICTL=$5 NAME=$6
exec unshare --mount --uts --net --pid --fork --propagation private sh -ec "
mount --bind '$R' '$R'
cd '$R'
mount -t proc proc proc
mount -t sysfs sysfs sys
mount --rbind /sys/fs/cgroup sys/fs/cgroup
mount --rbind /dev dev
mount -t tmpfs -o mode=0755 tmpfs run
mount -t tmpfs -o mode=1777 tmpfs tmp
mount -t tmpfs -o mode=1777 tmpfs var/tmp
mount -t tmpfs -o mode=0755 tmpfs opt
mkdir -p opt/lpm/crio opt/lpm/runc opt/lpm/crictl '.$L'
mount --bind '$CRIO' opt/lpm/crio
mount --bind '$RUNC' opt/lpm/runc
mount --bind '$CRICTL' opt/lpm/crictl
mount --bind '$L' '.$L'
mount --bind '$L/etc/containers' etc/containers
mount --bind '$L/cni-conf' etc/cni/net.d
mount --bind '$L/cni-state' var/lib/cni
mount --bind '$L/log' var/log
# A kubelet on this node keeps pki/ and device-plugins/ under /var/lib/kubelet whatever its --root-dir.
mkdir -p '$L/kubelet'
mount --bind '$L/kubelet' var/lib/kubelet
mkdir -p .oldroot 2>/dev/null || true
pivot_root . .oldroot
umount -l /.oldroot
umount /sys/fs/cgroup/unified 2>/dev/null || true
hostname '$NAME'
ip link set lo up
touch /run/lpm-node-ready
exec catatonit -P
"
