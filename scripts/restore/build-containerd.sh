#!/usr/bin/env bash
# Build containerd, ctr and the runc shim from the Go module proxy and cache them by version.
#
# Usage: scripts/restore/build-containerd.sh [VERSION]     (default: scripts/restore/containerd.version)
# Prints the directory holding the binaries as the last line of stdout; progress goes to stderr. A cached
# build returns at once. Environment: LPM_CACHE_DIR (default REPO/.cache), GOTOOLCHAIN (default local).
#
# tests/restore proves lpm's containerd importer against a real containerd (the CRI plugin's k8s.io
# namespace, where the kubelet's images live), and lab/ runs it under a real kubelet on each node. Debian 12
# ships containerd 1.6; CRI restore needs >= 2.1, and since 2.2.7 it is opt-in
# (enable_experimental_restore_via_create) and 2.4 removed it, so the release is a 2.3.x, built here: v2.x's module has no replace directives, so
# `go install module@version` builds exactly the release (~1 min cold). Static, without the cgo-only
# snapshotters (btrfs, devmapper, zfs) that an import into overlayfs never uses.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
version=${1:-$(<"$here/containerd.version")}
if [[ ! $version =~ ^v2\.[0-9]+\.[0-9]+$ ]]; then
	echo "build-containerd: VERSION must look like v2.MINOR.PATCH, got '$version'" >&2
	exit 2
fi

bin_dir=${LPM_CACHE_DIR:-$repo/.cache}/containerd/$version
binaries=(containerd ctr containerd-shim-runc-v2)
if [[ -x $bin_dir/containerd && -x $bin_dir/ctr && -x $bin_dir/containerd-shim-runc-v2 ]]; then
	echo "$bin_dir"
	exit 0
fi

# shellcheck source=../lib/go.sh
. "$repo/scripts/lib/go.sh"
use_go build-containerd

start=$(date +%s)
echo "build-containerd: building ${binaries[*]} $version with $(go version)" >&2
# Into a scratch directory, then renamed: an interrupted build never leaves what the check above would
# take for a finished one.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
module=github.com/containerd/containerd/v2
packages=()
for name in "${binaries[@]}"; do
	packages+=("$module/cmd/$name@$version")
done
# The version stamped in as the release's own build does: the daemon reports it to the kubelet (the
# Node's containerRuntimeVersion) and over CRI, where lpm reads it to decide whether the node restores.
CGO_ENABLED=0 GOBIN=$scratch go install -trimpath -tags "no_btrfs no_devmapper no_zfs" \
	-ldflags "-s -w -X $module/version.Version=$version -X $module/version.Revision=release" \
	"${packages[@]}"
mkdir -p "$bin_dir"
for name in "${binaries[@]}"; do
	mv "$scratch/$name" "$bin_dir/$name.partial"
	mv "$bin_dir/$name.partial" "$bin_dir/$name"
done

echo "build-containerd: built containerd $version in $(($(date +%s) - start)) s" >&2
echo "$bin_dir"
