#!/usr/bin/env bash
# Build checkpointctl from the Go module proxy and cache it by version: the oracle `lpm inspect` is held
# to (tests/inspect/test_oracle.py), never part of lpm itself.
#
# Usage: scripts/criu/build-checkpointctl.sh [VERSION]     (default v1.5.0)
# Prints the binary's path as the last line of stdout; progress goes to stderr. A cached binary returns at
# once. Environment: LPM_CACHE_DIR (default REPO/.cache), GOTOOLCHAIN (default local).
# Built in a throw-away module that requires the release and go-criu v8.2.0: the proxy no longer serves
# the v8.1.0 zip the release's go.mod names ("not available"), and v8.2.0 is the go-criu release whose
# definitions lpm compiles (scripts/criu/build-images-py.sh), so oracle and subject read the same ones.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
version=${1:-v1.5.0}
if [[ ! $version =~ ^v1\.[0-9]+\.[0-9]+$ ]]; then
	echo "build-checkpointctl: VERSION must look like v1.MINOR.PATCH, got '$version'" >&2
	exit 2
fi

bin_dir=${LPM_CACHE_DIR:-$repo/.cache}/checkpointctl/$version
bin=$bin_dir/checkpointctl
if [[ -x $bin ]]; then
	echo "$bin"
	exit 0
fi

# shellcheck source=../lib/go.sh
. "$repo/scripts/lib/go.sh"
use_go build-checkpointctl

start=$(date +%s)
echo "build-checkpointctl: building github.com/checkpoint-restore/checkpointctl $version with $(go version)" >&2
# Installed into a scratch directory and renamed, so an interrupted build never leaves something that the
# cache check above would take for a finished binary.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cat >"$scratch/go.mod" <<MOD
module lpm.local/checkpointctl-build

go 1.24

require (
	github.com/checkpoint-restore/checkpointctl $version
	github.com/checkpoint-restore/go-criu/v8 v8.2.0
)
MOD
echo 'package tools' >"$scratch/tools.go"
(cd "$scratch" && go mod tidy -e >/dev/null 2>&1 || true
	go get "github.com/checkpoint-restore/checkpointctl@$version" "github.com/checkpoint-restore/go-criu/v8@v8.2.0" &&
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$scratch/checkpointctl" github.com/checkpoint-restore/checkpointctl)
mkdir -p "$bin_dir"
mv "$scratch/checkpointctl" "$bin.partial"
mv "$bin.partial" "$bin"

echo "build-checkpointctl: built checkpointctl $version in $(($(date +%s) - start)) s" >&2
echo "$bin"
