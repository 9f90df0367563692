#!/bin/bash
# rootfs.sh STAGE BUSYBOX_DEB
#
# Fills the directory STAGE with the test userspace: the static i386
# busybox from BUSYBOX_DEB (Debian's busybox-static:i386) with /bin/sh
# linked to it, /etc/fstab for the agent's `mount -a`, and the agent as
# /init. Device nodes (/dev/console) and /pattern are added by mkinitrd;
# images/build.sh adds the agent's tools to /bin. Called by
# images/build.sh.
set -euo pipefail
stage=$1 deb=$2
here=$(cd "$(dirname "$0")" && pwd)

x=$(mktemp -d)
trap 'rm -rf "$x"' EXIT
dpkg-deb -x "$deb" "$x"
bb=$x/bin/busybox
# ELF, 32-bit (EI_CLASS 1), e_machine 3 (i386)
[ "$(od -An -tx1 -j0 -N5 "$bb" | tr -d ' ')" = 7f454c4601 ] &&
	[ "$(od -An -tx1 -j18 -N2 "$bb" | tr -d ' ')" = 0300 ] ||
	{ echo "rootfs: $deb: bin/busybox is not an i386 ELF binary" >&2; exit 1; }

mkdir -p "$stage"/{bin,dev,proc,sys,tmp,etc,root,lib/modules}
cp "$bb" "$stage/bin/busybox"
chmod 755 "$stage/bin/busybox"
# Only /bin/sh links to busybox. Debian's busybox-static is built with
# FEATURE_SH_STANDALONE and FEATURE_PREFER_APPLETS: once /proc is mounted,
# ash and every applet that execs (setsid, xargs, env, timeout...) run
# applets through /proc/self/exe without symlinks. One symlink per applet
# (~400) cost 12 s of initramfs unpacking in the emulated guest.
ln -sf busybox "$stage/bin/sh"
cat > "$stage/etc/fstab" <<'EOF'
proc     /proc proc     defaults 0 0
sysfs    /sys  sysfs    defaults 0 0
devtmpfs /dev  devtmpfs defaults 0 0
tmpfs    /tmp  tmpfs    defaults 0 0
EOF
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$stage/etc/passwd"
printf 'root:x:0:\n' > "$stage/etc/group"
install -m 755 "$here/agent/init" "$stage/init"

