package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/govmd/govmd/boot/execinit"
	"github.com/govmd/govmd/vmm"
	"github.com/govmd/govmd/vmm/guestexec"
)

// execReadBytes is the file BenchmarkExecRead reads from the share: 100 MB,
// except on PVM, where every guest instruction (the kernel's copies
// included) is emulated and the profile's transfer size is used.
func execReadBytes() int {
	if p := profile(); p.Name == "pvm" {
		return 8 << 20
	}
	return 100 << 20
}

// BenchmarkExecTrue is `govmd exec -- true` end to end (wall time and the
// VMM's CPU time, its children's included) next to QEMU doing the same:
// -M pc with qboot and -nodefaults (as the other KVM benchmarks; -M microvm
// did not enumerate its virtio-mmio devices from ACPI with the test kernel
// on PVM, docs/bench.md), the same kernel, the same initramfs with the
// same init archive appended, the same command line (plus the profile's
// QEMUAppend, acpi=off on PVM) and the init's three ports on
// virtio-serial-pci. QEMU is stopped (SIGTERM) as soon as the init reports
// the command's status on its status port, which is when govmd stops its
// VM. One after the other, in the same run.
func BenchmarkExecTrue(b *testing.B) { benchExec(b, false) }

// BenchmarkExecRead is BenchmarkExecTrue with a command that reads a file
// of execReadBytes from a share: govmd's --share, and for QEMU a
// vhost-user-fs device in front of the same virtiofsd, started by the
// benchmark (vhost-user-fs-pci), with its RAM in a shared memfd (govmd's
// is one too with a share).
func BenchmarkExecRead(b *testing.B) { benchExec(b, true) }

func benchExec(b *testing.B, share bool) {
	requireKVM(b)
	p := profile()
	vmlinux, initrd := image(b, "linux/vmlinux"), image(b, "initrd.cpio")
	extra := cmdline(b, "")
	argv := []string{"sh", "-c", "true"} // the test initramfs has busybox sh and no applet links
	dir := b.TempDir()
	var mounts []execinit.Mount
	if share {
		data := filepath.Join(dir, "data")
		if err := os.Mkdir(data, 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(data, "big"), pattern(execReadBytes()), 0o644); err != nil {
			b.Fatal(err)
		}
		argv = []string{"sh", "-c", "dd if=/mnt/data/big of=/dev/null bs=1M 2>/dev/null"}
		mounts = []execinit.Mount{{Tag: "data", Dir: "/mnt/data"}}
	}
	// QEMU's initramfs: the test initramfs with govmd exec's archive
	// appended, by the function govmd exec uses.
	archive, err := execinit.Archive(execinit.Spec{Argv: argv, Env: execinit.DefaultEnv(), Mounts: mounts})
	if err != nil {
		b.Fatal(err)
	}
	base, err := os.ReadFile(initrd)
	if err != nil {
		b.Fatal(err)
	}
	qinitrd := filepath.Join(dir, "initrd-exec")
	if err := os.WriteFile(qinitrd, vmm.AppendArchive(base, archive), 0o644); err != nil {
		b.Fatal(err)
	}
	gargs := []string{govmd(b), "exec", "--kernel", vmlinux, "--initrd", initrd, "--memory", "256M",
		"--rng=off", "--timings", "--boot-timeout", execBootLimit().String(), "--cmdline", extra}
	qline := guestexec.BaseCmdline + " " + extra
	if p.QEMUAppend != "" {
		qline += " " + p.QEMUAppend
	}
	qargs := []string{"qemu-system-x86_64", "-M", "pc", "-enable-kvm", "-cpu", p.QEMUCPU, "-m", "256M", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-bios", qbootROM(),
		"-kernel", vmlinux, "-initrd", qinitrd, "-append", qline,
		"-serial", "null", "-device", "virtio-serial-pci,id=vser",
		"-chardev", "file,id=st,path=" + filepath.Join(dir, "status"), "-device", "virtserialport,bus=vser.0,chardev=st,name=" + execinit.PortStatus,
		"-chardev", "null,id=o", "-device", "virtserialport,bus=vser.0,chardev=o,name=" + execinit.PortStdout,
		"-chardev", "null,id=e", "-device", "virtserialport,bus=vser.0,chardev=e,name=" + execinit.PortStderr}
	sock := filepath.Join(dir, "virtiofsd.sock")
	if share {
		gargs = append(gargs, "--share", filepath.Join(dir, "data")+",tag=data")
		qargs[2] = "pc,memory-backend=mem"
		qargs = append(qargs, "-object", "memory-backend-memfd,id=mem,size=256M,share=on",
			"-chardev", "socket,id=fs,path="+sock, "-device", "vhost-user-fs-pci,chardev=fs,tag=data")
	}
	gargs = append(append(gargs, "--"), argv...)
	eachVMM(b, map[string][]string{"govmd": gargs, "qemu": qargs}, func(b *testing.B, name string, argv []string) {
		var wall, cpu []float64
		marks := map[string][]float64{}
		hangs, good := benchRuns(b, name, func() error {
			var w, c float64
			var err error
			if name == "qemu" {
				w, c, err = qemuExecOnce(argv, filepath.Join(dir, "status"), share, sock, filepath.Join(dir, "data"))
			} else {
				var m map[string]float64
				w, c, m, err = govmdExecOnce(argv)
				for k, v := range m {
					marks[k] = append(marks[k], v)
				}
			}
			if err == nil {
				wall, cpu = append(wall, w), append(cpu, c)
			}
			return err
		})
		if good == 0 {
			noRunFinished(b, name, hangs)
		}
		b.ReportMetric(median(wall), "s-wall")
		b.ReportMetric(median(cpu), "s-cpu")
		for k, v := range marks { // govmd's --timings: where its time went
			b.ReportMetric(median(v), "s-"+k)
		}
		b.ReportMetric(float64(len(wall)), "runs")
		b.ReportMetric(float64(hangs), "hangs")
		b.ReportMetric(0, "ns/op")
	})
}

// execLimit bounds one benchmark run, execBootLimit its time until the
// command started (a guest that stalled in early boot, docs/pvm.md, is
// left out sooner).
func execLimit() time.Duration     { p := profile(); return p.Boot + p.Step }
func execBootLimit() time.Duration { return profile().Boot / 2 }

// cpuSeconds is a finished process's user and system time, its waited-for
// children's included.
func cpuSeconds(ps *os.ProcessState) float64 { return (ps.UserTime() + ps.SystemTime()).Seconds() }

// timingsRe matches one milestone of govmd exec --timings.
var timingsRe = regexp.MustCompile(`([a-z_]+)=([0-9.]+)ms`)

// govmdExecOnce runs govmd exec --timings once: the command must exit 0.
// marks are the milestones it printed, in seconds since the VMM started.
func govmdExecOnce(argv []string) (wall, cpu float64, marks map[string]float64, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), execLimit())
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	// At the limit govmd is interrupted, so that it prints where the
	// guest stood, and killed if it does not end.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	err = cmd.Run()
	wall = time.Since(start).Seconds()
	switch {
	case ctx.Err() != nil:
		return 0, 0, nil, fmt.Errorf("%w: govmd exec ran longer than %s\n%s", errHang, execLimit(), stderr.String())
	case cmd.ProcessState.ExitCode() == guestexec.StatusNoStart:
		// The guest stalled or crashed before the command (in nested
		// KVM the L0 fault of docs/pvm.md): left out, as QEMU's hangs.
		return 0, 0, nil, fmt.Errorf("%w: govmd exec: %v\n%s", errHang, err, stderr.String())
	case cmd.ProcessState.ExitCode() == guestexec.StatusPanic || cmd.ProcessState.ExitCode() == guestexec.StatusLost:
		return 0, 0, nil, fmt.Errorf("%w: govmd exec: %v\n%s", errCrash, err, stderr.String())
	case err != nil:
		return 0, 0, nil, fmt.Errorf("govmd exec: %v\n%s", err, stderr.String())
	}
	marks = map[string]float64{}
	for _, m := range timingsRe.FindAllStringSubmatch(stderr.String(), -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		marks[m[1]] = v / 1000
	}
	return wall, cpuSeconds(cmd.ProcessState), marks, nil
}

// qemuExecOnce runs QEMU once (with a virtiofsd for the share) and stops
// it when the init reports the command's status, which must be exit 0.
// The status port is a chardev file that this side polls every
// millisecond (a stdio chardev never tells the guest the host side is
// open, and a Linux writer on the port waits for that).
func qemuExecOnce(argv []string, statusFile string, share bool, sock, data string) (wall, cpu float64, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), execLimit())
	defer cancel()
	os.Remove(statusFile)
	start := time.Now()
	var fsd *exec.Cmd
	if share {
		os.Remove(sock)
		fsd = exec.Command("/usr/lib/qemu/virtiofsd", "--socket-path="+sock, "-o", "source="+data,
			"-o", "sandbox=namespace", "-o", "log_level=err")
		if err := fsd.Start(); err != nil {
			return 0, 0, err
		}
		defer func() {
			if fsd.ProcessState == nil {
				fsd.Process.Kill()
				fsd.Wait()
			}
		}()
		for i := 0; ; i++ {
			if _, err := os.Stat(sock); err == nil {
				break
			}
			if i == 5000 {
				return 0, 0, fmt.Errorf("virtiofsd made no socket")
			}
			time.Sleep(time.Millisecond)
		}
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return 0, 0, err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	status := ""
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
wait:
	for {
		select {
		case <-exited:
			break wait
		case <-tick.C:
			b, _ := os.ReadFile(statusFile)
			lines := strings.Split(string(b), "\n")
			started := false
			for _, l := range lines[:len(lines)-1] { // whole lines only
				started = started || l == "start"
				if strings.HasPrefix(l, "exit ") || strings.HasPrefix(l, "signal ") || strings.HasPrefix(l, "fail ") {
					status = l
					cmd.Process.Signal(syscall.SIGTERM)
					<-exited
					break wait
				}
			}
			if !started && time.Since(start) > execBootLimit() {
				cmd.Process.Kill()
				<-exited
				return 0, 0, fmt.Errorf("%w: QEMU's guest did not start the command within %s", errHang, execBootLimit())
			}
		}
	}
	wall = time.Since(start).Seconds()
	if ctx.Err() != nil {
		return 0, 0, fmt.Errorf("%w: QEMU ran longer than %s", errHang, execLimit())
	}
	if status == "" {
		// QEMU exited (-no-reboot) before the init reported: the guest
		// crashed (panic=-1) or failed.
		return 0, 0, fmt.Errorf("%w: QEMU exited with no status from the guest\n%s", errCrash, stderr.String())
	}
	if status != "exit 0" {
		return 0, 0, fmt.Errorf("QEMU's guest reported %q\n%s", status, stderr.String())
	}
	cpu = cpuSeconds(cmd.ProcessState)
	if fsd != nil {
		// virtiofsd's CPU is part of the run, as it is in govmd's.
		fsd.Process.Kill()
		fsd.Wait()
		cpu += cpuSeconds(fsd.ProcessState)
	}
	return wall, cpu, nil
}
