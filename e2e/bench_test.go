package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
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
	initrd := image(b, "initrd.cpio.gz")
	line := cmdline(b, "govmd.test=ready")
	vmms := map[string][]string{
		"govmd": {govmd(b), "run", "--kernel", vmlinux, "--initrd", initrd, "--cmdline", line,
			"--cpus", "2", "--memory", "256M", "--log-level", "warn"},
		"qemu": append([]string{"qemu-system-x86_64"}, qemuArgs(vmlinux, initrd, line)...),
	}
	eachVMM(b, vmms, func(b *testing.B, name string, argv []string) {
		var wall, uptime, rss []float64
		hangs := 0
		for i := 0; i < b.N; i++ {
			w, u, r, err := bootOnce(argv)
			if errors.Is(err, errHang) || errors.Is(err, errCrash) {
				hangs++ // see docs/pvm.md: nested guests stall now and then
				b.Logf("%s: boot %d left out: %v", name, i, err)
				continue
			}
			if err != nil {
				b.Fatalf("%s: %v", name, err)
			}
			wall, uptime, rss = append(wall, w), append(uptime, u), append(rss, r)
		}
		if len(wall) == 0 {
			b.Fatalf("%s: every boot hung or crashed", name)
		}
		b.ReportMetric(median(wall), "s-to-ready")
		b.ReportMetric(median(uptime), "s-guest-uptime")
		b.ReportMetric(median(rss), "MiB-peak-rss")
		b.ReportMetric(float64(len(wall)), "boots")
		b.ReportMetric(float64(hangs), "hangs")
		b.ReportMetric(0, "ns/op")
	})
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

// benchBootTimeout bounds one benchmark boot; a boot that takes longer
// counts as hung and is left out of the medians (and reported).
const benchBootTimeout = 2 * time.Minute

var errHang = errors.New("the guest did not finish in time")

// errCrash marks a run in which the guest kernel failed (its console
// matched crashRe: a panic, oops or stall) before printing what the
// benchmark waits for. In nested KVM on TCG guests crash now and then
// (docs/pvm.md); such a run is counted with the hung ones and left out,
// with its stderr logged. Any other failure ends the benchmark.
var errCrash = errors.New("the guest ended early")

// bootOnce runs one VMM until it exits and returns the seconds from start
// to the GOVMD-READY line, the guest's uptime at that line and the
// process's peak RSS in MiB.
func bootOnce(argv []string) (wall, uptime, rssMiB float64, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), benchBootTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, 0, 0, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, 0, 0, err
	}
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	found, crashed := false, false
	for sc.Scan() {
		crashed = crashed || crashRe.MatchString(sc.Text())
		if m := readyRe.FindStringSubmatch(sc.Text()); m != nil && !found {
			wall = time.Since(start).Seconds()
			fmt.Sscan(m[1], &uptime)
			found = true
		}
	}
	werr := cmd.Wait()
	if ctx.Err() != nil {
		return 0, 0, 0, errHang
	}
	if !found {
		err := fmt.Errorf("no GOVMD-READY (exit %v)\n%s", werr, stderr.String())
		if crashed {
			err = fmt.Errorf("%w: %w", errCrash, err)
		}
		return 0, 0, 0, err
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		rssMiB = float64(ru.Maxrss) / 1024
	}
	return wall, uptime, rssMiB, nil
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

// BenchmarkGuestBlk runs the agent's blk-bench step (4 KiB O_DIRECT
// requests at queue depth 1: sequential and random reads and writes over
// the first 32 MiB) in the test guest on a 64 MiB raw image, with govmd's
// virtio-blk and with QEMU's (virtio-blk-pci, cache=writeback, the same
// page-cache path govmd's pread/pwrite take), and reports kIOPS per
// pattern timed by the host between the guest's begin and end lines.
func BenchmarkGuestBlk(b *testing.B) {
	requireKVM(b)
	vmlinux := image(b, "linux/vmlinux")
	initrd := image(b, "initrd.cpio.gz")
	const ops = 4000
	line := cmdline(b, fmt.Sprintf("govmd.test=blk-bench govmd.blk.bench.ops=%d govmd.blk.bench.span=32", ops))
	img := filepath.Join(b.TempDir(), "bench.img")
	if err := os.WriteFile(img, make([]byte, 64<<20), 0o644); err != nil {
		b.Fatal(err)
	}
	vmms := map[string][]string{
		"govmd": {govmd(b), "run", "--kernel", vmlinux, "--initrd", initrd, "--cmdline", line,
			"--cpus", "2", "--memory", "256M", "--log-level", "warn", "--disk", img},
		"qemu": append(append([]string{"qemu-system-x86_64"}, qemuArgs(vmlinux, initrd, line)...),
			"-drive", "file="+img+",format=raw,if=none,id=d0,cache=writeback",
			"-device", "virtio-blk-pci,drive=d0"),
	}
	eachVMM(b, vmms, func(b *testing.B, name string, argv []string) {
		host := map[string][]float64{}
		guest := map[string][]float64{}
		hangs := 0
		for i := 0; i < b.N; i++ {
			h, g, err := blkBenchOnce(argv)
			if errors.Is(err, errHang) || errors.Is(err, errCrash) {
				hangs++
				b.Logf("%s: run %d left out: %v", name, i, err)
				continue
			}
			if err != nil {
				b.Fatalf("%s: %v", name, err)
			}
			for p, v := range h {
				host[p] = append(host[p], v)
			}
			for p, v := range g {
				guest[p] = append(guest[p], v)
			}
		}
		for p, v := range host {
			b.ReportMetric(median(v), "kIOPS-"+p)
		}
		for p, v := range guest {
			b.ReportMetric(median(v), "kIOPS-guest-clock-"+p)
		}
		if len(host) == 0 {
			b.Fatalf("%s: every run hung or crashed", name)
		}
		b.ReportMetric(float64(hangs), "hangs")
		b.ReportMetric(0, "ns/op")
	})
}

// blkBenchOnce boots one guest running blk-bench and returns kIOPS per
// pattern as timed by the host and as timed by the guest.
func blkBenchOnce(argv []string) (host, guest map[string]float64, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*benchBootTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	host, guest = map[string]float64{}, map[string]float64{}
	begin := map[string]time.Time{}
	opsOf := map[string]float64{}
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	crashed := false
	for sc.Scan() {
		now := time.Now()
		crashed = crashed || crashRe.MatchString(sc.Text())
		if m := blkbenchRe.FindStringSubmatch(sc.Text()); m != nil {
			var n, us float64
			fmt.Sscan(m[2], &n)
			fmt.Sscan(m[3], &us)
			opsOf[m[1]] = n
			if us > 0 {
				guest[m[1]] = n / us * 1000
			}
		}
		if m := benchLineRe.FindStringSubmatch(sc.Text()); m != nil {
			if m[1] == "begin" {
				begin[m[2]] = now
			} else if t, ok := begin[m[2]]; ok && opsOf[m[2]] > 0 {
				host[m[2]] = opsOf[m[2]] / now.Sub(t).Seconds() / 1000
			}
		}
	}
	werr := cmd.Wait()
	if ctx.Err() != nil {
		return nil, nil, errHang
	}
	if len(host) != 4 {
		err := fmt.Errorf("blk-bench incomplete (%d patterns; exit %v)\n%s", len(host), werr, stderr.String())
		if crashed {
			err = fmt.Errorf("%w: %w", errCrash, err)
		}
		return nil, nil, err
	}
	return host, guest, nil
}

// eachVMM runs bench as a sub-benchmark for govmd and then QEMU (argv[0]
// is the binary), skipping QEMU when it is not installed.
func eachVMM(b *testing.B, vmms map[string][]string, bench func(b *testing.B, name string, argv []string)) {
	for _, name := range []string{"govmd", "qemu"} {
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
