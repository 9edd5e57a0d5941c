#!/usr/bin/env bash
# Build crictl (the CRI client of kubernetes-sigs/cri-tools) from the Go module proxy and cache it by version.
#
# Usage: scripts/node/build-crictl.sh [VERSION]     (default: scripts/node/crictl.version)
# Prints the binary's path as the last line of stdout; progress goes to stderr. A cached build returns at
# once. Environment: LPM_CACHE_DIR (default REPO/.cache), GOTOOLCHAIN (default local).
#
# crictl drives a CRI-O node by hand (run a sandbox, create a container, CheckpointContainer) the way the
# kubelet would over CRI v1 (docs/crio-node.md). Its module path is sigs.k8s.io/cri-tools, not the GitHub
# path. v1.37.0 matches the kubelet 1.37 (both speak CRI v1 to CRI-O 1.36); its go.mod has no replace
# directives, and this module's version list is served, so `go install module@version` works (unlike
# CRI-O's: scripts/node/build-crio.sh). ~8.5 min cold on a busy 2-core machine, 16 s with the Go build
# cache warm.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
version=${1:-$(<"$here/crictl.version")}
if [[ ! $version =~ ^v1\.[0-9]+\.[0-9]+$ ]]; then
	echo "build-crictl: VERSION must look like v1.MINOR.PATCH, got '$version'" >&2
	exit 2
fi

bin_dir=${LPM_CACHE_DIR:-$repo/.cache}/crictl/$version
if [[ -x $bin_dir/crictl ]]; then
	echo "$bin_dir/crictl"
	exit 0
fi

# shellcheck source=../lib/go.sh
. "$repo/scripts/lib/go.sh"
use_go build-crictl

start=$(date +%s)
echo "build-crictl: building crictl $version with $(go version)" >&2
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
module=sigs.k8s.io/cri-tools
CGO_ENABLED=0 GOBIN=$scratch go install -trimpath -ldflags "-s -w -X $module/pkg/version.Version=$version" \
	"$module/cmd/crictl@$version"
mkdir -p "$bin_dir"
mv "$scratch/crictl" "$bin_dir/crictl.partial"
mv "$bin_dir/crictl.partial" "$bin_dir/crictl"

echo "build-crictl: built crictl $version in $(($(date +%s) - start)) s" >&2
echo "$bin_dir/crictl"
