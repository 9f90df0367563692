// Package rtc emulates the CMOS real-time clock (MC146818) at ports
// 0x70-0x71: enough for a guest to read the wall-clock time at boot. The
// clock is read-only: guest writes to the time registers are ignored, and
// the NVRAM bytes are kept in memory.
package rtc

import (
	"sync"
	"time"
)

// CMOS is the RTC and its 128 bytes of NVRAM. It is safe for concurrent use.
type CMOS struct {
	now func() time.Time

	mu    sync.Mutex
	index uint8
	nvram [128]byte
}

// New returns a CMOS clock reading the host's UTC time.
func New() *CMOS {
	c := &CMOS{now: time.Now}
	c.nvram[0x0a] = 0x26 // 32.768 kHz base, 1024 Hz rate
	c.nvram[0x0b] = 0x02 // 24-hour mode, BCD
	c.nvram[0x0d] = 0x80 // valid RAM and time
	return c
}

func bcd(v int) uint8 { return uint8(v/10<<4 | v%10) }

// Read implements bus.Handler for ports 0x70 (offset 0) and 0x71 (offset 1).
func (c *CMOS) Read(off uint64, data []byte) {
	for i := range data {
		data[i] = 0
	}
	if len(data) != 1 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if off == 0 {
		data[0] = c.index
		return
	}
	t := c.now().UTC()
	switch c.index {
	case 0x00:
		data[0] = bcd(t.Second())
	case 0x02:
		data[0] = bcd(t.Minute())
	case 0x04:
		data[0] = bcd(t.Hour())
	case 0x06:
		data[0] = bcd(int(t.Weekday()) + 1)
	case 0x07:
		data[0] = bcd(t.Day())
	case 0x08:
		data[0] = bcd(int(t.Month()))
	case 0x09:
		data[0] = bcd(t.Year() % 100)
	case 0x32:
		data[0] = bcd(t.Year() / 100)
	case 0x0a:
		data[0] = c.nvram[0x0a] &^ 0x80 // never "update in progress"
	case 0x0c:
		data[0] = 0 // no interrupt flags; reading clears them
	default:
		data[0] = c.nvram[c.index&0x7f]
	}
}

// Write implements bus.Handler.
func (c *CMOS) Write(off uint64, data []byte) {
	if len(data) != 1 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if off == 0 {
		c.index = data[0] & 0x7f // bit 7 is the NMI mask
		return
	}
	switch c.index {
	case 0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32, 0x0c, 0x0d:
		// The clock follows the host; status C and D are read-only.
	case 0x0b:
		c.nvram[0x0b] = data[0]&^0x06 | 0x02 // keep BCD 24-hour format
	default:
		c.nvram[c.index] = data[0]
	}
}
