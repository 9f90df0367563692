package pci

import (
	"errors"
	"testing"
)

func TestConfigMasks(t *testing.T) {
	tests := []struct {
		name  string
		setup func(cs *ConfigSpace)
		off   int
		size  int
		write uint64
		want  uint64
	}{
		{name: "vendor id read only", off: RegVendorID, size: 2, write: 0xffff, want: 0x1af4},
		{name: "device id read only", off: RegDeviceID, size: 2, write: 0, want: 0x1041},
		{name: "ids as dword", off: 0, size: 4, write: 0, want: 0x10411af4},
		{name: "command writable bits", off: RegCommand, size: 2, write: 0xffff, want: 0x0407},
		{name: "command clear", setup: func(cs *ConfigSpace) { write(cs, RegCommand, 2, 0x7) }, off: RegCommand, size: 2, write: 0, want: 0},
		{name: "command byte lane high", off: RegCommand + 1, size: 1, write: 0xff, want: 0x04},
		{name: "status read only bits stay", setup: func(cs *ConfigSpace) { cs.SetInterruptStatus(true) }, off: RegStatus, size: 2, write: 0xffff, want: StatusInterrupt},
		{
			name:  "status W1C clears only written ones",
			setup: func(cs *ConfigSpace) { cs.Set(RegStatus, le16(statusW1C|StatusInterrupt)) },
			off:   RegStatus, size: 2, write: 1<<8 | 1<<13,
			want: statusW1C&^(1<<8|1<<13) | StatusInterrupt,
		},
		{
			name:  "status W1C zero writes keep",
			setup: func(cs *ConfigSpace) { cs.Set(RegStatus, le16(1<<15)) },
			off:   RegStatus, size: 2, write: 0, want: 1 << 15,
		},
		{
			name:  "status W1C through dword write at command",
			setup: func(cs *ConfigSpace) { cs.Set(RegStatus, le16(1<<14)) },
			off:   RegCommand, size: 4, write: 0x40000002, want: 0x00000002,
		},
		{name: "class code read only", off: RegRevision, size: 4, write: 0xffffffff, want: 0x02000001},
		{name: "cache line size writable", off: RegCacheLineSize, size: 1, write: 0x10, want: 0x10},
		{name: "latency timer read only", off: RegLatencyTimer, size: 1, write: 0x40, want: 0},
		{name: "header type read only", off: RegHeaderType, size: 1, write: 0x80, want: 0},
		{name: "unused BAR ignores writes", off: RegBAR0, size: 4, write: 0xffffffff, want: 0},
		{name: "expansion ROM reads zero", off: RegExpansionROM, size: 4, write: 0xffffffff, want: 0},
		{name: "subsystem read only", off: RegSubsystemVendor, size: 4, write: 0, want: 0x00011af4},
		{name: "capability pointer read only", off: RegCapabilities, size: 1, write: 0x40, want: 0},
		{name: "interrupt line writable", off: RegInterruptLine, size: 1, write: 0x0b, want: 0x0b},
		{
			name:  "interrupt pin read only",
			setup: func(cs *ConfigSpace) { _ = cs.SetInterruptPin(PinA) },
			off:   RegInterruptLine, size: 2, write: 0x0405, want: 0x0105,
		},
		{name: "device specific read only", off: 0x80, size: 4, write: 0xffffffff, want: 0},
		{name: "straddles the end", setup: func(cs *ConfigSpace) { cs.Set(0xfe, []byte{0xaa, 0xbb}) }, off: 0xfe, size: 4, write: 0, want: 0xbbaa},
		{name: "beyond the end", off: 0x100, size: 4, write: 0xffffffff, want: 0},
		{name: "far beyond the end", off: 0xffc, size: 4, write: 0xffffffff, want: 0},
		{name: "negative offset", off: -2, size: 4, write: 0xffffffff, want: 0},
		{name: "3-byte access ignored", off: RegCommand, size: 3, write: 0xffffff, want: 0},
		{name: "8-byte access ignored", off: 0, size: 8, write: 0, want: 0},
		{name: "unaligned dword", off: 0x01, size: 4, write: 0, want: 0x0000_1041_1a},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cs := NewConfigSpace(testID)
			if tc.setup != nil {
				tc.setup(cs)
			}
			write(cs, tc.off, tc.size, tc.write)
			if got := read(cs, tc.off, tc.size); got != tc.want {
				t.Errorf("after writing %#x: read %#x, want %#x", tc.write, got, tc.want)
			}
		})
	}
}

func TestInterruptState(t *testing.T) {
	cs := NewConfigSpace(testID)
	if err := cs.SetInterruptPin(5); err == nil {
		t.Error("pin 5 accepted")
	}
	if err := cs.SetInterruptPin(PinB); err != nil || cs.InterruptPin() != PinB {
		t.Fatalf("SetInterruptPin: %v, pin %d", err, cs.InterruptPin())
	}
	cs.SetInterruptStatus(true)
	if cs.Status()&StatusInterrupt == 0 {
		t.Error("interrupt status not set")
	}
	cs.SetInterruptStatus(false)
	if cs.Status()&StatusInterrupt != 0 {
		t.Error("interrupt status not cleared")
	}
	write(cs, RegCommand, 2, CommandINTxDisable)
	if !cs.INTxDisabled() {
		t.Error("INTx disable bit not seen")
	}
}

func TestBARSizing(t *testing.T) {
	tests := []struct {
		name     string
		kind     BARKind
		size     uint64
		prefetch bool
		addr     uint64 // a valid address to program
		want     []uint32
	}{
		{name: "io 32", kind: BARIO, size: 32, addr: 0xc040, want: []uint32{0xffffffe1}},
		{name: "io 4", kind: BARIO, size: 4, addr: 0xc004, want: []uint32{0xfffffffd}},
		{name: "io 256", kind: BARIO, size: 256, addr: 0xc100, want: []uint32{0xffffff01}},
		{name: "mem32 16", kind: BARMem32, size: 16, addr: 0xc0000010, want: []uint32{0xfffffff0}},
		{name: "mem32 4k", kind: BARMem32, size: 4096, addr: 0xc0001000, want: []uint32{0xfffff000}},
		{name: "mem32 4k prefetch", kind: BARMem32, size: 4096, prefetch: true, addr: 0xc0001000, want: []uint32{0xfffff008}},
		{name: "mem32 2G", kind: BARMem32, size: 1 << 31, addr: 0x80000000, want: []uint32{0x80000000}},
		{name: "mem64 16k", kind: BARMem64, size: 16 << 10, addr: 0x1_0000_4000, want: []uint32{0xffffc004, 0xffffffff}},
		{name: "mem64 16k prefetch", kind: BARMem64, size: 16 << 10, prefetch: true, addr: 0xfe000000, want: []uint32{0xffffc00c, 0xffffffff}},
		{name: "mem64 8G", kind: BARMem64, size: 8 << 30, prefetch: true, addr: 0x4_0000_0000, want: []uint32{0x0000000c, 0xfffffffe}},
	}
	for _, tc := range tests {
		for _, index := range []int{0, 2, 4} {
			t.Run(tc.name, func(t *testing.T) {
				cs := NewConfigSpace(testID)
				if err := cs.AddBAR(index, tc.kind, tc.size, tc.prefetch); err != nil {
					t.Fatal(err)
				}
				reg := RegBAR0 + 4*index
				for i := range tc.want {
					write(cs, reg+4*i, 4, 0xffffffff)
				}
				for i, w := range tc.want {
					if got := read(cs, reg+4*i, 4); got != uint64(w) {
						t.Errorf("register %d after sizing = %#x, want %#x", i, got, w)
					}
				}
				// Program an address, as Linux does after sizing.
				for i := range tc.want {
					write(cs, reg+4*i, 4, tc.addr>>(32*i)&0xffffffff)
				}
				if got := cs.BARAddress(index); got != tc.addr {
					t.Errorf("BARAddress = %#x, want %#x", got, tc.addr)
				}
				typ := uint64(tc.want[0]) & 0xf
				if tc.kind == BARIO {
					typ &= 3
				}
				if got := read(cs, reg, 4); got != tc.addr&0xffffffff|typ {
					t.Errorf("register = %#x, want address %#x with type bits %#x", got, tc.addr, typ)
				}
				// Neighbours are untouched.
				for i := 0; i < NumBARs; i++ {
					if i == index || (tc.kind == BARMem64 && i == index+1) {
						continue
					}
					write(cs, RegBAR0+4*i, 4, 0xffffffff)
					if got := read(cs, RegBAR0+4*i, 4); got != 0 {
						t.Errorf("unused BAR %d reads %#x", i, got)
					}
				}
				if tc.kind == BARMem64 {
					if k, _, _ := cs.BAR(index + 1); k != BARUnused || cs.BARAddress(index+1) != 0 {
						t.Errorf("upper half reports kind %v address %#x", k, cs.BARAddress(index+1))
					}
				}
			})
		}
	}
}

func TestBARSubDwordWrites(t *testing.T) {
	cs := NewConfigSpace(testID)
	if err := cs.AddBAR(1, BARMem32, 0x1000, false); err != nil {
		t.Fatal(err)
	}
	reg := RegBAR0 + 4
	write(cs, reg, 1, 0xff) // low byte: all read-only (type and size bits)
	write(cs, reg+1, 1, 0x3f)
	write(cs, reg+2, 2, 0xfeb0)
	if got := read(cs, reg, 4); got != 0xfeb03000 {
		t.Errorf("BAR = %#x, want 0xfeb03000", got)
	}
}

func TestAddBARErrors(t *testing.T) {
	tests := []struct {
		name     string
		index    int
		kind     BARKind
		size     uint64
		prefetch bool
	}{
		{"negative index", -1, BARMem32, 16, false},
		{"index 6", 6, BARMem32, 16, false},
		{"not power of two", 0, BARMem32, 24, false},
		{"zero size", 0, BARMem32, 0, false},
		{"mem too small", 0, BARMem32, 8, false},
		{"io too small", 0, BARIO, 2, false},
		{"io too big", 0, BARIO, 512, false},
		{"io prefetch", 0, BARIO, 16, true},
		{"mem32 too big", 0, BARMem32, 1 << 32, false},
		{"mem64 at 5", 5, BARMem64, 16, false},
		{"unused kind", 0, BARUnused, 16, false},
		{"bad kind", 0, BARKind(9), 16, false},
		{"taken", 1, BARMem32, 16, false},
		{"upper half taken", 2, BARMem32, 16, false},
		{"mem64 over taken", 0, BARMem64, 16, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cs := NewConfigSpace(testID)
			if err := cs.AddBAR(1, BARMem64, 32, false); err != nil {
				t.Fatal(err)
			}
			if err := cs.AddBAR(tc.index, tc.kind, tc.size, tc.prefetch); err == nil {
				t.Error("accepted")
			}
		})
	}
}

// walkCaps follows the capability list as a guest would.
func walkCaps(t *testing.T, cs *ConfigSpace) (offs []int, ids []byte) {
	t.Helper()
	if read(cs, RegStatus, 2)&StatusCapList == 0 {
		return nil, nil
	}
	off := int(read(cs, RegCapabilities, 1))
	for off != 0 {
		if off < 0x40 || off&3 != 0 || len(offs) > 48 {
			t.Fatalf("bad capability pointer %#x", off)
		}
		offs = append(offs, off)
		ids = append(ids, byte(read(cs, off, 1)))
		off = int(read(cs, off+1, 1))
	}
	return offs, ids
}

func TestCapabilityList(t *testing.T) {
	cs := NewConfigSpace(testID)
	if offs, _ := walkCaps(t, cs); offs != nil {
		t.Fatalf("fresh space has capabilities %v", offs)
	}
	// A virtio-style vendor capability: cfg_type, bar, id, pad x2, offset, length.
	vbody := []byte{1, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0}
	v1, err := cs.AddVendorCapability(vbody, nil)
	if err != nil {
		t.Fatal(err)
	}
	// One with a writable byte and an odd length (next offset must realign).
	mask := []byte{0, 0xff, 0x0f}
	c2, err := cs.AddCapability(0x05, []byte{1, 2, 3}, mask)
	if err != nil {
		t.Fatal(err)
	}
	v3, err := cs.AddVendorCapability([]byte{2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, nil)
	if err != nil {
		t.Fatal(err)
	}
	offs, ids := walkCaps(t, cs)
	wantOffs := []int{v1, c2, v3}
	wantIDs := []byte{CapVendor, 0x05, CapVendor}
	if len(offs) != 3 {
		t.Fatalf("walked %v, want %v", offs, wantOffs)
	}
	for i := range offs {
		if offs[i] != wantOffs[i] || ids[i] != wantIDs[i] {
			t.Errorf("capability %d at %#x id %#x, want %#x id %#x", i, offs[i], ids[i], wantOffs[i], wantIDs[i])
		}
	}
	if v1 != 0x40 || c2 != 0x54 || v3 != 0x5c {
		t.Errorf("offsets %#x %#x %#x, want 0x40 0x54 0x5c", v1, c2, v3)
	}
	if got := read(cs, v1+2, 1); got != uint64(len(vbody)+3) {
		t.Errorf("cap_len = %d, want %d", got, len(vbody)+3)
	}
	if got := read(cs, v1+3, 4); got != 0x00000401 {
		t.Errorf("vendor body = %#x", got)
	}
	// Write masks: the body follows its mask; id and next are read only.
	write(cs, c2, 4, 0xffffffff)
	if got, want := read(cs, c2, 4), 0xff010000|uint64(v3)<<8|0x05; got != want {
		t.Errorf("capability after all-ones write = %#x, want %#x", got, want)
	}
	write(cs, c2+4, 1, 0xff)
	if got := read(cs, c2+4, 1); got != 0x0f {
		t.Errorf("masked byte = %#x, want 0x0f", got)
	}
	// Running out of space.
	for {
		if _, err := cs.AddCapability(0x0a, make([]byte, 30), nil); err != nil {
			if !errors.Is(err, ErrNoSpace) {
				t.Fatalf("err = %v, want ErrNoSpace", err)
			}
			break
		}
	}
	offs, _ = walkCaps(t, cs)
	for _, o := range offs {
		if o+2 > ConfigSize {
			t.Errorf("capability at %#x overflows", o)
		}
	}
	if _, err := cs.AddCapability(0x0a, []byte{1}, []byte{1, 2}); err == nil {
		t.Error("mismatched mask accepted")
	}
	if _, err := cs.AddVendorCapability(make([]byte, 300), nil); err == nil {
		t.Error("oversized vendor capability accepted")
	}
}

func TestHooks(t *testing.T) {
	cs := NewConfigSpace(testID)
	off, err := cs.AddVendorCapability(make([]byte, 9), []byte{0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})
	if err != nil {
		t.Fatal(err)
	}
	var writes []int
	err = cs.AddHook(Hook{
		Start: off + 8, Len: 4,
		Read:  func(o int, data []byte) { data[0] = 0x5a },
		Write: func(o int, data []byte) { writes = append(writes, o) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := read(cs, off+8, 4); got&0xff != 0x5a {
		t.Errorf("hooked read = %#x", got)
	}
	if got := read(cs, off, 4); got&0xff != CapVendor {
		t.Errorf("unhooked read changed: %#x", got)
	}
	write(cs, off+10, 2, 0x1234)
	write(cs, off+4, 4, 0)
	if len(writes) != 1 || writes[0] != off+10 {
		t.Errorf("hook saw writes %v", writes)
	}
	if err := cs.AddHook(Hook{Start: 0xfc, Len: 8}); err == nil {
		t.Error("hook beyond the space accepted")
	}
}
