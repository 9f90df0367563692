package acpi

import (
	"encoding/binary"
	"slices"
	"sync"
	"testing"

	"github.com/govmd/govmd/bus"
)

var (
	_ bus.Handler = (*PMEventBlock)(nil)
	_ bus.Handler = (*PMControlBlock)(nil)
)

type pmRig struct {
	pm     *PM
	pio    *bus.Bus
	sleeps []int
	sci    []bool
}

func newPMRig(t *testing.T) *pmRig {
	t.Helper()
	r := &pmRig{pio: bus.New("pio", nil)}
	r.pm = &PM{
		OnSleep: func(typ int) { r.sleeps = append(r.sleeps, typ) },
		SCI:     func(level bool) { r.sci = append(r.sci, level) },
	}
	if err := r.pio.Register(0x600, pm1EvtLen, r.pm.EventBlock()); err != nil {
		t.Fatal(err)
	}
	if err := r.pio.Register(0x604, pm1CntLen, r.pm.ControlBlock()); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *pmRig) in(port uint64, n int) uint64 {
	b := make([]byte, n)
	r.pio.Read(port, b)
	var v uint64
	for i := n - 1; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
}

func (r *pmRig) out(port uint64, n int, v uint64) {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(v >> (8 * i))
	}
	r.pio.Write(port, b)
}

func TestPMControl(t *testing.T) {
	tests := []struct {
		name   string
		writes []func(r *pmRig)
		sleeps []int
		read   uint64 // PM1_CNT afterwards
	}{
		{
			name:   "linux S5: SLP_TYP then SLP_TYP|SLP_EN",
			writes: []func(r *pmRig){func(r *pmRig) { r.out(0x604, 2, 5<<10|1) }, func(r *pmRig) { r.out(0x604, 2, 5<<10|1<<13|1) }},
			sleeps: []int{SleepTypeS5},
			read:   5<<10 | 1,
		},
		{
			name:   "byte write of the high half",
			writes: []func(r *pmRig){func(r *pmRig) { r.out(0x605, 1, (5<<10|1<<13)>>8) }},
			sleeps: []int{5},
			read:   5<<10 | 1,
		},
		{
			name:   "SLP_TYP alone does not sleep",
			writes: []func(r *pmRig){func(r *pmRig) { r.out(0x604, 2, 3<<10) }},
			read:   3<<10 | 1,
		},
		{
			name:   "other sleep type is reported",
			writes: []func(r *pmRig){func(r *pmRig) { r.out(0x604, 2, 1<<13|1<<10) }},
			sleeps: []int{1},
			read:   1<<10 | 1,
		},
		{
			name:   "SCI_EN cannot be cleared, write-only bits read 0",
			writes: []func(r *pmRig){func(r *pmRig) { r.out(0x604, 2, pm1GblRls|pm1BmRld) }},
			read:   pm1BmRld | 1,
		},
		{
			name:   "dword write reaching past the block is not claimed",
			writes: []func(r *pmRig){func(r *pmRig) { r.out(0x604, 4, 0xffffffff) }},
			read:   1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newPMRig(t)
			if got := r.in(0x604, 2); got != 1 {
				t.Fatalf("initial PM1_CNT = %#x, want SCI_EN", got)
			}
			for _, w := range tc.writes {
				w(r)
			}
			if !slices.Equal(r.sleeps, tc.sleeps) {
				t.Errorf("sleeps %v, want %v", r.sleeps, tc.sleeps)
			}
			if got := r.in(0x604, 2); got != tc.read {
				t.Errorf("PM1_CNT = %#x, want %#x", got, tc.read)
			}
		})
	}
}

func TestPMEvents(t *testing.T) {
	r := newPMRig(t)
	if got := r.in(0x600, 4); got != 0 {
		t.Fatalf("initial PM1 event block = %#x", got)
	}
	// Enable: only defined bits stick.
	r.out(0x602, 2, 0xffff)
	if got := r.in(0x602, 2); got != pm1EnMask {
		t.Errorf("PM1_EN = %#x, want %#x", got, pm1EnMask)
	}
	r.out(0x602, 2, 0)
	// A button press with the event disabled: status set, no SCI.
	r.pm.PressPowerButton()
	if got := r.in(0x600, 2); got != pm1PwrBtnSts {
		t.Errorf("PM1_STS = %#x", got)
	}
	if r.sci != nil {
		t.Errorf("SCI raised while disabled: %v", r.sci)
	}
	// Enabling it raises the SCI; clearing the status (W1C) lowers it.
	r.out(0x602, 1, 0)
	r.out(0x603, 1, pm1PwrBtnSts>>8)
	r.out(0x600, 2, 0x00ff) // writing other bits clears nothing
	if got := r.in(0x600, 2); got != pm1PwrBtnSts {
		t.Errorf("PM1_STS after unrelated W1C = %#x", got)
	}
	r.out(0x600, 4, uint64(pm1PwrBtnSts)|uint64(pm1PwrBtnSts)<<16)
	if got := r.in(0x600, 4); got != uint64(pm1PwrBtnSts)<<16 {
		t.Errorf("PM1 event block = %#x", got)
	}
	if !slices.Equal(r.sci, []bool{true, false}) {
		t.Errorf("SCI levels %v", r.sci)
	}
	// Status bits are not guest-settable.
	r.out(0x600, 2, 0)
	r.pm.PressPowerButton()
	r.pm.PressPowerButton()
	if !slices.Equal(r.sci, []bool{true, false, true}) {
		t.Errorf("SCI levels %v", r.sci)
	}
}

func TestPMOddAccesses(t *testing.T) {
	pm := &PM{} // nil callbacks
	e, c := pm.EventBlock(), pm.ControlBlock()
	for off := uint64(0); off < 8; off++ {
		for _, n := range []int{0, 1, 2, 3, 4, 8} {
			b := make([]byte, n)
			for i := range b {
				b[i] = 0xff
			}
			e.Write(off, b)
			c.Write(off, b)
			e.Read(off, b)
			c.Read(off, b)
			e.Write(^uint64(0)-off, b)
			c.Write(^uint64(0)-off, b)
			e.Read(^uint64(0)-off, b)
			c.Read(^uint64(0)-off, b)
			if off >= 4 {
				for _, v := range b {
					if v != 0 {
						t.Fatalf("read at %d of %d bytes: %x", off, n, b)
					}
				}
			}
		}
	}
	pm.PressPowerButton()
}

// FuzzPM drives both PM1 blocks with arbitrary accesses.
func FuzzPM(f *testing.F) {
	f.Add([]byte{0x11, 0x00, 0x01, 0x14, 0x11, 0x00, 0x01, 0x34})
	f.Add([]byte{0x02, 0x02, 0xff, 0xff, 0x00, 0x00, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		var sleeps int
		pm := &PM{OnSleep: func(typ int) {
			if typ < 0 || typ > 7 {
				t.Fatalf("sleep type %d", typ)
			}
			sleeps++
		}}
		e, c := pm.EventBlock(), pm.ControlBlock()
		for len(data) >= 2 {
			op, off := data[0], uint64(data[1])
			data = data[2:]
			n := int(op>>4) % 9
			b := make([]byte, n)
			copy(b, data)
			switch op & 3 {
			case 0:
				e.Read(off, b)
			case 1:
				c.Write(off, b)
			case 2:
				e.Write(off, b)
			case 3:
				c.Read(off, b)
			}
		}
		b := make([]byte, 2)
		c.Read(0, b)
		if v := binary.LittleEndian.Uint16(b); v&pm1SCIEn == 0 || v&(pm1SlpEn|pm1GblRls) != 0 {
			t.Fatalf("PM1_CNT reads %#x", v)
		}
		e.Read(2, b)
		if v := binary.LittleEndian.Uint16(b); v&^pm1EnMask != 0 {
			t.Fatalf("PM1_EN reads %#x", v)
		}
	})
}

func TestPMConcurrent(t *testing.T) {
	var mu sync.Mutex
	n := 0
	pm := &PM{OnSleep: func(int) { mu.Lock(); n++; mu.Unlock() }, SCI: func(bool) {}}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			b := make([]byte, 2)
			for i := range 500 {
				pm.ControlBlock().Write(0, []byte{byte(i), byte(g) << 5})
				pm.EventBlock().Write(uint64(i%4), b[:1])
				pm.EventBlock().Read(0, b)
				pm.PressPowerButton()
			}
		})
	}
	wg.Wait()
}
