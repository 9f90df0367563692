package net

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

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
	tr     virtio.Transport
	stop   *atomic.Bool
	acked  uint64
	hdrLen int
	locked bool

	chain   virtio.Chain
	hdr     [HdrLen]byte    // the validated copy of the header
	eth     [ethHdrLen]byte // the copy of the Ethernet header
	iov     [][]byte
	pending int
}

func newTxWorker(d *Device, a virtio.Activation, stop *atomic.Bool) *txWorker {
	return &txWorker{
		d:      d,
		q:      a.Queues[TxQueue],
		kick:   a.Kicks[TxQueue],
		tr:     a.Transport,
		stop:   stop,
		acked:  a.Features,
		hdrLen: hdrLenFor(a.Features),
		locked: d.locked,
		iov:    make([][]byte, 0, 64),
	}
}

// run serves the queue until the device is reset or the queue breaks.
func (w *txWorker) run(wg *sync.WaitGroup) {
	defer wg.Done()
	w.d.queueLoop("virtio-net transmit queue", w.kick, w.tr, w.stop).Run(w.drain)
}

// drain sends every available frame, publishing used elements at least
// every batchMax frames, until the queue is empty with notifications
// enabled. An error means the queue is broken.
func (w *txWorker) drain() error {
	for {
		if err := w.q.DisableNotify(); err != nil {
			return err
		}
		for {
			if w.stop.Load() {
				return errStopped
			}
			ok, err := w.q.Pop(&w.chain)
			if err != nil {
				return errors.Join(err, w.publish())
			}
			if !ok {
				break
			}
			w.send(&w.chain)
			if err := w.q.Push(w.chain.Head, 0); err != nil {
				return err
			}
			w.pending++
			if w.pending >= batchMax {
				if err := w.publish(); err != nil {
					return err
				}
			}
		}
		if err := w.publish(); err != nil {
			return err
		}
		pending, err := w.q.EnableNotify()
		if err != nil || !pending {
			return err
		}
	}
}

func (w *txWorker) publish() error {
	if w.pending == 0 {
		return nil
	}
	w.pending = 0
	notify, err := w.q.Publish()
	if err != nil {
		return err
	}
	if notify {
		w.tr.Notify(TxQueue)
	}
	return nil
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
	gather(hdr, c.Readable, 0) // copied once: the guest may change it
	h := DecodeHeader(hdr)
	frameLen := int(c.ReadLen) - w.hdrLen
	if err := ValidateTxHeader(h, frameLen, w.acked); err != nil {
		d.stats.txBadHeader.Add(1)
		d.guestFault("tx", err)
		return
	}
	txCanonical(h).Encode(hdr)
	gather(w.eth[:], c.Readable, w.hdrLen)
	if w.locked && [6]byte(w.eth[6:12]) != d.mac {
		d.stats.txSpoofed.Add(1)
		d.glog.Warn("virtio-net: transmitted frame with a foreign source address dropped (locked)",
			"src", macString(w.eth[6:12]))
		return
	}
	// The tap gets the checked copies of both headers, then the rest of
	// the frame straight from guest memory.
	w.iov = append(w.iov[:0], hdr, w.eth[:])
	w.iov = appendFrom(w.iov, c.Readable, w.hdrLen+ethHdrLen)
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
