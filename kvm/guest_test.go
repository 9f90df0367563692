package kvm

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openKVM opens /dev/kvm or skips the test when it is unavailable.
func openKVM(t *testing.T) *System {
	t.Helper()
	sys, err := Open("")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, os.ErrPermission) {
			t.Skipf("KVM unavailable: %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { sys.Close() })
	return sys
}

// Guest memory layout of the test guests (real mode, CS = DS = 0).
const (
	guestMemSize = 0x8000 // RAM at 0..0x7fff
	guestCode    = 0x1000 // code and RIP
	guestStack   = 0x7000
	guestMMIO    = 0x9000 // unbacked: accesses exit with ExitMMIO
)

type testGuest struct {
	sys *System
	vm  *VM
	cpu *VCPU
	mem []byte
	tid int
}

type guestOpts struct {
	irqchip bool
	setup   func(t *testing.T, g *testGuest) // after the VM, before the vCPU
}

// newRealModeGuest creates a one-vCPU VM with 32 KiB of RAM at 0, copies code
// to guestCode and points CS:IP at it in real mode. The calling goroutine
// is locked to its thread for the rest of the test.
func newRealModeGuest(t *testing.T, code []byte, opts guestOpts) *testGuest {
	t.Helper()
	sys := openKVM(t)
	runtime.LockOSThread()
	t.Cleanup(runtime.UnlockOSThread)

	vm, err := sys.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	mem, err := unix.Mmap(-1, 0, guestMemSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	if err := vm.SetUserMemoryRegion(0, 0, 0, mem); err != nil {
		t.Fatal(err)
	}
	if err := vm.SetTSSAddr(0xfffbd000); err != nil {
		t.Logf("SetTSSAddr: %v", err)
	}
	g := &testGuest{sys: sys, vm: vm, mem: mem, tid: ThreadID()}
	if opts.irqchip {
		if err := vm.CreateIRQChip(); err != nil {
			t.Fatal(err)
		}
	}
	if opts.setup != nil {
		opts.setup(t, g)
	}
	copy(mem[guestCode:], code)

	cpu, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cpu.Close() })
	g.cpu = cpu
	sregs, err := cpu.GetSregs()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*Segment{&sregs.CS, &sregs.DS, &sregs.ES, &sregs.SS} {
		s.Base, s.Selector = 0, 0
	}
	if err := cpu.SetSregs(sregs); err != nil {
		t.Fatal(err)
	}
	if err := cpu.SetRegs(&Regs{RIP: guestCode, RSP: guestStack, RFLAGS: 2}); err != nil {
		t.Fatal(err)
	}
	return g
}

// run runs the vCPU once, failing the test if KVM_RUN does not return
// within limit (the vCPU is kicked then).
func (g *testGuest) run(t *testing.T, limit time.Duration) Exit {
	t.Helper()
	var fired atomic.Bool
	timer := time.AfterFunc(limit, func() { fired.Store(true); g.cpu.Kick(g.tid) })
	defer timer.Stop()
	for {
		exit, err := g.cpu.Run()
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		if exit.Reason != ExitIntr {
			return exit
		}
		if fired.Load() {
			t.Fatalf("guest did not exit within %v", limit)
		}
		// Any signal on the thread ends KVM_RUN (see the package
		// documentation); run the vCPU again.
		g.cpu.SetImmediateExit(false)
	}
}

func (g *testGuest) regs(t *testing.T) *Regs {
	t.Helper()
	r, err := g.cpu.GetRegs()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// wantExit is one expected exit to userspace.
type wantExit struct {
	reason ExitReason
	dir    IODirection
	port   uint16
	mmio   uint64
	data   []byte // bytes written by the guest (out, MMIO write)
	reply  []byte // bytes returned to the guest (in, MMIO read)
}

// expectExits runs g and checks that it exits exactly as want says.
func expectExits(t *testing.T, g *testGuest, want []wantExit) {
	t.Helper()
	for i, w := range want {
		e := g.run(t, 5*time.Second)
		if e.Reason != w.reason {
			t.Fatalf("exit %d: got %v, want %v (rip %#x)", i, e, w.reason, g.regs(t).RIP)
		}
		var data []byte
		switch e.Reason {
		case ExitIO:
			io, err := e.IO()
			if err != nil {
				t.Fatalf("exit %d: %v", i, err)
			}
			if io.Port != w.port || io.Direction != w.dir {
				t.Fatalf("exit %d: got %v, want port %#x dir %d", i, e, w.port, w.dir)
			}
			if io.Direction == IOIn {
				if len(io.Data) != len(w.reply) {
					t.Fatalf("exit %d: %v: in of %d bytes, reply has %d", i, e, len(io.Data), len(w.reply))
				}
				copy(io.Data, w.reply)
			}
			data = io.Data
		case ExitMMIO:
			m, err := e.MMIO()
			if err != nil {
				t.Fatalf("exit %d: %v", i, err)
			}
			if m.Addr != w.mmio || m.IsWrite != (w.reply == nil) {
				t.Fatalf("exit %d: got %v, want mmio %#x write=%t", i, e, w.mmio, w.reply == nil)
			}
			if !m.IsWrite {
				if len(m.Data) != len(w.reply) {
					t.Fatalf("exit %d: %v: read of %d bytes, reply has %d", i, e, len(m.Data), len(w.reply))
				}
				copy(m.Data, w.reply)
			}
			data = m.Data
		}
		if w.data != nil && string(data) != string(w.data) {
			t.Fatalf("exit %d: %v: data % x, want % x", i, e, data, w.data)
		}
	}
}

func out(port uint16, data ...byte) wantExit {
	return wantExit{reason: ExitIO, dir: IOOut, port: port, data: data}
}

func in(port uint16, reply ...byte) wantExit {
	return wantExit{reason: ExitIO, dir: IOIn, port: port, reply: reply}
}

var hlt = wantExit{reason: ExitHLT}

func TestGuestExits(t *testing.T) {
	tests := []struct {
		name string
		code []byte
		want []wantExit
	}{
		{
			name: "hlt",
			code: []byte{0xf4}, // hlt
			want: []wantExit{hlt},
		},
		{
			name: "out",
			code: []byte{
				0xb0, 0x11, // mov al, 0x11
				0xe6, 0x10, // out 0x10, al
				0xb8, 0x33, 0x22, // mov ax, 0x2233
				0xe7, 0x12, // out 0x12, ax
				0x66, 0xb8, 0x77, 0x66, 0x55, 0x44, // mov eax, 0x44556677
				0x66, 0xe7, 0x14, // out 0x14, eax
				0xba, 0xf8, 0x03, // mov dx, 0x3f8
				0xee, // out dx, al
				0xf4, // hlt
			},
			want: []wantExit{
				out(0x10, 0x11),
				out(0x12, 0x33, 0x22),
				out(0x14, 0x77, 0x66, 0x55, 0x44),
				out(0x3f8, 0x77),
				hlt,
			},
		},
		{
			name: "in",
			code: []byte{
				0xe4, 0x20, // in al, 0x20
				0xe6, 0x21, // out 0x21, al
				0xe5, 0x22, // in ax, 0x22
				0xe7, 0x23, // out 0x23, ax
				0x66, 0xe5, 0x24, // in eax, 0x24
				0x66, 0xe7, 0x25, // out 0x25, eax
				0xba, 0xf8, 0x03, // mov dx, 0x3f8
				0xec, // in al, dx
				0xee, // out dx, al
				0xf4, // hlt
			},
			want: []wantExit{
				in(0x20, 0xa5),
				out(0x21, 0xa5),
				in(0x22, 0xef, 0xbe),
				out(0x23, 0xef, 0xbe),
				in(0x24, 0xef, 0xbe, 0xad, 0xde),
				out(0x25, 0xef, 0xbe, 0xad, 0xde),
				in(0x3f8, 0x5a),
				out(0x3f8, 0x5a),
				hlt,
			},
		},
		{
			name: "mmio",
			code: []byte{
				0xc6, 0x06, 0x00, 0x90, 0x42, // mov byte [0x9000], 0x42
				0xc7, 0x06, 0x04, 0x90, 0x34, 0x12, // mov word [0x9004], 0x1234
				0x66, 0xc7, 0x06, 0x08, 0x90, 0x78, 0x56, 0x34, 0x12, // mov dword [0x9008], 0x12345678
				0xa0, 0x10, 0x90, // mov al, [0x9010]
				0xe6, 0x10, // out 0x10, al
				0xa1, 0x12, 0x90, // mov ax, [0x9012]
				0xe7, 0x12, // out 0x12, ax
				0x66, 0xa1, 0x14, 0x90, // mov eax, [0x9014]
				0x66, 0xe7, 0x14, // out 0x14, eax
				0xf4, // hlt
			},
			want: []wantExit{
				{reason: ExitMMIO, mmio: guestMMIO, data: []byte{0x42}},
				{reason: ExitMMIO, mmio: guestMMIO + 4, data: []byte{0x34, 0x12}},
				{reason: ExitMMIO, mmio: guestMMIO + 8, data: []byte{0x78, 0x56, 0x34, 0x12}},
				{reason: ExitMMIO, mmio: guestMMIO + 0x10, reply: []byte{0xc3}},
				out(0x10, 0xc3),
				{reason: ExitMMIO, mmio: guestMMIO + 0x12, reply: []byte{0x01, 0x02}},
				out(0x12, 0x01, 0x02),
				{reason: ExitMMIO, mmio: guestMMIO + 0x14, reply: []byte{0x0a, 0x0b, 0x0c, 0x0d}},
				out(0x14, 0x0a, 0x0b, 0x0c, 0x0d),
				hlt,
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := newRealModeGuest(t, tc.code, guestOpts{})
			expectExits(t, g, tc.want)
		})
	}
}

// enterProtectedMode switches the vCPU to 32-bit protected mode with flat
// segments and an empty IDT (limit 0), through the segment caches only.
func enterProtectedMode(t *testing.T, g *testGuest) {
	t.Helper()
	s, err := g.cpu.GetSregs()
	if err != nil {
		t.Fatal(err)
	}
	s.CR0 |= 1 // PE
	code := Segment{Limit: 0xffffffff, Selector: 0x08, Type: 0xb, Present: 1, S: 1, DB: 1, G: 1}
	data := Segment{Limit: 0xffffffff, Selector: 0x10, Type: 0x3, Present: 1, S: 1, DB: 1, G: 1}
	s.CS = code
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	s.IDT = DTable{}
	if err := g.cpu.SetSregs(s); err != nil {
		t.Fatal(err)
	}
}

func TestTripleFault(t *testing.T) {
	// In protected mode with an IDT limit of 0 the #UD cannot be
	// delivered: #GP, then #DF, then a triple fault. (Real mode is no
	// good for this: KVM's emulator ignores the IVT limit there.)
	g := newRealModeGuest(t, []byte{
		0x0f, 0x0b, // ud2
		0xf4, // hlt (not reached)
	}, guestOpts{})
	enterProtectedMode(t, g)
	expectExits(t, g, []wantExit{{reason: ExitShutdown}})
}

func TestKick(t *testing.T) {
	// Kicking works with Go's default disposition of KickSignal (caught,
	// no action) and with the signal delivered to a signal.Notify channel.
	for _, notify := range []bool{false, true} {
		t.Run(fmt.Sprintf("notify=%t", notify), func(t *testing.T) {
			if notify {
				ch := make(chan os.Signal, 1)
				signal.Notify(ch, KickSignal)
				defer signal.Stop(ch)
			}
			testKick(t)
		})
	}
}

func testKick(t *testing.T) {
	g := newRealModeGuest(t, []byte{0xeb, 0xfe}, guestOpts{}) // jmp .

	done := make(chan struct{})
	defer close(done)
	go func() {
		// Kick until the vCPU leaves; the first kick may land before
		// KVM_RUN starts, which immediate_exit covers as well.
		for {
			select {
			case <-done:
				return
			case <-time.After(50 * time.Millisecond):
				if err := g.cpu.Kick(g.tid); err != nil {
					t.Error(err)
					return
				}
			}
		}
	}()
	start := time.Now()
	e, err := g.cpu.Run()
	if err != nil {
		t.Fatal(err)
	}
	if e.Reason != ExitIntr {
		t.Fatalf("got %v, want %v", e, ExitIntr)
	}
	t.Logf("kicked out after %v", time.Since(start))

	// With immediate_exit still set, KVM_RUN returns at once; cleared,
	// the guest runs again (and is kicked again).
	if e, err := g.cpu.Run(); err != nil || e.Reason != ExitIntr {
		t.Fatalf("Run with immediate_exit set: %v, %v", e, err)
	}
	if err := g.cpu.SetImmediateExit(false); err != nil {
		t.Fatal(err)
	}
	if e, err := g.cpu.Run(); err != nil || e.Reason != ExitIntr {
		t.Fatalf("second Run: %v, %v", e, err)
	}
	if r := g.regs(t); r.RIP != guestCode {
		t.Errorf("RIP = %#x, want %#x", r.RIP, guestCode)
	}
}

func TestKickClosed(t *testing.T) {
	g := newRealModeGuest(t, []byte{0xf4}, guestOpts{})
	if err := g.cpu.Close(); err != nil {
		t.Fatal(err)
	}
	if err := g.cpu.Kick(g.tid); !errors.Is(err, ErrClosed) {
		t.Fatalf("Kick after Close = %v, want ErrClosed", err)
	}
}

// newEventFD returns a non-blocking eventfd closed at the end of the test.
func newEventFD(t *testing.T) int {
	t.Helper()
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// eventCount reads and resets an eventfd's counter (0 if unsignalled).
func eventCount(t *testing.T, fd int) uint64 {
	t.Helper()
	var b [8]byte
	n, err := unix.Read(fd, b[:])
	if err == unix.EAGAIN {
		return 0
	}
	if err != nil || n != 8 {
		t.Fatalf("read eventfd: %d, %v", n, err)
	}
	return le.Uint64(b[:])
}

func writeEventFD(t *testing.T, fd int) {
	t.Helper()
	var b [8]byte
	le.PutUint64(b[:], 1)
	if _, err := unix.Write(fd, b[:]); err != nil {
		t.Fatalf("write eventfd: %v", err)
	}
}

func TestIOEventFD(t *testing.T) {
	pioFD, mmioFD := -1, -1
	match := uint64(0x42)
	pio := IOEvent{Addr: 0x30, Len: 1, PIO: true, DataMatch: &match}
	mmio := IOEvent{Addr: guestMMIO, Len: 1}
	g := newRealModeGuest(t, []byte{
		0xb0, 0x41, // mov al, 0x41
		0xe6, 0x30, // out 0x30, al      (no data match: exits)
		0xb0, 0x42, // mov al, 0x42
		0xe6, 0x30, // out 0x30, al      (ioeventfd)
		0xc6, 0x06, 0x00, 0x90, 0x07, // mov byte [0x9000], 7 (ioeventfd)
		0xc6, 0x06, 0x01, 0x90, 0x08, // mov byte [0x9001], 8 (exits)
		0xe6, 0x10, // out 0x10, al
		0xf4, // hlt
	}, guestOpts{setup: func(t *testing.T, g *testGuest) {
		pioFD, mmioFD = newEventFD(t), newEventFD(t)
		if err := g.vm.AddIOEventFD(pioFD, pio); err != nil {
			t.Fatal(err)
		}
		if err := g.vm.AddIOEventFD(mmioFD, mmio); err != nil {
			t.Fatal(err)
		}
	}})
	expectExits(t, g, []wantExit{
		out(0x30, 0x41),
		{reason: ExitMMIO, mmio: guestMMIO + 1, data: []byte{8}},
		out(0x10, 0x42),
	})
	if n := eventCount(t, pioFD); n != 1 {
		t.Errorf("port ioeventfd count = %d, want 1", n)
	}
	if n := eventCount(t, mmioFD); n != 1 {
		t.Errorf("mmio ioeventfd count = %d, want 1", n)
	}
	expectExits(t, g, []wantExit{hlt})

	if err := g.vm.RemoveIOEventFD(pioFD, pio); err != nil {
		t.Fatal(err)
	}
	if err := g.vm.RemoveIOEventFD(mmioFD, mmio); err != nil {
		t.Fatal(err)
	}
	if err := g.vm.RemoveIOEventFD(mmioFD, mmio); !errors.Is(err, unix.ENOENT) {
		t.Errorf("second removal: %v, want ENOENT", err)
	}
}

// setIVT points real-mode interrupt vector vec at 0000:handler.
func (g *testGuest) setIVT(vec int, handler uint16) {
	le.PutUint16(g.mem[vec*4:], handler)
	le.PutUint16(g.mem[vec*4+2:], 0)
}

func TestInterrupts(t *testing.T) {
	const (
		picGSI = 1  // PIC master pin 1 -> vector 0x21
		msiGSI = 24 // MSI route -> vector 0x30
		msiVec = 0x30
		sigVec = 0x41 // KVM_SIGNAL_MSI; a higher priority class than 0x30,
		// whose in-service bit stays set (real mode cannot reach the
		// LAPIC EOI register).
	)
	picFD, msiFD := -1, -1
	g := newRealModeGuest(t, []byte{
		0xb0, 0x11, 0xe6, 0x20, // 8259 ICW1: edge, cascade, ICW4 follows
		0xb0, 0x20, 0xe6, 0x21, // ICW2: vector base 0x20
		0xb0, 0x04, 0xe6, 0x21, // ICW3: slave on IRQ2
		0xb0, 0x01, 0xe6, 0x21, // ICW4: 8086 mode
		0xb0, 0xfd, 0xe6, 0x21, // OCW1: mask all but IRQ1
		0xe6, 0x10, // out 0x10, al: ready
		0xfb,       // 0x1016: sti
		0xf4,       // hlt
		0xeb, 0xfc, // jmp 0x1016
	}, guestOpts{irqchip: true, setup: func(t *testing.T, g *testGuest) {
		if err := g.vm.CreatePIT2(); err != nil {
			t.Fatal(err)
		}
		routes := append(DefaultIRQRouting(), MSIRoute(msiGSI, MSI{Address: 0xfee00000, Data: msiVec}))
		if err := g.vm.SetGSIRouting(routes); err != nil {
			t.Fatal(err)
		}
		picFD, msiFD = newEventFD(t), newEventFD(t)
		if err := g.vm.AddIRQFD(picFD, picGSI, -1); err != nil {
			t.Fatal(err)
		}
		if err := g.vm.AddIRQFD(msiFD, msiGSI, -1); err != nil {
			t.Fatal(err)
		}
	}})
	// Handlers: report on a port, EOI the PIC where needed, return.
	copy(g.mem[0x1100:], []byte{0xb0, 0x21, 0xe6, 0x12, 0xb0, 0x20, 0xe6, 0x20, 0xcf}) // out 0x12, 0x21; EOI; iret
	copy(g.mem[0x1110:], []byte{0xb0, 0x30, 0xe6, 0x13, 0xcf})                         // out 0x13, 0x30; iret
	copy(g.mem[0x1120:], []byte{0xb0, 0x41, 0xe6, 0x14, 0xcf})                         // out 0x14, 0x41; iret
	g.setIVT(0x20+picGSI, 0x1100)
	g.setIVT(msiVec, 0x1110)
	g.setIVT(sigVec, 0x1120)

	// The BSP's LINT0 is already ExtINT after reset; software-enable the
	// local APIC (spurious vector register) so MSIs are accepted.
	lapic, err := g.cpu.GetLAPIC()
	if err != nil {
		t.Fatal(err)
	}
	lapic.SetBSPLINTs()
	if err := lapic.SetReg(LAPICRegSpurious, 0x1ff); err != nil {
		t.Fatal(err)
	}
	if err := g.cpu.SetLAPIC(lapic); err != nil {
		t.Fatal(err)
	}
	if got, err := g.cpu.GetLAPIC(); err != nil {
		t.Fatal(err)
	} else if lvt0, lvt1 := got.Reg(LAPICRegLVT0)&0x700, got.Reg(LAPICRegLVT1)&0x700; lvt0 != LVTDeliveryExtINT || lvt1 != LVTDeliveryNMI {
		t.Fatalf("LVT0 mode %#x, LVT1 mode %#x", lvt0, lvt1)
	}

	expectExits(t, g, []wantExit{out(0x10, 0xfd)})

	// The vCPU halts in the kernel; the irqfd wakes it.
	time.AfterFunc(20*time.Millisecond, func() { writeEventFD(t, picFD) })
	expectExits(t, g, []wantExit{out(0x12, 0x21)})

	writeEventFD(t, msiFD)
	expectExits(t, g, []wantExit{out(0x13, 0x30)})

	time.AfterFunc(20*time.Millisecond, func() {
		ok, err := g.vm.SignalMSI(MSI{Address: 0xfee00000, Data: sigVec})
		if err != nil || !ok {
			t.Errorf("SignalMSI = %t, %v", ok, err)
		}
	})
	expectExits(t, g, []wantExit{out(0x14, 0x41)})

	// A level-triggered line with a resample fd, and a direct line change.
	resample := newEventFD(t)
	if err := g.vm.AddIRQFD(newEventFD(t), 5, resample); err != nil {
		t.Errorf("AddIRQFD with resample: %v", err)
	}
	if err := g.vm.SetIRQLine(4, true); err != nil {
		t.Error(err)
	}
	if err := g.vm.SetIRQLine(4, false); err != nil {
		t.Error(err)
	}
	if err := g.vm.RemoveIRQFD(picFD, picGSI); err != nil {
		t.Error(err)
	}
}

func TestInjectException(t *testing.T) {
	g := newRealModeGuest(t, []byte{
		0xe6, 0x10, // out 0x10, al
		0xf4, // hlt (skipped: the #UD handler does not return)
	}, guestOpts{})
	copy(g.mem[0x1100:], []byte{0xb0, 0x06, 0xe6, 0x15, 0xf4}) // out 0x15, 6; hlt
	g.setIVT(6, 0x1100)
	expectExits(t, g, []wantExit{{reason: ExitIO, dir: IOOut, port: 0x10}})
	if err := g.cpu.InjectException(6, nil); err != nil {
		t.Fatal(err)
	}
	expectExits(t, g, []wantExit{out(0x15, 6), hlt})
}

// TestEmulationFailure runs an instruction KVM's emulator does not know
// (popcnt). Hardware KVM executes it; under PVM every CPL0 instruction of a
// non-PVM guest is emulated and KVM reports an emulation failure with the
// instruction bytes. Both outcomes pass; the log says which one happened.
func TestEmulationFailure(t *testing.T) {
	sys := openKVM(t)
	supported, err := sys.CheckExtension(CapExitOnEmulationFailure)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("KVM_CAP_EXIT_ON_EMULATION_FAILURE: %d; host: %+v", supported, DetectHostProfile())

	insn := []byte{0xf3, 0x0f, 0xb8, 0xc0}            // popcnt ax, ax
	code := append([]byte{0xb8, 0xff, 0x00}, insn...) // mov ax, 0xff
	code = append(code, 0xe6, 0x10, 0xf4)             // out 0x10, al; hlt
	g := newRealModeGuest(t, code, guestOpts{setup: func(t *testing.T, g *testGuest) {
		if supported > 0 {
			if err := g.vm.EnableCap(CapExitOnEmulationFailure, 1); err != nil {
				t.Fatal(err)
			}
		}
	}})
	e := g.run(t, 5*time.Second)
	switch e.Reason {
	case ExitIO:
		io, err := e.IO()
		if err != nil || io.Port != 0x10 || io.Data[0] != 8 {
			t.Fatalf("popcnt executed but got %v (%v), want out 0x10 of 8", e, err)
		}
		t.Log("popcnt executed natively")
	case ExitInternalError:
		ie := e.InternalError()
		if ie.Suberror != InternalErrorEmulation {
			t.Fatalf("got %v, want an emulation failure", e)
		}
		if len(ie.InsnBytes) < len(insn) || string(ie.InsnBytes[:len(insn)]) != string(insn) {
			t.Fatalf("instruction bytes % x, want prefix % x", ie.InsnBytes, insn)
		}
		if r := g.regs(t); r.RIP != guestCode+3 {
			t.Errorf("RIP = %#x, want %#x (the popcnt)", r.RIP, guestCode+3)
		}
		t.Logf("emulation failure: %v", e)
	default:
		t.Fatalf("got %v", e)
	}
}

func TestTranslateAddress(t *testing.T) {
	g := newRealModeGuest(t, []byte{0xf4}, guestOpts{})
	gpa, ok, err := g.cpu.TranslateAddress(0x1234)
	if err != nil {
		t.Fatal(err)
	}
	if !ok || gpa != 0x1234 {
		t.Fatalf("TranslateAddress(0x1234) = %#x, %t; want identity in real mode", gpa, ok)
	}
}

func TestVCPUState(t *testing.T) {
	g := newRealModeGuest(t, []byte{
		0xe6, 0x10, // out 0x10, al
		0xf4, // hlt (handled in the kernel with the in-kernel irqchip)
	}, guestOpts{irqchip: true})
	cpu := g.cpu

	fpu, err := cpu.GetFPU()
	if err != nil {
		t.Fatal(err)
	}
	if fpu.FCW != DefaultFCW {
		t.Errorf("reset FCW = %#x, want %#x", fpu.FCW, DefaultFCW)
	}
	fpu.FCW = 0x27f
	fpu.XMM[1][0] = 0x55
	if err := cpu.SetFPU(fpu); err != nil {
		t.Fatal(err)
	}
	if got, err := cpu.GetFPU(); err != nil || got.FCW != 0x27f || got.XMM[1][0] != 0x55 {
		t.Fatalf("GetFPU after SetFPU: FCW %#x, XMM1[0] %#x, %v", got.FCW, got.XMM[1][0], err)
	}

	// MXCSR goes through XSAVE: KVM_GET/SET_FPU ignore it.
	if n, _ := g.sys.CheckExtension(CapXSave); n > 0 {
		x, err := cpu.GetXSave()
		if err != nil {
			t.Fatal(err)
		}
		if x.MXCSR() != DefaultMXCSR {
			t.Errorf("reset MXCSR = %#x, want %#x", x.MXCSR(), DefaultMXCSR)
		}
		x.SetMXCSR(DefaultMXCSR | 0x8000) // flush to zero
		if err := cpu.SetXSave(x); err != nil {
			t.Fatal(err)
		}
		if x, err := cpu.GetXSave(); err != nil || x.MXCSR() != DefaultMXCSR|0x8000 {
			t.Errorf("MXCSR after SetXSave = %#x, %v", x.MXCSR(), err)
		}
	} else {
		t.Log("KVM_CAP_XSAVE not offered")
	}

	if s, err := cpu.GetMPState(); err != nil || s != MPStateRunnable {
		t.Fatalf("GetMPState = %d, %v; want runnable", s, err)
	}
	if err := cpu.SetMPState(MPStateRunnable); err != nil {
		t.Fatal(err)
	}

	ev, err := cpu.GetVCPUEvents()
	if err != nil {
		t.Fatal(err)
	}
	if err := cpu.SetVCPUEvents(ev); err != nil {
		t.Fatal(err)
	}

	cpuid, err := g.sys.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	if err := cpu.SetCPUID2(cpuid); err != nil {
		t.Fatal(err)
	}

	msrs := []MSREntry{{Index: 0x1b}, {Index: 0x174}} // IA32_APIC_BASE, IA32_SYSENTER_CS
	if err := cpu.GetMSRs(msrs); err != nil {
		t.Fatal(err)
	}
	if msrs[0].Data&0x900 != 0x900 { // BSP, enabled
		t.Errorf("IA32_APIC_BASE = %#x, want BSP and enable bits", msrs[0].Data)
	}
	msrs[1].Data = 0x10
	if err := cpu.SetMSRs(msrs[1:]); err != nil {
		t.Fatal(err)
	}
	var me *MSRError
	if err := cpu.SetMSRs([]MSREntry{{Index: 0x174, Data: 0x10}, {Index: 0xdeadbeef}}); !errors.As(err, &me) || me.Index != 0xdeadbeef {
		t.Errorf("SetMSRs with a bogus MSR = %v, want MSRError for 0xdeadbeef", err)
	}
	if err := cpu.GetMSRs([]MSREntry{{Index: 0xdeadbeef}}); !errors.As(err, &me) {
		t.Errorf("GetMSRs with a bogus MSR = %v, want MSRError", err)
	}
	expectExits(t, g, []wantExit{{reason: ExitIO, dir: IOOut, port: 0x10}})
}

func TestSingleStep(t *testing.T) {
	g := newRealModeGuest(t, []byte{
		0x90,       // nop
		0x90,       // nop
		0xe6, 0x10, // out 0x10, al
		0xf4, // hlt
	}, guestOpts{})
	if err := g.cpu.SetGuestDebug(&GuestDebug{Control: GuestDebugEnable | GuestDebugSingleStep}); err != nil {
		t.Fatal(err)
	}
	for _, pc := range []uint64{guestCode + 1, guestCode + 2} {
		e := g.run(t, 5*time.Second)
		if e.Reason != ExitDebug || e.Debug().PC != pc || e.Debug().Exception != 1 {
			t.Fatalf("got %v, want a #DB exit at %#x", e, pc)
		}
	}
	expectExits(t, g, []wantExit{out(0x10, 0)})
}

// TestRunAllocs checks that the exit path (Run and decoding a port write)
// does not allocate.
func TestRunAllocs(t *testing.T) {
	g := newRealModeGuest(t, []byte{
		0xe6, 0x10, // out 0x10, al
		0xeb, 0xfc, // jmp back to the out
	}, guestOpts{})
	var failed error
	allocs := testing.AllocsPerRun(100, func() {
		e, err := g.cpu.Run()
		for err == nil && e.Reason == ExitIntr { // a stray signal
			e, err = g.cpu.Run()
		}
		if err != nil || e.Reason != ExitIO {
			failed = fmt.Errorf("Run = %v, %v", e, err)
			return
		}
		if io, err := e.IO(); err != nil || io.Port != 0x10 {
			failed = fmt.Errorf("IO = %+v, %v", io, err)
		}
	})
	if failed != nil {
		t.Fatal(failed)
	}
	if allocs != 0 {
		t.Errorf("Run + IO allocate %.1f times per exit", allocs)
	}
}

// TestStats runs a guest that does four port writes and halts, and reads
// KVM's counters of the vCPU: "exits" counts those five exits, and the
// counters can be read from another goroutine.
func TestStats(t *testing.T) {
	g := newRealModeGuest(t, []byte{
		0xe6, 0x10, // out 0x10, al
		0xe6, 0x10,
		0xe6, 0x10,
		0xe6, 0x10,
		0xf4, // hlt
	}, guestOpts{})
	st, err := g.cpu.OpenStats()
	if errors.Is(err, ErrNoStats) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	before, err := st.Read()
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		g.run(t, 5*time.Second)
	}
	done := make(chan map[string]uint64, 1)
	go func() { after, _ := st.Read(); done <- after }()
	after := <-done
	// (io_exits is not counted by every KVM: PVM's emulator leaves it 0.)
	if after["exits"]-before["exits"] < 5 {
		t.Errorf("exits %d -> %d", before["exits"], after["exits"])
	}
}
