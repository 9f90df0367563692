package acpi

import (
	"encoding/binary"
	"testing"
	"time"
)

func TestPMTimer(t *testing.T) {
	base := time.Unix(1000, 0)
	now := base
	tm := newPMTimer(func() time.Time { return now })
	tests := []struct {
		after time.Duration
		want  uint32
	}{
		{0, 0},
		{time.Second, PMTimerHz},
		{time.Millisecond, PMTimerHz / 1000},
		{10 * time.Millisecond, PMTimerHz / 100},
		// Past 2^32 ticks (20 minutes) the counter wraps; past 43
		// minutes a naive d*Hz would overflow int64.
		{time.Hour, uint32(uint64(3600) * PMTimerHz % (1 << 32))},
		{-time.Second, 0},
	}
	for _, tc := range tests {
		now = base.Add(tc.after)
		if got := tm.Count(); got != tc.want {
			t.Errorf("after %v: count %d, want %d", tc.after, got, tc.want)
		}
	}
	now = base.Add(time.Second)
	var b [4]byte
	tm.Read(0, b[:])
	if got := binary.LittleEndian.Uint32(b[:]); got != PMTimerHz {
		t.Errorf("4-byte read %d, want %d", got, PMTimerHz)
	}
	var hi [2]byte
	tm.Read(2, hi[:])
	if got := binary.LittleEndian.Uint16(hi[:]); got != uint16(PMTimerHz>>16) {
		t.Errorf("read at offset 2: %#x, want %#x", got, PMTimerHz>>16)
	}
	var past [2]byte
	tm.Read(3, past[:])
	if past[1] != 0 {
		t.Errorf("byte beyond the register reads %#x", past[1])
	}
	tm.Write(0, []byte{1, 2, 3, 4})
	if got := tm.Count(); got != PMTimerHz {
		t.Errorf("after a write: %d", got)
	}
}
