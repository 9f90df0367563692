package kvm

import (
	"reflect"
	"strings"
	"testing"
)

func TestDefaultIRQRouting(t *testing.T) {
	routes := DefaultIRQRouting()
	if len(routes) != 24+16 {
		t.Fatalf("%d routes, want 40", len(routes))
	}
	tests := []struct {
		i    int
		want RoutingEntry
	}{
		{0, IRQChipRoute(0, IRQChipIOAPIC, 0)},
		{1, IRQChipRoute(0, IRQChipPICMaster, 0)},
		{4, IRQChipRoute(2, IRQChipIOAPIC, 2)},
		{5, IRQChipRoute(2, IRQChipPICMaster, 2)},
		{16, IRQChipRoute(8, IRQChipIOAPIC, 8)},
		{17, IRQChipRoute(8, IRQChipPICSlave, 0)},
		{31, IRQChipRoute(15, IRQChipPICSlave, 7)},
		{32, IRQChipRoute(16, IRQChipIOAPIC, 16)},
		{39, IRQChipRoute(23, IRQChipIOAPIC, 23)},
	}
	for _, tc := range tests {
		if routes[tc.i] != tc.want {
			t.Errorf("route %d = %v, want %v", tc.i, routes[tc.i], tc.want)
		}
	}
}

// TestPCIRQRouting: the PIT's GSI 0 reaches IOAPIC pin 2 (the MADT's
// IRQ0 override) and PIC pin 0; GSI 2 has no route; the rest is
// DefaultIRQRouting.
func TestPCIRQRouting(t *testing.T) {
	routes := PCIRQRouting()
	if len(routes) != 24+16-2 {
		t.Fatalf("%d routes, want 38", len(routes))
	}
	toPin := map[[2]uint32]uint32{} // (gsi, chip) -> pin
	for _, e := range routes {
		if e.GSI == 2 {
			t.Errorf("route for GSI 2: %v", e)
		}
		toPin[[2]uint32{e.GSI, uint32(e.Chip)}] = e.Pin
	}
	for _, tc := range []struct {
		gsi  uint32
		chip IRQChip
		pin  uint32
	}{
		{0, IRQChipIOAPIC, 2}, {0, IRQChipPICMaster, 0}, {4, IRQChipIOAPIC, 4}, {4, IRQChipPICMaster, 4},
		{9, IRQChipIOAPIC, 9}, {9, IRQChipPICSlave, 1}, {23, IRQChipIOAPIC, 23},
	} {
		if pin, ok := toPin[[2]uint32{tc.gsi, uint32(tc.chip)}]; !ok || pin != tc.pin {
			t.Errorf("GSI %d chip %d: pin %d (routed %v), want %d", tc.gsi, tc.chip, pin, ok, tc.pin)
		}
	}
}

func TestEncodeRouting(t *testing.T) {
	b, err := encodeRouting([]RoutingEntry{
		IRQChipRoute(9, IRQChipPICSlave, 1),
		MSIRoute(24, MSI{Address: 0x1_fee01000, Data: 0x4041}),
	})
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, routingHeaderSize+2*routingEntrySize)
	want[0] = 2 // nr
	e := want[routingHeaderSize:]
	e[0], e[4], e[16], e[20] = 9, byte(RouteIRQChip), byte(IRQChipPICSlave), 1
	e = e[routingEntrySize:]
	e[0], e[4] = 24, byte(RouteMSI)
	copy(e[16:], []byte{0x00, 0x10, 0xe0, 0xfe, 0x01, 0, 0, 0, 0x41, 0x40})
	if !reflect.DeepEqual(b, want) {
		t.Fatalf("encodeRouting:\n got % x\nwant % x", b, want)
	}
	if _, err := encodeRouting([]RoutingEntry{{GSI: 1, Kind: 7}}); err == nil {
		t.Error("unknown route kind accepted")
	}
	if _, err := encodeRouting(make([]RoutingEntry, maxRoutes+1)); err == nil {
		t.Error("too many routes accepted")
	}
	if s := MSIRoute(24, MSI{Address: 0xfee00000, Data: 0x30}).String(); !strings.Contains(s, "msi") {
		t.Errorf("String() = %q", s)
	}
}

func TestCPUIDRoundTrip(t *testing.T) {
	in := []CPUIDEntry{
		{Function: 0, EAX: 0xd, EBX: 0x756e6547, ECX: 0x6c65746e, EDX: 0x49656e69},
		{Function: 7, Index: 0, Flags: CPUIDFlagSignificantIndex, EBX: 0x1234},
	}
	b := encodeCPUID2(in)
	if len(b) != 8+2*40 || le.Uint32(b) != 2 || le.Uint32(b[8+40+8:]) != CPUIDFlagSignificantIndex {
		t.Fatalf("encodeCPUID2 layout wrong: % x", b)
	}
	out, err := decodeCPUID2(b)
	if err != nil || !reflect.DeepEqual(in, out) {
		t.Fatalf("round trip = %+v, %v", out, err)
	}
	le.PutUint32(b, 3) // nent beyond the buffer
	if _, err := decodeCPUID2(b); err == nil {
		t.Error("decodeCPUID2 accepted nent past the buffer")
	}
	if _, err := decodeCPUID2(b[:4]); err == nil {
		t.Error("decodeCPUID2 accepted a short buffer")
	}
}

func TestMSREncoding(t *testing.T) {
	entries := []MSREntry{{Index: 0x10}, {Index: 0xc0000080, Data: 0x500}}
	b := encodeMSRs(entries)
	if len(b) != 8+2*16 || le.Uint32(b) != 2 || le.Uint32(b[8+16:]) != 0xc0000080 || le.Uint64(b[8+16+8:]) != 0x500 {
		t.Fatalf("encodeMSRs layout wrong: % x", b)
	}
	le.PutUint64(b[8+8:], 77)
	le.PutUint64(b[8+16+8:], 88)
	decodeMSRData(b, entries, 1)
	if entries[0].Data != 77 || entries[1].Data != 0x500 {
		t.Fatalf("decodeMSRData(n=1) = %+v", entries)
	}
	decodeMSRData(b[:20], entries, 2) // truncated: no panic, no change
	if entries[1].Data != 0x500 {
		t.Fatalf("decodeMSRData read past the buffer: %+v", entries)
	}

	l := encodeMSRList(2)
	le.PutUint32(l[4:], 0x10)
	le.PutUint32(l[8:], 0x1b)
	if got, err := decodeMSRList(l); err != nil || !reflect.DeepEqual(got, []uint32{0x10, 0x1b}) {
		t.Fatalf("decodeMSRList = %#x, %v", got, err)
	}
	le.PutUint32(l, 100)
	if _, err := decodeMSRList(l); err == nil {
		t.Error("decodeMSRList accepted a count past the buffer")
	}
}

func TestLAPICState(t *testing.T) {
	var l LAPICState
	le.PutUint32(l[LAPICRegLVT0:], 0x10000) // masked, fixed
	le.PutUint32(l[LAPICRegLVT1:], 0x10700) // masked, ExtINT
	l.SetBSPLINTs()
	if got := l.Reg(LAPICRegLVT0); got != 0x10700 {
		t.Errorf("LVT0 = %#x, want 0x10700", got)
	}
	if got := l.Reg(LAPICRegLVT1); got != 0x10400 {
		t.Errorf("LVT1 = %#x, want 0x10400", got)
	}
	for _, off := range []int{-16, 1, 0x3f8, LAPICSize, 1 << 40} {
		if l.Reg(off) != 0 {
			t.Errorf("Reg(%#x) != 0", off)
		}
		if l.SetReg(off, 1) == nil {
			t.Errorf("SetReg(%#x) accepted", off)
		}
	}
	if err := l.SetReg(LAPICRegSpurious, 0x1ff); err != nil || l.Reg(LAPICRegSpurious) != 0x1ff {
		t.Errorf("SetReg(SVR) = %v, Reg = %#x", err, l.Reg(LAPICRegSpurious))
	}
}

func TestXSaveMXCSR(t *testing.T) {
	var x XSave
	x.SetMXCSR(DefaultMXCSR)
	if x.MXCSR() != DefaultMXCSR || le.Uint64(x[512:])&2 == 0 {
		t.Fatalf("MXCSR %#x, XSTATE_BV %#x", x.MXCSR(), le.Uint64(x[512:]))
	}
}

func TestCapString(t *testing.T) {
	if s := CapExitOnEmulationFailure.String(); s != "KVM_CAP_EXIT_ON_EMULATION_FAILURE" {
		t.Errorf("String() = %q", s)
	}
	if s := Cap(9999).String(); s != "KVM_CAP(9999)" {
		t.Errorf("String() = %q", s)
	}
}
