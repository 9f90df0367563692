package net

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/govmd/govmd/internal/eventfd"
	"github.com/govmd/govmd/virtio"
)

// Control queue classes, commands and acknowledgements (virtio 1.x section
// 5.1.6.5).
const (
	CtrlClassRx            = 0
	CtrlRxPromisc          = 0
	CtrlRxAllMulti         = 1
	CtrlClassMAC           = 1
	CtrlMACTableSet        = 0
	CtrlMACAddrSet         = 1
	CtrlClassVLAN          = 2
	CtrlClassAnnounce      = 3
	CtrlClassMQ            = 4
	CtrlClassGuestOffloads = 5
	CtrlGuestOffloadsSet   = 0

	CtrlOK  = 0
	CtrlErr = 1
)

// ctrlMaxRequest bounds the bytes of one control request (class, command
// and data) the device reads: a MAC table of a few thousand entries.
const ctrlMaxRequest = 16 << 10

var (
	errCtrlNoAck    = errors.New("control request without a device-writable ack byte")
	errCtrlShort    = errors.New("control request shorter than class and command")
	errCtrlLong     = errors.New("control request longer than 16 KiB")
	errCtrlLen      = errors.New("control request data of the wrong length")
	errCtrlMACTable = errors.New("malformed MAC table")
	errCtrlNotAcked = errors.New("control command of a feature the driver did not negotiate")
	errCtrlOffloads = errors.New("GUEST_OFFLOADS_SET with offloads the driver did not negotiate")
)

// ctrlWorker serves the control queue. It is owned by its goroutine from
// Activate until it exits.
type ctrlWorker struct {
	d     *Device
	q     *virtio.Queue
	kick  *eventfd.EventFD
	used  virtio.Used
	acked uint64
	rx    *rxWait // woken when larger receive frames become possible

	chain virtio.Chain
	buf   []byte
}

func newCtrlWorker(d *Device, a virtio.Activation, rx *rxWait) *ctrlWorker {
	return &ctrlWorker{
		d:     d,
		q:     a.Queues[CtrlQueue],
		kick:  a.Kicks[CtrlQueue],
		used:  virtio.Used{Queue: a.Queues[CtrlQueue], Index: CtrlQueue, Transport: a.Transport},
		acked: a.Features,
		rx:    rx,
		buf:   make([]byte, ctrlMaxRequest),
	}
}

// run answers requests until the device is reset (ctx is done) or the
// queue breaks.
func (w *ctrlWorker) run(ctx context.Context) {
	w.d.queueLoop("virtio-net control queue", w.kick, w.used.Transport).Run(ctx, w.drain)
}

// drain answers every available request. Requests are rare and the driver
// waits for each, so every one is published at once.
func (w *ctrlWorker) drain(ctx context.Context) error {
	return virtio.Drain(ctx, w.q, &w.chain, 1, w.serve, w.used.Publish)
}

// serve executes one request and writes its ack. A request without an ack
// byte cannot be answered: the queue is broken.
func (w *ctrlWorker) serve(c *virtio.Chain) error {
	d := w.d
	d.stats.ctrlCommands.Add(1)
	if c.WriteLen < 1 {
		return fmt.Errorf("%w: %w", virtio.ErrGuest, errCtrlNoAck)
	}
	ack := byte(CtrlOK)
	if err := w.exec(c); err != nil {
		ack = CtrlErr
		d.stats.ctrlErrors.Add(1)
		switch {
		case errors.Is(err, errCtrlUnsupported):
			d.stats.ctrlUnsupported.Add(1)
		case errors.Is(err, errCtrlBackend):
		default:
			d.guestFault("ctrl", err)
		}
	}
	virtio.Scatter(c.Writable, 0, []byte{ack})
	return w.used.Push(c.Head, 1)
}

var (
	errCtrlUnsupported = errors.New("unsupported control command")
	errCtrlBackend     = errors.New("the tap refused the offloads")
)

// exec parses and executes the request in c's readable buffers.
func (w *ctrlWorker) exec(c *virtio.Chain) error {
	if c.ReadLen < 2 {
		return errCtrlShort
	}
	if c.ReadLen > ctrlMaxRequest {
		return errCtrlLong
	}
	req := w.buf[:c.ReadLen]
	virtio.Gather(req, c.Readable, 0) // copied once: the guest may change it
	return w.execCtrl(req[0], req[1], req[2:])
}

// execCtrl executes one control command. The receive-mode and MAC-table
// commands are checked and acknowledged; the device delivers what the tap
// gives it (with Locked, only frames for its MAC, broadcast and
// multicast), so it keeps nothing of them.
func (w *ctrlWorker) execCtrl(class, cmd byte, data []byte) error {
	d, acked := w.d, w.acked
	switch class {
	case CtrlClassRx:
		if acked&FCtrlRx == 0 {
			return errCtrlNotAcked
		}
		if cmd != CtrlRxPromisc && cmd != CtrlRxAllMulti {
			return errCtrlUnsupported // the extra modes need CTRL_RX_EXTRA
		}
		if len(data) != 1 {
			return errCtrlLen
		}
		return nil
	case CtrlClassMAC:
		if cmd != CtrlMACTableSet {
			return errCtrlUnsupported // ADDR_SET needs CTRL_MAC_ADDR, not offered
		}
		if acked&FCtrlRx == 0 {
			return errCtrlNotAcked
		}
		if _, _, ok := parseMACTables(data); !ok {
			return errCtrlMACTable
		}
		return nil
	case CtrlClassGuestOffloads:
		if cmd != CtrlGuestOffloadsSet {
			return errCtrlUnsupported
		}
		if acked&FCtrlGuestOffloads == 0 {
			return errCtrlNotAcked
		}
		if len(data) != 8 {
			return errCtrlLen
		}
		req := binary.LittleEndian.Uint64(data)
		if req&^(acked&GuestOffloads) != 0 {
			return errCtrlOffloads
		}
		old := d.guestOff.Load()
		err := d.setGuestOffloads(req)
		flags := d.tapFlags.Load()
		if err != nil {
			d.hlog.Error("virtio-net: changing tap offloads failed", "err", err)
			return errCtrlBackend
		}
		if d.maxRxFrame(req) > d.maxRxFrame(old) {
			w.rx.wake()
		}
		d.elog.Info("virtio-net: driver changed receive offloads", "offloads", FeatureString(req),
			"tap_offloads", OffloadString(flags))
		return nil
	}
	return errCtrlUnsupported
}

// parseMACTables checks the data of VIRTIO_NET_CTRL_MAC_TABLE_SET: two
// tables (unicast, multicast), each a little-endian 32-bit entry count and
// that many 6-byte addresses, filling data exactly.
func parseMACTables(data []byte) (uni, multi uint32, ok bool) {
	var n [2]uint32
	for i := range n {
		if len(data) < 4 {
			return 0, 0, false
		}
		n[i] = binary.LittleEndian.Uint32(data)
		data = data[4:]
		if uint64(n[i])*6 > uint64(len(data)) {
			return 0, 0, false
		}
		data = data[n[i]*6:]
	}
	return n[0], n[1], len(data) == 0
}
