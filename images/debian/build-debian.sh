#!/bin/bash
# build-debian.sh KERNEL_DEB BUSYBOX_DEB LINUX_SOURCE_TARBALL MKINITRD WORK OUT
#
# The stock Debian cloud kernel as a second test guest: OUT/vmlinuz (the
# package's bzImage), OUT/vmlinux (ELF, extracted with the kernel tree's
# scripts/extract-vmlinux) and OUT/initrd.cpio.gz (the same busybox + agent
# as the main initrd, plus the virtio modules listed in debian/modules and
# their dependencies, loaded by the agent from /lib/modules/load-order).
# Called by images/build.sh.
set -euo pipefail
kdeb=$1 bbdeb=$2 tarball=$3 mkinitrd=$4 work=$5 out=$6
here=$(cd "$(dirname "$0")" && pwd)

rm -rf "$work"
mkdir -p "$work/pkg" "$out"
dpkg-deb -x "$kdeb" "$work/pkg"
vmlinuz=$(ls "$work"/pkg/boot/vmlinuz-*)
kver=${vmlinuz##*/vmlinuz-}
cp "$vmlinuz" "$out/vmlinuz"
echo "$kver" > "$out/version"

# ELF vmlinux (has the PVH note) from the bzImage
tar -xJf "$tarball" -O --wildcards '*/scripts/extract-vmlinux' > "$work/extract-vmlinux"
chmod +x "$work/extract-vmlinux"
"$work/extract-vmlinux" "$out/vmlinuz" > "$out/vmlinux"
readelf -h "$out/vmlinux" > /dev/null ||
	{ echo "build-debian: extract-vmlinux gave no ELF" >&2; exit 1; }

# modules: the wanted ones and their dependencies, dependencies first
mods=$work/pkg/lib/modules/$kver
depmod -b "$work/pkg" "$kver"
declare -A path=() done=()
while read -r line; do
	m=${line%%:*}; b=${m##*/}; b=${b%.ko*}
	path[$b]=$m
	path[${b//-/_}]=$m
done < "$mods/modules.dep"
builtin=" $(sed 's|.*/||; s|\.ko.*||' "$mods/modules.builtin" | tr '\n-' ' _') "
order=()
add() { # add NAME: its dependencies, then itself
	local n=${1//-/_} m d
	[ -z "${done[$n]:-}" ] || return 0
	done[$n]=1
	if [[ $builtin == *" $n "* ]]; then return 0; fi
	m=${path[$n]:-}
	[ -n "$m" ] || { echo "build-debian: module $n not in $kver" >&2; exit 1; }
	for d in $(modinfo -b "$work/pkg" -k "$kver" -F depends "$n" | tr ',' ' '); do
		add "$d"
	done
	order+=("$m")
}
for n in $(sed 's/#.*//' "$here/modules"); do add "$n"; done

stage=$work/stage
"$here/../rootfs.sh" "$stage" "$bbdeb"
: > "$stage/lib/modules/load-order"
for m in "${order[@]}"; do
	f=${m##*/}
	case $f in
	*.ko) cp "$mods/$m" "$stage/lib/modules/$f" ;;
	*.ko.xz) xz -dc "$mods/$m" > "$stage/lib/modules/${f%.xz}"; f=${f%.xz} ;;
	*.ko.zst) zstd -qdc "$mods/$m" > "$stage/lib/modules/${f%.zst}"; f=${f%.zst} ;;
	*) echo "build-debian: $m: unknown module compression" >&2; exit 1 ;;
	esac
	echo "$f" >> "$stage/lib/modules/load-order"
done
cp "$stage/lib/modules/load-order" "$out/modules.load-order"
# the same modules as host files, for govmd exec --module
mkdir -p "$out/modules"
cp "$stage"/lib/modules/*.ko "$out/modules/"
"$mkinitrd" -root "$stage" -o "$out/initrd.cpio" -gz "$out/initrd.cpio.gz" \
	-dev /dev/console:c:5:1:0600 -pattern /pattern:65511
