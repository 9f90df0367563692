#!/bin/bash
# nested.sh: run govmd's KVM tests inside a QEMU TCG virtual machine whose
# emulated CPU has AMD SVM, for machines without a usable /dev/kvm (see
# docs/pvm.md, "Nested KVM on TCG").
#
#   scripts/nested.sh [PKG...]        default: ./kvm ./vmm ./e2e
#
# The VM (L1) runs Debian's stock amd64 kernel with kvm_amd, so its
# /dev/kvm is Linux's real SVM KVM (nested paging on), emulated by QEMU
# underneath. Into its initramfs go busybox, the kernel modules the tests
# need, iproute2/ethtool/ping, the govmd binary, the test binaries of PKG
# (built with go test -c) and images/out. Its /init runs each test binary
# with -test.v and prints "NESTED-TEST <name> rc=<n>"; this script fails
# unless every binary ran and passed.
#
# Environment: GOVMD_E2E=full (the full e2e matrix), NESTED_RUN (a
# -test.run pattern), NESTED_TIMEOUT (seconds, default 3000), NESTED_MEM
# (MiB, default 3072), NESTED_LOG (the console log, default
# $GOVMD_CACHE/nested/last.log), NESTED_QEMU=1 (put QEMU in the VM too),
# NESTED_ARGS (more flags for every test binary, e.g. -test.bench=.).
#
# L1 gets one vCPU: with two, QEMU 7.2's multi-threaded TCG can keep
# executing a stale translation of an int3 that Linux's text patching
# already removed (seen when KVM flips its static keys), and L1 livelocks.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
CACHE=${GOVMD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/govmd}/nested
LOG=${NESTED_LOG:-$CACHE/last.log}
TIMEOUT=${NESTED_TIMEOUT:-3000}
MEM=${NESTED_MEM:-3072}
SMP=${NESTED_SMP:-2}
TCGTHREAD=${NESTED_TCG_THREAD:-single}
PKGS=("$@")
[ ${#PKGS[@]} -gt 0 ] || PKGS=(./kvm ./vmm ./e2e)
log() { printf 'nested: %s\n' "$*"; }
die() { printf 'nested: error: %s\n' "$*" >&2; exit 1; }

command -v qemu-system-x86_64 > /dev/null || die "qemu-system-x86_64 missing (make deps)"
[ -x /bin/busybox ] || die "/bin/busybox missing (busybox-static; make deps)"
[ -f images/out/linux/vmlinux ] || die "images/out missing (make images)"
mkdir -p "$CACHE"

# --- the L1 kernel: Debian's current linux-image-amd64 target, cached.
KPKG=$(apt-cache depends linux-image-amd64 2> /dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -1)
[ -n "$KPKG" ] || die "cannot resolve linux-image-amd64 (apt-get update?)"
KVER=${KPKG#linux-image-}
KROOT=$CACHE/$KPKG
if [ ! -f "$KROOT/.complete" ]; then
	log "downloading $KPKG"
	rm -rf "$KROOT" "$KROOT.tmp"
	mkdir -p "$KROOT.tmp"
	(cd "$KROOT.tmp" && apt-get download -qq -o APT::Sandbox::User=root "$KPKG" && dpkg-deb -x ./*.deb root && rm -f ./*.deb)
	depmod -b "$KROOT.tmp/root" "$KVER"
	touch "$KROOT.tmp/.complete"
	mv -T "$KROOT.tmp" "$KROOT"
fi
KDIR=$KROOT/root
VMLINUZ=$KDIR/boot/vmlinuz-$KVER

# --- the initramfs.
W=$(mktemp -d "$CACHE/.work-XXXXXX")
trap 'rm -rf "$W"' EXIT
R=$W/root
mkdir -p "$R"/{bin,sbin,proc,sys,dev,tmp,run,etc,tests,images/linux,lib/modules/"$KVER"}
cp /bin/busybox "$R/bin/busybox"
for a in $("$R/bin/busybox" --list); do [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"; done

MODS="kvm_amd tun veth bridge 8021q xfrm_user nfnetlink sch_ingress cls_bpf"
for m in $(for n in $MODS; do modprobe -d "$KDIR" -S "$KVER" --show-depends "$n"; done | awk '$1 == "insmod" { print $2 }' | sort -u); do
	rel=${m#"$KDIR"/lib/modules/"$KVER"/}
	mkdir -p "$R/lib/modules/$KVER/$(dirname "$rel")"
	cp "$m" "$R/lib/modules/$KVER/$rel"
done
for f in "$KDIR/lib/modules/$KVER"/modules.{dep,dep.bin,alias,alias.bin,symbols,symbols.bin,builtin,builtin.bin,order}; do
	[ -f "$f" ] && cp "$f" "$R/lib/modules/$KVER/"
done
echo "$MODS" > "$R/etc/modules"

# Host tools the tests run, replacing busybox's applets of the same name
# (dynamically linked: their libraries come too).
mkdir -p "$R/usr/sbin" "$R/usr/bin" "$R/opt/host"
for name in ip ethtool ping; do
	b=$(PATH=$PATH:/usr/sbin:/sbin command -v "$name" || true)
	[ -n "$b" ] || die "$name missing on the host (make deps)"
	b=$(readlink -f "$b")
	cp "$b" "$R/opt/host/$name"
	for l in $(ldd "$b" | grep -o '/[^ ]*'); do
		mkdir -p "$R$(dirname "$l")"
		cp -L "$l" "$R$l"
	done
	for d in bin sbin usr/bin usr/sbin; do ln -sf "/opt/host/$name" "$R/$d/$name"; done
done

# QEMU, for the benchmarks that compare govmd with it (NESTED_QEMU=1).
if [ -n "${NESTED_QEMU:-}" ]; then
	q=$(readlink -f "$(command -v qemu-system-x86_64)")
	mkdir -p "$R$(dirname "$q")" "$R/usr/share/qemu"
	cp "$q" "$R/usr/bin/qemu-system-x86_64"
	for l in $(ldd "$q" | grep -o '/[^ ]*'); do
		mkdir -p "$R$(dirname "$l")"
		cp -L "$l" "$R$l"
	done
	for f in qboot.rom pvh.bin linuxboot_dma.bin kvmvapic.bin; do
		cp -L "/usr/share/qemu/$f" "$R/usr/share/qemu/"
	done
fi

log "building govmd and test binaries (${PKGS[*]})"
export CGO_ENABLED=0
go build -trimpath -o "$R/govmd" ./cmd/govmd
for p in "${PKGS[@]}"; do
	name=$(echo "${p#./}" | tr / _)
	go test -c -trimpath -o "$R/tests/$name.test" "$p"
done
cp images/out/linux/vmlinux images/out/linux/bzImage "$R/images/linux/"
cp images/out/initrd.cpio.gz images/out/cmdline "$R/images/"
cp scripts/nested-init.sh "$R/init"
chmod +x "$R/init"
printf 'GOVMD_E2E=%q\nNESTED_RUN=%q\nNESTED_ARGS=%q\n' "${GOVMD_E2E:-}" "${NESTED_RUN:-}" "${NESTED_ARGS:-}" > "$R/etc/nested.env"
(cd "$R" && find . | cpio -o -H newc --quiet | gzip -1) > "$W/initrd.gz"
log "initramfs $(du -h "$W/initrd.gz" | cut -f1); booting L1 ($KPKG, TCG, -cpu max, ${MEM} MiB), log in $LOG"

# --- run.
set +e
timeout "$TIMEOUT" qemu-system-x86_64 -accel tcg,thread="$TCGTHREAD" -cpu max -smp "$SMP" -m "$MEM" \
	-nographic -nic none -no-reboot -kernel "$VMLINUZ" -initrd "$W/initrd.gz" \
	-append "console=ttyS0 panic=-1 quiet loglevel=4" < /dev/null 2>&1 |
	tee "$LOG" | grep --line-buffered -E '^(=== RUN|--- |    --- |NESTED-|ok |FAIL|PASS|panic:|console |    [a-z_]+_test\.go:)' 
qrc=${PIPESTATUS[0]}
set -e
[ "$qrc" = 124 ] && die "L1 timed out after ${TIMEOUT}s (log: $LOG)"

fail=0
for p in "${PKGS[@]}"; do
	name=$(echo "${p#./}" | tr / _)
	rc=$(sed -n "s/.*NESTED-TEST $name rc=\([0-9]*\).*/\1/p" "$LOG" | tail -1)
	if [ -z "$rc" ]; then
		log "$name: did not finish (log: $LOG)"
		fail=1
	elif [ "$rc" != 0 ]; then
		log "$name: FAILED (rc=$rc)"
		fail=1
	else
		log "$name: ok"
	fi
done
grep -q 'NESTED-KVM ok' "$LOG" || { log "/dev/kvm did not work in L1 (log: $LOG)"; fail=1; }
exit $fail
