package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/govmd/govmd/internal/netns"
)

// BenchmarkBootReady boots the test kernel (PVH vmlinux, 2 vCPUs, 256 MiB)
// to the agent's GOVMD-READY line with govmd and with QEMU on the same
// KVM, kernel, initramfs and command line, and reports the median wall
// time to GOVMD-READY, the median guest uptime at that line and the median
// peak RSS of the VMM process. QEMU runs with qboot (its fastest firmware
// for a direct kernel boot) and -nodefaults.
func BenchmarkBootReady(b *testing.B) {
	requireKVM(b)
	vmlinux := image(b, "linux/vmlinux")
	initrd := image(b, "initrd.cpio")
	line := cmdline(b, "govmd.test=ready")
	govmdArgs := func(line string) []string {
		return []string{govmd(b), "run", "--kernel", vmlinux, "--initrd", initrd, "--cmdline", line,
			"--cpus", "2", "--memory", "256M", "--log-level", "warn", "--rng=off"}
	}
	vmms := map[string][]string{
		"govmd": govmdArgs(line),
		"qemu":  append([]string{"qemu-system-x86_64"}, qemuArgs(vmlinux, initrd, line)...),
	}
	// Where QEMU's guests need more on the command line (acpi=off on
	// PVM), govmd also boots with exactly QEMU's line: the ratio of the
	// two VMMs on the same guest work, next to govmd's default.
	if extra := profile().QEMUAppend; extra != "" {
		vmms["govmd-qemuline"] = govmdArgs(line + " " + extra)
	}
	eachVMM(b, vmms, func(b *testing.B, name string, argv []string) {
		var wall, uptime, rss []float64
		hangs, good := benchRuns(b, name, func() error {
			w, u, r, err := bootOnce(argv)
			if err == nil {
				wall, uptime, rss = append(wall, w), append(uptime, u), append(rss, r)
			}
			return err
		})
		if good == 0 {
			noRunFinished(b, name, hangs)
		}
		b.ReportMetric(median(wall), "s-to-ready")
		b.ReportMetric(median(uptime), "s-guest-uptime")
		b.ReportMetric(median(rss), "MiB-peak-rss")
		b.ReportMetric(float64(len(wall)), "boots")
		b.ReportMetric(float64(hangs), "hangs")
		b.ReportMetric(0, "ns/op")
	})
}

// benchSpareRuns is the least number of runs a benchmark may leave out
// (hung or crashed guests) before it stops short of b.N good ones.
const benchSpareRuns = 6

// benchRuns calls once until it returned nil b.N times, and returns how
// many runs it left out and how many finished: a run whose guest hung or
// crashed (errHang, errCrash; see docs/pvm.md: nested guests stall now and
// then) is logged and repeated, at most max(benchSpareRuns, b.N) times.
// Any other error ends the benchmark.
func benchRuns(b *testing.B, name string, once func() error) (left, good int) {
	for good < b.N {
		err := once()
		switch {
		case errors.Is(err, errHang) || errors.Is(err, errCrash):
			left++
			b.Logf("%s: run left out: %v", name, err)
			if left > max(benchSpareRuns, b.N) {
				return left, good
			}
		case err != nil:
			b.Fatalf("%s: %v", name, err)
		default:
			good++
		}
	}
	return left, good
}

// noRunFinished fails a benchmark that has no figures after left runs
// were left out. benchreport -kvm reads this line (Unfinished) to show the
// count in docs/bench.md, so its wording is part of that contract.
func noRunFinished(b *testing.B, name string, left int) {
	b.Helper()
	b.Fatalf("%s: no run finished (%d hung or crashed)", name, left)
}

// qbootROM returns QEMU's qboot firmware path.
func qbootROM() string {
	for _, p := range []string{"/usr/share/qemu/qboot.rom", "/usr/share/seabios/qboot.rom"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "qboot.rom"
}

var readyRe = regexp.MustCompile(`GOVMD-READY uptime=([0-9.]+)`)

// A benchmark boot that takes longer than the profile's Boot, or whose
// guest prints nothing for its Silence, counts as hung and is left out of
// the medians (and reported); a BenchmarkGuestBlk run (boot and four
// patterns) has blkBenchTimeout.
func blkBenchTimeout() time.Duration { p := profile(); return p.Boot + 4*p.Step }

var errHang = errors.New("the guest did not finish in time")

// errCrash marks a run in which the guest kernel failed (its console
// matched crashRe: a panic, oops or stall) before printing what the
// benchmark waits for. In nested KVM on TCG guests crash now and then
// (docs/pvm.md); such a run is counted with the hung ones and left out,
// with its stderr logged. Any other failure ends the benchmark.
var errCrash = errors.New("the guest ended early")

// guestRun is what runGuest saw of one VMM process.
type guestRun struct {
	exit    error  // from Wait
	hung    bool   // killed: over its time limit or silent for benchSilence
	crashed bool   // a console line matched crashRe
	stderr  string // the VMM's
	maxRSS  float64
	vmm     string // argv[0]'s base name
	lines   int    // console lines read
}

// runGuest runs argv until it exits, is over limit or its console is
// silent for the profile's Silence, and calls line for every console line
// with the time it was read.
func runGuest(argv []string, limit time.Duration, line func(now time.Time, s string)) guestRun {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err == nil {
		err = cmd.Start()
	}
	if err != nil {
		return guestRun{exit: err, vmm: filepath.Base(argv[0])}
	}
	lines := make(chan string, 64)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	r := guestRun{vmm: filepath.Base(argv[0])}
	quiet := profile().Silence
	silence := time.NewTimer(quiet)
	defer silence.Stop()
	for done := false; !done; {
		select {
		case l, ok := <-lines:
			if !ok {
				done = true
				break
			}
			line(time.Now(), l)
			r.lines++
			r.crashed = r.crashed || crashRe.MatchString(l)
			silence.Reset(quiet)
		case <-silence.C:
			r.hung = true
			cancel()
		}
	}
	r.exit = cmd.Wait()
	r.hung = r.hung || ctx.Err() != nil
	r.stderr = stderr.String()
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		r.maxRSS = float64(ru.Maxrss) / 1024
	}
	return r
}

// failure returns the error for a run that did not produce what the
// benchmark needs (what): errHang, errCrash or a plain error.
func (r guestRun) failure(what string) error {
	switch {
	case r.lines == 0 && r.exit != nil && !r.hung:
		// The VMM refused to run (QEMU with a CPU the host's KVM
		// cannot give, say): one line that says so, not a hang.
		first, _, _ := strings.Cut(strings.TrimSpace(r.stderr), "\n")
		return fmt.Errorf("%s did not start a guest (%v): %s", r.vmm, r.exit, first)
	case r.hung:
		return fmt.Errorf("%w (%s)", errHang, what)
	case r.crashed:
		return fmt.Errorf("%w: %s (exit %v)\n%s", errCrash, what, r.exit, r.stderr)
	}
	return fmt.Errorf("%s (exit %v)\n%s", what, r.exit, r.stderr)
}

// bootOnce runs one VMM until it exits and returns the seconds from start
// to the GOVMD-READY line, the guest's uptime at that line and the
// process's peak RSS in MiB.
func bootOnce(argv []string) (wall, uptime, rssMiB float64, err error) {
	start := time.Now()
	found := false
	r := runGuest(argv, profile().Boot, func(now time.Time, l string) {
		if m := readyRe.FindStringSubmatch(l); m != nil && !found {
			wall = now.Sub(start).Seconds()
			fmt.Sscan(m[1], &uptime)
			found = true
		}
	})
	if r.hung || !found {
		return 0, 0, 0, r.failure("no GOVMD-READY")
	}
	return wall, uptime, r.maxRSS, nil
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

var benchLineRe = regexp.MustCompile(`GOVMD-BENCH (begin|end) (\S+)`)
var blkbenchRe = regexp.MustCompile(`GOVMD-RESULT blkbench\.(\S+)\.ops=([0-9]+) blkbench\.\S+\.us=([0-9]+)`)
var blkIRQRe = regexp.MustCompile(`GOVMD-RESULT blkbench\.(\S+)\.irqs=([0-9]+)`)

// blkOps is the number of requests per pattern in BenchmarkGuestBlk; in
// nested KVM on TCG every request costs milliseconds, and scripts/bench.sh
// passes a smaller number there.
var blkOps = flag.Int("govmd.blk-ops", 4000, "BenchmarkGuestBlk: 4 KiB requests per pattern")

// BenchmarkGuestBlk runs the agent's blk-bench step (-govmd.blk-ops 4 KiB
// O_DIRECT requests at queue depth 1: sequential and random reads and
// writes over the first 32 MiB) in the test guest on a 64 MiB raw image,
// with govmd's virtio-blk and with QEMU's (virtio-blk-pci,
// cache=writeback, the same page-cache path govmd's pread/pwrite take),
// and reports kIOPS per pattern timed by the host between the guest's
// begin and end lines, with the number of runs behind each median
// ("runs-<pattern>"). A run left out (its guest stalled or crashed) still
// gives the patterns it finished: each is timed on its own.
func BenchmarkGuestBlk(b *testing.B) {
	requireKVM(b)
	vmlinux := image(b, "linux/vmlinux")
	initrd := image(b, "initrd.cpio")
	if *blkOps <= 0 {
		b.Fatalf("-govmd.blk-ops=%d: want at least one request", *blkOps)
	}
	line := cmdline(b, fmt.Sprintf("govmd.test=blk-bench govmd.blk.bench.ops=%d govmd.blk.bench.span=32", *blkOps))
	img := filepath.Join(b.TempDir(), "bench.img")
	if err := os.WriteFile(img, make([]byte, 64<<20), 0o644); err != nil {
		b.Fatal(err)
	}
	vmms := map[string][]string{
		"govmd": {govmd(b), "run", "--kernel", vmlinux, "--initrd", initrd, "--cmdline", line,
			"--cpus", "2", "--memory", "256M", "--log-level", "warn", "--rng=off", "--disk", img},
		"qemu": append(append([]string{"qemu-system-x86_64"}, qemuArgs(vmlinux, initrd, line)...),
			"-drive", "file="+img+",format=raw,if=none,id=d0,cache=writeback",
			"-device", "virtio-blk-pci,drive=d0"),
	}
	eachVMM(b, vmms, func(b *testing.B, name string, argv []string) {
		via := viaFor(b, name)
		argv = append(argv, via.args()...)
		host := map[string][]float64{}
		guest := map[string][]float64{}
		irqs := map[string][]float64{}
		exits := map[string][]float64{}
		hangs, good := benchRuns(b, name, func() error {
			r, err := blkBenchOnce(argv, via)
			for p, v := range r.host {
				host[p] = append(host[p], v)
			}
			for p, v := range r.guest {
				guest[p] = append(guest[p], v)
			}
			for p, v := range r.irqs {
				irqs[p] = append(irqs[p], v)
			}
			for p, v := range r.exits {
				exits[p] = append(exits[p], v)
			}
			return err
		})
		if len(host) == 0 {
			noRunFinished(b, name, hangs)
		}
		if good == 0 {
			b.Logf("%s: no run finished all four patterns (%d hung or crashed); figures from the patterns that finished", name, hangs)
		}
		for p, v := range host {
			b.ReportMetric(median(v), "kIOPS-"+p)
			b.ReportMetric(float64(len(v)), "runs-"+p)
		}
		for p, v := range guest {
			b.ReportMetric(median(v), "kIOPS-guest-clock-"+p)
		}
		for p, v := range irqs {
			b.ReportMetric(median(v), "irqs/req-"+p)
		}
		for p, v := range exits {
			b.ReportMetric(median(v), "exits/req-"+p)
		}
		b.ReportMetric(float64(*blkOps), "ops")
		b.ReportMetric(float64(hangs), "hangs")
		b.ReportMetric(0, "ns/op")
	})
}

// blkResult is what one blk-bench run measured, per pattern: kIOPS timed
// by the host and by the guest, the virtio interrupts the guest took per
// request, and the VM exits per request (KVM's count for the VMM's VM,
// read through exitsVia at the pattern's begin and end lines; none where
// KVM has no statistics).
type blkResult struct {
	host, guest, irqs, exits map[string]float64
}

// blkBenchOnce boots one guest running blk-bench and returns what it
// measured for the patterns that finished; an error unless all four did.
func blkBenchOnce(argv []string, via exitsVia) (blkResult, error) {
	r := blkResult{host: map[string]float64{}, guest: map[string]float64{}, irqs: map[string]float64{}, exits: map[string]float64{}}
	begin := map[string]time.Time{}
	beginExits := map[string]uint64{}
	opsOf := map[string]float64{}
	run := runGuest(argv, blkBenchTimeout(), func(now time.Time, l string) {
		if m := blkbenchRe.FindStringSubmatch(l); m != nil {
			var n, us float64
			fmt.Sscan(m[2], &n)
			fmt.Sscan(m[3], &us)
			opsOf[m[1]] = n
			if us > 0 {
				r.guest[m[1]] = n / us * 1000
			}
		}
		if m := blkIRQRe.FindStringSubmatch(l); m != nil && opsOf[m[1]] > 0 {
			var n float64
			fmt.Sscan(m[2], &n)
			r.irqs[m[1]] = n / opsOf[m[1]]
		}
		if m := benchLineRe.FindStringSubmatch(l); m != nil {
			ex, exOK := via.read()
			if m[1] == "begin" {
				begin[m[2]] = now
				if exOK {
					beginExits[m[2]] = ex
				}
			} else if t, ok := begin[m[2]]; ok && opsOf[m[2]] > 0 {
				r.host[m[2]] = opsOf[m[2]] / now.Sub(t).Seconds() / 1000
				if e0, ok := beginExits[m[2]]; ok && exOK {
					r.exits[m[2]] = float64(ex-e0) / opsOf[m[2]]
				}
			}
		}
	})
	if run.hung || len(r.host) != 4 {
		return r, run.failure(fmt.Sprintf("blk-bench incomplete: %d of 4 patterns", len(r.host)))
	}
	return r, nil
}

// viaFor returns where the benchmark of VMM name (govmd or qemu) reads
// the VM's exits: a socket in a fresh temporary directory.
func viaFor(b *testing.B, name string) exitsVia {
	dir := b.TempDir()
	if name == "govmd" {
		return exitsVia{govmd: filepath.Join(dir, "api.sock")}
	}
	return exitsVia{qmp: filepath.Join(dir, "qmp.sock")}
}

// exitsVia is where a benchmark reads the VM exits KVM counted for the
// VM under test, while it runs: govmd's API socket (GET /vm/counters, the
// vCPUs' KVM statistics) or QEMU's QMP socket (query-stats, provider kvm).
// Both report KVM's own per-vCPU "exits" counter, so the two VMMs are
// counted alike.
type exitsVia struct {
	govmd, qmp string // the socket path; one of them is set
}

// args returns the VMM flags that create the socket.
func (e exitsVia) args() []string {
	if e.govmd != "" {
		return []string{"--api-socket", e.govmd}
	}
	return []string{"-qmp", "unix:" + e.qmp + ",server=on,wait=off"}
}

// read returns the VM's exits summed over its vCPUs, and false when the
// socket does not answer or KVM has no statistics.
func (e exitsVia) read() (uint64, bool) {
	if e.govmd != "" {
		return govmdExits(e.govmd)
	}
	return qmpExits(e.qmp)
}

func govmdExits(path string) (uint64, bool) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		}}}
	resp, err := c.Get("http://govmd/vm/counters")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	var cs struct {
		VCPUs []struct {
			KVM map[string]uint64 `json:"kvm"`
		} `json:"vcpus"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&cs) != nil {
		return 0, false
	}
	var sum uint64
	found := false
	for _, v := range cs.VCPUs {
		if n, ok := v.KVM["exits"]; ok {
			sum += n
			found = true
		}
	}
	return sum, found
}

// qmpExits asks QEMU's QMP socket for its vCPUs' KVM "exits" statistic.
func qmpExits(path string) (uint64, bool) {
	conn, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return 0, false
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	dec, enc := json.NewDecoder(conn), json.NewEncoder(conn)
	// reply reads the next answer, skipping asynchronous events.
	reply := func(v any) error {
		for {
			var m map[string]json.RawMessage
			if err := dec.Decode(&m); err != nil {
				return err
			}
			if _, ev := m["event"]; ev {
				continue
			}
			if e, bad := m["error"]; bad {
				return fmt.Errorf("qmp: %s", e)
			}
			if r, ok := m["return"]; ok {
				return json.Unmarshal(r, v)
			}
			if _, greet := m["QMP"]; greet {
				return nil
			}
		}
	}
	var none any
	if reply(&none) != nil || enc.Encode(map[string]string{"execute": "qmp_capabilities"}) != nil || reply(&none) != nil {
		return 0, false
	}
	req := map[string]any{"execute": "query-stats", "arguments": map[string]any{
		"target": "vcpu", "providers": []map[string]any{{"provider": "kvm", "names": []string{"exits"}}}}}
	var res []struct {
		Stats []struct {
			Name  string `json:"name"`
			Value uint64 `json:"value"`
		} `json:"stats"`
	}
	if enc.Encode(req) != nil || reply(&res) != nil {
		return 0, false
	}
	var sum uint64
	found := false
	for _, v := range res {
		for _, st := range v.Stats {
			if st.Name == "exits" {
				sum += st.Value
				found = true
			}
		}
	}
	return sum, found
}

// eachVMM runs bench as a sub-benchmark for govmd, a govmd variant if
// vmms has one (govmd-qemuline), and then QEMU (argv[0] is the binary),
// skipping QEMU when it is not installed. govmd runs with --rng=off: the
// same devices as QEMU's guest.
func eachVMM(b *testing.B, vmms map[string][]string, bench func(b *testing.B, name string, argv []string)) {
	names := []string{"govmd"}
	for n := range vmms {
		if strings.HasPrefix(n, "govmd-") {
			names = append(names, n)
		}
	}
	for _, name := range append(names, "qemu") {
		argv := vmms[name]
		b.Run(name, func(b *testing.B) {
			if name == "qemu" {
				if _, err := exec.LookPath(argv[0]); err != nil {
					b.Skipf("no QEMU: %v", err)
				}
			}
			bench(b, name, argv)
		})
	}
}

// TestGuestRunDidNotStart checks that a VMM that exits without printing
// (QEMU refusing a CPU model, say) is one clear error, not a hang.
func TestGuestRunDidNotStart(t *testing.T) {
	r := runGuest([]string{"sh", "-c", "echo 'qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69' >&2; exit 1"},
		time.Minute, func(time.Time, string) {})
	err := r.failure("no GOVMD-READY")
	if err == nil || errors.Is(err, errHang) || errors.Is(err, errCrash) {
		t.Fatalf("failure = %v, want a plain error", err)
	}
	if want := "sh did not start a guest (exit status 1): qemu-system-x86_64: error: failed to set MSR 0x10a"; !strings.HasPrefix(err.Error(), want) {
		t.Errorf("failure = %q, want %q...", err, want)
	}
}

var (
	tcpIRQRe   = regexp.MustCompile(`GOVMD-RESULT tcp\.(rx|tx)\.irqs=([0-9]+) tcp\.(?:rx|tx)\.packets=([0-9]+)`)
	tcpStartRe = regexp.MustCompile(`GOVMD-TCP-(LISTENING|SENDING) `)
)

// BenchmarkGuestNet moves the profile's TCPBytes into the guest (tcp-rx)
// and out of it (tcp-tx) over a tap in a test namespace, with govmd's
// virtio-net and with QEMU's (virtio-net-pci, vhost off: the same tap
// path), and reports per packet the guest's virtio interrupts and the VM
// exits KVM counted, each direction ("irqs/pkt-rx", "exits/pkt-tx", ...).
func BenchmarkGuestNet(b *testing.B) {
	netns.RequireNetAdmin(b)
	requireKVM(b)
	p := profile()
	vmlinux := image(b, "linux/vmlinux")
	initrd := image(b, "initrd.cpio")
	gn := newGuestNet(b)
	line := cmdline(b, fmt.Sprintf("govmd.test=net,tcp-rx,tcp-tx govmd.ip=%s/24 govmd.peer=%s govmd.tcp.port=%d govmd.tcp.txport=%d govmd.tcp.bytes=%d govmd.hash=%s",
		guestIP, hostIP, rxPort, txPort, p.TCPBytes, p.Hash))
	inNS := []string{"ip", "netns", "exec", gn.ns.Name}
	vmms := map[string][]string{
		"govmd": slices.Concat(inNS, []string{govmd(b), "run", "--kernel", vmlinux, "--initrd", initrd, "--cmdline", line,
			"--cpus", "2", "--memory", "256M", "--log-level", "warn", "--rng=off", "--net", "tap=" + tapName}),
		"qemu": slices.Concat(inNS, []string{"qemu-system-x86_64"}, qemuArgs(vmlinux, initrd, line), []string{
			"-netdev", "tap,id=n0,ifname=" + tapName + ",script=no,downscript=no,vhost=off",
			"-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,romfile="}),
	}
	eachVMM(b, vmms, func(b *testing.B, name string, argv []string) {
		via := viaFor(b, name)
		argv = append(argv, via.args()...)
		res := map[string][]float64{}
		hangs, good := benchRuns(b, name, func() error {
			r, err := netBenchOnce(argv, gn, p, via)
			for k, v := range r {
				res[k] = append(res[k], v)
			}
			return err
		})
		if good == 0 {
			noRunFinished(b, name, hangs)
		}
		for k, v := range res {
			b.ReportMetric(median(v), k)
		}
		b.ReportMetric(float64(p.TCPBytes), "bytes")
		b.ReportMetric(float64(hangs), "hangs")
		b.ReportMetric(0, "ns/op")
	})
}

// netBenchOnce boots one guest running tcp-rx and tcp-tx, sends it the
// test stream when it listens, and returns irqs/pkt-rx, irqs/pkt-tx,
// exits/pkt-rx and exits/pkt-tx (the exits only where KVM has statistics,
// exitsVia); an error unless both directions were measured.
func netBenchOnce(argv []string, gn *guestNet, p hostProfile, via exitsVia) (map[string]float64, error) {
	res := map[string]float64{}
	start := map[string]uint64{}
	sendErr := make(chan error, 1)
	run := runGuest(argv, p.Boot+4*p.Step, func(now time.Time, l string) {
		if m := tcpStartRe.FindStringSubmatch(l); m != nil {
			dir := map[string]string{"LISTENING": "rx", "SENDING": "tx"}[m[1]]
			if ex, ok := via.read(); ok {
				start[dir] = ex
			}
			if dir == "rx" {
				go func() { sendErr <- gn.send(pattern(p.TCPBytes), p.NetStall) }()
			}
		}
		if m := tcpIRQRe.FindStringSubmatch(l); m != nil {
			var irqs, pkts float64
			fmt.Sscan(m[2], &irqs)
			fmt.Sscan(m[3], &pkts)
			if pkts > 0 {
				res["irqs/pkt-"+m[1]] = irqs / pkts
				if ex, ok := via.read(); ok {
					if s, ok := start[m[1]]; ok {
						res["exits/pkt-"+m[1]] = float64(ex-s) / pkts
					}
				}
			}
		}
	})
	select {
	case err := <-sendErr:
		if err != nil && !run.hung && !run.crashed {
			return res, fmt.Errorf("sending to the guest: %w", err)
		}
	default:
	}
	// Drain what the guest's tcp-tx sent (the digest is TestNetGuest's
	// business).
	for len(gn.txDone) > 0 {
		<-gn.txDone
	}
	if run.hung || res["irqs/pkt-rx"] == 0 || res["irqs/pkt-tx"] == 0 {
		return res, run.failure("tcp-rx and tcp-tx not both measured")
	}
	return res, nil
}

// TestQMPExits talks to a fake QMP server the way QEMU 7.2 answers: a
// greeting, the capabilities handshake, an event in between, and
// query-stats with two vCPUs.
func TestQMPExits(t *testing.T) {
	path := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		dec := json.NewDecoder(c)
		var req map[string]any
		c.Write([]byte(`{"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": []}}` + "\r\n"))
		dec.Decode(&req)
		c.Write([]byte(`{"return": {}}` + "\r\n"))
		dec.Decode(&req)
		c.Write([]byte(`{"event": "RTC_CHANGE", "data": {}}` + "\r\n"))
		c.Write([]byte(`{"return": [{"provider": "kvm", "qom-path": "/machine/unattached/device[0]", "stats": [{"name": "exits", "value": 40}]},` +
			`{"provider": "kvm", "qom-path": "/machine/unattached/device[1]", "stats": [{"name": "exits", "value": 2}]}]}` + "\r\n"))
	}()
	if n, ok := qmpExits(path); !ok || n != 42 {
		t.Fatalf("qmpExits = %d, %v; want 42", n, ok)
	}
	if _, ok := qmpExits(filepath.Join(t.TempDir(), "none")); ok {
		t.Fatal("a missing socket gave a count")
	}
}
