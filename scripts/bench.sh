#!/bin/bash
# make bench: the virtio-net data-path and virtio-blk benchmarks, each next
# to its raw limit measured in the same run, written as ratio tables to
# docs/bench.md (internal/cmd/benchreport). Needs root (network namespaces
# and taps), not /dev/kvm. About 5 minutes on 2 CPUs.
#
# A round runs every benchmark once (-count 1), a device variant right
# before its raw peer; the report takes medians over the rounds of the
# values and of the per-round ratios.
#
#   BENCH_ROUNDS    rounds (default 9)
#   BENCH_NET_TIME  -benchtime of each net benchmark (default 3s)
#   BENCH_BLK_TIME  -benchtime of each blk benchmark (default 1s)
#   BENCH_OUT       report (default docs/bench.md)
#   BENCH_HOST      0 skips the host benchmarks (their part of the report stays)
#   BENCH_KVM       0 skips the KVM section (real guests, govmd next to QEMU)
#   BENCH_KVM_RUNS  boots per VMM and benchmark (default 5)
#   BENCH_KVM_LOG   where to keep the KVM benchmarks' whole output
#   BENCH_KVM_BLK_OPS  4 KiB requests per pattern in BenchmarkGuestBlk
#                   (default 4000; 200 on PVM and in nested KVM, where each
#                   costs ms and a longer nested run is likelier to stall,
#                   docs/pvm.md)
#
# The KVM section runs the e2e benchmarks BenchmarkBootReady,
# BenchmarkGuestBlk and BenchmarkGuestNet with a usable /dev/kvm (hardware
# KVM or PVM), or else inside nested KVM on QEMU TCG (scripts/nested.sh,
# docs/pvm.md), where QEMU runs too, and rewrites that host profile's block.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${BENCH_ROUNDS:-9}
net_time=${BENCH_NET_TIME:-3s}
blk_time=${BENCH_BLK_TIME:-1s}
out=${BENCH_OUT:-docs/bench.md}

if [ "$(id -u)" != 0 ]; then
	echo "bench: needs root (the net benchmarks create network namespaces and taps)" >&2
	exit 1
fi

tmp=$(mktemp -d)
# The disk image goes on tmpfs: on a disk the page cache may be reclaimed
# under the benchmark and random reads would measure the disk.
if [ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ]; then
	blkdir=$(mktemp -d -p /dev/shm govmd-bench.XXXXXX)
else
	echo "bench: /dev/shm is not tmpfs; the disk image goes to $tmp" >&2
	blkdir=$tmp
fi
trap 'rm -rf "$tmp" "$blkdir"' EXIT

go build -o "$tmp/benchreport" ./internal/cmd/benchreport
if [ "${BENCH_HOST:-1}" != 0 ]; then
	go test -c -o "$tmp/nettest.test" ./devices/net/nettest/
	go test -c -o "$tmp/blk.test" ./devices/blk/

	cp /proc/stat "$tmp/stat.start"
	load_start=$(cat /proc/loadavg)
	start=$(date +%s)
	for r in $(seq "$rounds"); do
		echo "bench: round $r of $rounds" >&2
		(cd devices/net/nettest && "$tmp/nettest.test" -test.run '^$' -test.bench '^BenchmarkLoop$' \
			-test.benchtime "$net_time" -test.count 1 -test.timeout 30m) | tee -a "$tmp/net.txt"
		(cd devices/blk && TMPDIR=$blkdir "$tmp/blk.test" -test.run '^$' -test.bench '^BenchmarkIO$' \
			-test.benchtime "$blk_time" -test.count 1 -test.timeout 30m) | tee -a "$tmp/blk.txt"
	done
	echo "bench: $rounds rounds in $(( $(date +%s) - start ))s" >&2

	"$tmp/benchreport" -o "$out" -rounds "$rounds" -net-time "$net_time" -blk-time "$blk_time" \
		-blk-fs "$(stat -f -c %T "$blkdir")" -load-start "$load_start" -stat-start "$tmp/stat.start" \
		"$tmp/net.txt" "$tmp/blk.txt"
	echo "bench: wrote $out" >&2
fi

if [ "${BENCH_KVM:-1}" != 0 ]; then
	runs=${BENCH_KVM_RUNS:-5}
	bench="-test.run=^\$ -test.bench=^(BenchmarkBootReady|BenchmarkGuestBlk|BenchmarkGuestNet|BenchmarkExecTrue|BenchmarkExecRead)\$ -test.benchtime=${runs}x -test.timeout=170m"
	if scripts/kvm-usable; then
		profile=kvm
		if [ -d /sys/module/kvm_pvm ]; then
			profile=pvm
			where="PVM (kvm_pvm on $(uname -n): every guest instruction is emulated; docs/pvm.md)"
			bench="$bench -govmd.blk-ops=${BENCH_KVM_BLK_OPS:-200}"
		else
			where="hardware KVM (/dev/kvm of $(uname -n))"
			bench="$bench -govmd.blk-ops=${BENCH_KVM_BLK_OPS:-4000}"
		fi
		(cd e2e && go test -c -o "$tmp/e2e.test" . && "$tmp/e2e.test" $bench) | tee "$tmp/kvm.txt"
	else
		profile=tcg
		where="nested KVM on QEMU TCG (no usable /dev/kvm here; docs/pvm.md)"
		bench="$bench -govmd.blk-ops=${BENCH_KVM_BLK_OPS:-200}"
		NESTED_QEMU=1 NESTED_RUN='^$' NESTED_ARGS="$bench" NESTED_NO_RETRY=1 NESTED_LOG="$tmp/kvm.txt" \
			NESTED_TIMEOUT=${NESTED_TIMEOUT:-5400} scripts/nested.sh ./e2e || echo "bench: the nested KVM run failed; see $tmp/kvm.txt" >&2
	fi
	[ -z "${BENCH_KVM_LOG:-}" ] || cp "$tmp/kvm.txt" "$BENCH_KVM_LOG"
	"$tmp/benchreport" -kvm -kvm-profile "$profile" -kvm-where "$where" -o "$out" "$tmp/kvm.txt"
	echo "bench: wrote the $profile block of the KVM section of $out" >&2
fi
