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
# L1 gets two vCPUs on single-threaded TCG (NESTED_SMP, NESTED_TCG_THREAD):
# with multi-threaded TCG and two vCPUs, QEMU 7.2 kept executing a stale
# translation of an int3 that Linux's text patching had already removed
# (when KVM flips its static keys) and L1 livelocked; with one vCPU, a
# 2-vCPU guest that spins waiting for its other vCPU could stall L1. L1
# boots with tsc=reliable: with its TSC marked unstable, KVM's clock for
# the nested guests jumped, and guests (govmd's and QEMU's alike) hung in
# early boot or returned from sleeps at once.
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
# One module per line, with its parameters.
{
	for m in $MODS; do
		case $m in
		kvm_amd) echo "kvm_amd ${NESTED_KVM_AMD:-}" ;;
		*) echo "$m" ;;
		esac
	done
} > "$R/etc/modules"

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

# virtiofsd, for the share tests (govmd exec --share).
if [ -x /usr/lib/qemu/virtiofsd ]; then
	mkdir -p "$R/usr/lib/qemu"
	cp /usr/lib/qemu/virtiofsd "$R/usr/lib/qemu/virtiofsd"
	for l in $(ldd /usr/lib/qemu/virtiofsd | grep -o '/[^ ]*'); do
		mkdir -p "$R$(dirname "$l")"
		cp -L "$l" "$R$l"
	done
fi

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
cp images/out/linux/vmlinux images/out/linux/bzImage images/out/linux/version "$R/images/linux/"
cp images/out/initrd.cpio images/out/cmdline images/out/cmdline-pvm "$R/images/"
# The stock Debian kernel (51 MB) only for the full matrix (TestBootDebian).
if [ "${GOVMD_E2E:-}" = full ] && [ -d images/out/debian ]; then
	cp -r images/out/debian "$R/images/"
fi
cp scripts/nested-init.sh "$R/init"
chmod +x "$R/init"
(cd "$R" && find . | cpio -o -H newc --quiet | gzip -1) > "$W/base.gz"

# boot_l1 RUN LOG: boots L1 with the test binaries' -test.run pattern RUN
# (a second cpio archive appended to the initramfs carries it) and writes
# its console to LOG. evaluate LOG: per-binary results; 0 if all passed.
boot_l1() {
	mkdir -p "$W/env/etc"
	printf 'GOVMD_E2E=%q\nNESTED_RUN=%q\nNESTED_ARGS=%q\nGOVMD_E2E_CMDLINE=%q\n' "${GOVMD_E2E:-}" "$1" "${NESTED_ARGS:-}" "${NESTED_GUEST_CMDLINE:-}" > "$W/env/etc/nested.env"
	(cd "$W/env" && find . | cpio -o -H newc --quiet | gzip -1) > "$W/env.gz"
	cat "$W/base.gz" "$W/env.gz" > "$W/initrd.gz"
	log "initramfs $(du -h "$W/initrd.gz" | cut -f1); booting L1 ($KPKG, TCG, -cpu max, ${SMP} vCPUs, ${MEM} MiB), log in $2"
	set +e
	timeout "$TIMEOUT" qemu-system-x86_64 -accel tcg,thread="$TCGTHREAD" -cpu max -smp "$SMP" -m "$MEM" \
		-nographic -nic none -no-reboot -kernel "$VMLINUZ" -initrd "$W/initrd.gz" \
		-append "console=ttyS0 panic=-1 quiet loglevel=4 tsc=reliable clocksource=tsc" < /dev/null 2>&1 |
		tee "$2" | grep --line-buffered -E '^(=== RUN|--- |    --- |NESTED-|ok |FAIL|PASS|panic:|console |    [a-z_]+_test\.go:)'
	local qrc=${PIPESTATUS[0]}
	set -e
	[ "$qrc" = 124 ] && log "L1 timed out after ${TIMEOUT}s (log: $2)"
	return 0
}

evaluate() {
	local fail=0 p name rc
	for p in "${PKGS[@]}"; do
		name=$(echo "${p#./}" | tr / _)
		rc=$(sed -n "s/.*NESTED-TEST $name rc=\([0-9]*\).*/\1/p" "$1" | tail -1)
		if [ -z "$rc" ]; then
			log "$name: did not finish (log: $1)"
			fail=1
		elif [ "$rc" != 0 ]; then
			log "$name: FAILED (rc=$rc)"
			fail=1
		else
			log "$name: ok"
		fi
	done
	grep -q 'NESTED-KVM ok' "$1" || { log "/dev/kvm did not work in L1 (log: $1)"; fail=1; }
	return $fail
}

boot_l1 "${NESTED_RUN:-}" "$LOG"
if evaluate "$LOG"; then
	exit 0
fi
# In this environment the nested guests' kernels sometimes stall or crash
# on their own (QEMU's guests more often than govmd's; see docs/pvm.md):
# the e2e helpers report that as "guest console stalled", "guest kernel
# failed" or (a TCP transfer into the guest timing out) "guest network
# stalled". What failed is then rerun in a fresh L1, up to NESTED_RETRIES
# times (default 6), and the log says so: only the failed subtests of the
# failed tests (go test -run A/B; a test without subtests runs whole),
# unless a test failed outside its subtests. Any other failure stands.
rerun_pattern() {
	local tops subs t
	tops=$(sed -n 's/^--- FAIL: \(Test[A-Za-z0-9_]*\).*/\1/p' "$1" | sort -u)
	subs=$(sed -n 's/^    --- FAIL: Test[A-Za-z0-9_]*\/\([^ ]*\) .*/\1/p' "$1" | sort -u |
		sed 's/[][\.*^$+?(){}|]/\\&/g' | paste -sd'|')
	# A test that failed outside its subtests is rerun whole.
	for t in $tops; do
		if ! grep -q "^    --- FAIL: $t/" "$1" && grep -q "^    --- [A-Z]*: $t/" "$1"; then
			subs=
		fi
	done
	[ -n "$tops" ] || return 0
	local pat="^($(echo "$tops" | paste -sd'|'))\$"
	[ -z "$subs" ] || pat="$pat/^($subs)\$"
	echo "$pat"
}

try=1
while :; do
	failed=$(rerun_pattern "$LOG")
	flakes=$(grep -c -e 'guest console stalled' -e 'guest kernel failed' -e 'guest network stalled' "$LOG" || true)
	others=$(sed -n 's/.*NESTED-TEST \([a-z_]*\) rc=\([1-9][0-9]*\).*/\1/p' "$LOG" | grep -v -x e2e || true)
	if [ -n "${NESTED_NO_RETRY:-}" ] || [ -z "$failed" ] || [ "$flakes" = 0 ] || [ -n "$others" ] ||
		[ "$try" -gt "${NESTED_RETRIES:-6}" ]; then
		exit 1
	fi
	log "retry $try after $flakes guest stall(s) or crash(es) in: $failed (previous log: $LOG.$try)"
	mv "$LOG" "$LOG.$try"
	boot_l1 "$failed" "$LOG"
	if evaluate "$LOG"; then
		log "passed on retry $try"
		exit 0
	fi
	try=$((try + 1))
done
