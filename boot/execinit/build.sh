#!/bin/bash
# Rebuilds the guest init of `govmd exec` from src/init.c (a .c file may
# not sit in a Go package directory without cgo):
#
#   boot/execinit/build.sh [OUTDIR]      writes OUTDIR/init-i386,
#                                        OUTDIR/init-i386.sha256 and
#                                        OUTDIR/TOOLCHAIN (default: next to
#                                        this script, the committed files)
#   boot/execinit/build.sh --toolchain   prints what TOOLCHAIN would say
#
# The init is a static i386 program built with the kernel's own nolibc
# (tools/include/nolibc of the linux-source tarball, as images/build.sh
# builds images/tools), so that it runs on every guest CPU profile
# including PVM (no x87/SSE/MMX, no 64-bit user code). The build is
# reproducible: the same toolchain (TOOLCHAIN) gives the same bytes, which
# TestInitMatchesSource checks. Needs gcc with -m32 support
# (apt-get install gcc-multilib) and the linux-source-6.1 package.
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "$0")" && pwd)
LINUX_SOURCE=linux-source-6.1
TARBALL=/usr/src/$LINUX_SOURCE.tar.xz

toolchain() {
	local v
	echo "gcc $(gcc -dumpfullversion)"
	echo "gcc --version: $(gcc --version | head -1)"
	echo "ld --version: $(ld --version | head -1)"
	for p in "$LINUX_SOURCE" linux-libc-dev; do
		v=$(dpkg-query -W -f '${Version}' "$p" 2>/dev/null) || v=missing
		echo "$p $v"
	done
}

if [ "${1:-}" = --toolchain ]; then
	toolchain
	exit 0
fi
OUT=$(mkdir -p "${1:-$HERE}" && cd "${1:-$HERE}" && pwd)
[ -r "$TARBALL" ] || { echo "build.sh: $TARBALL missing (apt-get install $LINUX_SOURCE)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tar -xJf "$TARBALL" -C "$tmp" --strip-components=3 --wildcards '*/tools/include/nolibc/*'
cp "$HERE/src/init.c" "$tmp/init.c"

# Besides images/build.sh's flags: no .comment (-fno-ident) and no build
# ID; -z noseparate-code and -z norelro keep the segments from being
# padded to pages (16 KiB otherwise, for some 6 KiB of code and data).
# Paths never reach the stripped output; the prefix map is a safeguard.
(cd "$tmp" && gcc -m32 -Os -s -static -nostdlib -fno-stack-protector -fno-asynchronous-unwind-tables \
	-mgeneral-regs-only -fno-ident -ffile-prefix-map="$tmp"=. \
	-Wl,--build-id=none -Wl,-z,noseparate-code -Wl,-z,norelro \
	-Wall -Werror -I nolibc -include nolibc.h -o init-i386 init.c -lgcc)

(cd "$tmp" && sha256sum init-i386 > init-i386.sha256)
toolchain > "$tmp/TOOLCHAIN"
for f in init-i386 init-i386.sha256 TOOLCHAIN; do
	cp "$tmp/$f" "$OUT/.$f.tmp"
	mv -f "$OUT/.$f.tmp" "$OUT/$f"
done
echo "build.sh: $OUT/init-i386: $(stat -c %s "$OUT/init-i386") bytes, sha256 $(cut -d' ' -f1 "$OUT/init-i386.sha256")"
