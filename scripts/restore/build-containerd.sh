#!/usr/bin/env bash
# Build containerd and ctr from the Go module proxy and cache them by version.
#
# Usage: scripts/restore/build-containerd.sh [VERSION]     (default: scripts/restore/containerd.version)
# Prints the directory holding both binaries as the last line of stdout; progress goes to stderr. A cached
# build returns at once. Environment: LPM_CACHE_DIR (default REPO/.cache), GOTOOLCHAIN (default local).
#
# tests/restore proves lpm's containerd importer against a real containerd (the CRI plugin's k8s.io
# namespace, where the kubelet's images live). Debian 12 ships containerd 1.6; the checkpoint restore lpm
# targets needs >= 2.1, so the release is built here: v2.x's module has no replace directives, so
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
if [[ -x $bin_dir/containerd && -x $bin_dir/ctr ]]; then
	echo "$bin_dir"
	exit 0
fi

# shellcheck source=../lib/go.sh
. "$repo/scripts/lib/go.sh"
use_go build-containerd

start=$(date +%s)
echo "build-containerd: building containerd and ctr $version with $(go version)" >&2
# Into a scratch directory, then renamed: an interrupted build never leaves what the check above would
# take for a finished one.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
module=github.com/containerd/containerd/v2
CGO_ENABLED=0 GOBIN=$scratch go install -trimpath -tags "no_btrfs no_devmapper no_zfs" -ldflags "-s -w" \
	"$module/cmd/containerd@$version" "$module/cmd/ctr@$version"
mkdir -p "$bin_dir"
for name in containerd ctr; do
	mv "$scratch/$name" "$bin_dir/$name.partial"
	mv "$bin_dir/$name.partial" "$bin_dir/$name"
done

echo "build-containerd: built containerd $version in $(($(date +%s) - start)) s" >&2
echo "$bin_dir"
