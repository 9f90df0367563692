package net

import (
	"context"
	"errors"
	"fmt"

	"github.com/govmd/govmd/devices/net/tap"
	"github.com/govmd/govmd/internal/eventfd"
	"github.com/govmd/govmd/virtio"
)

// batchMax bounds how many used elements are pushed before they are
// published: the driver gets buffers back at least this often.
const batchMax = 64

var (
	errTxWritable = errors.New("transmit chain has device-writable buffers")
	errTxHdrShort = errors.New("transmit chain shorter than the virtio header")
	errTxTooMany  = errors.New("transmit chain has more than 1022 buffers")
)

// txWorker serves the transmit queue. It is owned by its goroutine from
// Activate until it exits.
type txWorker struct {
	d      *Device
	q      *virtio.Queue
	kick   *eventfd.EventFD
	used   virtio.Used
	acked  uint64
	hdrLen int
	locked bool

	chain virtio.Chain
	hdr   [HdrLen]byte    // the validated copy of the header
	eth   [ethHdrLen]byte // the copy of the Ethernet header
	iov   [][]byte
}

func newTxWorker(d *Device, a virtio.Activation) *txWorker {
	return &txWorker{
		d:      d,
		q:      a.Queues[TxQueue],
		kick:   a.Kicks[TxQueue],
		used:   virtio.Used{Queue: a.Queues[TxQueue], Index: TxQueue, Transport: a.Transport},
		acked:  a.Features,
		hdrLen: hdrLenFor(a.Features),
		locked: d.locked,
		iov:    make([][]byte, 0, 64),
	}
}

// run serves the queue until the device is reset (ctx is done) or the
// queue breaks.
func (w *txWorker) run(ctx context.Context) {
	w.d.queueLoop("virtio-net transmit queue", w.kick, w.used.Transport).Run(ctx, w.drain)
}

// drain sends every available frame, publishing used elements at least
// every batchMax frames, until the queue is empty with notifications
// enabled. An error other than ctx's means the queue is broken.
func (w *txWorker) drain(ctx context.Context) error {
	return virtio.Drain(ctx, w.q, &w.chain, batchMax, w.serve, w.used.Publish)
}

// serve sends one chain's frame and completes the chain.
func (w *txWorker) serve(c *virtio.Chain) error {
	w.send(c)
	return w.used.Push(c.Head, 0)
}

// send checks one chain and writes its frame to the backend. A bad frame
// is dropped and counted; the chain is completed either way.
func (w *txWorker) send(c *virtio.Chain) {
	d := w.d
	if len(c.Writable) > 0 {
		d.stats.txBadChain.Add(1)
		d.guestFault("tx", errTxWritable)
		return
	}
	if int(c.ReadLen) < w.hdrLen {
		d.stats.txBadHeader.Add(1)
		d.guestFault("tx", errTxHdrShort)
		return
	}
	if len(c.Readable) > tap.MaxIovecs-2 {
		d.stats.txBadChain.Add(1)
		d.guestFault("tx", errTxTooMany)
		return
	}
	hdr := w.hdr[:w.hdrLen]
	virtio.Gather(hdr, c.Readable, 0) // copied once: the guest may change it
	h := DecodeHeader(hdr)
	frameLen := int(c.ReadLen) - w.hdrLen
	if err := ValidateTxHeader(h, frameLen, w.acked); err != nil {
		d.stats.txBadHeader.Add(1)
		d.guestFault("tx", err)
		return
	}
	txCanonical(h).Encode(hdr)
	virtio.Gather(w.eth[:], c.Readable, w.hdrLen)
	if w.locked && [6]byte(w.eth[6:12]) != d.mac {
		d.stats.txSpoofed.Add(1)
		d.glog.Warn("virtio-net: transmitted frame with a foreign source address dropped (locked)",
			"src", macString(w.eth[6:12]))
		return
	}
	// The tap gets the checked copies of both headers, then the rest of
	// the frame straight from guest memory.
	w.iov = append(w.iov[:0], hdr, w.eth[:])
	w.iov = virtio.AppendFrom(w.iov, c.Readable, w.hdrLen+ethHdrLen)
	_, err := d.be.WriteV(w.iov)
	clear(w.iov) // do not keep guest memory reachable
	if err != nil {
		d.stats.txBackendErrors.Add(1)
		d.hlog.Warn("virtio-net: tap refused a transmitted frame", "err", err, "header", h.String(), "len", frameLen)
		return
	}
	d.stats.txPackets.Add(1)
	d.stats.txBytes.Add(uint64(frameLen))
	if h.GSOType != GSONone {
		d.stats.txGSO.Add(1)
	}
}

func macString(b []byte) string {
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3], b[4], b[5])
}
