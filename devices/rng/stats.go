package rng

import (
	"fmt"
	"sync/atomic"
)

// counters are the device's statistics, updated atomically by the worker.
type counters struct {
	requests, bytes, refused, capped, throttled, guestFaults atomic.Uint64
}

// Stats is a snapshot of the device's counters since New.
type Stats struct {
	// Requests counts the chains the driver posted; Bytes the random
	// bytes given.
	Requests, Bytes uint64
	// Refused counts chains completed with nothing written: device-readable
	// buffers, or no writable byte.
	Refused uint64
	// Capped counts requests longer than the per-request cap, filled up
	// to the cap only.
	Capped uint64
	// Throttled counts the times the rate limit made the worker wait.
	Throttled uint64
	// GuestFaults counts driver mistakes (refused chains, broken queues,
	// configuration writes).
	GuestFaults uint64
}

// Stats returns a snapshot of the counters.
func (d *Device) Stats() Stats {
	c := &d.stats
	return Stats{
		Requests: c.requests.Load(), Bytes: c.bytes.Load(), Refused: c.refused.Load(),
		Capped: c.capped.Load(), Throttled: c.throttled.Load(), GuestFaults: c.guestFaults.Load(),
	}
}

// String renders the snapshot on one line.
func (s Stats) String() string {
	return fmt.Sprintf("requests=%d bytes=%d refused=%d capped=%d throttled=%d guest_faults=%d",
		s.Requests, s.Bytes, s.Refused, s.Capped, s.Throttled, s.GuestFaults)
}
