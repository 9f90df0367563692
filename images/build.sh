#!/bin/bash
# images/build.sh: builds govmd's test guests from Debian packages only and
# puts them in images/out/. See images/README.md.
#
# Every product is built once into a cache directory named after a hash of
# its inputs ($GOVMD_CACHE/images/<part>-<hash>, GOVMD_CACHE defaults to
# ~/.cache/govmd) and then copied (hard-linked when possible) into
# images/out. A second run, or a fresh clone on the same machine, only
# re-links. Builds take a lock, work in a temp directory and rename it at
# the end, so concurrent or interrupted runs leave no half-built cache.
#
# Environment: GOVMD_CACHE (cache root), GOVMD_KEEP_BUILD=1 (keep the
# kernel build tree in $GOVMD_CACHE/images/.work for debugging),
# GOVMD_IMAGES_NO_APT=1 (never call apt-get; fail if something is missing).
set -euo pipefail

IMAGES=$(cd "$(dirname "$0")" && pwd)
OUT=$IMAGES/out
CACHE=${GOVMD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/govmd}/images
DL=$CACHE/dl
WORK=$CACHE/.work
# Fixed timestamps for the kernel and the cpio records.
export SOURCE_DATE_EPOCH=1704067200 # 2024-01-01 00:00:00 UTC
export LC_ALL=C TZ=UTC
KEYVERSION=1 # bump to invalidate every cached product

LINUX_SOURCE=linux-source-6.1
TARBALL=/usr/src/$LINUX_SOURCE.tar.xz
HOST_PKGS="build-essential gcc-multilib bc flex bison libelf-dev libssl-dev cpio lz4 xz-utils zstd kmod binutils util-linux $LINUX_SOURCE"

t0=$(date +%s)
log() { printf 'images: %s\n' "$*"; }
die() { printf 'images: error: %s\n' "$*" >&2; exit 1; }

SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo

# ---------------------------------------------------------------- packages

apt_updated=0
apt_update() {
	[ $apt_updated = 1 ] && return 0
	[ -z "${GOVMD_IMAGES_NO_APT:-}" ] || die "apt-get update needed but GOVMD_IMAGES_NO_APT is set"
	log "apt-get update"
	# A mirror that is mid-sync can fail one index; what we need may still
	# resolve, which the callers check.
	$SUDO apt-get update -qq || log "warning: apt-get update reported errors"
	apt_updated=1
}

installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }

ensure_pkgs() {
	local missing=() p
	for p in "$@"; do installed "$p" || missing+=("$p"); done
	[ ${#missing[@]} = 0 ] && return 0
	[ -z "${GOVMD_IMAGES_NO_APT:-}" ] || die "missing packages: ${missing[*]}"
	log "apt-get install ${missing[*]}"
	if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null; then
		apt_update
		DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
	fi
}

# candidate PKG: the version apt-get download would fetch
candidate() { apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p' | grep -v '(none)' || true; }

# download PKG VERSION: the .deb, cached in $DL; prints its path
download() {
	local pkg=$1 ver=$2 f
	f=$DL/${pkg%%:*}_${ver//:/%3a}_$( [[ $pkg == *:i386 ]] && echo i386 || echo amd64 ).deb
	if [ ! -s "$f" ]; then
		mkdir -p "$DL"
		(cd "$DL" && apt-get download -qq -o APT::Sandbox::User=root "$pkg=$ver") ||
			die "apt-get download $pkg=$ver failed"
		[ -s "$f" ] || f=$(ls "$DL/${pkg%%:*}_"*"${ver##*:}"*.deb | head -1)
	fi
	echo "$f"
}

# hash of files and strings: key FILE... -- STRING...
key() {
	{
		echo "keyversion $KEYVERSION"
		while [ $# -gt 0 ] && [ "$1" != -- ]; do
			printf '%s ' "${1#"$IMAGES"/}"; sha256sum < "$1"; shift
		done
		[ $# -gt 0 ] && shift
		printf '%s\n' "$@"
	} | sha256sum | cut -c1-16
}

command -v go > /dev/null || die "go not found in PATH (the Go toolchain builds mkinitrd)"
mkdir -p "$CACHE"
exec 9> "$CACHE/.lock"
if ! flock -n 9; then
	log "another build holds $CACHE/.lock; waiting"
	flock 9
fi

ensure_pkgs $HOST_PKGS
if ! dpkg --print-foreign-architectures | grep -qx i386; then
	[ -z "${GOVMD_IMAGES_NO_APT:-}" ] || die "dpkg architecture i386 is not enabled"
	log "dpkg --add-architecture i386"
	$SUDO dpkg --add-architecture i386
	apt_updated=0
	apt_update
fi

BB_PKG=busybox-static:i386
BB_VER=$(candidate $BB_PKG)
[ -n "$BB_VER" ] || { apt_update; BB_VER=$(candidate $BB_PKG); }
[ -n "$BB_VER" ] || die "no candidate for $BB_PKG"

DEB_KPKG=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-6\.1\.[^ ]*-cloud-amd64\)$/\1/p' | head -1)
[ -n "$DEB_KPKG" ] || { apt_update; DEB_KPKG=$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/^ *Depends: \(linux-image-6\.1\.[^ ]*-cloud-amd64\)$/\1/p' | head -1); }
[ -n "$DEB_KPKG" ] || die "cannot resolve linux-image-cloud-amd64"
DEB_KVER=$(candidate "$DEB_KPKG")
[ -n "$DEB_KVER" ] || die "no candidate for $DEB_KPKG"

LSRC_VER=$(dpkg-query -W -f='${Version}' $LINUX_SOURCE)
TOOLS="gcc $(dpkg-query -W -f='${Version}' gcc 2>/dev/null) gcc-12 $(dpkg-query -W -f='${Version}' gcc-12 2>/dev/null) binutils $(dpkg-query -W -f='${Version}' binutils) make $(dpkg-query -W -f='${Version}' make)"
GOVER=$(go version | cut -d' ' -f3)
UROOT=$(cd "$IMAGES/.." && go list -m -f '{{.Path}} {{.Version}}' github.com/u-root/u-root)

# ------------------------------------------------------------------ builds

built=()
# build PART KEY FUNC: runs FUNC TMPDIR unless $CACHE/PART-KEY exists
build() {
	local part=$1 k=$2 fn=$3 dir=$CACHE/$1-$2 tmp s
	if [ -f "$dir/.complete" ]; then
		log "$part: cached ($dir)"
		return 0
	fi
	tmp=$(mktemp -d "$CACHE/.tmp-$part-XXXXXX")
	trap "rm -rf '$tmp'" EXIT
	s=$(date +%s)
	log "$part: building -> $dir"
	"$fn" "$tmp"
	echo $(($(date +%s) - s)) > "$tmp/build-seconds"
	(cd "$tmp" && find . -type f ! -name SHA256SUMS -printf '%P\n' | sort | xargs sha256sum > SHA256SUMS)
	touch "$tmp/.complete"
	rm -rf "$dir"
	mv -T "$tmp" "$dir"
	trap - EXIT
	built+=("$part $(cat "$dir/build-seconds")s")
}

# mkinitrd (Go) is needed by two parts; build it each time (seconds, and
# the Go build cache makes it ~instant).
MKINITRD=$CACHE/.bin/mkinitrd
mkdir -p "$CACHE/.bin"
(cd "$IMAGES/.." && go build -trimpath -o "$MKINITRD.tmp" ./images/internal/mkinitrd) && mv "$MKINITRD.tmp" "$MKINITRD"
MKINITRD_SRC=$(find "$IMAGES/internal" -name '*.go' ! -name '*_test.go' | sort)

LINUX_KEY=$(key "$IMAGES"/linux/build-kernel.sh "$IMAGES"/linux/kconfig.sh "$IMAGES"/linux/config.fragment "$IMAGES"/linux/patches/*.patch \
	-- "$LINUX_SOURCE $LSRC_VER" "$TOOLS" "epoch $SOURCE_DATE_EPOCH")
build_linux() {
	"$IMAGES/linux/build-kernel.sh" "$TARBALL" "$WORK/linux" "$1"
	[ -n "${GOVMD_KEEP_BUILD:-}" ] || rm -rf "$WORK/linux"
}
build linux "$LINUX_KEY" build_linux

BB_DEB=$(download $BB_PKG "$BB_VER")
# The agent's two small tools (images/tools: ethfeat, blkbench) are static
# i386 programs built with the kernel's own nolibc from the same tarball,
# so the initramfs carries no libc: every byte of it costs unpacking time
# on every boot under PVM.
TOOLS_SRC=$(find "$IMAGES/tools" -name '*.c' | sort)
INITRD_KEY=$(key "$IMAGES"/rootfs.sh "$IMAGES"/agent/init $TOOLS_SRC $MKINITRD_SRC -- "$TOOLS" "$LINUX_SOURCE $LSRC_VER" "$BB_PKG $BB_VER" "$GOVER" "$UROOT" "epoch $SOURCE_DATE_EPOCH")
build_initrd() {
	"$IMAGES/rootfs.sh" "$WORK/stage" "$BB_DEB"
	rm -rf "$WORK/nolibc"
	mkdir -p "$WORK/nolibc"
	tar -xJf "$TARBALL" -C "$WORK/nolibc" --strip-components=3 --wildcards '*/tools/include/nolibc/*'
	for src in $TOOLS_SRC; do
		gcc -m32 -Os -s -static -nostdlib -fno-stack-protector -fno-asynchronous-unwind-tables \
			-mgeneral-regs-only -Wall -Werror -I "$WORK/nolibc/nolibc" -include nolibc.h \
			-o "$WORK/stage/bin/$(basename "$src" .c)" "$src" -lgcc
	done
	rm -rf "$WORK/nolibc"
	"$MKINITRD" -root "$WORK/stage" -o "$1/initrd.cpio" -gz "$1/initrd.cpio.gz" \
		-dev /dev/console:c:5:1:0600 -pattern /pattern:65511
	rm -rf "$WORK/stage"
}
build initrd "$INITRD_KEY" build_initrd

DEB_KDEB=$(download "$DEB_KPKG" "$DEB_KVER")
DEBIAN_KEY=$(key "$IMAGES"/debian/build-debian.sh "$IMAGES"/debian/modules "$IMAGES"/rootfs.sh "$IMAGES"/agent/init $MKINITRD_SRC \
	-- "$DEB_KPKG $DEB_KVER" "$BB_PKG $BB_VER" "$LINUX_SOURCE $LSRC_VER" "$GOVER" "$UROOT" "epoch $SOURCE_DATE_EPOCH")
build_debian() {
	"$IMAGES/debian/build-debian.sh" "$DEB_KDEB" "$BB_DEB" "$TARBALL" "$MKINITRD" "$WORK/debian" "$1"
	rm -rf "$WORK/debian"
}
build debian "$DEBIAN_KEY" build_debian

# ---------------------------------------------------------- images/out

L=$CACHE/linux-$LINUX_KEY I=$CACHE/initrd-$INITRD_KEY D=$CACHE/debian-$DEBIAN_KEY
manifest() {
	cat <<-EOF
	# images/out, made by images/build.sh; do not edit
	cache $CACHE
	linux $LINUX_KEY $LINUX_SOURCE $LSRC_VER
	initrd $INITRD_KEY $BB_PKG $BB_VER
	debian $DEBIAN_KEY $DEB_KPKG $DEB_KVER
	cmdline $(cat "$IMAGES/cmdline" "$IMAGES/cmdline-pvm" | sha256sum | cut -c1-16)
	EOF
}
if [ -f "$OUT/MANIFEST" ] && [ "$(manifest)" = "$(cat "$OUT/MANIFEST")" ] &&
	(cd "$OUT" && sha256sum --quiet -c SHA256SUMS > /dev/null 2>&1); then
	log "images/out is up to date"
else
	tmp=$(mktemp -d "$IMAGES/.out.tmp.XXXXXX")
	trap "rm -rf '$tmp'" EXIT
	mkdir -p "$tmp/linux" "$tmp/debian"
	put() { cp -l "$1" "$2" 2> /dev/null || cp "$1" "$2"; }
	for f in vmlinux bzImage config version; do put "$L/$f" "$tmp/linux/$f"; done
	for f in initrd.cpio initrd.cpio.gz; do put "$I/$f" "$tmp/$f"; done
	for f in vmlinuz vmlinux initrd.cpio.gz initrd.cpio modules.load-order version; do put "$D/$f" "$tmp/debian/$f"; done
	mkdir -p "$tmp/debian/modules"
	for f in "$D"/modules/*.ko; do put "$f" "$tmp/debian/modules/${f##*/}"; done
	cp "$IMAGES/cmdline" "$IMAGES/cmdline-pvm" "$tmp/"
	manifest > "$tmp/MANIFEST"
	{
		sed 's|  |  linux/|' "$L/SHA256SUMS" | grep -v build-seconds
		grep -v build-seconds "$I/SHA256SUMS"
		(cd "$IMAGES" && sha256sum cmdline cmdline-pvm)
		sed 's|  |  debian/|' "$D/SHA256SUMS" | grep -v build-seconds
	} > "$tmp/SHA256SUMS"
	(cd "$tmp" && sha256sum --quiet -c SHA256SUMS) || die "images/out: checksum mismatch"
	old=
	if [ -e "$OUT" ]; then old=$IMAGES/.out.old.$$; mv -T "$OUT" "$old"; fi
	chmod 755 "$tmp"
	mv -T "$tmp" "$OUT"
	trap - EXIT
	[ -z "$old" ] || rm -rf "$old"
	log "images/out updated"
fi

# Keep the cache bounded: the current product and the two newest others of
# each part (older ones are what earlier versions of the inputs produced).
for part in linux initrd debian; do
	ls -1dt "$CACHE/$part"-* 2> /dev/null | grep -v -e "/$part-$LINUX_KEY\$" -e "/$part-$INITRD_KEY\$" -e "/$part-$DEBIAN_KEY\$" |
		tail -n +3 | xargs -r rm -rf || true
done

# ----------------------------------------------------------------- summary

size() { du -h --apparent-size "$1" | cut -f1; }
echo
echo "govmd test images ($(($(date +%s) - t0))s; built: ${built[*]:-nothing, all cached})"
printf '  %-28s %6s  %s\n' \
	linux/vmlinux "$(size "$OUT/linux/vmlinux")" "$(cat "$OUT/linux/version" | cut -d' ' -f1-3) + govmd patches, PVH ELF" \
	linux/bzImage "$(size "$OUT/linux/bzImage")" "same kernel, LZ4 bzImage (build $(cat "$L/build-seconds")s)" \
	initrd.cpio "$(size "$OUT/initrd.cpio")" "busybox $BB_VER (i386) + agent + gping, ethfeat, blkbench (nolibc)" \
	debian/vmlinux "$(size "$OUT/debian/vmlinux")" "$DEB_KPKG $DEB_KVER" \
	debian/initrd.cpio.gz "$(size "$OUT/debian/initrd.cpio.gz")" "+ $(wc -l < "$OUT/debian/modules.load-order") modules"
echo "  out: $OUT  cache: $CACHE"
