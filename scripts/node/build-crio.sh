#!/usr/bin/env bash
# Build CRI-O (crio and pinns) from the Go module proxy and cache them by version.
#
# Usage: scripts/node/build-crio.sh [VERSION]     (default: scripts/node/crio.version)
# Prints the directory holding crio and pinns as the last line of stdout; progress goes to stderr. A cached
# build returns at once. Needs gcc, libc6-dev (pinns is C, linked statically) and libseccomp-dev (crio is
# built with the seccomp tag: cgo). Environment: LPM_CACHE_DIR (default REPO/.cache), GOTOOLCHAIN (default
# local), LPM_BUILD_JOBS (default: the number of cores).
#
# Neither Debian 12 nor trixie packages CRI-O. CRI-O restores a container whose CRI CreateContainer names a
# checkpoint image (an image whose manifest annotations hold io.kubernetes.cri-o.annotations.checkpoint.name)
# since 1.26; v1.36.3 is the newest release the machine's module proxy serves (v1.35.6, v1.36.4 and v1.37.0
# answer "403 Forbidden ... This module version is not available"). Its go.mod has no replace directives, so
# a throw-away module that requires it builds exactly the release (see below for why not `go install`).
# In 1.36 one key turns checkpoint AND restore on: `enable_criu_support = true` in [crio.runtime]; the
# release-1.37 branch deprecates it for [crio.checkpoint_restore] container_level_enabled =
# "none" | "checkpoint_only" | "checkpoint_restore".
#
# Build tags, as the release Makefile's hack/*_tag.sh would pick them on a machine without the optional C
# libraries: seccomp (libseccomp, linked dynamically: the nodes run in the trixie rootfs, whose libseccomp2
# has the same soname), containers_image_openpgp (pure-Go signature code, no gpgme),
# containers_image_ostree_stub, exclude_graphdriver_btrfs and exclude_graphdriver_devicemapper (no btrfs or
# device-mapper headers; the node stores images on overlay). No apparmor, selinux or libsubid.
# pinns (CRI-O creates and pins a pod's namespaces with it: pinns_path) is plain C in the module zip:
# compiled here with the flags of its own Makefile, static. Timings on this 2-core machine: ~19 min cold
# while other builds loaded it (load average 8-14), ~20 s with the Go build cache warm, at once when cached.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
version=${1:-$(<"$here/crio.version")}
if [[ ! $version =~ ^v1\.[0-9]+\.[0-9]+$ ]]; then
	echo "build-crio: VERSION must look like v1.MINOR.PATCH, got '$version'" >&2
	exit 2
fi

bin_dir=${LPM_CACHE_DIR:-$repo/.cache}/crio/$version
if [[ -x $bin_dir/crio && -x $bin_dir/pinns ]]; then
	echo "$bin_dir"
	exit 0
fi
if [[ ! -f /usr/include/seccomp.h ]]; then
	echo "build-crio: libseccomp-dev is missing (scripts/node/install-deps.sh installs it)" >&2
	exit 1
fi
if ! command -v cc >/dev/null; then
	echo "build-crio: no C compiler (cc): cgo and pinns need one" >&2
	exit 1
fi

# shellcheck source=../lib/go.sh
. "$repo/scripts/lib/go.sh"
use_go build-crio
jobs=${LPM_BUILD_JOBS:-$(nproc)}

start=$(date +%s)
echo "build-crio: building crio and pinns $version with $(go version)" >&2
# Into a scratch directory, then renamed: an interrupted build never leaves what the check above would
# take for a finished one.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
module=github.com/cri-o/cri-o

# `go install $module/cmd/crio@$version` is refused here: it looks the module's deprecation up through its
# version list, which the machine's proxy does not serve ("reading .../@v/list: 403 Forbidden"). So a
# throw-away module requires the release (its go.mod has no replace directives: the same build list) and
# builds its command. The release's go directive, so its language version and GODEBUG defaults apply.
cd "$scratch"
# On failure the go command reports the reason in the JSON it prints (an "Error" field), not on stderr.
if ! download=$(go mod download -json "$module@$version"); then
	echo "build-crio: could not download $module@$version:" >&2
	echo "$download" >&2
	exit 1
fi
field() { sed -n "s/^[[:space:]]*\"$1\": \"\(.*\)\",\?$/\1/p" <<<"$download" | head -n1; }
source_dir=$(field Dir)
commit=$(field Hash)
release_time=$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$(field Info)")
{
	echo "module lpm.local/crio-build"
	echo
	sed -n 's/^go \([0-9.]*\)$/go \1/p' "$(field GoMod)"
	echo
	echo "require $module $version"
} >go.mod
# The throw-away module has no go.sum yet: let the go command record sums as it resolves.
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod"

tags="seccomp containers_image_openpgp containers_image_ostree_stub exclude_graphdriver_btrfs"
tags+=" exclude_graphdriver_devicemapper"
# What the release Makefile stamps in (the version itself is a constant in internal/version).
ldflags="-s -w -X $module/internal/version.buildDate=$release_time -X $module/internal/version.buildCommit=$commit"
CGO_ENABLED=1 go build -p "$jobs" -trimpath -tags "$tags" -ldflags "$ldflags" -o "$scratch/crio" "$module/cmd/crio"

# pinns/Makefile: CFLAGS ?= -std=c99 -Os -Wall -Werror -Wextra -static, objects with -O3, then strip.
cc -std=c99 -Os -O3 -Wall -Wextra -static -o "$scratch/pinns" "$source_dir"/pinns/src/*.c
strip -s "$scratch/pinns"

mkdir -p "$bin_dir"
for name in crio pinns; do
	mv "$scratch/$name" "$bin_dir/$name.partial"
	mv "$bin_dir/$name.partial" "$bin_dir/$name"
done

echo "build-crio: built $("$bin_dir/crio" --version 2>/dev/null | head -n1) in $(($(date +%s) - start)) s" >&2
echo "$bin_dir"
