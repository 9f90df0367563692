package serial

import (
	"bytes"
	"testing"
)

func TestOutputAndInput(t *testing.T) {
	var out bytes.Buffer
	var levels []bool
	u := New(&out, func(l bool) { levels = append(levels, l) })
	w := func(off uint64, v byte) { u.Write(off, []byte{v}) }
	r := func(off uint64) byte { b := []byte{0}; u.Read(off, b); return b[0] }

	w(regMCR, 0x08) // OUT2
	for _, c := range []byte("hi") {
		w(regData, c)
	}
	if out.String() != "hi" {
		t.Fatalf("output %q", out.String())
	}
	if r(regLSR)&lsrTHRE == 0 {
		t.Fatal("THRE not set")
	}
	w(regIER, ierRDI)
	u.Input([]byte("ok"))
	if len(levels) == 0 || !levels[len(levels)-1] {
		t.Fatal("RX interrupt not raised")
	}
	if r(regIIR)&0x0f != iirRDI {
		t.Fatal("IIR does not show RDI")
	}
	if r(regLSR)&lsrDR == 0 || r(regData) != 'o' || r(regData) != 'k' {
		t.Fatal("input not read back")
	}
	if levels[len(levels)-1] {
		t.Fatal("interrupt still raised after draining input")
	}
	// THRI: enabling it with an empty transmitter raises it; reading IIR
	// clears it.
	w(regIER, ierTHRI)
	if r(regIIR)&0x0f != iirTHRI {
		t.Fatal("THRI not pending")
	}
	if r(regIIR)&0x0f != iirNone {
		t.Fatal("THRI not cleared by IIR read")
	}
	// Divisor latch.
	w(regLCR, lcrDLAB)
	w(regData, 1)
	if r(regData) != 1 {
		t.Fatal("DLL not latched")
	}
	w(regLCR, 0x03)
	// Odd sizes and offsets are ignored.
	u.Write(9, []byte{1})
	u.Read(0, make([]byte, 4))
}

func TestInputOverflowCounted(t *testing.T) {
	u := New(nil, nil)
	u.Input(make([]byte, fifoSize+10))
	if u.Dropped() != 10 {
		t.Fatalf("dropped = %d", u.Dropped())
	}
}
