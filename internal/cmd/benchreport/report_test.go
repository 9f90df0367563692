package main

import (
	"fmt"
	"math"
	"strings"
	"testing"
)

func TestParseLine(t *testing.T) {
	tests := []struct {
		line string
		ok   bool
		name string
		want map[string]float64
	}{
		{"BenchmarkLoop/tso-64KiB/device-2  \t  101833\t     29554 ns/op\t         0 %lost\t        17.66 Gbit/s\t    33680 pps",
			true, "BenchmarkLoop/tso-64KiB/device", map[string]float64{"ns/op": 29554, "%lost": 0, "Gbit/s": 17.66, "pps": 33680}},
		{"BenchmarkIO/seq-read-4k/qd32-16   485504  2990 ns/op  1369.73 MB/s  334407 IOPS  0 B/op  0 allocs/op",
			true, "BenchmarkIO/seq-read-4k/qd32", map[string]float64{"ns/op": 2990, "MB/s": 1369.73, "IOPS": 334407, "B/op": 0, "allocs/op": 0}},
		{"BenchmarkIO/seq-read-4k/qd1 100 5 ns/op", true, "BenchmarkIO/seq-read-4k/qd1", map[string]float64{"ns/op": 5}}, // GOMAXPROCS=1: no suffix
		{"BenchmarkLoop/64B/device-2", false, "", nil},
		{"BenchmarkX-2 12 3 ns/op 4", false, "", nil},
		{"BenchmarkX-2 many 3 ns/op", false, "", nil},
		{"BenchmarkX-2 12 fast ns/op", false, "", nil},
		{"--- BENCH: BenchmarkLoop/64B/device-2", false, "", nil},
		{"goos: linux", false, "", nil},
		{"PASS", false, "", nil},
	}
	for _, tc := range tests {
		r, ok := parseLine(tc.line)
		if ok != tc.ok {
			t.Errorf("parseLine(%q) ok = %v", tc.line, ok)
			continue
		}
		if !ok {
			continue
		}
		if r.Name != tc.name || fmt.Sprint(r.Metrics) != fmt.Sprint(tc.want) {
			t.Errorf("parseLine(%q) = %q %v, want %q %v", tc.line, r.Name, r.Metrics, tc.name, tc.want)
		}
	}
}

func TestSummarize(t *testing.T) {
	tests := []struct {
		in   []float64
		want Stats
	}{
		{[]float64{3, 1, 2}, Stats{Median: 2, Min: 1, Max: 3, N: 3}},
		{[]float64{4, 1, 3, 2}, Stats{Median: 2.5, Min: 1, Max: 4, N: 4}},
		{[]float64{math.NaN(), 5, math.Inf(1)}, Stats{Median: 5, Min: 5, Max: 5, N: 1}},
	}
	for _, tc := range tests {
		if got := Summarize(tc.in); got != tc.want {
			t.Errorf("Summarize(%v) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
	if s := Summarize(nil); s.N != 0 || !math.IsNaN(s.Median) {
		t.Errorf("Summarize(nil) = %+v", s)
	}
}

// output builds go test -bench output: one block per round with the
// given Gbit/s for TSO device and raw and MTU device.
func output(rounds [][3]float64) string {
	var b strings.Builder
	for _, r := range rounds {
		b.WriteString("goos: linux\ngoarch: amd64\n")
		fmt.Fprintf(&b, "BenchmarkLoop/tso-64KiB/device-2 100 1 ns/op %g Gbit/s 1 cpus %g pps 0 %%lost\n", r[0], r[0]*1e3)
		fmt.Fprintf(&b, "BenchmarkLoop/tso-64KiB/raw-2 100 1 ns/op %g Gbit/s 1 cpus %g pps 0 %%lost\n", r[1], r[1]*1e3)
		fmt.Fprintf(&b, "BenchmarkLoop/mtu-no-offload/device-2 100 1 ns/op %g Gbit/s 1 cpus 5 pps\n", r[2])
		b.WriteString("PASS\n")
	}
	return b.String()
}

func TestRatiosPairRounds(t *testing.T) {
	rs := Results{}
	if err := Parse(strings.NewReader(output([][3]float64{{9, 10, 1}, {16, 20, 2}, {30, 30, 3}})), rs); err != nil {
		t.Fatal(err)
	}
	got := rs.Ratios("BenchmarkLoop/tso-64KiB/device", "BenchmarkLoop/tso-64KiB/raw", "Gbit/s")
	if fmt.Sprint(got) != "[0.9 0.8 1]" {
		t.Fatalf("ratios %v, want [0.9 0.8 1]", got)
	}
	// The median of the ratios, not the ratio of the medians (16/20).
	if s := Summarize(got); s.Median != 0.9 {
		t.Fatalf("median ratio %v", s.Median)
	}
}

func TestRenderVerdicts(t *testing.T) {
	in := Info{Date: "d", CPUs: 2, Busy: math.NaN()}
	tests := []struct {
		name   string
		rounds [][3]float64
		want   []string
	}{
		{"pass", [][3]float64{{27, 30, 2}, {28, 30, 2.5}, {29, 31, 2.6}},
			[]string{"0.93x (0.90-0.94) | **PASS**", "11.20x (11.15-13.50) | **PASS**"}},
		{"miss", [][3]float64{{20, 30, 3}, {21, 30, 3}, {22, 31, 1}},
			[]string{"0.70x (0.67-0.71) | **MISS**", "7.00x (6.67-22.00) | **MISS**", "The TSO target is **missed**"}},
		{"not run", nil, []string{"not run | **NOT RUN**"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rs := Results{}
			if err := Parse(strings.NewReader(output(tc.rounds)), rs); err != nil {
				t.Fatal(err)
			}
			doc := Render(rs, in, "")
			for _, w := range tc.want {
				if !strings.Contains(doc, w) {
					t.Errorf("report lacks %q:\n%s", w, doc)
				}
			}
			if !strings.HasSuffix(doc, kvmPlaceholder) {
				t.Error("report does not end with the KVM placeholder")
			}
		})
	}
}

func TestKVMSectionKept(t *testing.T) {
	kvm := kvmHeading + "\n\n| boot | 1.2 s |\n"
	old := "# Benchmarks\n\nold numbers\n\n" + kvm
	tail := SplitTail(old)
	if tail != kvm {
		t.Fatalf("SplitTail = %q, want %q", tail, kvm)
	}
	doc := Render(Results{}, Info{Busy: math.NaN()}, tail)
	if !strings.HasSuffix(doc, "\n"+kvm) || strings.Contains(doc, "old numbers") || strings.Contains(doc, "*Placeholder.*") {
		t.Fatalf("KVM section not kept as is:\n%s", doc)
	}
	if SplitTail("# Benchmarks\n\nno such section\n") != "" {
		t.Fatal("SplitTail found a section in a report without one")
	}
}

func TestParseCPULine(t *testing.T) {
	stat := "cpu  100 5 50 800 20 1 2 3 40 0\ncpu0 50 2 25 400 10 0 1 1 20 0\nintr 1\n"
	total, idle, ok := parseCPULine(stat)
	if !ok || total != 981 || idle != 820 {
		t.Fatalf("parseCPULine = %d, %d, %v; want 981, 820, true (guest time not counted twice)", total, idle, ok)
	}
	if _, _, ok := parseCPULine("intr 1\n"); ok {
		t.Fatal("parsed a /proc/stat without a cpu line")
	}
}

func TestRenderBlk(t *testing.T) {
	out := `BenchmarkIO/seq-read-4k/qd1-2 10 1 ns/op 50000 IOPS 0.5 cpus
BenchmarkIO/seq-read-4k/qd32-2 10 1 ns/op 200000 IOPS 1 cpus
BenchmarkIO/seq-read-4k/raw-2 10 1 ns/op 400000 IOPS 1 cpus
`
	rs := Results{}
	if err := Parse(strings.NewReader(out), rs); err != nil {
		t.Fatal(err)
	}
	doc := Render(rs, Info{Busy: math.NaN()}, "")
	for _, w := range []string{
		"| seq-read-4k | 50 | 200 | 400 | 0.12x (0.12-0.12) | 0.50x (0.50-0.50) |",
		"| seq-read-4k | 0.50 | 1.00 | 1.00 | 10.00 | 5.00 | 2.50 |",
		"| rand-read-4k | - | - | - | - | - |",
	} {
		if !strings.Contains(doc, w) {
			t.Errorf("report lacks %q:\n%s", w, doc)
		}
	}
}

func TestRenderKVM(t *testing.T) {
	out := `goos: linux
BenchmarkBootReady/govmd-2         	       5	         0 ns/op	         5.000 boots	         0 hangs	        30.5 MiB-peak-rss	         3.200 s-guest-uptime	        12.00 s-to-ready
BenchmarkBootReady/qemu-2          	       5	         0 ns/op	         3.000 boots	         2.000 hangs	       120.0 MiB-peak-rss	         3.500 s-guest-uptime	        15.00 s-to-ready
BenchmarkGuestBlk/govmd-2          	       5	         0 ns/op	         0 hangs	         8.000 kIOPS-rand-read	        10.00 kIOPS-seq-read	         7.000 kIOPS-rand-write	         9.000 kIOPS-seq-write	         5.000 runs-seq-read	         3.000 runs-rand-write
BenchmarkGuestBlk/qemu-2           	       5	         0 ns/op	         1.000 hangs	         4.000 kIOPS-rand-read	         5.000 kIOPS-seq-read	         3.500 kIOPS-rand-write	         4.500 kIOPS-seq-write	         1.500 irqs/req-seq-read	        12.50 exits/req-seq-read
BenchmarkGuestNet/govmd-2          	       5	         0 ns/op	    262144 bytes	         0 hangs	         0.2500 irqs/pkt-rx	         0.5000 irqs/pkt-tx	         3.000 exits/pkt-rx	         4.000 exits/pkt-tx
BenchmarkGuestNet/qemu-2           	       5	         0 ns/op	    262144 bytes	         0 hangs	         0.3000 irqs/pkt-rx	         0.6000 irqs/pkt-tx	         5.000 exits/pkt-rx	         6.000 exits/pkt-tx
PASS
`
	rs := Results{}
	if err := Parse(strings.NewReader(out), rs); err != nil {
		t.Fatal(err)
	}
	doc := RenderKVM(rs, KVMInfo{Date: "d", Where: "w", Profile: "pvm"})
	for _, want := range []string{
		kvmMarker("pvm") + "\n### PVM:",
		"| seq-read | - | 1.50 | - | 12.5 |",
		"| into the guest (rx) | 0.25 | 0.30 | 3.0 | 5.0 |",
		"| out of the guest (tx) | 0.50 | 0.60 | 4.0 | 6.0 |",
		"| govmd | 12.00 | 3.20 | 30.5 | 5 | 0 |",
		"| QEMU | 15.00 | 3.50 | 120.0 | 3 | 2 |",
		"| wall time to GOVMD-READY | 0.80x |",
		"| peak RSS | 0.25x |",
		"| seq-read | 10.00 | 5 | 5.00 | - | 2.00x |",
		"| rand-write | 7.00 | 3 | 3.50 | - | 2.00x |",
		"Runs that hung or crashed: govmd 0, QEMU 1.",
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("KVM section lacks %q:\n%s", want, doc)
		}
	}
	failed := `BenchmarkGuestBlk
BenchmarkGuestBlk/govmd
    bench_test.go:70: govmd: run left out: the guest did not finish in time (blk-bench incomplete: 0 of 4 patterns)
    bench_test.go:73: govmd: no run finished (4 hung or crashed)
--- FAIL: BenchmarkGuestBlk/govmd
BenchmarkGuestBlk/qemu
`
	un := Unfinished(failed)
	if len(un) != 1 || un["BenchmarkGuestBlk/govmd"] != 4 {
		t.Fatalf("Unfinished = %v", un)
	}
	rs2 := Results{}
	if err := Parse(strings.NewReader("BenchmarkGuestBlk/qemu-2 5 0 ns/op 0 hangs 4.000 kIOPS-seq-read\n"), rs2); err != nil {
		t.Fatal(err)
	}
	if doc2 := RenderKVM(rs2, KVMInfo{Unfinished: un}); !strings.Contains(doc2, "Runs that hung or crashed: govmd 4 (no run finished), QEMU 0.") {
		t.Errorf("unfinished govmd not reported:\n%s", doc2)
	}
	// The block replaces a section without blocks, and a later run on
	// another profile keeps it; a run on the same profile replaces it.
	whole := ReplaceKVM("# Benchmarks\n\nnet\n\n"+kvmHeading+"\n\nold\n", "pvm", doc)
	if !strings.HasPrefix(whole, "# Benchmarks\n\nnet\n\n"+kvmHeading) || strings.Contains(whole, "old") || !strings.Contains(whole, doc) {
		t.Errorf("ReplaceKVM:\n%s", whole)
	}
	tcg := RenderKVM(rs2, KVMInfo{Date: "d2", Where: "w2", Profile: "tcg"})
	both := ReplaceKVM(whole, "tcg", tcg)
	if !strings.Contains(both, strings.TrimRight(doc, "\n")) || !strings.Contains(both, tcg) ||
		strings.Index(both, kvmMarker("pvm")) > strings.Index(both, kvmMarker("tcg")) {
		t.Errorf("ReplaceKVM with a second profile:\n%s", both)
	}
	again := RenderKVM(rs2, KVMInfo{Date: "d3", Where: "w3", Profile: "pvm"})
	third := ReplaceKVM(both, "pvm", again)
	if strings.Contains(third, "on w.") || !strings.Contains(third, "on w3.") || !strings.Contains(third, "on w2.") ||
		strings.Count(third, kvmMarker("pvm")) != 1 {
		t.Errorf("ReplaceKVM of the same profile:\n%s", third)
	}
}

func TestRenderKVMSameCmdline(t *testing.T) {
	rs := Results{}
	in := "BenchmarkBootReady/govmd-2 5 0 ns/op 10.00 s-to-ready 9.00 s-guest-uptime\n" +
		"BenchmarkBootReady/govmd-qemuline-2 5 0 ns/op 8.00 s-to-ready 7.00 s-guest-uptime\n" +
		"BenchmarkBootReady/qemu-2 5 0 ns/op 9.00 s-to-ready 8.00 s-guest-uptime\n"
	if err := Parse(strings.NewReader(in), rs); err != nil {
		t.Fatal(err)
	}
	doc := RenderKVM(rs, KVMInfo{Profile: "pvm"})
	for _, want := range []string{
		"| govmd, QEMU's command line | 8.00 | 7.00 |",
		"| wall time to GOVMD-READY | 1.11x |",
		"| wall time to GOVMD-READY, both with QEMU's command line | 0.89x |",
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("lacks %q:\n%s", want, doc)
		}
	}
	if un := Unfinished("BenchmarkBootReady/govmd-qemuline\n    bench_test.go:73: govmd-qemuline: no run finished (3 hung or crashed)\n"); un["BenchmarkBootReady/govmd-qemuline"] != 3 {
		t.Errorf("Unfinished = %v", un)
	}
}

func TestWithin(t *testing.T) {
	noise := Summarize([]float64{0.9, 1.5, 2.1})
	for _, tc := range []struct {
		vs   []float64
		want string
	}{
		{[]float64{1.2, 1.4, 1.6}, "PASS"},
		{[]float64{2.5, 2.6, 2.7}, "PASS"}, // faster than the noise is no harm
		{[]float64{0.5, 0.6, 0.95}, "MISS"},
		{nil, "NOT RUN"},
	} {
		if _, got := within(Summarize(tc.vs), noise); got != tc.want {
			t.Errorf("within(%v) = %s, want %s", tc.vs, got, tc.want)
		}
	}
}
