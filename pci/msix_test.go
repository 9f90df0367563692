package pci

import (
	"fmt"
	"slices"
	"testing"
)

type msg struct {
	vector int
	addr   uint64
	data   uint32
}

type change struct {
	vector int
	addr   uint64
	data   uint32
	masked bool
}

type msixHarness struct {
	cs        *ConfigSpace
	m         *MSIX
	delivered []msg
	changes   []change
}

func newMSIXHarness(t *testing.T, vectors int) *msixHarness {
	t.Helper()
	h := &msixHarness{cs: NewConfigSpace(testID)}
	if err := h.cs.AddBAR(1, BARMem32, 0x4000, false); err != nil {
		t.Fatal(err)
	}
	m, err := NewMSIX(h.cs, MSIXConfig{
		Vectors: vectors, TableBAR: 1, TableOffset: 0x1000, PBABAR: 1, PBAOffset: 0x3800,
		Deliver:  func(v int, a uint64, d uint32) { h.delivered = append(h.delivered, msg{v, a, d}) },
		OnChange: func(v int, a uint64, d uint32, masked bool) { h.changes = append(h.changes, change{v, a, d, masked}) },
	})
	if err != nil {
		t.Fatal(err)
	}
	h.m = m
	return h
}

func (h *msixHarness) control(v uint16) { write(h.cs, h.m.Capability()+2, 2, uint64(v)) }

// program writes a vector's entry the way Linux does: four dwords.
func (h *msixHarness) program(v int, addr uint64, data uint32, masked bool) {
	base := uint64(v) * 16
	h.m.WriteTable(base, le32(uint32(addr)))
	h.m.WriteTable(base+4, le32(uint32(addr>>32)))
	h.m.WriteTable(base+8, le32(data))
	ctrl := uint32(0)
	if masked {
		ctrl = 1
	}
	h.m.WriteTable(base+12, le32(ctrl))
}

func (h *msixHarness) take() []msg {
	d := h.delivered
	h.delivered = nil
	return d
}

func TestMSIXCapability(t *testing.T) {
	h := newMSIXHarness(t, 3)
	off := h.m.Capability()
	offs, ids := walkCaps(t, h.cs)
	if !slices.Equal(offs, []int{off}) || ids[0] != CapMSIX {
		t.Fatalf("capabilities %v %v", offs, ids)
	}
	if got := read(h.cs, off, 4); got != 0x0002<<16|uint64(read(h.cs, off+1, 1))<<8|CapMSIX {
		t.Errorf("header = %#x", got)
	}
	if got := read(h.cs, off+4, 4); got != 0x1001 {
		t.Errorf("table offset/BIR = %#x", got)
	}
	if got := read(h.cs, off+8, 4); got != 0x3801 {
		t.Errorf("PBA offset/BIR = %#x", got)
	}
	// Only enable and function mask are writable.
	h.control(0xffff)
	if got := read(h.cs, off+2, 2); got != 0xc002 {
		t.Errorf("message control = %#x, want 0xc002", got)
	}
	write(h.cs, off+4, 4, 0)
	if got := read(h.cs, off+4, 4); got != 0x1001 {
		t.Errorf("table offset writable: %#x", got)
	}
	if !h.m.Enabled() || !h.m.Masked(0) {
		t.Error("enable/function mask not seen")
	}
	h.control(0)
	if h.m.Enabled() {
		t.Error("still enabled")
	}
}

func TestMSIXTableAccess(t *testing.T) {
	tests := []struct {
		name  string
		off   uint64
		data  []byte
		rdOff uint64
		rdLen int
		want  uint64
	}{
		{"addr lo dword", 0, le32(0xfee01004), 0, 4, 0xfee01004},
		{"addr lo low bits read only", 0, le32(0xfee00003), 0, 4, 0xfee00000},
		{"addr qword", 0, put(0x00000001_fee0000c, 8), 0, 8, 0x00000001_fee0000c},
		{"data word", 8, le16(0x4041), 8, 4, 0x4041},
		{"data byte lane", 9, []byte{0x42}, 8, 4, 0x4200},
		{"vector control reserved bits", 12, le32(0xfffffffe), 12, 4, 0},
		{"vector control mask", 12, le32(1), 12, 4, 1},
		{"data+control qword", 8, put(0xffffffff_00000031, 8), 8, 8, 0x00000001_00000031},
		{"straddles two entries", 14, le32(0xffffffff), 12, 8, 0x0000fffc_00000000},
		{"unaligned into data", 7, le16(0xabcd), 4, 8, 0x000000ab_cd000000},
		{"past the table", 48, le32(0xffffffff), 48, 4, 0},
		{"straddles the end", 46, le32(0xffffffff), 44, 4, 0},
		{"huge offset", 1 << 63, le32(0xffffffff), 1 << 63, 4, 0},
		{"wrapping offset", ^uint64(1), le32(0xffffffff), ^uint64(1), 4, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newMSIXHarness(t, 3)
			// Start from a known entry 0/1 state: all zero, unmasked.
			for v := 0; v < 3; v++ {
				h.program(v, 0, 0, false)
			}
			h.m.WriteTable(tc.off, tc.data)
			b := make([]byte, tc.rdLen)
			h.m.ReadTable(tc.rdOff, b)
			if got := val(b); got != tc.want {
				t.Errorf("read %#x, want %#x", got, tc.want)
			}
		})
	}
}

func TestMSIXInitialState(t *testing.T) {
	h := newMSIXHarness(t, 70)
	for v := 0; v < 70; v++ {
		b := make([]byte, 4)
		h.m.ReadTable(uint64(v)*16+12, b)
		if val(b) != 1 {
			t.Fatalf("vector %d control = %#x, want masked", v, val(b))
		}
	}
	if h.m.TableSize() != 70*16 || h.m.PBASize() != 16 {
		t.Errorf("sizes %d %d", h.m.TableSize(), h.m.PBASize())
	}
	if r := h.m.Trigger(0); r != NotEnabled {
		t.Errorf("Trigger while disabled = %v", r)
	}
	if h.m.Pending(0) {
		t.Error("disabled trigger set pending")
	}
	for _, v := range []int{-1, 70, 1 << 20} {
		if r := h.m.Trigger(v); r != InvalidVector {
			t.Errorf("Trigger(%d) = %v", v, r)
		}
		if _, _, ok := h.m.Message(v); ok {
			t.Errorf("Message(%d) ok", v)
		}
		if !h.m.Masked(v) || h.m.Pending(v) {
			t.Errorf("vector %d masked=%v pending=%v", v, h.m.Masked(v), h.m.Pending(v))
		}
	}
}

func TestMSIXPending(t *testing.T) {
	h := newMSIXHarness(t, 66)
	h.control(msixEnable | msixFunctionMask)
	h.program(1, 0xfee00000, 0x41, false)
	h.program(65, 0xfee01000, 0x42, true)

	// Function mask: pending, then delivered when the mask is cleared.
	if r := h.m.Trigger(1); r != Pending {
		t.Fatalf("Trigger under function mask = %v", r)
	}
	pba := make([]byte, 16)
	h.m.ReadPBA(0, pba)
	if val(pba[:8]) != 1<<1 {
		t.Errorf("PBA = %x", pba)
	}
	h.m.WritePBA(0, put(0, 8))
	h.m.ReadPBA(0, pba)
	if val(pba[:8]) != 1<<1 {
		t.Errorf("PBA writable: %x", pba)
	}
	h.control(msixEnable)
	if d := h.take(); !slices.Equal(d, []msg{{1, 0xfee00000, 0x41}}) {
		t.Errorf("after clearing function mask delivered %v", d)
	}
	if h.m.Pending(1) {
		t.Error("pending bit not cleared")
	}

	// Entry mask on vector 65 (second PBA qword).
	if r := h.m.Trigger(65); r != Pending || !h.m.Pending(65) {
		t.Fatalf("Trigger masked entry = %v pending=%v", r, h.m.Pending(65))
	}
	b := make([]byte, 1)
	h.m.ReadPBA(8, b)
	if b[0] != 0x02 {
		t.Errorf("PBA byte 8 = %#x", b[0])
	}
	// Rewriting data while masked delivers nothing.
	h.m.WriteTable(65*16+8, le32(0x43))
	if d := h.take(); d != nil {
		t.Errorf("delivered while masked: %v", d)
	}
	// Unmask with a byte write to vector control.
	h.m.WriteTable(65*16+12, []byte{0})
	if d := h.take(); !slices.Equal(d, []msg{{65, 0xfee01000, 0x43}}) {
		t.Errorf("after unmask delivered %v", d)
	}
	if h.m.Pending(65) {
		t.Error("pending bit not cleared")
	}
	// Unmasked: delivered directly.
	if r := h.m.Trigger(65); r != Delivered {
		t.Errorf("Trigger = %v", r)
	}
	if d := h.take(); len(d) != 1 {
		t.Errorf("delivered %v", d)
	}
	// Disabling MSI-X keeps a pending bit; re-enabling delivers it.
	h.program(2, 0xfee02000, 0x44, true)
	h.m.Trigger(2)
	h.control(0)
	h.program(2, 0xfee02000, 0x44, false)
	if d := h.take(); d != nil {
		t.Errorf("delivered while disabled: %v", d)
	}
	h.control(msixEnable)
	if d := h.take(); !slices.Equal(d, []msg{{2, 0xfee02000, 0x44}}) {
		t.Errorf("after enable delivered %v", d)
	}
	addr, data, ok := h.m.Message(2)
	if !ok || addr != 0xfee02000 || data != 0x44 {
		t.Errorf("Message(2) = %#x %#x %v", addr, data, ok)
	}
}

func TestMSIXOnChange(t *testing.T) {
	h := newMSIXHarness(t, 2)
	h.program(0, 0xfee00000, 0x30, false)
	if h.changes != nil {
		t.Errorf("changes while disabled: %v", h.changes)
	}
	h.control(msixEnable)
	if !slices.Equal(h.changes, []change{{0, 0xfee00000, 0x30, false}}) {
		t.Errorf("on enable: %v", h.changes)
	}
	h.changes = nil
	// A dword write that does not change anything reports nothing.
	h.m.WriteTable(8, le32(0x30))
	if h.changes != nil {
		t.Errorf("no-op write reported: %v", h.changes)
	}
	h.m.WriteTable(8, le32(0x31))
	h.m.WriteTable(12, le32(1))
	h.m.WriteTable(0, le32(0xfee01000)) // masked: not reported
	h.m.WriteTable(12, le32(0))
	want := []change{
		{0, 0xfee00000, 0x31, false},
		{0, 0xfee00000, 0x31, true},
		{0, 0xfee01000, 0x31, false},
	}
	if !slices.Equal(h.changes, want) {
		t.Errorf("changes %v, want %v", h.changes, want)
	}
	h.changes = nil
	h.control(msixEnable | msixFunctionMask)
	if !slices.Equal(h.changes, []change{{0, 0xfee01000, 0x31, true}}) {
		t.Errorf("function mask: %v", h.changes)
	}
}

func TestMSIXBARRouting(t *testing.T) {
	d := newTestDev(t, barSpec{index: 1, kind: BARMem32, size: 0x4000})
	m, err := NewMSIX(d.cs, MSIXConfig{Vectors: 4, TableBAR: 1, TableOffset: 0x2000, PBABAR: 1, PBAOffset: 0x3000,
		Deliver: func(int, uint64, uint32) {}})
	if err != nil {
		t.Fatal(err)
	}
	d.msix = m
	d.WriteBAR(1, 0x2000+16+8, le32(0x55))
	if _, data, _ := m.Message(1); data != 0x55 {
		t.Errorf("table write not routed: data %#x", data)
	}
	b := make([]byte, 4)
	d.ReadBAR(1, 0x2000+16*3+12, b)
	if val(b) != 1 {
		t.Errorf("table read %#x", val(b))
	}
	// Outside the table (0x2040..) goes to the device.
	d.WriteBAR(1, 0x2040, le32(0x77))
	if val(d.mem[1][0x2040:0x2044]) != 0x77 {
		t.Error("write past the table not passed to the device")
	}
	d.WriteBAR(1, 0x3000, le32(0xffffffff))
	d.ReadBAR(1, 0x3000, b)
	if val(b) != 0 || val(d.mem[1][0x3000:0x3004]) != 0 {
		t.Error("PBA write not ignored")
	}
	if m.WriteBAR(0, 0x2000, b) || m.ReadBAR(2, 0x3000, b) {
		t.Error("other BARs claimed")
	}
}

func TestNewMSIXErrors(t *testing.T) {
	deliver := func(int, uint64, uint32) {}
	tests := []struct {
		name string
		cfg  MSIXConfig
	}{
		{"zero vectors", MSIXConfig{Vectors: 0, TableBAR: 0, PBABAR: 0, PBAOffset: 0x800, Deliver: deliver}},
		{"too many vectors", MSIXConfig{Vectors: 2049, TableBAR: 0, PBABAR: 2, Deliver: deliver}},
		{"no deliver", MSIXConfig{Vectors: 1, TableBAR: 0, PBABAR: 0, PBAOffset: 0x800}},
		{"io BAR", MSIXConfig{Vectors: 1, TableBAR: 4, PBABAR: 0, Deliver: deliver}},
		{"missing BAR", MSIXConfig{Vectors: 1, TableBAR: 5, PBABAR: 0, Deliver: deliver}},
		{"upper half", MSIXConfig{Vectors: 1, TableBAR: 3, PBABAR: 0, Deliver: deliver}},
		{"unaligned table", MSIXConfig{Vectors: 1, TableBAR: 0, TableOffset: 4, PBABAR: 0, PBAOffset: 0x800, Deliver: deliver}},
		{"table too big", MSIXConfig{Vectors: 257, TableBAR: 0, PBABAR: 2, Deliver: deliver}},
		{"PBA past end", MSIXConfig{Vectors: 1, TableBAR: 0, PBABAR: 0, PBAOffset: 0x1000, Deliver: deliver}},
		{"overlap", MSIXConfig{Vectors: 4, TableBAR: 0, PBABAR: 0, PBAOffset: 0x30, Deliver: deliver}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cs := NewConfigSpace(testID)
			for _, b := range []barSpec{{0, BARMem32, 0x1000, false}, {2, BARMem64, 0x10000, true}, {4, BARIO, 64, false}} {
				if err := cs.AddBAR(b.index, b.kind, b.size, b.prefetch); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := NewMSIX(cs, tc.cfg); err == nil {
				t.Error("accepted")
			}
		})
	}
}

func TestMSIXAllSizesNoPanic(t *testing.T) {
	h := newMSIXHarness(t, 5)
	h.control(msixEnable)
	for off := uint64(0); off < 5*16+16; off++ {
		for _, n := range []int{0, 1, 2, 3, 4, 8, 16} {
			h.m.WriteTable(off, put(0xffffffffffffffff, n))
			b := make([]byte, n)
			h.m.ReadTable(off, b)
			h.m.ReadPBA(off, b)
			h.m.WritePBA(off, b)
		}
	}
	for v := 0; v < 5; v++ {
		if h.m.Masked(v) != true {
			t.Errorf("vector %d unmasked after all-ones writes", v)
		}
		if _, data, _ := h.m.Message(v); data != 0xffffffff {
			t.Errorf("vector %d data %#x", v, data)
		}
	}
	_ = fmt.Sprint(h.take())
}
