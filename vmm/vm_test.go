package vmm

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/govmd/govmd/boot"
	vnet "github.com/govmd/govmd/devices/net"
	"github.com/govmd/govmd/internal/testkernel"
	"github.com/govmd/govmd/kvm"
	"github.com/govmd/govmd/virtio/pcitransport"
)

func writeFile(t *testing.T, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestNewRejectsBadInput checks that bad user input is one clear
// configuration error, found before KVM is touched (this test passes on a
// machine without /dev/kvm only because of that).
func TestNewRejectsBadInput(t *testing.T) {
	good := testkernel.BzImage(testkernel.PowerOff(portPM1aCnt))
	kernel := writeFile(t, "bzImage", good)
	tests := []struct {
		name  string
		cfg   Config
		want  string
		cause error // also in the chain, when not nil
	}{
		{"not a kernel", Config{Kernel: writeFile(t, "notes.txt", []byte("hello, this is text\n"))}, "neither a bzimage", boot.ErrNotKernel},
		{"truncated bzImage", Config{Kernel: writeFile(t, "short", good[:0x400])}, "truncated", boot.ErrTruncated},
		{"ELF without PVH note", Config{Kernel: writeFile(t, "elf", append([]byte("\x7fELF\x02\x01\x01"), make([]byte, 120)...))}, "kernel", nil},
		{"missing kernel", Config{Kernel: "/nonexistent/bzImage"}, "no such file", fs.ErrNotExist},
		// Typed values a library caller can still get wrong: refused
		// by Validate, before any KVM object or tap exists.
		{"bad net transport", Config{Kernel: kernel, Nets: []NetConfig{{Tap: "nonexistent0", Transport: pcitransport.Mode(7)}}}, "transport", nil},
		{"bad net offload", Config{Kernel: kernel, Nets: []NetConfig{{Tap: "nonexistent0", Offload: vnet.OffloadMode(7)}}}, "offload", nil},
		{"bad disk transport", Config{Kernel: kernel, Disks: []DiskConfig{{Path: kernel, Transport: pcitransport.Mode(7)}}}, "transport", nil},
		{"kernel is a directory", Config{Kernel: t.TempDir()}, "directory", nil},
		{"initrd larger than memory", Config{Kernel: kernel, Initrd: writeFile(t, "big", make([]byte, 40<<20)), Memory: 32 << 20}, "initrd", nil},
		{"memory too small", Config{Kernel: kernel, Memory: 1 << 20}, "memory", nil},
		{"too many cpus", Config{Kernel: kernel, CPUs: 1000}, "cpus", nil},
		{"bad profile", Config{Kernel: kernel, CPUProfile: CPUProfile(9)}, "profile", nil},
		{"missing disk", Config{Kernel: kernel, Disks: []DiskConfig{{Path: "/nonexistent.img"}}}, "disk", fs.ErrNotExist},
		{"disk not a multiple of 512", Config{Kernel: kernel, Disks: []DiskConfig{{Path: writeFile(t, "odd.img", make([]byte, 1000)), Transport: pcitransport.Transitional}}}, "512", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			vm, err := New(tc.cfg)
			if err == nil {
				vm.Close()
				t.Fatal("New accepted it")
			}
			if !errors.Is(err, ErrConfig) {
				t.Fatalf("error %q does not wrap ErrConfig", err)
			}
			if tc.cause != nil && !errors.Is(err, tc.cause) {
				t.Errorf("error %q does not wrap %v", err, tc.cause)
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Errorf("error is not one line: %q", msg)
			}
			if !strings.Contains(strings.ToLower(msg), tc.want) {
				t.Errorf("error %q does not mention %q", msg, tc.want)
			}
		})
	}
}

func TestRAMRanges(t *testing.T) {
	if r := ramRanges(512 << 20); len(r) != 1 || r[0].Size != 512<<20 {
		t.Errorf("512M: %+v", r)
	}
	r := ramRanges(4 << 30)
	if len(r) != 2 || r[0].Size != pciHoleStart || r[1].GPA != fourGiB || r[1].Size != 4<<30-pciHoleStart {
		t.Errorf("4G: %+v", r)
	}
}

// kvmAvailable skips the test unless /dev/kvm can be used.
func kvmAvailable(t *testing.T) {
	t.Helper()
	sys, err := kvm.Open("")
	if err != nil {
		t.Skipf("KVM unavailable: %v", err)
	}
	sys.Close()
}

// syncBuffer is a Console that tests can read while the guest writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestRunTinyGuests boots synthetic kernels on KVM and checks how each
// run ends.
func TestRunTinyGuests(t *testing.T) {
	kvmAvailable(t)
	tests := []struct {
		name    string
		code    []byte
		cpus    int
		want    Result
		errWant string
		console string
	}{
		{"poweroff", append(testkernel.Print("hello\n"), testkernel.PowerOff(portPM1aCnt)...), 1, ExitPowerOff, "", "hello\n"},
		{"poweroff smp", append(testkernel.Print("smp\n"), testkernel.PowerOff(portPM1aCnt)...), 2, ExitPowerOff, "", "smp\n"},
		{"reset", testkernel.Reset(), 1, ExitReboot, "", ""},
		{"triple fault", testkernel.TripleFault(), 1, ExitFailed, "triple fault", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			con := &syncBuffer{}
			vm, err := New(Config{
				Kernel:  writeFile(t, "bzImage", testkernel.BzImage(tc.code)),
				Memory:  64 << 20,
				CPUs:    tc.cpus,
				Console: con,
			})
			if err != nil {
				t.Fatal(err)
			}
			defer vm.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			res, err := vm.Run(ctx)
			if res != tc.want {
				t.Fatalf("result %v (err %v), want %v", res, err, tc.want)
			}
			if tc.errWant != "" && (err == nil || !strings.Contains(err.Error(), tc.errWant)) {
				t.Fatalf("error %v, want %q", err, tc.errWant)
			}
			if tc.errWant == "" && err != nil {
				t.Fatal(err)
			}
			if got := con.String(); got != tc.console {
				t.Errorf("console %q, want %q", got, tc.console)
			}
		})
	}
}

func TestRunCanceled(t *testing.T) {
	kvmAvailable(t)
	spin := []byte{0xeb, 0xfe} // jmp .
	vm, err := New(Config{Kernel: writeFile(t, "bzImage", testkernel.BzImage(spin)), Memory: 64 << 20, CPUs: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	res, err := vm.Run(ctx)
	if res != ExitCanceled || err != nil {
		t.Fatalf("Run = %v, %v; want canceled", res, err)
	}
}

// TestPauseResumeStop pauses a guest that writes to a port in a loop: its
// I/O exits stop while it is paused and go on after Resume; Stop ends the
// run with ExitStopped.
func TestPauseResumeStop(t *testing.T) {
	kvmAvailable(t)
	loop := []byte{0xe6, 0x80, 0xeb, 0xfc} // 1: out 0x80, al; jmp 1b
	vm, err := New(Config{Kernel: writeFile(t, "bzImage", testkernel.BzImage(loop)), Memory: 64 << 20, CPUs: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	if err := vm.Pause(ctx); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Pause before Run: %v", err)
	}
	if s := vm.State(); s != StateCreated {
		t.Fatalf("state before Run %q", s)
	}
	type result struct {
		res Result
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := vm.Run(ctx)
		done <- result{res, err}
	}()
	ios := func() uint64 {
		var n uint64
		for _, c := range vm.Counters().VCPUs {
			n += c.Exits["IO"]
		}
		return n
	}
	waitGrow := func(what string) {
		t.Helper()
		from := ios()
		for deadline := time.Now().Add(60 * time.Second); ios() < from+10; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the guest's I/O exits do not grow (%d)", what, ios())
			}
		}
	}
	waitGrow("running")
	if s := vm.State(); s != StateRunning {
		t.Fatalf("state %q, want running", s)
	}
	for round := 0; round < 2; round++ {
		if err := vm.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		if err := vm.Pause(ctx); err != nil { // a second pause does nothing
			t.Fatal(err)
		}
		if s := vm.State(); s != StatePaused {
			t.Fatalf("state %q, want paused", s)
		}
		before := ios()
		time.Sleep(300 * time.Millisecond)
		if after := ios(); after != before {
			t.Fatalf("paused guest made %d I/O exits", after-before)
		}
		if err := vm.Resume(); err != nil {
			t.Fatal(err)
		}
		waitGrow("resumed")
	}
	if err := vm.Stop(); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.res != ExitStopped || r.err != nil {
		t.Fatalf("Run = %v, %v; want stopped", r.res, r.err)
	}
	if s := vm.State(); s != StateStopped {
		t.Fatalf("state after Run %q", s)
	}
	if err := vm.Resume(); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Resume after the run: %v", err)
	}
	if vm.Uptime() <= 0 {
		t.Error("no uptime")
	}
}

// TestPauseThenCancel cancels a paused VM: the parked vCPUs end.
func TestPauseThenCancel(t *testing.T) {
	kvmAvailable(t)
	spin := []byte{0xeb, 0xfe} // jmp .
	vm, err := New(Config{Kernel: writeFile(t, "bzImage", testkernel.BzImage(spin)), Memory: 64 << 20, CPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan Result, 1)
	go func() { res, _ := vm.Run(ctx); done <- res }()
	for vm.State() != StateRunning {
		time.Sleep(time.Millisecond)
	}
	pctx, pcancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer pcancel()
	if err := vm.Pause(pctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case res := <-done:
		if res != ExitCanceled {
			t.Fatalf("Run = %v", res)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a paused VM did not end on cancel")
	}
}
