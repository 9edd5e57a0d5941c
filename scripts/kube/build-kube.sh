#!/usr/bin/env bash
# Build Kubernetes components from the Go module proxy and cache them by version.
#
# Usage: scripts/kube/build-kube.sh [COMPONENT...]
#   COMPONENT: kube-apiserver, kubelet, kube-controller-manager, kube-scheduler, kube-proxy (default: all five)
# The release is scripts/kube/kubernetes.version (or $LPM_KUBE_VERSION). Prints the directory holding the
# binaries as the last line of stdout; progress goes to stderr. Cached binaries return at once; the missing
# ones are built in one go command, so the packages they share (most of k8s.io/kubernetes) compile once.
# Environment: LPM_CACHE_DIR (default REPO/.cache), LPM_BUILD_JOBS (default: the number of cores),
# GOTOOLCHAIN (default local; e.g. go1.27.3 for a release that needs a newer Go than the machine's).
#
# No package registry ships these, so they are built the way envtest-style tooling does: a throw-away
# module that requires k8s.io/kubernetes and replaces every k8s.io/* staging module (which
# k8s.io/kubernetes's own go.mod points at ./staging/src/..., absent from the module zip) with its published
# v0.MINOR.PATCH twin. v1.37.2 (the newest release on the proxy when chosen) builds with Go 1.26 (its go.mod
# asks for 1.26.0).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# The release the lab runs, named in one file that lab/controlplane.py reads too. The kubelet, controller
# manager and scheduler are the apiserver's own release: no version skew to reason about.
version=${LPM_KUBE_VERSION:-$(<"$here/kubernetes.version")}
if [[ ! $version =~ ^v1\.([0-9]+)\.([0-9]+)$ ]]; then
	echo "build-kube: the version must look like v1.MINOR.PATCH, got '$version'" >&2
	exit 2
fi
minor=${BASH_REMATCH[1]}
# Staging modules are tagged v0.MINOR.PATCH for kubernetes v1.MINOR.PATCH.
staging_version="v0.$minor.${BASH_REMATCH[2]}"
components=("$@")
((${#components[@]})) || components=(kube-apiserver kubelet kube-controller-manager kube-scheduler kube-proxy)
for component in "${components[@]}"; do
	case $component in
	kube-apiserver | kubelet | kube-controller-manager | kube-scheduler | kube-proxy) ;;
	*)
		echo "build-kube: unknown component '$component'" >&2
		exit 2
		;;
	esac
done

bin_dir=${LPM_CACHE_DIR:-$repo/.cache}/kubernetes/$version
missing=()
for component in "${components[@]}"; do
	[[ -x $bin_dir/$component ]] || missing+=("$component")
done
if ((${#missing[@]} == 0)); then
	echo "$bin_dir"
	exit 0
fi

# shellcheck source=../lib/go.sh
. "$repo/scripts/lib/go.sh"
use_go build-kube
# The throw-away module has no go.sum yet: let the go command record sums as it resolves.
export GOFLAGS=-mod=mod
# Parallel compile actions. The go command's default is the same; named so a busy machine can lower it.
jobs=${LPM_BUILD_JOBS:-$(nproc)}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
start=$(date +%s)
echo "build-kube: building ${missing[*]} $version with $(go version)" >&2

# On failure the go command reports the reason in the JSON it prints (an "Error" field), not on stderr.
if ! download=$(go mod download -json "k8s.io/kubernetes@$version"); then
	echo "build-kube: could not download k8s.io/kubernetes@$version:" >&2
	echo "$download" >&2
	exit 1
fi
field() { sed -n "s/^[[:space:]]*\"$1\": \"\(.*\)\",\?$/\1/p" <<<"$download"; }
kube_gomod=$(field GoMod)
kube_info=$(field Info)

# Every "k8s.io/NAME => ./staging/src/k8s.io/NAME" line becomes "k8s.io/NAME => k8s.io/NAME vSTAGING".
mapfile -t staging < <(sed -n 's|^[[:space:]]*\(k8s\.io/[^ ]*\) => \./staging/src/.*$|\1|p' "$kube_gomod")
if ((${#staging[@]} == 0)); then
	echo "build-kube: no staging replace lines in $kube_gomod" >&2
	exit 1
fi
{
	echo "module lpm.local/kube-build"
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
packages=()
for component in "${missing[@]}"; do
	packages+=("k8s.io/kubernetes/cmd/$component")
done
go get "${packages[@]/%/@$version}" >&2

# What a release build stamps in, so /version reports v1.37.2 rather than v0.0.0-master. The build date
# is the release's own time from the proxy, so the same version always builds the same binary.
release_time=$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$kube_info")
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$release_time"

# Static, like the release binaries. Built into the scratch module and renamed, so an interrupted build
# never leaves something that the cache check above would take for a finished binary.
mkdir -p "$work/bin" "$bin_dir"
CGO_ENABLED=0 go build -p "$jobs" -trimpath -ldflags "$ldflags" -o "$work/bin/" "${packages[@]}"
for component in "${missing[@]}"; do
	mv "$work/bin/$component" "$bin_dir/$component.partial"
	mv "$bin_dir/$component.partial" "$bin_dir/$component"
done

echo "build-kube: built ${missing[*]} $version in $(($(date +%s) - start)) s" >&2
echo "$bin_dir"
