# Sourced, not run: debootstrap Debian trixie with nothing installed on the host. Bookworm's
# debootstrap is unpacked with dpkg -x into a scratch directory; the mirror is the one the
# machine's own apt sources name (no mirror host is written into the project).
#
#   debootstrap_trixie WORK TARGET [DEBOOTSTRAP OPTIONS...]
#
# WORK is a scratch directory the caller removes; on failure the log's tail goes to stderr.

debian_mirror() {
	{ grep -rhoE '^(URIs:|deb) +[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null || true; } |
		awk '{print $2}' | { grep -E '/debian/?$' || true; } | head -n1
}

debootstrap_trixie() {
	local work=$1 target=$2 mirror
	shift 2
	mirror=$(debian_mirror)
	if [[ -z $mirror ]]; then
		echo "debootstrap: no Debian mirror in the apt sources" >&2
		return 1
	fi
	# A fresh machine may have no package lists yet: fetch them once if the download needs them.
	(cd "$work" && { apt-get download -q debootstrap >/dev/null 2>&1 || { apt-get update -q >/dev/null &&
		apt-get download -q debootstrap >/dev/null; }; })
	dpkg -x "$work"/debootstrap_*.deb "$work/db"
	DEBOOTSTRAP_DIR="$work/db/usr/share/debootstrap" "$work/db/usr/sbin/debootstrap" \
		--variant=minbase "$@" trixie "$target" "$mirror" >"$work/debootstrap.log" 2>&1 || {
		tail -n 30 "$work/debootstrap.log" >&2
		return 1
	}
}
