package net

import (
	"fmt"
	"sync/atomic"
)

// counters are the device's statistics, updated atomically by the workers.
type counters struct {
	txPackets, txBytes, txGSO                 atomic.Uint64
	rxPackets, rxBytes, rxGSO                 atomic.Uint64
	txBadHeader, txBadChain, txSpoofed        atomic.Uint64
	txBackendErrors                           atomic.Uint64
	rxNoBuffer, rxTooBig, rxFiltered          atomic.Uint64
	rxBadHeader, rxBadChain, rxBackendErrors  atomic.Uint64
	rxFlagsCleared                            atomic.Uint64
	ctrlCommands, ctrlErrors, ctrlUnsupported atomic.Uint64
	guestFaults                               atomic.Uint64
}

// Stats is a snapshot of a NIC's counters since New.
type Stats struct {
	// Frames and bytes (Ethernet frames, virtio header excluded) passed to
	// the tap (Tx) and delivered to the guest (Rx); GSO counts the
	// segmentation-offload super-frames among them.
	TxPackets, TxBytes, TxGSO uint64
	RxPackets, RxBytes, RxGSO uint64

	// Transmit drops: a header that failed ValidateTxHeader (or a chain
	// too short to hold one), a malformed chain (writable buffers, too
	// many descriptors), a source address other than the NIC's in locked
	// mode, and frames the tap refused.
	TxBadHeader, TxBadChain, TxSpoofed, TxBackendErrors uint64

	// RxNoBuffer counts the times the receive path waited for the driver
	// to post buffers (meanwhile the tap queues frames, and drops them when
	// its queue is full). RxTooBig counts frames dropped because they did
	// not fit in the driver's buffers, RxFiltered frames for another
	// address in locked mode, RxBadHeader frames whose header the driver
	// must not see (an offload it did not enable), RxBadChain receive
	// chains the driver posted wrongly (completed empty), and
	// RxBackendErrors failed reads.
	RxNoBuffer, RxTooBig, RxFiltered         uint64
	RxBadHeader, RxBadChain, RxBackendErrors uint64
	// RxFlagsCleared counts frames delivered with flags the tap set (in
	// practice DATA_VALID) cleared because the driver had not enabled
	// GUEST_CSUM.
	RxFlagsCleared uint64

	// Control queue requests, those answered VIRTIO_NET_ERR, and among
	// them the commands the device does not implement.
	CtrlCommands, CtrlErrors, CtrlUnsupported uint64

	// GuestFaults counts driver mistakes of every kind.
	GuestFaults uint64

	// Features are the negotiated feature bits (0 while not active);
	// GuestOffloads the receive offloads currently enabled and TapOffloads
	// the TUNSETOFFLOAD flags currently set.
	Features      uint64
	GuestOffloads uint64
	TapOffloads   uint32
}

// Stats returns a snapshot of the counters. Each counter is read atomically;
// the snapshot as a whole is not.
func (d *Device) Stats() Stats {
	c := &d.stats
	return Stats{
		TxPackets:       c.txPackets.Load(),
		TxBytes:         c.txBytes.Load(),
		TxGSO:           c.txGSO.Load(),
		RxPackets:       c.rxPackets.Load(),
		RxBytes:         c.rxBytes.Load(),
		RxGSO:           c.rxGSO.Load(),
		TxBadHeader:     c.txBadHeader.Load(),
		TxBadChain:      c.txBadChain.Load(),
		TxSpoofed:       c.txSpoofed.Load(),
		TxBackendErrors: c.txBackendErrors.Load(),
		RxNoBuffer:      c.rxNoBuffer.Load(),
		RxTooBig:        c.rxTooBig.Load(),
		RxFiltered:      c.rxFiltered.Load(),
		RxBadHeader:     c.rxBadHeader.Load(),
		RxBadChain:      c.rxBadChain.Load(),
		RxBackendErrors: c.rxBackendErrors.Load(),
		RxFlagsCleared:  c.rxFlagsCleared.Load(),
		CtrlCommands:    c.ctrlCommands.Load(),
		CtrlErrors:      c.ctrlErrors.Load(),
		CtrlUnsupported: c.ctrlUnsupported.Load(),
		GuestFaults:     c.guestFaults.Load(),
		Features:        d.acked.Load(),
		GuestOffloads:   d.guestOff.Load(),
		TapOffloads:     d.tapFlags.Load(),
	}
}

// String renders the snapshot on one line.
func (s Stats) String() string {
	return fmt.Sprintf("tx_packets=%d tx_bytes=%d tx_gso=%d rx_packets=%d rx_bytes=%d rx_gso=%d "+
		"tx_bad_header=%d tx_bad_chain=%d tx_spoofed=%d tx_backend_errors=%d "+
		"rx_no_buffer=%d rx_too_big=%d rx_filtered=%d rx_bad_header=%d rx_bad_chain=%d rx_backend_errors=%d rx_flags_cleared=%d "+
		"ctrl_commands=%d ctrl_errors=%d ctrl_unsupported=%d guest_faults=%d "+
		"features=%s guest_offloads=%s tap_offloads=%s",
		s.TxPackets, s.TxBytes, s.TxGSO, s.RxPackets, s.RxBytes, s.RxGSO,
		s.TxBadHeader, s.TxBadChain, s.TxSpoofed, s.TxBackendErrors,
		s.RxNoBuffer, s.RxTooBig, s.RxFiltered, s.RxBadHeader, s.RxBadChain, s.RxBackendErrors, s.RxFlagsCleared,
		s.CtrlCommands, s.CtrlErrors, s.CtrlUnsupported, s.GuestFaults,
		FeatureString(s.Features), FeatureString(s.GuestOffloads), OffloadString(s.TapOffloads))
}
