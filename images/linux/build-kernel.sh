#!/bin/bash
# build-kernel.sh TARBALL WORKDIR OUTDIR
#
# Builds the govmd test kernel from Debian's linux-source tarball:
# unpack into WORKDIR (deleted first), apply patches/*.patch, tinyconfig +
# config.fragment + olddefconfig, check the fragment held, make vmlinux and
# bzImage. Writes OUTDIR/{vmlinux,bzImage,config}. Called by images/build.sh.
set -euo pipefail
tarball=$1 work=$2 out=$3
here=$(cd "$(dirname "$0")" && pwd)

# reproducible build metadata (SOURCE_DATE_EPOCH comes from build.sh)
: "${SOURCE_DATE_EPOCH:=1704067200}"
export KBUILD_BUILD_TIMESTAMP="$(date -u -d "@$SOURCE_DATE_EPOCH" '+%Y-%m-%d %H:%M:%S UTC')"
export KBUILD_BUILD_USER=govmd KBUILD_BUILD_HOST=govmd KBUILD_BUILD_VERSION=1
export LC_ALL=C TZ=UTC

rm -rf "$work"
mkdir -p "$work"
echo "kernel: unpacking $(basename "$tarball")"
tar -C "$work" -xf "$tarball"
src=$(echo "$work"/linux-source-*)
[ -f "$src/Makefile" ] || { echo "build-kernel: no kernel tree in $tarball" >&2; exit 1; }
cd "$src"

for p in "$here"/patches/*.patch; do
	if patch -p1 -R -s -f --dry-run < "$p" > /dev/null 2>&1; then
		echo "kernel: $(basename "$p") already applied"
		continue
	fi
	echo "kernel: applying $(basename "$p")"
	patch -p1 -s -f < "$p"
done

make -s tinyconfig > /dev/null
"$here/kconfig.sh" apply "$here/config.fragment"
make -s olddefconfig 2>&1 | grep -v 'changes choice state' || true
if ! "$here/kconfig.sh" verify "$here/config.fragment"; then
	echo "build-kernel: .config does not match images/linux/config.fragment (see above)" >&2
	exit 1
fi

echo "kernel: make -j$(nproc) vmlinux bzImage (several minutes)"
if ! make -j"$(nproc)" vmlinux bzImage > "$work/make.log" 2>&1; then
	tail -40 "$work/make.log" >&2
	echo "build-kernel: make failed; full log: $work/make.log" >&2
	exit 1
fi
grep -iE '^[^ ]*warning' "$work/make.log" | head -20 || true

# vmlinux must be bootable through its PVH entry point
readelf -n vmlinux | grep -q 'Xen.*0x00000012' ||
	{ echo "build-kernel: vmlinux has no PVH (XEN_ELFNOTE_PHYS32_ENTRY) note" >&2; exit 1; }

mkdir -p "$out"
cp vmlinux "$out/vmlinux"
cp arch/x86/boot/bzImage "$out/bzImage"
cp .config "$out/config"
strings vmlinux | grep -m1 '^Linux version ' > "$out/version" || true
