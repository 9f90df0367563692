package net

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/govmd/govmd/devices/net/tap"
	"github.com/govmd/govmd/internal/eventfd"
	"github.com/govmd/govmd/virtio"
)

var errRxChain = errors.New("receive chain with device-readable buffers or shorter than the virtio header")

// rxWait is the receive worker's wait for the backend (a blocking read).
// Two things interrupt it: the device's Workers when the device is reset
// (Cancel, as a virtio.Interruptible, until Resume), and the control
// worker when the driver enabled offloads with which larger frames can
// arrive (wake), so that the receive worker sizes its buffers again. A
// wake-up is never taken for a stop, and never re-arms a stopped read.
type rxWait struct {
	be      Backend
	mu      sync.Mutex
	stopped bool // Cancel was called and Resume not yet
	woken   bool // the read was interrupted by wake
}

// Cancel implements virtio.Interruptible.
func (r *rxWait) Cancel() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopped = true
	r.be.CancelRead()
}

// Resume implements virtio.Interruptible.
func (r *rxWait) Resume() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopped, r.woken = false, false
	r.be.ResumeRead()
}

// wake interrupts the receive worker's read (sticky until it rearms).
func (r *rxWait) wake() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.stopped {
		r.woken = true
		r.be.CancelRead()
	}
}

// rearm is called by the receive worker when its read was interrupted: it
// reports whether that was a wake-up, and then lets the next read wait
// again.
func (r *rxWait) rearm() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.woken || r.stopped {
		return false
	}
	r.woken = false
	r.be.ResumeRead()
	return true
}

// rxWorker serves the receive queue. It is owned by its goroutine from
// Activate until it exits.
//
// It keeps the chains it popped but has not filled yet in a FIFO (held), so
// that a frame that needs many mergeable buffers does not pop and walk them
// again for every frame, and a frame that was dropped leaves its buffers for
// the next one. Chains are completed in the order they were popped, so the
// buffers of one frame are consecutive in the used ring, as MRG_RXBUF
// requires.
type rxWorker struct {
	d      *Device
	q      *virtio.Queue
	kick   *eventfd.EventFD
	used   virtio.Used
	wait   *rxWait
	mrg    bool
	hdrLen int
	locked bool
	size   int

	pool     []virtio.Chain // FIFO of held chains: pool[head], ..., pool[head+count-1] (mod size)
	head     int
	count    int
	heldCap  int // writable bytes in held chains
	heldBufs int // buffers in held chains

	iov   [][]byte
	spare [1]byte // catches frames longer than the buffers
	hdr   [HdrLen]byte
	dst   [6]byte
}

func newRxWorker(d *Device, a virtio.Activation, wait *rxWait) *rxWorker {
	q := a.Queues[RxQueue]
	return &rxWorker{
		d:      d,
		q:      q,
		kick:   a.Kicks[RxQueue],
		used:   virtio.Used{Queue: q, Index: RxQueue, Transport: a.Transport},
		wait:   wait,
		mrg:    a.Features&FMrgRxbuf != 0,
		hdrLen: hdrLenFor(a.Features),
		locked: d.locked,
		size:   int(q.Size()),
		pool:   make([]virtio.Chain, q.Size()),
		iov:    make([][]byte, 0, 64),
	}
}

// run delivers frames until the device is reset (ctx is done) or the
// queue breaks.
func (w *rxWorker) run(ctx context.Context) {
	// step does its own waiting (for buffers and for frames): no kick.
	w.d.queueLoop("virtio-net receive queue", nil, w.used.Transport).Run(ctx, w.step)
	if ctx.Err() != nil {
		// Stopped: complete the frames delivered and give back the
		// buffers still held (the last ones popped), so that the queue's
		// next server (after a vhost-user GET_VRING_BASE) loses none.
		_ = w.used.Publish()
		w.q.Unpop(uint16(w.count))
		w.count = 0
	}
}

// step waits for buffers, then for a frame, and delivers it. Once ctx is
// done it returns at the next wait; any other error means the queue is
// broken.
func (w *rxWorker) step(ctx context.Context) error {
	d := w.d
	enabled := d.guestOff.Load()
	if err := w.fill(ctx, w.hdrLen+d.maxRxFrame(enabled)); err != nil {
		return err
	}
	iovCap := w.buildIov(w.hdrLen + d.maxRxFrame(enabled))
	n, err := d.be.ReadV(w.iov, false)
	if err != nil && errors.Is(err, unix.EAGAIN) {
		// Nothing queued: give the driver what is done before sleeping.
		if err := w.used.Publish(); err != nil {
			return err
		}
		n, err = d.be.ReadV(w.iov, true)
	}
	if err != nil {
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, os.ErrDeadlineExceeded):
			// Woken by the control worker: size the buffers again.
			w.wait.rearm()
		default:
			d.stats.rxBackendErrors.Add(1)
			d.hlog.Warn("virtio-net: reading from the tap failed", "err", err)
			time.Sleep(10 * time.Millisecond) // do not spin on a broken tap
		}
		return nil
	}
	// Re-read the offloads: the control queue may have disabled some while
	// the read waited, and frames the tap queued before must not pass.
	return w.deliver(n, iovCap, d.guestOff.Load())
}

// enough reports whether the held chains can take a frame of need bytes
// (header included).
func (w *rxWorker) enough(need int) bool {
	if !w.mrg {
		return w.count > 0 // a driver without MRG_RXBUF sizes each chain for a frame
	}
	return w.heldCap >= need || w.heldBufs >= tap.MaxIovecs-1
}

// fill pops chains until the held ones can take a frame of need bytes,
// waiting for the driver when the queue is empty. With mergeable buffers it
// settles for less when the driver has no descriptor left to post (every
// descriptor is held), so that a driver posting few small buffers still
// receives the frames that fit.
func (w *rxWorker) fill(ctx context.Context, need int) error {
	d := w.d
	for !w.enough(need) && w.count < w.size {
		if err := ctx.Err(); err != nil {
			return err
		}
		c := &w.pool[(w.head+w.count)%w.size]
		ok, err := w.q.Pop(c)
		if err != nil {
			return errors.Join(err, w.used.Publish())
		}
		if ok {
			if len(c.Readable) > 0 || int(c.WriteLen) < w.hdrLen {
				d.stats.rxBadChain.Add(1)
				d.guestFault("rx", errRxChain)
				if err := w.used.Push(c.Head, 0); err != nil {
					return err
				}
				continue
			}
			w.count++
			w.heldCap += int(c.WriteLen)
			w.heldBufs += len(c.Writable)
			continue
		}
		if w.count > 0 && w.heldBufs >= w.size {
			return nil
		}
		if err := w.used.Publish(); err != nil {
			return err
		}
		pending, err := w.q.EnableNotify()
		if err != nil {
			return err
		}
		if pending {
			continue
		}
		d.stats.rxNoBuffer.Add(1)
		if _, err := w.kick.Wait(); err != nil {
			if errors.Is(err, eventfd.ErrCanceled) || ctx.Err() != nil {
				return ctx.Err()
			}
			d.hlog.Error("virtio-net: receive notification failed; queue stopped", "err", err)
			return fmt.Errorf("notification: %w", err)
		}
	}
	return nil
}

// buildIov sets w.iov to the writable buffers of the held chains that a
// frame of need bytes may use, followed by the spare byte, and returns
// their capacity (without the spare byte).
func (w *rxWorker) buildIov(need int) int {
	w.iov = w.iov[:0]
	capacity := 0
	for i := 0; i < w.count; i++ {
		c := &w.pool[(w.head+i)%w.size]
		for _, b := range c.Writable {
			if len(w.iov) == tap.MaxIovecs-1 {
				break
			}
			if len(b) > 0 {
				w.iov = append(w.iov, b)
				capacity += len(b)
			}
		}
		if !w.mrg || capacity >= need || len(w.iov) == tap.MaxIovecs-1 {
			break
		}
	}
	w.iov = append(w.iov, w.spare[:])
	return capacity
}

// deliver completes the chains holding a frame of n bytes (header
// included) that the backend wrote into w.iov, after checking the frame:
// a frame that overflowed the buffers, has a header the driver must not see
// or (locked) is for another address is dropped, and its chains stay held
// for the next frame.
func (w *rxWorker) deliver(n, iovCap int, enabled uint64) error {
	d := w.d
	if n > iovCap {
		d.stats.rxTooBig.Add(1)
		d.hlog.Warn("virtio-net: received frame larger than the driver's buffers dropped",
			"buffers", iovCap, "mergeable", w.mrg)
		return nil
	}
	frameLen := n - w.hdrLen
	if frameLen < ethHdrLen {
		d.stats.rxBadHeader.Add(1)
		return nil
	}
	hdr := w.hdr[:w.hdrLen]
	virtio.Gather(hdr, w.iov, 0)
	in := DecodeHeader(hdr)
	h, ok := SanitizeRxHeader(in, frameLen, enabled)
	if !ok {
		d.stats.rxBadHeader.Add(1)
		d.hlog.Warn("virtio-net: received frame with an offload the driver did not enable dropped",
			"header", in.String(), "enabled", FeatureString(enabled))
		return nil
	}
	if in.Flags != 0 && h.Flags == 0 {
		d.stats.rxFlagsCleared.Add(1)
	}
	if w.locked {
		virtio.Gather(w.dst[:], w.iov, w.hdrLen)
		if w.dst[0]&1 == 0 && w.dst != d.mac {
			d.stats.rxFiltered.Add(1)
			return nil
		}
	}
	k := 1
	if w.mrg {
		k = 0
		for rem := n; rem > 0; k++ {
			rem -= min(rem, int(w.pool[(w.head+k)%w.size].WriteLen))
		}
	}
	h.NumBuffers = uint16(k)
	h.Encode(hdr)
	virtio.Scatter(w.iov, 0, hdr)
	rem := n
	for i := 0; i < k; i++ {
		c := &w.pool[w.head]
		l := min(rem, int(c.WriteLen))
		rem -= l
		if err := w.used.Push(c.Head, uint32(l)); err != nil {
			return err
		}
		w.heldCap -= int(c.WriteLen)
		w.heldBufs -= len(c.Writable)
		w.head = (w.head + 1) % w.size
		w.count--
	}
	d.stats.rxPackets.Add(1)
	d.stats.rxBytes.Add(uint64(frameLen))
	if h.GSOType != GSONone {
		d.stats.rxGSO.Add(1)
	}
	if w.used.Pending() >= batchMax {
		return w.used.Publish()
	}
	return nil
}
