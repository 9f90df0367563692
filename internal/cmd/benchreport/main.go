// Command benchreport turns the go test -bench output of make bench into
// docs/bench.md: medians over the rounds, device/raw ratios per round and
// the virtio-net targets, with the machine and its load. scripts/bench.sh
// runs it; see docs/bench.md for the method.
//
// Usage:
//
//	benchreport -o docs/bench.md [-rounds N] [-net-time D] [-blk-time D]
//	    [-blk-fs NAME] [-load-start "1.0 2.0 3.0"] [-stat-start FILE] FILE...
//
// The KVM section of an existing report (from "## Guest boot and guest
// I/O (needs KVM)" to the end) is kept as it is. With -kvm, only the
// block of one host profile in that section is rewritten, from the output
// of the e2e benchmarks (BenchmarkBootReady, BenchmarkGuestBlk,
// BenchmarkGuestNet):
//
//	benchreport -kvm -kvm-profile tcg -kvm-where "nested KVM on QEMU TCG" -o docs/bench.md FILE...
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"maps"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("benchreport", flag.ContinueOnError)
	out := fs.String("o", "docs/bench.md", "report to write")
	rounds := fs.Int("rounds", 0, "rounds run (for the report)")
	netTime := fs.String("net-time", "?", "-benchtime of the net benchmarks")
	blkTime := fs.String("blk-time", "?", "-benchtime of the blk benchmarks")
	blkFS := fs.String("blk-fs", "?", "file system of the blk image")
	loadStart := fs.String("load-start", "?", "/proc/loadavg at the start")
	statStart := fs.String("stat-start", "", "copy of /proc/stat taken at the start")
	kvm := fs.Bool("kvm", false, "rewrite only the KVM section, from the e2e benchmarks in FILE...")
	kvmWhere := fs.String("kvm-where", "?", "where the KVM benchmarks ran (for the report)")
	kvmProfile := fs.String("kvm-profile", "", "the host profile of the KVM benchmarks: kvm, pvm or tcg (whose block -kvm rewrites)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *kvm {
		return runKVM(*out, *kvmWhere, *kvmProfile, fs.Args())
	}
	if fs.NArg() == 0 {
		return errors.New("no benchmark output files")
	}
	rs, _, err := parseFiles(fs.Args())
	if err != nil {
		return err
	}
	if len(rs) == 0 {
		return errors.New("no benchmark results in the input")
	}
	in := Info{
		Date:      time.Now().UTC().Format("2006-01-02 15:04 UTC"),
		CPUs:      runtime.NumCPU(),
		CPUModel:  cpuModel(),
		Kernel:    kernel(),
		Go:        runtime.Version(),
		Rounds:    *rounds,
		NetTime:   *netTime,
		BlkTime:   *blkTime,
		BlkFS:     *blkFS,
		LoadStart: loadFields(*loadStart),
		LoadEnd:   "?",
		Busy:      math.NaN(),
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		in.LoadEnd = loadFields(string(b))
	}
	if *statStart != "" {
		in.Busy = busy(*statStart, "/proc/stat")
	}
	var tail string
	if old, err := os.ReadFile(*out); err == nil {
		tail = SplitTail(string(old))
	}
	return os.WriteFile(*out, []byte(Render(rs, in, tail)), 0o644)
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

func kernel() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}

// loadFields keeps the three load averages of a /proc/loadavg line.
func loadFields(s string) string {
	f := strings.Fields(s)
	if len(f) < 3 {
		return s
	}
	return strings.Join(f[:3], " ")
}

// busy returns the fraction of CPU time not idle between two /proc/stat
// snapshots (NaN if either cannot be read).
func busy(startFile, endFile string) float64 {
	t0, i0, ok0 := cpuTimes(startFile)
	t1, i1, ok1 := cpuTimes(endFile)
	if !ok0 || !ok1 || t1 <= t0 {
		return math.NaN()
	}
	return 1 - float64(i1-i0)/float64(t1-t0)
}

// cpuTimes returns the total and idle (idle + iowait) jiffies of the "cpu"
// line of a /proc/stat file.
func cpuTimes(name string) (total, idle uint64, ok bool) {
	b, err := os.ReadFile(name)
	if err != nil {
		return 0, 0, false
	}
	return parseCPULine(string(b))
}

func parseCPULine(stat string) (total, idle uint64, ok bool) {
	for _, line := range strings.Split(stat, "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || f[0] != "cpu" {
			continue
		}
		// user nice system idle iowait irq softirq steal; guest and
		// guest_nice are already counted in user and nice.
		for i, s := range f[1:min(len(f), 9)] {
			v, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				return 0, 0, false
			}
			total += v
			if i == 3 || i == 4 { // idle, iowait
				idle += v
			}
		}
		return total, idle, true
	}
	return 0, 0, false
}

// parseFiles parses the benchmark output files into one Results and
// returns their texts too, for what Parse does not keep.
func parseFiles(names []string) (Results, [][]byte, error) {
	rs := Results{}
	var texts [][]byte
	for _, name := range names {
		b, err := os.ReadFile(name)
		if err != nil {
			return nil, nil, err
		}
		if err := Parse(bytes.NewReader(b), rs); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", name, err)
		}
		texts = append(texts, b)
	}
	return rs, texts, nil
}

// runKVM rewrites the KVM section of the report at out.
func runKVM(out, where, profile string, files []string) error {
	known := false
	for _, k := range kvmProfiles {
		known = known || k.name == profile
	}
	if !known {
		return fmt.Errorf("-kvm-profile %q: want kvm, pvm or tcg", profile)
	}
	rs, texts, err := parseFiles(files)
	if err != nil {
		return err
	}
	if len(rs) == 0 {
		return errors.New("no KVM benchmark results in the input")
	}
	old, err := os.ReadFile(out)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	unfinished := map[string]int{}
	for _, b := range texts {
		maps.Copy(unfinished, Unfinished(string(b)))
	}
	block := RenderKVM(rs, KVMInfo{Date: time.Now().UTC().Format("2006-01-02 15:04 UTC"), Where: where, Profile: profile, Unfinished: unfinished})
	return os.WriteFile(out, []byte(ReplaceKVM(string(old), profile, block)), 0o644)
}
