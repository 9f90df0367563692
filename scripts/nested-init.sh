#!/bin/sh
# /init of the nested-KVM test VM built by scripts/nested.sh.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
# virtiofsd's sandbox (the share tests) pivots its root, which Linux
# refuses while the root is the initramfs (rootfs, EINVAL): copy it to a
# tmpfs and switch_root there first (switch_root frees the initramfs).
if [ -z "${NESTED_SWITCHED:-}" ]; then
	mount -t proc proc /proc
	if grep -q '^rootfs / ' /proc/mounts; then
		mkdir -p /.root
		mount -t tmpfs -o mode=0755 root /.root
		for f in /*; do
			case $f in /proc | /sys | /dev) mkdir -p "/.root$f" ;; *) cp -a "$f" /.root/ ;; esac
		done
		umount /proc
		export NESTED_SWITCHED=1
		exec switch_root /.root /init
	fi
	umount /proc
fi
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mkdir -p /run/netns /var
ln -s /run /var/run
ip link set lo up
. /etc/nested.env
while read -r m args; do
	modprobe "$m" $args || echo "NESTED-MODULE $m failed"
done < /etc/modules
if [ -c /dev/kvm ]; then
	echo "NESTED-KVM ok npt=$(cat /sys/module/kvm_amd/parameters/npt) vgif=$(cat /sys/module/kvm_amd/parameters/vgif) avic=$(cat /sys/module/kvm_amd/parameters/avic)"
else
	echo "NESTED-KVM missing"
fi
export GOVMD_BIN=/govmd GOVMD_IMAGES=/images GOVMD_E2E_REQUIRE=1 GOVMD_E2E GOVMD_E2E_CONSOLE=1 GOVMD_E2E_CMDLINE
run=
[ -n "$NESTED_RUN" ] && run="-test.run=$NESTED_RUN"
for t in /tests/*.test; do
	name=${t##*/}; name=${name%.test}
	t0=$(cut -d' ' -f1 /proc/uptime)
	echo "NESTED-START $name uptime=$t0"
	mkdir -p "/tmp/$name"
	(cd "/tmp/$name" && "$t" -test.v -test.count=1 -test.timeout=45m $run $NESTED_ARGS 2>&1)
	rc=$?
	echo "NESTED-TEST $name rc=$rc start=$t0 end=$(cut -d' ' -f1 /proc/uptime)"
done
echo "NESTED-DONE uptime=$(cut -d' ' -f1 /proc/uptime)"
poweroff -f
