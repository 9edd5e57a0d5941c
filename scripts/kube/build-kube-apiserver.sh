#!/usr/bin/env bash
# Build kube-apiserver from the Go module proxy and cache it by version.
#
# Usage: scripts/kube/build-kube-apiserver.sh [VERSION]     (default: scripts/kube/kube-apiserver.version)
# Prints the binary's path as the last line of stdout; progress goes to stderr. A cached binary returns at
# once. Environment: LPM_CACHE_DIR (default REPO/.cache), LPM_BUILD_JOBS (default: the number of cores),
# GOTOOLCHAIN (default local; e.g. go1.27.3 for a release that needs a newer Go than the machine's).
#
# No package registry ships kube-apiserver, so it is built the way envtest-style tooling does: a throw-away
# module that requires k8s.io/kubernetes and replaces every k8s.io/* staging module (which
# k8s.io/kubernetes's own go.mod points at ./staging/src/..., absent from the module zip) with its published
# v0.MINOR.PATCH twin. v1.37.2 (the newest release on the proxy when chosen) builds with Go 1.26 (its go.mod
# asks for 1.26.0).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# The release the tests run against, named in one file that lab/controlplane.py reads too.
version=${1:-$(<"$here/kube-apiserver.version")}
if [[ ! $version =~ ^v1\.([0-9]+)\.([0-9]+)$ ]]; then
	echo "build-kube-apiserver: VERSION must look like v1.MINOR.PATCH, got '$version'" >&2
	exit 2
fi
minor=${BASH_REMATCH[1]}
# Staging modules are tagged v0.MINOR.PATCH for kubernetes v1.MINOR.PATCH.
staging_version="v0.$minor.${BASH_REMATCH[2]}"

bin_dir=${LPM_CACHE_DIR:-$repo/.cache}/kube-apiserver/$version
bin=$bin_dir/kube-apiserver
if [[ -x $bin ]]; then
	echo "$bin"
	exit 0
fi

# shellcheck source=../lib/go.sh
. "$repo/scripts/lib/go.sh"
use_go build-kube-apiserver
# The throw-away module has no go.sum yet: let the go command record sums as it resolves.
export GOFLAGS=-mod=mod
# Parallel compile actions. The go command's default is the same; named so a busy machine can lower it.
jobs=${LPM_BUILD_JOBS:-$(nproc)}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
start=$(date +%s)
echo "build-kube-apiserver: building k8s.io/kubernetes $version with $(go version)" >&2

# On failure the go command reports the reason in the JSON it prints (an "Error" field), not on stderr.
if ! download=$(go mod download -json "k8s.io/kubernetes@$version"); then
	echo "build-kube-apiserver: could not download k8s.io/kubernetes@$version:" >&2
	echo "$download" >&2
	exit 1
fi
field() { sed -n "s/^[[:space:]]*\"$1\": \"\(.*\)\",\?$/\1/p" <<<"$download"; }
kube_gomod=$(field GoMod)
kube_info=$(field Info)

# Every "k8s.io/NAME => ./staging/src/k8s.io/NAME" line becomes "k8s.io/NAME => k8s.io/NAME vSTAGING".
mapfile -t staging < <(sed -n 's|^[[:space:]]*\(k8s\.io/[^ ]*\) => \./staging/src/.*$|\1|p' "$kube_gomod")
if ((${#staging[@]} == 0)); then
	echo "build-kube-apiserver: no staging replace lines in $kube_gomod" >&2
	exit 1
fi
{
	echo "module lpm.local/kube-apiserver-build"
	echo
	# Kubernetes's own go directive, so its language version and GODEBUG defaults apply unchanged.
	sed -n 's/^go \([0-9.]*\)$/go \1/p' "$kube_gomod"
	echo
	echo "require k8s.io/kubernetes $version"
	echo
	echo "replace ("
	for module in "${staging[@]}"; do
		echo "	$module => $module $staging_version"
	done
	echo ")"
} >go.mod
go get "k8s.io/kubernetes/cmd/kube-apiserver@$version" >&2

# What a release build stamps in, so /version reports v1.37.2 rather than v0.0.0-master. The build date
# is the release's own time from the proxy, so the same version always builds the same binary.
release_time=$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$kube_info")
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$release_time"

mkdir -p "$bin_dir"
# Static, like the release binaries. Built under a temporary name and renamed, so an interrupted build
# never leaves something that the cache check above would take for a finished binary.
CGO_ENABLED=0 go build -p "$jobs" -trimpath -ldflags "$ldflags" \
	-o "$bin.partial" k8s.io/kubernetes/cmd/kube-apiserver
mv "$bin.partial" "$bin"

echo "build-kube-apiserver: built $("$bin" --version) in $(($(date +%s) - start)) s" >&2
echo "$bin"
