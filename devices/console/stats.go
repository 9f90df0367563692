package console

import (
	"fmt"
	"strings"
	"sync/atomic"
)

// counters are the device's statistics, updated atomically by its workers.
type counters struct {
	controlIn, controlOut, controlDropped, emergWrites, guestFaults atomic.Uint64
}

// portCounters are one port's statistics.
type portCounters struct {
	bytesOut, bytesIn, discarded atomic.Uint64
}

// PortStats is a snapshot of one port's counters and state.
type PortStats struct {
	// BytesOut counts the bytes the guest wrote that were written to Out
	// (emerg_wr's included, for port 0); BytesIn the bytes from In given
	// to the guest.
	BytesOut, BytesIn uint64
	// Discarded counts the bytes the guest wrote that did not reach Out:
	// no Out, a write error, beyond MaxTransmit in one chain.
	Discarded uint64
	// GuestOpen is whether the guest has the port open (its last
	// PORT_OPEN; always true for port 0 with a single-port driver).
	GuestOpen bool
	// InEnded is whether In returned EOF or an error.
	InEnded bool
}

// Stats is a snapshot of the device's counters since New.
type Stats struct {
	Ports []PortStats
	// ControlIn counts the control messages the driver sent (malformed
	// ones included), ControlOut those the device gave the driver.
	ControlIn, ControlOut uint64
	// ControlDropped counts the control messages for the driver that
	// were not queued: the same message was already waiting, or the
	// queue was full.
	ControlDropped uint64
	// EmergWrites counts the bytes written through emerg_wr.
	EmergWrites uint64
	// GuestFaults counts driver mistakes (refused chains and control
	// messages, broken queues, configuration writes).
	GuestFaults uint64
}

// Stats returns a snapshot of the counters.
func (d *Device) Stats() Stats {
	c := &d.stats
	s := Stats{
		ControlIn: c.controlIn.Load(), ControlOut: c.controlOut.Load(), ControlDropped: c.controlDropped.Load(),
		EmergWrites: c.emergWrites.Load(), GuestFaults: c.guestFaults.Load(),
	}
	for _, p := range d.ports {
		s.Ports = append(s.Ports, PortStats{
			BytesOut: p.c.bytesOut.Load(), BytesIn: p.c.bytesIn.Load(), Discarded: p.c.discarded.Load(),
			GuestOpen: p.guestOpen.Load(), InEnded: p.inEnded.Load(),
		})
	}
	return s
}

// String renders the snapshot on one line.
func (s Stats) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "control_in=%d control_out=%d control_dropped=%d emerg_writes=%d guest_faults=%d",
		s.ControlIn, s.ControlOut, s.ControlDropped, s.EmergWrites, s.GuestFaults)
	for i, p := range s.Ports {
		fmt.Fprintf(&b, " port%d={out=%d in=%d discarded=%d open=%t in_ended=%t}",
			i, p.BytesOut, p.BytesIn, p.Discarded, p.GuestOpen, p.InEnded)
	}
	return b.String()
}
