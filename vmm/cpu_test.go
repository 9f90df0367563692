package vmm

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/govmd/govmd/internal/eventfd"
	"github.com/govmd/govmd/kvm"
)

func find(entries []kvm.CPUIDEntry, fn, index uint32) (kvm.CPUIDEntry, bool) {
	for _, e := range entries {
		if e.Function == fn && e.Index == index {
			return e, true
		}
	}
	return kvm.CPUIDEntry{}, false
}

func TestGuestCPUID(t *testing.T) {
	all := ^uint32(0)
	supported := []kvm.CPUIDEntry{
		{Function: 1, EAX: 0x00a10f11, EBX: 0xff000800, ECX: all &^ cpuid1ECXHypervisor, EDX: all},
		{Function: 7, Index: 0, EBX: all, ECX: all, EDX: all},
		{Function: 7, Index: 1, EAX: all},
		{Function: 0xb, Index: 0, EAX: 1, EBX: 2, ECX: 0x100, EDX: 99},
		{Function: 0xb, Index: 1, EAX: 7, EBX: 64, ECX: 0x201, EDX: 99},
		{Function: 0xd, Index: 0, EAX: 7},
		{Function: 0x40000001, EAX: all},
		{Function: 0x80000001, ECX: all},
		{Function: 0x80000008, ECX: 0x703f},
		{Function: 0x8000001e, EAX: 5},
	}
	tests := []struct {
		name    string
		id, n   int
		p       guestProfile
		fn, idx uint32
		check   func(e kvm.CPUIDEntry) bool
		what    string
		absent  bool
	}{
		{"apic id", 3, 4, guestProfile{}, 1, 0, func(e kvm.CPUIDEntry) bool { return e.EBX>>24 == 3 && e.EBX>>16&0xff == 4 }, "EBX apic id 3, 4 logical", false},
		{"hypervisor bit", 0, 1, guestProfile{}, 1, 0, func(e kvm.CPUIDEntry) bool { return e.ECX&cpuid1ECXHypervisor != 0 }, "ECX bit 31 set", false},
		{"x2apic id", 2, 4, guestProfile{}, 0xb, 1, func(e kvm.CPUIDEntry) bool { return e.EDX == 2 && e.EBX == 4 && e.EAX == 2 }, "EDX 2, 4 cores, shift 2", false},
		{"smt level", 2, 4, guestProfile{}, 0xb, 0, func(e kvm.CPUIDEntry) bool { return e.EBX == 1 && e.EAX == 0 }, "1 thread", false},
		{"amd cores", 0, 2, guestProfile{}, 0x80000008, 0, func(e kvm.CPUIDEntry) bool { return e.ECX&0xff == 1 && e.ECX>>12&0xf == 1 }, "NC 1", false},
		{"no topoext", 0, 2, guestProfile{}, 0x80000001, 0, func(e kvm.CPUIDEntry) bool { return e.ECX&cpuid80000001ECXTOE == 0 }, "TOPOEXT clear", false},
		{"host keeps popcnt", 0, 1, guestProfile{}, 1, 0, func(e kvm.CPUIDEntry) bool { return e.ECX&cpuid1ECXPOPCNT != 0 && e.ECX&cpuid1ECXXSAVE != 0 }, "popcnt and xsave", false},
		{"host keeps smap", 0, 1, guestProfile{}, 7, 0, func(e kvm.CPUIDEntry) bool { return e.EBX&cpuid7EBXSMAP != 0 }, "smap", false},
		{"host keeps xsave leaf", 0, 1, guestProfile{}, 0xd, 0, func(kvm.CPUIDEntry) bool { return true }, "", false},
		{"pvm clears popcnt cx16 xsave", 0, 1, guestProfile{pvm: true}, 1, 0, func(e kvm.CPUIDEntry) bool {
			return e.ECX&(cpuid1ECXPOPCNT|cpuid1ECXCX16|cpuid1ECXXSAVE|cpuid1ECXOSXSAVE|cpuid1ECXAVX) == 0
		}, "popcnt, cx16, xsave, avx clear", false},
		{"pvm clears smap fsgsbase erms archcaps", 0, 1, guestProfile{pvm: true}, 7, 0, func(e kvm.CPUIDEntry) bool {
			return e.EBX&(cpuid7EBXSMAP|cpuid7EBXFSGSBASE|cpuid7EBXERMS|cpuid7EBXAVX2) == 0 && e.EDX&(cpuid7EDXArchCaps|cpuid7EDXFSRM) == 0
		}, "smap, fsgsbase, erms, avx2, arch_capabilities clear", false},
		{"pvm leaves leaf 7.1", 0, 1, guestProfile{pvm: true}, 7, 1, func(e kvm.CPUIDEntry) bool { return e.EAX == all }, "untouched", false},
		{"pvm clears pv hypercall features", 0, 1, guestProfile{pvm: true}, 0x40000001, 0, func(e kvm.CPUIDEntry) bool {
			return e.EAX&(kvmFeaturePVSendIPI|kvmFeaturePVSchedYield|kvmFeaturePVUnhalt) == 0 && e.EAX&1 != 0
		}, "PV IPI, yield, unhalt clear; clocksource kept", false},
		{"pvm drops xsave leaf", 0, 1, guestProfile{pvm: true}, 0xd, 0, nil, "", true},
		{"bare has no hypervisor bit", 0, 1, guestProfile{bare: true}, 1, 0, func(e kvm.CPUIDEntry) bool { return e.ECX&cpuid1ECXHypervisor == 0 && e.ECX&cpuid1ECXPOPCNT != 0 }, "ECX bit 31 clear, popcnt kept", false},
		{"bare has no kvm leaves", 0, 1, guestProfile{bare: true}, 0x40000001, 0, nil, "", true},
		{"host keeps kvm leaves", 0, 1, guestProfile{}, 0x40000001, 0, func(e kvm.CPUIDEntry) bool { return e.EAX == all }, "all PV features", false},
		{"topoext leaf dropped", 0, 1, guestProfile{}, 0x8000001e, 0, nil, "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := guestCPUID(supported, tc.id, tc.n, tc.p)
			e, ok := find(got, tc.fn, tc.idx)
			if tc.absent {
				if ok {
					t.Fatalf("leaf %#x.%d present: %+v", tc.fn, tc.idx, e)
				}
				return
			}
			if !ok {
				t.Fatalf("leaf %#x.%d missing", tc.fn, tc.idx)
			}
			if !tc.check(e) {
				t.Errorf("leaf %#x.%d = %+v, want %s", tc.fn, tc.idx, e, tc.what)
			}
		})
	}
	// The input is not modified.
	if supported[0].ECX != all&^cpuid1ECXHypervisor {
		t.Error("guestCPUID modified its input")
	}
}

func TestResolveProfile(t *testing.T) {
	pvmHost := func() kvm.HostProfile { return kvm.HostProfile{PVM: true, Reason: "test"} }
	tcgHost := func() kvm.HostProfile { return kvm.HostProfile{Bare: true, Reason: "test"} }
	hw := func() kvm.HostProfile { return kvm.HostProfile{Reason: "test"} }
	for _, tc := range []struct {
		profile CPUProfile
		detect  func() kvm.HostProfile
		want    guestProfile
	}{
		{ProfileAuto, pvmHost, guestProfile{pvm: true}}, {ProfileAuto, hw, guestProfile{}},
		{ProfileAuto, tcgHost, guestProfile{bare: true}}, {ProfileHost, pvmHost, guestProfile{}},
		{ProfileHost, tcgHost, guestProfile{}}, {ProfilePVM, hw, guestProfile{pvm: true}},
		{ProfileBare, hw, guestProfile{bare: true}},
	} {
		if got, _ := resolveProfile(tc.profile, tc.detect); got != tc.want {
			t.Errorf("resolveProfile(%q) = %+v, want %+v", tc.profile, got, tc.want)
		}
	}
}

func TestEmulateFailed(t *testing.T) {
	tests := []struct {
		name   string
		insn   []byte
		cpl    int
		long   bool
		before kvm.Regs
		after  kvm.Regs
		bp     bool
		fail   bool
	}{
		{name: "clac", insn: []byte{0x0f, 0x01, 0xca, 0x90}, before: kvm.Regs{RIP: 0x1000, RFLAGS: 2 | flagAC}, after: kvm.Regs{RIP: 0x1003, RFLAGS: 2}},
		{name: "stac", insn: []byte{0x0f, 0x01, 0xcb}, before: kvm.Regs{RIP: 0x1000, RFLAGS: 2}, after: kvm.Regs{RIP: 0x1003, RFLAGS: 2 | flagAC}},
		{name: "clac at cpl3", insn: []byte{0x0f, 0x01, 0xca}, cpl: 3, fail: true},
		{name: "fwait", insn: []byte{0x9b, 0xdb, 0xe2}, before: kvm.Regs{RIP: 0x10}, after: kvm.Regs{RIP: 0x11}},
		{name: "int3 at cpl0", insn: []byte{0xcc}, before: kvm.Regs{RIP: 0x20}, after: kvm.Regs{RIP: 0x21}, bp: true},
		{name: "int3 at cpl3", insn: []byte{0xcc}, cpl: 3, fail: true},
		{name: "popcnt rdi->rax 64", insn: []byte{0xf3, 0x48, 0x0f, 0xb8, 0xc7}, long: true,
			before: kvm.Regs{RIP: 0x100, RDI: 0xff00ff00ff00ff00, RAX: 7, RFLAGS: 2 | flagCF | flagZF},
			after:  kvm.Regs{RIP: 0x105, RDI: 0xff00ff00ff00ff00, RAX: 32, RFLAGS: 2}},
		{name: "popcnt ecx->r9d zero", insn: []byte{0xf3, 0x44, 0x0f, 0xb8, 0xc9}, long: true,
			before: kvm.Regs{RIP: 0x100, RCX: 0xffffffff00000000, R9: 0xdead, RFLAGS: 2},
			after:  kvm.Regs{RIP: 0x105, RCX: 0xffffffff00000000, R9: 0, RFLAGS: 2 | flagZF}},
		{name: "popcnt 16-bit", insn: []byte{0x66, 0xf3, 0x0f, 0xb8, 0xd8}, long: true,
			before: kvm.Regs{RIP: 0x100, RAX: 0x1_0003, RBX: 0xaaaa_0000, RFLAGS: 2},
			after:  kvm.Regs{RIP: 0x105, RAX: 0x1_0003, RBX: 0xaaaa_0002, RFLAGS: 2}},
		{name: "popcnt memory operand", insn: []byte{0xf3, 0x48, 0x0f, 0xb8, 0x07}, long: true, fail: true},
		{name: "xrstor", insn: []byte{0x48, 0x0f, 0xae, 0x2f}, long: true, fail: true},
		{name: "empty", insn: nil, fail: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			regs := tc.before
			em, err := emulateFailed(tc.insn, &regs, tc.cpl, tc.long)
			if tc.fail {
				if err == nil {
					t.Fatalf("emulated %q", em.name)
				}
				if regs != tc.before {
					t.Error("registers changed by a refused instruction")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if regs != tc.after {
				t.Errorf("registers\n got %+v\nwant %+v", regs, tc.after)
			}
			if em.injectBP != tc.bp {
				t.Errorf("injectBP %v", em.injectBP)
			}
		})
	}
}

func FuzzEmulateFailed(f *testing.F) {
	f.Add([]byte{0xf3, 0x48, 0x0f, 0xb8, 0xc7}, uint8(0), true)
	f.Add([]byte{0x66, 0xf3, 0x0f, 0xb8}, uint8(0), false)
	f.Add([]byte{0x0f, 0x01, 0xca}, uint8(3), true)
	f.Fuzz(func(t *testing.T, insn []byte, cpl uint8, long bool) {
		var regs kvm.Regs
		_, _ = emulateFailed(insn, &regs, int(cpl&3), long)
		_ = describeInsn(insn)
	})
}

func TestDescribeInsn(t *testing.T) {
	for _, tc := range []struct {
		insn []byte
		want string
	}{
		{[]byte{0x0f, 0x01, 0xca}, "clac"},
		{[]byte{0x48, 0x0f, 0xae, 0x2f}, "xrstor"},
		{[]byte{0xf0, 0x48, 0x0f, 0xc7, 0x4d, 0x20}, "cmpxchg"},
		{[]byte{0xf3, 0x48, 0x0f, 0xb8, 0xc7}, "popcnt"},
		{[]byte{0xf3, 0x48, 0x0f, 0xae, 0xd8}, "FSGSBASE"},
		{[]byte{0x0f, 0x01, 0xd9}, "hypercall"},
		{[]byte{0x90}, ""},
		{nil, ""},
	} {
		if got := describeInsn(tc.insn); !strings.Contains(got, tc.want) || (tc.want == "" && got != "") {
			t.Errorf("describeInsn(% x) = %q, want %q", tc.insn, got, tc.want)
		}
	}
}

// fakeIRQVM records what the interrupt plumbing asks of KVM.
type fakeIRQVM struct {
	tables  [][]kvm.RoutingEntry
	irqfds  map[int]uint32
	signals []kvm.MSI
	failFD  bool
}

func (f *fakeIRQVM) SetGSIRouting(e []kvm.RoutingEntry) error {
	f.tables = append(f.tables, append([]kvm.RoutingEntry(nil), e...))
	return nil
}
func (f *fakeIRQVM) SignalMSI(m kvm.MSI) (bool, error) {
	f.signals = append(f.signals, m)
	return true, nil
}
func (f *fakeIRQVM) AddIRQFD(fd int, gsi uint32, rs int) error {
	if f.failFD {
		return errFake
	}
	if f.irqfds == nil {
		f.irqfds = map[int]uint32{}
	}
	f.irqfds[fd] = gsi
	return nil
}
func (f *fakeIRQVM) RemoveIRQFD(fd int, gsi uint32) error { delete(f.irqfds, fd); return nil }

type fakeErr string

func (e fakeErr) Error() string { return string(e) }

const errFake = fakeErr("refused")

func TestMSIXSink(t *testing.T) {
	vm := &fakeIRQVM{}
	r := newRouter(vm, kvm.PCIRQRouting())
	s, err := newMSIXSink(vm, r, 3, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if len(vm.irqfds) != 3 {
		t.Fatalf("%d irqfds", len(vm.irqfds))
	}
	s.Route(1, 0xfee01000, 0x41, false)
	if len(vm.tables) != 1 {
		t.Fatalf("route not installed")
	}
	last := vm.tables[0]
	e := last[len(last)-1]
	if e.Kind != kvm.RouteMSI || e.GSI != firstMSIGSI+1 || e.MSI.Address != 0xfee01000 || e.MSI.Data != 0x41 {
		t.Fatalf("route %v", e)
	}
	if len(last) != len(kvm.PCIRQRouting())+1 {
		t.Errorf("table has %d entries; the irqchip routes must stay", len(last))
	}
	// Same message: no new table. A delivery is an eventfd write.
	s.Route(1, 0xfee01000, 0x41, false)
	s.Deliver(1, 0xfee01000, 0x41)
	if len(vm.tables) != 1 || len(vm.signals) != 0 {
		t.Fatalf("tables %d signals %d", len(vm.tables), len(vm.signals))
	}
	if !s.vectors[1].fd.TryRead() {
		t.Error("delivery did not signal the irqfd")
	}
	// A delivery with a message the route does not have yet (a pending
	// vector unmasked) installs it first.
	s.Deliver(2, 0xfee00000, 0x50)
	if len(vm.tables) != 2 || !s.vectors[2].fd.TryRead() {
		t.Fatalf("pending delivery: tables %d", len(vm.tables))
	}
	s.Deliver(7, 0, 0) // out of range: ignored
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if len(vm.irqfds) != 0 {
		t.Errorf("irqfds left: %v", vm.irqfds)
	}
}

// TestMSIXSinkVectorFD: a vector handed out for direct writes (a
// vhost-user backend's call fd) gets its route first, its irqfd is
// deassigned while the guest masks the vector and assigned again, after
// the new route, when it is unmasked.
func TestMSIXSinkVectorFD(t *testing.T) {
	vm := &fakeIRQVM{}
	s, err := newMSIXSink(vm, newRouter(vm, kvm.PCIRQRouting()), 2, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fd, ok := s.VectorFD(1, 0xfee01000, 0x41)
	if !ok || fd != s.vectors[1].fd.FD() {
		t.Fatalf("VectorFD = %d, %v", fd, ok)
	}
	last := vm.tables[len(vm.tables)-1]
	if e := last[len(last)-1]; e.GSI != firstMSIGSI+1 || e.MSI.Data != 0x41 {
		t.Fatalf("route not installed before the fd was handed out: %v", e)
	}
	s.Route(1, 0xfee01000, 0x41, true)
	if _, ok := vm.irqfds[fd]; ok {
		t.Fatal("masked direct vector still has its irqfd")
	}
	s.Route(0, 0xfee00000, 0x40, true) // not direct: its irqfd stays
	if _, ok := vm.irqfds[s.vectors[0].fd.FD()]; !ok {
		t.Fatal("a masked vector that was not handed out lost its irqfd")
	}
	n := len(vm.tables)
	s.Route(1, 0xfee02000, 0x42, false)
	if gsi, ok := vm.irqfds[fd]; !ok || gsi != firstMSIGSI+1 {
		t.Fatal("unmasked direct vector has no irqfd")
	}
	last = vm.tables[len(vm.tables)-1]
	if len(vm.tables) != n+1 || last[len(last)-1].MSI.Data != 0x42 {
		t.Fatal("the new message was not routed at unmask")
	}
	if _, ok := s.VectorFD(5, 0, 0); ok {
		t.Fatal("VectorFD beyond the table")
	}
}

func TestMSIXSinkWithoutIRQFD(t *testing.T) {
	vm := &fakeIRQVM{failFD: true}
	s, err := newMSIXSink(vm, newRouter(vm, kvm.PCIRQRouting()), 1, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Deliver(0, 0xfee00000, 0x30)
	if len(vm.signals) != 1 || vm.signals[0].Data != 0x30 {
		t.Fatalf("fallback KVM_SIGNAL_MSI not used: %v", vm.signals)
	}
	if _, ok := s.VectorFD(0, 0xfee00000, 0x30); ok {
		t.Fatal("a vector without irqfd handed out for direct writes")
	}
}

func TestINTxLineResample(t *testing.T) {
	vm := &fakeIRQVM{}
	l, err := newINTxLine(vm, 17)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	got := make(chan struct{}, 1)
	go func() {
		l.serveResample(func() { got <- struct{}{} })
		close(done)
	}()
	l.Raise()
	if !l.fd.TryRead() {
		t.Error("Raise did not signal the irqfd")
	}
	// KVM signals the resample eventfd after the guest's EOI.
	if err := l.resample.Write(); err != nil {
		t.Fatal(err)
	}
	<-got
	l.Close()
	<-done
	var _ *eventfd.EventFD = l.fd
}

func TestCPUProfileText(t *testing.T) {
	for _, p := range []CPUProfile{ProfileAuto, ProfileHost, ProfilePVM, ProfileBare} {
		b, _ := p.MarshalText()
		var q CPUProfile
		if err := q.UnmarshalText(b); err != nil || q != p {
			t.Errorf("%v: round trip gave %v, %v", p, q, err)
		}
	}
	var q CPUProfile
	if err := q.UnmarshalText([]byte("fast")); err == nil {
		t.Error("fast accepted")
	}
}

func TestExitStats(t *testing.T) {
	s := exitStats{perCPU: make([]vcpuExits, 2)}
	s.perCPU[0].add(kvm.ExitIO)
	s.perCPU[1].add(kvm.ExitIO)
	s.perCPU[1].add(kvm.ExitMMIO)
	s.perCPU[0].add(kvm.ExitReason(1000)) // beyond the table: the last counter
	if !s.emulatedInsn("clac") || s.emulatedInsn("clac") {
		t.Error("first emulated clac not reported once")
	}
	got := s.byReason()
	if got[kvm.ExitIO] != 2 || got[kvm.ExitMMIO] != 1 || got[maxCountedExit] != 1 || len(got) != 3 {
		t.Errorf("byReason = %v", got)
	}
	if str := s.String(); !strings.Contains(str, "IO=2") || !strings.Contains(str, "MMIO=1") || !strings.Contains(str, "emulated_clac=2") {
		t.Errorf("String = %q", str)
	}
}
