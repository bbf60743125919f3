#!/usr/bin/env bash
# kernels.sh: Debian's cloud kernels for forkwatch's VM tests, downloaded and
# unpacked into a cache. Nothing is installed on the host, and the host's own
# apt setup is neither read nor changed: every apt call uses a private
# configuration whose lists live in the cache too.
#
#   kernels.sh fetch [--refresh] NAME   download + unpack if not cached; print the vmlinuz path
#   kernels.sh resolve NAME             print the package NAME resolves to now (needs the network)
#   kernels.sh list                     cached names and kernel releases
#   kernels.sh busybox ARCH             download + unpack bookworm's busybox-static for
#                                       ARCH (arm64) if not cached; print its path
#
# NAME: 5.10 (bullseye), 6.1 and 6.12 (bookworm), another X.Y series (trixie and
# trixie-backports), or newest: the newest kernel that trixie or trixie-backports
# offers. Each resolves to the newest ABI of its series in the current package
# index. These are x86-64 kernels (-cloud-amd64); arm64:NAME is the same for
# arm64 (-cloud-arm64), e.g. arm64:6.1 or arm64:newest. Once fetched, a NAME
# is a cache hit with no network access; --refresh (or FORKWATCH_VM_REFRESH=1)
# resolves it again, e.g. to pick up a new "newest".
#
# Environment: FORKWATCH_VM_CACHE (default test/vm/.cache), FORKWATCH_VM_MIRROR
# and FORKWATCH_VM_SECURITY_MIRROR (default: the archive and the security
# archive this machine's own apt sources name, read from
# /etc/apt/sources.list and /etc/apt/sources.list.d; only read, never
# changed).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${FORKWATCH_VM_CACHE:-$here/.cache}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

log() { printf 'kernels.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# host_archive security|main: the first URI this machine's apt sources use
# for a suite ending in -security, or for one that does not. Both formats:
# one-line sources.list ("deb [opts] URI SUITE COMPONENT...") and deb822
# .sources files ("URIs:" and "Suites:" in one stanza).
host_archive() {
	local want=$1 f
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
		[[ -r $f ]] || continue
		awk -v want="$want" '
			function pick(uri, suite) {
				if ((suite ~ /-security$/) == (want == "security")) { print uri; found = 1; exit }
			}
			/^[ \t]*#/ { next }
			FILENAME ~ /\.sources$/ {
				if (/^[ \t]*$/) { uris = ""; suites = ""; next }
				if (sub(/^URIs:[ \t]*/, "")) uris = $1
				if (sub(/^Suites:[ \t]*/, "")) suites = $0
				if (uris != "" && suites != "") { n = split(suites, s, /[ \t]+/); for (i = 1; i <= n; i++) pick(uris, s[i]); uris = ""; suites = "" }
				next
			}
			$1 == "deb" {
				i = 2
				if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
				pick($i, $(i + 1))
			}
			END { exit !found }' "$f" && return 0
	done
	return 1
}

mirror=${FORKWATCH_VM_MIRROR:-$(host_archive main || true)}
security=${FORKWATCH_VM_SECURITY_MIRROR:-$(host_archive security || true)}

usage() {
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
	exit 2
}

# arch_of NAME: the Debian architecture of NAME's kernel (amd64, or arm64 for
# arm64:...); series_of NAME: NAME without it.
arch_of() { if [[ $1 == arm64:* ]]; then echo arm64; else echo amd64; fi; }
series_of() { echo "${1#arm64:}"; }

# dist_of NAME: the Debian release whose lists are searched for NAME.
dist_of() {
	case $(series_of "$1") in
	5.10) echo bullseye ;;
	6.1 | 6.12) echo bookworm ;;
	newest | [0-9]*.[0-9]*) echo trixie ;;
	*) die "unknown kernel name '$1' (want 5.10, 6.1, 6.12, X.Y or newest, each also as arm64:NAME)" ;;
	esac
}

# pattern_of NAME: a regular expression (apt-cache search, POSIX) matching the
# kernel image packages of NAME's series, cloud flavour, signed image only.
pattern_of() {
	local series arch
	series=$(series_of "$1")
	arch=$(arch_of "$1")
	case $series in
	newest) echo "^linux-image-[0-9][0-9.]*[-+][^ ]*-cloud-$arch\$" ;;
	*) echo "^linux-image-${series//./\\.}[.-][^ ]*-cloud-$arch\$" ;;
	esac
}

# aptdir DIST [ARCH]: creates (once) the private apt configuration for DIST's
# ARCH (default amd64) packages and prints its directory.
aptdir() {
	local dist=$1 arch=${2:-amd64} dir=$cache/apt/$1 key
	[[ $arch == amd64 ]] || dir+=-$arch
	[[ -r $keyring ]] || die "$keyring missing: install Debian's debian-archive-keyring"
	[[ -n $mirror && -n $security ]] || die "no Debian archive and security archive in this machine's apt sources: set FORKWATCH_VM_MIRROR and FORKWATCH_VM_SECURITY_MIRROR"
	mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/empty"
	key="[signed-by=$keyring]"
	{
		echo "deb $key $mirror $dist main"
		echo "deb $key $mirror $dist-updates main"
		echo "deb $key $security $dist-security main"
		if [[ $dist == trixie ]]; then echo "deb $key $mirror $dist-backports main"; fi
	} >"$dir/sources.list"
	: >>"$dir/status"
	# Read through APT_CONFIG before /etc/apt/apt.conf.d, which it redirects
	# to an empty folder: the host's apt settings play no part.
	cat >"$dir/apt.conf" <<-EOF
		Dir::Etc::Main "/dev/null";
		Dir::Etc::Parts "$dir/empty";
		Dir::Etc::SourceList "$dir/sources.list";
		Dir::Etc::SourceParts "$dir/empty";
		Dir::Etc::Preferences "/dev/null";
		Dir::Etc::PreferencesParts "$dir/empty";
		Dir::State "$dir";
		Dir::State::Lists "$dir/lists";
		Dir::State::status "$dir/status";
		Dir::Cache "$dir/cache";
		APT::Architecture "$arch";
		APT::Architectures { "$arch"; };
		Dir::Cache::pkgcache "";
		Dir::Cache::srcpkgcache "";
		Acquire::Languages "none";
		Acquire::GzipIndexes "true";
		Acquire::CompressionTypes::Order { "gz"; };
		Acquire::Retries "3";
		APT::Sandbox::User "root";
	EOF
	echo "$dir"
}

# apt_in DIST ARCH CMD...: runs an apt command with the private configuration
# of DIST's ARCH packages.
apt_in() {
	local dir
	dir=$(aptdir "$1" "$2")
	shift 2
	APT_CONFIG=$dir/apt.conf "$@"
}

# update_lists DIST ARCH
update_lists() {
	log "updating the package lists of $1 for $2 (cached in $(aptdir "$1" "$2"))"
	apt_in "$1" "$2" apt-get -q -o APT::Update::Error-Mode=any update >&2 ||
		die "apt-get update failed for $1 ($2)"
}

# resolve NAME: prints the kernel release (e.g. 6.1.0-40-cloud-amd64) that
# NAME stands for in the current lists.
resolve() {
	local name=$1 dist pattern rel
	dist=$(dist_of "$name")
	pattern=$(pattern_of "$name")
	rel=$(apt_in "$dist" "$(arch_of "$name")" apt-cache search --names-only "$pattern" |
		awk '{sub(/^linux-image-/, "", $1); print $1}' | sort -V | tail -n 1)
	[[ -n $rel ]] || die "no package matches $pattern in $dist's lists"
	echo "$rel"
}

# vmlinuz_in DIR: the kernel image in an unpacked package tree, if any.
vmlinuz_in() {
	local f
	for f in "$1"/boot/vmlinuz-* "$1"/usr/lib/modules/*/vmlinuz "$1"/lib/modules/*/vmlinuz; do
		if [[ -f $f ]]; then
			echo "${f#"$1"/}"
			return 0
		fi
	done
	return 1
}

# unpack DIST ARCH RELEASE: downloads the image package (and, from 6.16 on, the
# linux-binary package that holds the image) and unpacks it into the cache.
unpack() {
	local dist=$1 arch=$2 rel=$3 dest=$cache/kernels/$3 stage pkg deb image
	stage=$(mktemp -d "$cache/kernels/.stage.XXXXXX")
	# shellcheck disable=SC2064 # expand now: stage is local
	trap "rm -rf '$stage'" EXIT
	chmod 755 "$stage"
	mkdir "$stage/root"
	for pkg in "linux-image-$rel" "linux-binary-$rel"; do
		if [[ $pkg == linux-binary-* ]] && vmlinuz_in "$stage/root" >/dev/null; then
			break
		fi
		log "downloading $pkg from $dist"
		(cd "$stage" && apt_in "$dist" "$arch" apt-get -q download "$pkg" >&2) ||
			die "could not download $pkg"
		for deb in "$stage"/*.deb; do
			dpkg-deb -x "$deb" "$stage/root" || die "could not unpack $deb"
			rm -f "$deb"
		done
	done
	image=$(vmlinuz_in "$stage/root") || die "no vmlinuz in linux-image-$rel or linux-binary-$rel"
	# The modules are of no use to an initramfs without them: ~15 MB stay.
	rm -rf "$stage"/root/lib/modules/*/kernel "$stage"/root/usr/lib/modules/*/kernel
	ln -s "root/$image" "$stage/vmlinuz"
	rm -rf "$dest"
	mv "$stage" "$dest"
	trap - EXIT
}

fetch() {
	local refresh=${FORKWATCH_VM_REFRESH:-}
	if [[ ${1:-} == --refresh ]]; then
		refresh=1
		shift
	fi
	[[ $# -eq 1 ]] || usage
	local name=$1 dist arch rel namefile=$cache/names/$1
	dist=$(dist_of "$name")
	arch=$(arch_of "$name")

	# Cache hit: no lock, no network. Entries are only ever renamed into place.
	if [[ -z $refresh && -f $namefile ]]; then
		rel=$(<"$namefile")
		if [[ -e $cache/kernels/$rel/vmlinuz ]]; then
			echo "$cache/kernels/$rel/vmlinuz"
			return 0
		fi
	fi

	mkdir -p "$cache/names" "$cache/kernels"
	local lock
	exec {lock}>"$cache/.lock"
	flock "$lock"
	# Someone else may have fetched it while we waited.
	if [[ -z $refresh && -f $namefile && -e $cache/kernels/$(<"$namefile")/vmlinuz ]]; then
		echo "$cache/kernels/$(<"$namefile")/vmlinuz"
		return 0
	fi

	update_lists "$dist" "$arch"
	rel=$(resolve "$name")
	log "$name is $rel"
	if [[ ! -e $cache/kernels/$rel/vmlinuz ]]; then
		unpack "$dist" "$arch" "$rel"
	fi
	echo "$rel" >"$namefile.new"
	mv "$namefile.new" "$namefile"
	echo "$cache/kernels/$rel/vmlinuz"
}

cmd_resolve() {
	[[ $# -eq 1 ]] || usage
	local dist
	dist=$(dist_of "$1")
	mkdir -p "$cache"
	update_lists "$dist" "$(arch_of "$1")"
	echo "linux-image-$(resolve "$1")"
}

cmd_list() {
	local f
	for f in "$cache"/names/*; do
		[[ -f $f ]] || continue
		printf '%-12s %s\n' "$(basename "$f")" "$(<"$f")"
	done
}

# busybox ARCH: the guest's userland for another architecture than the
# host's: Debian 12's busybox-static for ARCH, unpacked into the cache.
cmd_busybox() {
	[[ $# -eq 1 && $1 =~ ^[a-z0-9]+$ ]] || usage
	local arch=$1 dest=$cache/busybox/$1 stage deb
	if [[ -x $dest/bin/busybox ]]; then
		echo "$dest/bin/busybox"
		return 0
	fi
	mkdir -p "$cache/busybox"
	local lock
	exec {lock}>"$cache/.lock"
	flock "$lock"
	if [[ ! -x $dest/bin/busybox ]]; then
		update_lists bookworm "$arch"
		stage=$(mktemp -d "$cache/busybox/.stage.XXXXXX")
		# shellcheck disable=SC2064 # expand now: stage is local
		trap "rm -rf '$stage'" EXIT
		chmod 755 "$stage"
		log "downloading busybox-static for $arch from bookworm"
		(cd "$stage" && apt_in bookworm "$arch" apt-get -q download busybox-static >&2) ||
			die "could not download busybox-static for $arch"
		for deb in "$stage"/*.deb; do
			dpkg-deb -x "$deb" "$stage/root" || die "could not unpack $deb"
		done
		[[ -x $stage/root/bin/busybox ]] || die "no bin/busybox in busybox-static for $arch"
		rm -rf "$dest"
		mv "$stage/root" "$dest"
		rm -rf "$stage"
		trap - EXIT
	fi
	echo "$dest/bin/busybox"
}

case ${1:-} in
fetch) shift; fetch "$@" ;;
resolve) shift; cmd_resolve "$@" ;;
list) shift; cmd_list ;;
busybox) shift; cmd_busybox "$@" ;;
*) usage ;;
esac
