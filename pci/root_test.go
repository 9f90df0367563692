package pci

import (
	"fmt"
	"slices"
	"testing"

	"github.com/govmd/govmd/bus"
)

var testRootConfig = RootConfig{
	IO:    Window{Base: 0xc000, Size: 0x4000},
	Mem32: Window{Base: 0xc0000000, Size: 0x3ec00000},
	Mem64: Window{Base: 0x1_0000_0000 << 4, Size: 1 << 36},
	ECAM:  Window{Base: 0xb0000000, Size: 16 * ECAMBusSize},
}

type rootHarness struct {
	pio, mmio *bus.Bus
	r         *Root
}

func newRoot(t *testing.T, cfg RootConfig) *rootHarness {
	t.Helper()
	h := &rootHarness{pio: bus.New("pio", nil), mmio: bus.New("mmio", nil)}
	r, err := NewRoot(h.pio, h.mmio, nil, cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.r = r
	return h
}

func cfgAddr(busNum, dev, fn, reg int) uint32 {
	return 1<<31 | uint32(busNum)<<16 | uint32(dev)<<11 | uint32(fn)<<8 | uint32(reg)
}

// cfgRead reads configuration space through mechanism #1.
func (h *rootHarness) cfgRead(busNum, dev, fn, reg, n int) uint64 {
	h.pio.Write(PortConfigAddress, le32(cfgAddr(busNum, dev, fn, reg&^3)))
	b := make([]byte, n)
	h.pio.Read(PortConfigData+uint64(reg&3), b)
	return val(b)
}

func (h *rootHarness) cfgWrite(busNum, dev, fn, reg, n int, v uint64) {
	h.pio.Write(PortConfigAddress, le32(cfgAddr(busNum, dev, fn, reg&^3)))
	h.pio.Write(PortConfigData+uint64(reg&3), put(v, n))
}

func (h *rootHarness) ecamRead(busNum, dev, fn, reg, n int) uint64 {
	b := make([]byte, n)
	h.mmio.Read(testRootConfig.ECAM.Base+uint64(busNum)<<20|uint64(dev)<<15|uint64(fn)<<12|uint64(reg), b)
	return val(b)
}

func (h *rootHarness) ecamWrite(busNum, dev, fn, reg, n int, v uint64) {
	h.mmio.Write(testRootConfig.ECAM.Base+uint64(busNum)<<20|uint64(dev)<<15|uint64(fn)<<12|uint64(reg), put(v, n))
}

func TestHostBridge(t *testing.T) {
	h := newRoot(t, testRootConfig)
	if got := h.cfgRead(0, 0, 0, 0, 4); got != HostBridgeDevice<<16|HostBridgeVendor {
		t.Errorf("00:00.0 id = %#x", got)
	}
	if got := h.cfgRead(0, 0, 0, RegRevision, 4); got>>8 != 0x060000 {
		t.Errorf("host bridge class = %#x", got>>8)
	}
	if got := h.cfgRead(0, 0, 0, RegHeaderType, 1); got != 0 {
		t.Errorf("header type = %#x", got)
	}
}

func TestMechanism1(t *testing.T) {
	h := newRoot(t, testRootConfig)
	d := newTestDev(t, barSpec{index: 0, kind: BARIO, size: 32})
	_ = d.cs.SetInterruptPin(PinA)
	slot, err := h.r.AddDevice(3, d)
	if err != nil || slot != 3 {
		t.Fatalf("AddDevice = %d, %v", slot, err)
	}
	tests := []struct {
		name string
		addr uint32
		port uint64
		n    int
		want uint64
	}{
		{"dword ids", cfgAddr(0, 3, 0, 0), 0xcfc, 4, 0x10411af4},
		{"word at 0xcfe", cfgAddr(0, 3, 0, 0), 0xcfe, 2, 0x1041},
		{"byte at 0xcfd", cfgAddr(0, 3, 0, 0), 0xcfd, 1, 0x1a},
		{"byte at 0xcff", cfgAddr(0, 3, 0, 8), 0xcff, 1, 0x02},
		{"word at 0xcfd", cfgAddr(0, 3, 0, 0), 0xcfd, 2, 0x411a},
		{"register offset", cfgAddr(0, 3, 0, RegSubsystemVendor), 0xcfc, 4, 0x00011af4},
		{"low address bits ignored", cfgAddr(0, 3, 0, 0) | 3, 0xcfc, 4, 0x10411af4},
		{"interrupt pin", cfgAddr(0, 3, 0, RegInterruptLine), 0xcfd, 1, 1},
		{"enable bit clear", cfgAddr(0, 3, 0, 0) &^ (1 << 31), 0xcfc, 4, 0xffffffff},
		{"absent slot", cfgAddr(0, 4, 0, 0), 0xcfc, 4, 0xffffffff},
		{"absent slot word", cfgAddr(0, 31, 0, 0), 0xcfe, 2, 0xffff},
		{"function 1 absent", cfgAddr(0, 3, 1, 0), 0xcfc, 4, 0xffffffff},
		{"bus 1 absent", cfgAddr(1, 3, 0, 0), 0xcfc, 4, 0xffffffff},
		{"bus 255 absent", cfgAddr(255, 0, 0, 0), 0xcfc, 4, 0xffffffff},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h.pio.Write(PortConfigAddress, le32(tc.addr))
			b := make([]byte, tc.n)
			h.pio.Read(tc.port, b)
			if got := val(b); got != tc.want {
				t.Errorf("read %#x, want %#x", got, tc.want)
			}
		})
	}

	// The address register reads back what was latched (Linux's type 1
	// probe writes 0x80000000 and expects it back).
	h.pio.Write(PortConfigAddress, le32(0x80000000))
	b := make([]byte, 4)
	h.pio.Read(PortConfigAddress, b)
	if val(b) != 0x80000000 {
		t.Errorf("CONFIG_ADDRESS = %#x", val(b))
	}
	// Byte and word writes to 0xCF8-0xCFB do not latch.
	h.pio.Write(PortConfigAddress+3, []byte{0x01})
	h.pio.Write(PortConfigAddress, le16(0x1234))
	h.pio.Read(PortConfigAddress, b)
	if val(b) != 0x80000000 {
		t.Errorf("CONFIG_ADDRESS after byte writes = %#x", val(b))
	}
	w := make([]byte, 2)
	h.pio.Read(PortConfigAddress, w)
	if val(w) != 0xffff {
		t.Errorf("word read of CONFIG_ADDRESS = %#x", val(w))
	}

	// Writes with byte lanes.
	h.cfgWrite(0, 3, 0, RegInterruptLine, 1, 0x0a)
	if got := h.cfgRead(0, 3, 0, RegInterruptLine, 2); got != 0x010a {
		t.Errorf("interrupt line/pin = %#x", got)
	}
	h.cfgWrite(0, 3, 0, RegCacheLineSize, 1, 0x10)
	if got := d.cs.data[RegCacheLineSize]; got != 0x10 {
		t.Errorf("cache line size = %#x", got)
	}
	// Writes with the enable bit clear, or to absent functions, are dropped.
	h.pio.Write(PortConfigAddress, le32(cfgAddr(0, 3, 0, RegInterruptLine)&^(1<<31)))
	h.pio.Write(PortConfigData, []byte{0x0b})
	h.cfgWrite(0, 3, 1, RegInterruptLine, 1, 0x0c)
	h.cfgWrite(1, 3, 0, RegInterruptLine, 1, 0x0c)
	if got := h.cfgRead(0, 3, 0, RegInterruptLine, 1); got != 0x0a {
		t.Errorf("interrupt line = %#x", got)
	}
	// An access that crosses 0xCFF is not claimed (all ones).
	h.pio.Write(PortConfigAddress, le32(cfgAddr(0, 3, 0, 0)))
	h.pio.Read(0xcfe, b)
	if val(b) != 0xffffffff {
		t.Errorf("crossing read = %#x", val(b))
	}
}

type resetRec struct{ writes []byte }

func (r *resetRec) Read(off uint64, data []byte) { data[0] = 0x42 }
func (r *resetRec) Write(off uint64, data []byte) {
	r.writes = append(r.writes, data[0])
}

func TestResetPortForwarding(t *testing.T) {
	cfg := testRootConfig
	rst := &resetRec{}
	cfg.Reset = rst
	h := newRoot(t, cfg)
	h.pio.Write(PortConfigAddress, le32(0x80000000))
	h.pio.Write(PortReset, []byte{0x06})
	b := make([]byte, 1)
	h.pio.Read(PortReset, b)
	if !slices.Equal(rst.writes, []byte{0x06}) || b[0] != 0x42 {
		t.Errorf("reset port writes %x read %#x", rst.writes, b[0])
	}
	b4 := make([]byte, 4)
	h.pio.Read(PortConfigAddress, b4)
	if val(b4) != 0x80000000 {
		t.Errorf("CONFIG_ADDRESS disturbed: %#x", val(b4))
	}
	// Without a reset handler, 0xCF9 reads all ones.
	h2 := newRoot(t, testRootConfig)
	h2.pio.Write(PortReset, []byte{0x06})
	h2.pio.Read(PortReset, b)
	if b[0] != 0xff {
		t.Errorf("0xCF9 without handler = %#x", b[0])
	}
}

func TestECAM(t *testing.T) {
	h := newRoot(t, testRootConfig)
	d := newTestDev(t)
	if _, err := h.r.AddDevice(5, d); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name                 string
		busNum, dev, fn, reg int
		n                    int
		want                 uint64
	}{
		{"dword", 0, 5, 0, 0, 4, 0x10411af4},
		{"word", 0, 5, 0, 2, 2, 0x1041},
		{"byte", 0, 5, 0, 0xb, 1, 0x02},
		{"host bridge", 0, 0, 0, 0, 2, HostBridgeVendor},
		{"extended space reads zero", 0, 5, 0, 0x100, 4, 0},
		{"last dword", 0, 5, 0, 0xffc, 4, 0},
		{"crosses function end", 0, 5, 0, 0xffe, 4, 0xffffffff},
		{"qword", 0, 5, 0, 0, 8, 0xffffffffffffffff},
		{"absent device", 0, 6, 0, 0, 4, 0xffffffff},
		{"function 7 absent", 0, 5, 7, 0, 4, 0xffffffff},
		{"bus 15 absent", 15, 5, 0, 0, 4, 0xffffffff},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := h.ecamRead(tc.busNum, tc.dev, tc.fn, tc.reg, tc.n); got != tc.want {
				t.Errorf("read %#x, want %#x", got, tc.want)
			}
		})
	}
	h.ecamWrite(0, 5, 0, RegInterruptLine, 1, 0x33)
	h.ecamWrite(0, 5, 1, RegInterruptLine, 1, 0x44)
	h.ecamWrite(0, 6, 0, RegInterruptLine, 1, 0x44)
	h.ecamWrite(0, 5, 0, RegInterruptLine, 8, 0x44)
	if got := h.cfgRead(0, 5, 0, RegInterruptLine, 1); got != 0x33 {
		t.Errorf("interrupt line via mechanism #1 = %#x", got)
	}
	// Beyond the window (bus 16) is not claimed.
	b := make([]byte, 4)
	if h.mmio.Read(testRootConfig.ECAM.Base+16<<20, b) {
		t.Error("access beyond the ECAM window claimed")
	}
}

func TestECAMDecode(t *testing.T) {
	tests := []struct {
		off                  uint64
		n                    int
		busNum, dev, fn, reg int
		ok                   bool
	}{
		{0, 4, 0, 0, 0, 0, true},
		{1<<20 | 2<<15 | 3<<12 | 0x40, 4, 1, 2, 3, 0x40, true},
		{255<<20 | 31<<15 | 7<<12 | 0xffc, 4, 255, 31, 7, 0xffc, true},
		{0xfff, 1, 0, 0, 0, 0xfff, true},
		{0xfff, 2, 0, 0, 0, 0, false},
		{0x10, 3, 0, 0, 0, 0, false},
		{0x10, 8, 0, 0, 0, 0, false},
		{256 << 20, 4, 0, 0, 0, 0, false},
	}
	for _, tc := range tests {
		b, d, f, r, ok := ecamDecode(tc.off, tc.n)
		if ok != tc.ok || ok && (b != tc.busNum || d != tc.dev || f != tc.fn || r != tc.reg) {
			t.Errorf("ecamDecode(%#x, %d) = %d %d %d %#x %v", tc.off, tc.n, b, d, f, r, ok)
		}
	}
}

func TestBARAssignment(t *testing.T) {
	h := newRoot(t, testRootConfig)
	d1 := newTestDev(t,
		barSpec{index: 0, kind: BARIO, size: 64},
		barSpec{index: 1, kind: BARMem32, size: 0x1000},
		barSpec{index: 2, kind: BARMem64, size: 0x4000, prefetch: true})
	d2 := newTestDev(t,
		barSpec{index: 0, kind: BARIO, size: 32},
		barSpec{index: 4, kind: BARMem64, size: 1 << 20, prefetch: true})
	_ = d2.cs.SetInterruptPin(PinA)
	s1, err := h.r.AddDevice(-1, d1)
	if err != nil || s1 != 1 {
		t.Fatalf("AddDevice = %d, %v", s1, err)
	}
	s2, err := h.r.AddDevice(-1, d2)
	if err != nil || s2 != 2 {
		t.Fatalf("AddDevice = %d, %v", s2, err)
	}
	type placed struct {
		d   *testDev
		bar int
		win Window
	}
	var ranges [][2]uint64
	for _, p := range []placed{
		{d1, 0, testRootConfig.IO}, {d1, 1, testRootConfig.Mem32}, {d1, 2, testRootConfig.Mem32},
		{d2, 0, testRootConfig.IO}, {d2, 4, testRootConfig.Mem32},
	} {
		_, size, _ := p.d.cs.BAR(p.bar)
		a := p.d.cs.BARAddress(p.bar)
		if a%size != 0 || a < p.win.Base || a+size > p.win.Base+p.win.Size {
			t.Errorf("BAR %d at %#x size %#x: not aligned or outside %#x+%#x", p.bar, a, size, p.win.Base, p.win.Size)
		}
		for _, r := range ranges {
			if a < r[1] && r[0] < a+size {
				t.Errorf("BAR %d at %#x overlaps %#x", p.bar, a, r)
			}
		}
		ranges = append(ranges, [2]uint64{a, a + size})
	}
	for _, d := range []*testDev{d1, d2} {
		if c := d.cs.Command(); c&(CommandIO|CommandMemory) != CommandIO|CommandMemory || c&CommandBusMaster != 0 {
			t.Errorf("command = %#x", c)
		}
	}
	if got := d1.cs.InterruptLine(); got != 0 {
		t.Errorf("pinless device got line %d", got)
	}
	if got, want := d2.cs.InterruptLine(), byte(INTxRoute(2, PinA)); got != want {
		t.Errorf("interrupt line = %d, want %d", got, want)
	}
	if gsi, pin := h.r.INTxGSI(2); gsi != 18 || pin != PinA {
		t.Errorf("INTxGSI(2) = %d, %d", gsi, pin)
	}
	if gsi, pin := h.r.INTxGSI(1); gsi != 0 || pin != PinNone {
		t.Errorf("INTxGSI(1) = %d, %d", gsi, pin)
	}
	if _, pin := h.r.INTxGSI(9); pin != PinNone {
		t.Error("empty slot has a pin")
	}
	ev := d1.takeEvents()
	if len(ev) != 3 {
		t.Errorf("BARObserver events %v", ev)
	}

	// Accesses through the buses reach the right BAR.
	io0 := d1.cs.BARAddress(0)
	h.pio.Write(io0+4, le32(0xdeadbeef))
	if val(d1.mem[0][4:8]) != 0xdeadbeef {
		t.Error("I/O BAR write not forwarded")
	}
	m2 := d1.cs.BARAddress(2)
	h.mmio.Write(m2+0x3ff8, put(0x1122334455667788, 8))
	b := make([]byte, 8)
	if !h.mmio.Read(m2+0x3ff8, b) || val(b) != 0x1122334455667788 {
		t.Errorf("64-bit BAR read %#x", val(b))
	}
}

func TestBARMove(t *testing.T) {
	h := newRoot(t, testRootConfig)
	d := newTestDev(t,
		barSpec{index: 0, kind: BARIO, size: 32},
		barSpec{index: 2, kind: BARMem64, size: 0x4000})
	slot, err := h.r.AddDevice(-1, d)
	if err != nil {
		t.Fatal(err)
	}
	d.takeEvents()
	d.mem[2][0x10] = 0x99
	old := d.cs.BARAddress(2)
	b := make([]byte, 1)

	// Linux-style sizing: decoding off, all ones, restore, decoding on.
	h.cfgWrite(0, slot, 0, RegCommand, 2, 0)
	if h.mmio.Read(old+0x10, b) {
		t.Error("BAR still decoded with memory space disabled")
	}
	if h.pio.Read(d.cs.BARAddress(0), b) {
		t.Error("I/O BAR still decoded with I/O space disabled")
	}
	h.cfgWrite(0, slot, 0, RegBAR0+8, 4, 0xffffffff)
	h.cfgWrite(0, slot, 0, RegBAR0+12, 4, 0xffffffff)
	if lo, hi := h.cfgRead(0, slot, 0, RegBAR0+8, 4), h.cfgRead(0, slot, 0, RegBAR0+12, 4); lo != 0xffffc004 || hi != 0xffffffff {
		t.Errorf("sizing read %#x %#x", lo, hi)
	}
	const moved = 0xd0000000
	h.cfgWrite(0, slot, 0, RegBAR0+8, 4, moved)
	h.cfgWrite(0, slot, 0, RegBAR0+12, 4, 0)
	h.cfgWrite(0, slot, 0, RegCommand, 2, CommandIO|CommandMemory)
	if h.mmio.Read(old+0x10, b) {
		t.Error("old address still decoded")
	}
	if !h.mmio.Read(moved+0x10, b) || b[0] != 0x99 {
		t.Errorf("new address not decoded: %#x", b[0])
	}
	want := []string{
		"0 io " + hex(d.cs.BARAddress(0)) + " false",
		"2 mem64 " + hex(old) + " false",
		"0 io " + hex(d.cs.BARAddress(0)) + " true",
		"2 mem64 0xd0000000 true",
	}
	if ev := d.takeEvents(); !slices.Equal(ev, want) {
		t.Errorf("events %q, want %q", ev, want)
	}

	// Moving while decoding stays on: one unmap and one map.
	h.cfgWrite(0, slot, 0, RegBAR0+12, 4, 0x10)
	if !h.mmio.Read(0x10_d0000000+0x10, b) || h.mmio.Read(moved+0x10, b) {
		t.Error("move of the high dword not followed")
	}
	if ev := d.takeEvents(); len(ev) != 2 {
		t.Errorf("events %q", ev)
	}
	// Address 0 means unassigned: not decoded.
	h.cfgWrite(0, slot, 0, RegBAR0+8, 4, 0)
	h.cfgWrite(0, slot, 0, RegBAR0+12, 4, 0)
	if h.mmio.Read(0x10, b) {
		t.Error("BAR at 0 decoded")
	}
	// An I/O BAR beyond port 0xffff is not decoded.
	h.cfgWrite(0, slot, 0, RegBAR0, 4, 0x10000)
	if d.cs.BARAddress(0) != 0x10000 {
		t.Fatal("I/O BAR write not stored")
	}
	d.takeEvents()
	h.cfgWrite(0, slot, 0, RegCommand, 2, CommandIO|CommandMemory)
	if ev := d.takeEvents(); ev != nil {
		t.Errorf("events %q", ev)
	}
}

func hex(v uint64) string { return fmt.Sprintf("%#x", v) }

func TestBAROverlapAndSwap(t *testing.T) {
	h := newRoot(t, testRootConfig)
	d1 := newTestDev(t, barSpec{index: 0, kind: BARMem32, size: 0x1000})
	d2 := newTestDev(t, barSpec{index: 0, kind: BARMem32, size: 0x1000})
	s1, _ := h.r.AddDevice(-1, d1)
	s2, _ := h.r.AddDevice(-1, d2)
	a1, a2 := d1.cs.BARAddress(0), d2.cs.BARAddress(0)
	d1.mem[0][0], d2.mem[0][0] = 1, 2
	b := make([]byte, 1)

	// d2 moved onto d1: left unmapped, d1 keeps its range.
	h.cfgWrite(0, s2, 0, RegBAR0, 4, a1)
	if !h.mmio.Read(a1, b) || b[0] != 1 {
		t.Errorf("d1 lost its range: %d", b[0])
	}
	if h.mmio.Read(a2, b) {
		t.Error("d2 still at its old address")
	}
	// d1 moves away: d2's pending placement is retried and succeeds.
	h.cfgWrite(0, s1, 0, RegBAR0, 4, a2)
	if !h.mmio.Read(a1, b) || b[0] != 2 {
		t.Errorf("d2 not mapped after the conflict cleared: %d", b[0])
	}
	if !h.mmio.Read(a2, b) || b[0] != 1 {
		t.Errorf("d1 not at its new address: %d", b[0])
	}
	// An ECAM overlap is refused too.
	h.cfgWrite(0, s1, 0, RegBAR0, 4, testRootConfig.ECAM.Base)
	if got := h.ecamRead(0, 0, 0, 0, 2); got != HostBridgeVendor {
		t.Errorf("ECAM shadowed: %#x", got)
	}
}

func TestAddDeviceErrors(t *testing.T) {
	h := newRoot(t, testRootConfig)
	if _, err := h.r.AddDevice(0, newTestDev(t)); err == nil {
		t.Error("slot 0 accepted")
	}
	if _, err := h.r.AddDevice(32, newTestDev(t)); err == nil {
		t.Error("slot 32 accepted")
	}
	d := newTestDev(t)
	if _, err := h.r.AddDevice(7, d); err != nil {
		t.Fatal(err)
	}
	if _, err := h.r.AddDevice(7, newTestDev(t)); err == nil {
		t.Error("slot in use accepted")
	}
	if _, err := h.r.AddDevice(8, d); err == nil {
		t.Error("same configuration space twice accepted")
	}
	if _, err := h.r.AddDevice(-1, nil); err == nil {
		t.Error("nil device accepted")
	}
	if err := d.cs.AddBAR(0, BARMem32, 16, false); err == nil {
		t.Error("AddBAR after attach accepted")
	}
	for i := 0; i < 30; i++ {
		if _, err := h.r.AddDevice(-1, newTestDev(t)); err != nil {
			t.Fatalf("device %d: %v", i, err)
		}
	}
	if _, err := h.r.AddDevice(-1, newTestDev(t)); err == nil {
		t.Error("33rd device accepted")
	}

	// A window too small: the device is refused and its allocations freed.
	cfg := testRootConfig
	cfg.IO = Window{Base: 0xc000, Size: 0x40}
	cfg.Mem64 = Window{}
	h2 := newRoot(t, cfg)
	big := newTestDev(t, barSpec{index: 0, kind: BARIO, size: 64}, barSpec{index: 1, kind: BARIO, size: 64})
	if _, err := h2.r.AddDevice(-1, big); err == nil {
		t.Error("device larger than the I/O window accepted")
	}
	small := newTestDev(t, barSpec{index: 0, kind: BARIO, size: 64})
	if _, err := h2.r.AddDevice(-1, small); err != nil {
		t.Errorf("window not freed after a failed add: %v", err)
	}
}

func TestNewRootErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  RootConfig
	}{
		{"io beyond 64k", RootConfig{IO: Window{Base: 0xf000, Size: 0x2000}}},
		{"mem32 beyond 4G", RootConfig{Mem32: Window{Base: 0xf0000000, Size: 0x20000000}}},
		{"wrapping", RootConfig{Mem64: Window{Base: ^uint64(0) - 10, Size: 100}}},
		{"ecam unaligned", RootConfig{ECAM: Window{Base: 0xb0001000, Size: ECAMBusSize}}},
		{"ecam odd size", RootConfig{ECAM: Window{Base: 0xb0000000, Size: 0x1000}}},
		{"ecam too big", RootConfig{ECAM: Window{Base: 0x80000000, Size: 257 * ECAMBusSize}}},
		{"ecam in mem32", RootConfig{ECAM: Window{Base: 0xc0000000, Size: ECAMBusSize}, Mem32: Window{Base: 0xc0000000, Size: 1 << 28}}},
		{"windows overlap", RootConfig{Mem32: Window{Base: 0xc0000000, Size: 1 << 28}, Mem64: Window{Base: 0xcf000000, Size: 1 << 32}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewRoot(bus.New("pio", nil), bus.New("mmio", nil), nil, tc.cfg); err == nil {
				t.Error("accepted")
			}
		})
	}
	if _, err := NewRoot(nil, bus.New("mmio", nil), nil, RootConfig{}); err == nil {
		t.Error("nil bus accepted")
	}
	// Port conflict.
	pio := bus.New("pio", nil)
	_ = pio.Register(0xcfc, 1, &resetRec{})
	if _, err := NewRoot(pio, bus.New("mmio", nil), nil, RootConfig{}); err == nil {
		t.Error("port conflict accepted")
	}
	// Cleanup after a failure: the ports are free again.
	mmio := bus.New("mmio", nil)
	_ = mmio.Register(0xb0000000, 1, &resetRec{})
	pio2 := bus.New("pio", nil)
	if _, err := NewRoot(pio2, mmio, nil, RootConfig{ECAM: Window{Base: 0xb0000000, Size: ECAMBusSize}}); err == nil {
		t.Fatal("ECAM conflict accepted")
	}
	if err := pio2.Register(0xcf8, 8, &resetRec{}); err != nil {
		t.Errorf("ports not released: %v", err)
	}
}

func TestRoutes(t *testing.T) {
	rs := Routes()
	if len(rs) != 31*4 {
		t.Fatalf("%d routes", len(rs))
	}
	seen := map[[2]int]bool{}
	for _, r := range rs {
		if r.Slot < 1 || r.Slot > 31 || r.Pin < PinA || r.Pin > PinD {
			t.Fatalf("bad route %+v", r)
		}
		if r.GSI < INTxGSIBase || r.GSI >= INTxGSIBase+INTxGSICount || r.GSI != INTxRoute(r.Slot, r.Pin) {
			t.Errorf("route %+v", r)
		}
		seen[[2]int{r.Slot, int(r.Pin)}] = true
	}
	if len(seen) != len(rs) {
		t.Error("duplicate routes")
	}
	// Swizzle: INTA of consecutive slots on distinct GSIs.
	tests := []struct {
		slot int
		pin  byte
		gsi  uint32
	}{{1, PinA, 17}, {2, PinA, 18}, {7, PinA, 23}, {8, PinA, 16}, {1, PinD, 20}, {31, PinB, 16}}
	for _, tc := range tests {
		if got := INTxRoute(tc.slot, tc.pin); got != tc.gsi {
			t.Errorf("INTxRoute(%d, %d) = %d, want %d", tc.slot, tc.pin, got, tc.gsi)
		}
	}
}

func TestAllocator(t *testing.T) {
	a := allocator{win: Window{Base: 0x1010, Size: 0x1000}}
	steps := []struct {
		size uint64
		want uint64
		ok   bool
	}{
		{0x10, 0x1010, true},
		{0x100, 0x1100, true},
		{0x20, 0x1020, true},
		{0x10, 0x1040, true},
		{0x800, 0x1800, true},
		{0x800, 0, false},
		{0x400, 0x1400, true},
		{0x80, 0x1080, true},
		{0x200, 0x1200, true},
		{0x200, 0, false},
		{0, 0, false},
	}
	for i, s := range steps {
		got, ok := a.alloc(s.size)
		if ok != s.ok || got != s.want {
			t.Fatalf("step %d: alloc(%#x) = %#x, %v; want %#x, %v", i, s.size, got, ok, s.want, s.ok)
		}
	}
	a.free(0x1400)
	if got, ok := a.alloc(0x400); !ok || got != 0x1400 {
		t.Errorf("after free: %#x %v", got, ok)
	}
}
