#!/usr/bin/env bash
# Build kustomize from the Go module proxy and cache it by version.
#
# Usage: scripts/kube/build-kustomize.sh [VERSION]     (default: scripts/kube/kustomize.version)
# Prints the binary's path as the last line of stdout; progress goes to stderr. A cached binary returns at
# once. Environment: LPM_CACHE_DIR (default REPO/.cache), GOTOOLCHAIN (default local).
#
# The tests render deploy/ with it (tests/deploy/). kubectl embeds a kustomize too, but a fresh machine
# need not have kubectl, and PyPI's "kustomize" is an unrelated reimplementation. v5.8.2 is the newest
# release whose go.mod asks for no newer Go than the machine's 1.26 (v5.8.3 wants 1.27). Its module has
# no replace directives, so a plain `go install module@version` builds exactly the release.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# Named in one file that tests/deploy/kustomize.py reads too.
version=${1:-$(<"$here/kustomize.version")}
if [[ ! $version =~ ^v5\.[0-9]+\.[0-9]+$ ]]; then
	echo "build-kustomize: VERSION must look like v5.MINOR.PATCH, got '$version'" >&2
	exit 2
fi

bin_dir=${LPM_CACHE_DIR:-$repo/.cache}/kustomize/$version
bin=$bin_dir/kustomize
if [[ -x $bin ]]; then
	echo "$bin"
	exit 0
fi

# shellcheck source=../lib/go.sh
. "$repo/scripts/lib/go.sh"
use_go build-kustomize

start=$(date +%s)
echo "build-kustomize: building sigs.k8s.io/kustomize/kustomize/v5 $version with $(go version)" >&2
# Installed into a scratch directory and renamed, so an interrupted build never leaves something that the
# cache check above would take for a finished binary. Static and stripped, like the release binaries.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
CGO_ENABLED=0 GOBIN=$scratch go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kustomize/kustomize/v5@$version"
mkdir -p "$bin_dir"
mv "$scratch/kustomize" "$bin.partial"
mv "$bin.partial" "$bin"

echo "build-kustomize: built kustomize $version in $(($(date +%s) - start)) s" >&2
echo "$bin"
