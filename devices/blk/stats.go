package blk

import (
	"fmt"
	"sync/atomic"
)

// counters are the device's statistics, updated atomically by the workers.
type counters struct {
	reads, writes, flushes, discards, writeZeroes, getIDs atomic.Uint64
	bytesRead, bytesWritten                               atomic.Uint64
	errors, unsupported, guestFaults                      atomic.Uint64
}

// Stats is a snapshot of a disk's counters since Open.
type Stats struct {
	// Requests received, by type, whatever their outcome.
	Reads, Writes, Flushes, Discards, WriteZeroes, GetIDs uint64
	// BytesRead and BytesWritten count data moved by successful reads and
	// writes (not write-zeroes or discards).
	BytesRead, BytesWritten uint64
	// Errors counts requests completed with VIRTIO_BLK_S_IOERR, whatever
	// the cause (host I/O error, read-only disk, driver mistake).
	Errors uint64
	// Unsupported counts requests completed with VIRTIO_BLK_S_UNSUPP.
	Unsupported uint64
	// GuestFaults counts driver mistakes: malformed requests, ranges
	// beyond the capacity, broken queues and configuration writes.
	GuestFaults uint64
}

// Stats returns a snapshot of the counters. Each counter is read atomically;
// the snapshot as a whole is not.
func (d *Device) Stats() Stats {
	c := &d.stats
	return Stats{
		Reads:        c.reads.Load(),
		Writes:       c.writes.Load(),
		Flushes:      c.flushes.Load(),
		Discards:     c.discards.Load(),
		WriteZeroes:  c.writeZeroes.Load(),
		GetIDs:       c.getIDs.Load(),
		BytesRead:    c.bytesRead.Load(),
		BytesWritten: c.bytesWritten.Load(),
		Errors:       c.errors.Load(),
		Unsupported:  c.unsupported.Load(),
		GuestFaults:  c.guestFaults.Load(),
	}
}

// String renders the snapshot on one line.
func (s Stats) String() string {
	return fmt.Sprintf("reads=%d writes=%d flushes=%d discards=%d write_zeroes=%d get_id=%d "+
		"bytes_read=%d bytes_written=%d errors=%d unsupported=%d guest_faults=%d",
		s.Reads, s.Writes, s.Flushes, s.Discards, s.WriteZeroes, s.GetIDs,
		s.BytesRead, s.BytesWritten, s.Errors, s.Unsupported, s.GuestFaults)
}
