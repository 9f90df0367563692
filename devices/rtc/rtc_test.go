package rtc

import (
	"testing"
	"time"
)

func TestReadsTime(t *testing.T) {
	c := New()
	c.now = func() time.Time { return time.Date(2026, 11, 22, 23, 59, 7, 0, time.UTC) }
	read := func(idx uint8) uint8 {
		c.Write(0, []byte{idx})
		b := []byte{0}
		c.Read(1, b)
		return b[0]
	}
	tests := []struct {
		idx  uint8
		want uint8
	}{
		{0x00, 0x07}, {0x02, 0x59}, {0x04, 0x23}, {0x07, 0x22}, {0x08, 0x11}, {0x09, 0x26}, {0x32, 0x20},
		{0x0b, 0x02}, {0x0d, 0x80},
	}
	for _, tc := range tests {
		if got := read(tc.idx); got != tc.want {
			t.Errorf("reg %#x = %#x, want %#x", tc.idx, got, tc.want)
		}
	}
	c.Write(0, []byte{0x00})
	c.Write(1, []byte{0x30}) // ignored
	if read(0) != 0x07 {
		t.Error("seconds writable")
	}
	c.Write(0, []byte{0x40})
	c.Write(1, []byte{0xab})
	if read(0x40) != 0xab {
		t.Error("NVRAM not writable")
	}
	c.Read(1, make([]byte, 2)) // odd size: ignored
}
