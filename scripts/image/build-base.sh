#!/usr/bin/env bash
# Build (or find in the cache) a Debian trixie base image as a tarball, for building lpm's
# Dockerfile where no image registry is reachable (issue 6): `podman import` it and pass it as
# --build-arg BASE_IMAGE. A debootstrap minbase, trimmed the way debian:*-slim is (no docs, man
# pages, locales, apt lists or caches). Its apt sources name the mirror of the machine's own apt
# sources; it carries the machine's apt and pip configuration and CA bundle, so the Dockerfile's
# apt-get and pip reach Debian's archive and PyPI exactly as the machine does. A stand-in for the
# pinned debian:trixie-slim of production, never published.
# Prints the tarball's path as its last line. Needs root.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
version=trixie-v3   # bump when the recipe changes
cache=${LPM_CACHE_DIR:-$repo/.cache}/image-base
tarball=$cache/$version.tar
# shellcheck source=../lib/debootstrap.sh
. "$repo/scripts/lib/debootstrap.sh"

if [[ -f $tarball ]]; then
	echo "$tarball"
	exit 0
fi
if ((EUID != 0)); then
	echo "build-base: needs root (debootstrap)" >&2
	exit 1
fi

mkdir -p "$cache"
# One build at a time (tests/image and the lab's nodes both want it): a second caller waits, then finds it.
exec 9>"$cache/.lock"
flock 9
if [[ -f $tarball ]]; then
	echo "$tarball"
	exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
started=$SECONDS
debootstrap_trixie "$work" "$root"
# The machine's apt settings (not its sources: debootstrap wrote the mirror for trixie), pip
# settings and CA bundle (an egress proxy may re-sign TLS).
for f in /etc/apt/apt.conf.d/*; do
	case $(basename "$f") in docker-* | *autoremove* | *packagekit | *appstream) ;; *) cp "$f" "$root/etc/apt/apt.conf.d/" ;; esac
done
# The bundle, and the local CAs themselves: installing ca-certificates in the image regenerates the
# bundle from /usr/share/ca-certificates plus /usr/local/share/ca-certificates.
mkdir -p "$root/etc/ssl/certs" "$root/usr/local/share/ca-certificates"
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
cp -rL /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
# pip's own certifi bundle knows nothing of the machine's CAs: point it at the machine's bundle.
if [[ -f /etc/pip.conf ]]; then
	cp /etc/pip.conf "$root/etc/pip.conf"
else
	printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$root/etc/pip.conf"
fi
# What Debian's own container images configure for apt: no package or cache files left in layers,
# no translations, compressed indexes.
cat >"$root/etc/apt/apt.conf.d/lpm-image-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
Acquire::GzipIndexes "true";
CFG
# What debian:*-slim leaves out; dpkg keeps leaving it out for packages the Dockerfile installs.
cat >"$root/etc/dpkg/dpkg.cfg.d/lpm-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
CFG
find "$root/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete 2>/dev/null || true
rm -rf "$root"/usr/share/{man,info,locale,lintian}/* "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* \
	"$root"/var/cache/debconf/*-old "$root"/var/log/* "$root"/tmp/* "$root"/debootstrap
tar --numeric-owner -C "$root" -cf "$tarball.partial" .
mv "$tarball.partial" "$tarball"
echo "build-base: trixie minbase, $(du -sm "$root" | cut -f1) MiB, in $((SECONDS - started)) s" >&2
echo "$tarball"
