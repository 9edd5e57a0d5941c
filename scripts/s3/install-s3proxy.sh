#!/usr/bin/env bash
# Install s3proxy, the S3 server the tests of lpm's S3 store run against (tests/s3, bench/s3.py): a Java
# program, its jar-with-dependencies from Maven Central, each version in scripts/s3/s3proxy.versions checked
# against its SHA-256 and cached under LPM_CACHE_DIR (default REPO/.cache)/s3proxy/VERSION/s3proxy.jar. A
# Java runtime (17 or later) and curl come from Debian when missing (root). Idempotent; prints the first jar's path.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${LPM_CACHE_DIR:-$repo/.cache}/s3proxy

need=()
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v curl >/dev/null || need+=(curl ca-certificates)
if ((${#need[@]})); then
	if ((EUID != 0)); then
		echo "install-s3proxy: missing ${need[*]}; installing them needs root" >&2
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	apt-get install -y -q --no-install-recommends "${need[@]}"
fi

first=
while read -r version sha256; do
	[[ -z $version || $version == \#* ]] && continue
	jar=$cache/$version/s3proxy.jar
	if [[ ! -f $jar ]]; then
		mkdir -p "$cache/$version"
		url=https://repo1.maven.org/maven2/org/gaul/s3proxy/$version/s3proxy-$version-jar-with-dependencies.jar
		echo "install-s3proxy: downloading $url" >&2
		# Into a temp name, checked, then renamed: an interrupted download is never taken for the jar.
		tmp=$(mktemp "$cache/$version/.download.XXXXXX")
		trap 'rm -f "$tmp"' EXIT
		curl -fsSL --retry 3 -o "$tmp" "$url"
		got=$(sha256sum "$tmp" | cut -d' ' -f1)
		if [[ $got != "$sha256" ]]; then
			echo "install-s3proxy: $url has sha256 $got, expected $sha256" >&2
			exit 1
		fi
		mv "$tmp" "$jar"
		trap - EXIT
	fi
	first=${first:-$jar}
done <"$repo/scripts/s3/s3proxy.versions"
echo "install-s3proxy: s3proxy $(awk '!/^#/ && NF {print $1}' "$repo/scripts/s3/s3proxy.versions" | paste -sd ' ') on $(java -version 2>&1 | head -1)" >&2
echo "$first"
