package bus

import (
	"errors"
	"testing"
)

type rec struct{ lastOff uint64 }

func (r *rec) Read(off uint64, data []byte) {
	r.lastOff = off
	for i := range data {
		data[i] = 0x5a
	}
}
func (r *rec) Write(off uint64, data []byte) { r.lastOff = off }

func TestRegisterAndDispatch(t *testing.T) {
	b := New("pio", nil)
	a, c := &rec{}, &rec{}
	if err := b.Register(0x100, 0x10, a); err != nil {
		t.Fatal(err)
	}
	if err := b.Register(0x110, 0x10, c); err != nil {
		t.Fatal(err)
	}
	overlaps := []struct{ base, size uint64 }{{0x10f, 2}, {0xf0, 0x11}, {0x100, 1}, {0x118, 0x100}, {0, 0x1000}}
	for _, o := range overlaps {
		if err := b.Register(o.base, o.size, &rec{}); !errors.Is(err, ErrOverlap) {
			t.Errorf("Register(%#x,%#x) = %v, want ErrOverlap", o.base, o.size, err)
		}
	}
	if err := b.Register(^uint64(0), 2, &rec{}); err == nil {
		t.Error("wrapping range accepted")
	}
	d := make([]byte, 4)
	if !b.Read(0x114, d) || c.lastOff != 4 || d[0] != 0x5a {
		t.Fatalf("read not dispatched: off=%d data=%x", c.lastOff, d)
	}
	// An access straddling two devices is claimed by neither.
	if b.Read(0x10e, d) {
		t.Fatal("straddling read claimed")
	}
	if d[0] != 0xff {
		t.Fatal("unclaimed read not all ones")
	}
	if b.Write(0x200, d) {
		t.Fatal("unclaimed write claimed")
	}
	if !b.Unregister(0x100, a) || b.Read(0x100, d) {
		t.Fatal("unregister failed")
	}
}
