package acpi

import (
	"encoding/binary"
	"time"
)

// PMTimerHz is the ACPI PM timer's frequency (ACPI 6.x, 4.8.3.3).
const PMTimerHz = 3579545

// PMTimer is the ACPI power management timer: a free-running 32-bit
// counter at PMTimerHz, read at the FADT's PM_TMR_BLK (register it on the
// port I/O bus, 4 bytes, at Config.PMTimer). Guests without a paravirtual
// clock use it to calibrate the TSC and the local APIC timer and as a
// clocksource (Linux's acpi_pm); without it Linux on a host whose PIT
// calibration fails has no reference at all ("tsc: No reference
// (HPET/PMTIMER) available").
//
// The count is the host's monotonic time since NewPMTimer. Writes are
// ignored (the register is read-only). TMR_STS (the carry out of bit 31
// in PM1_STS) is not raised: no guest known to govmd enables TMR_EN.
// PMTimer is safe for concurrent use.
type PMTimer struct {
	start time.Time
	now   func() time.Time
}

// NewPMTimer returns a timer that counts from 0 now.
func NewPMTimer() *PMTimer { return newPMTimer(time.Now) }

func newPMTimer(now func() time.Time) *PMTimer { return &PMTimer{start: now(), now: now} }

// Count returns the counter's value.
func (t *PMTimer) Count() uint32 {
	d := t.now().Sub(t.start)
	if d < 0 {
		return 0
	}
	// Seconds and the remainder apart: d*PMTimerHz overflows int64
	// after 43 minutes.
	sec, ns := uint64(d/time.Second), uint64(d%time.Second)
	return uint32(sec*PMTimerHz + ns*PMTimerHz/uint64(time.Second))
}

// Read serves a guest read of any size at any offset of the 4-byte
// register; bytes beyond it read as 0.
func (t *PMTimer) Read(off uint64, data []byte) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], t.Count())
	for i := range data {
		data[i] = 0
		if o := off + uint64(i); o < 4 {
			data[i] = b[o]
		}
	}
}

// Write ignores a guest write: the timer is read-only.
func (t *PMTimer) Write(uint64, []byte) {}
