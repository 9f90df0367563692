package console

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/govmd/govmd/internal/eventfd"
	"github.com/govmd/govmd/virtio"
)

// recvQueue is a queue on which the device sends to the driver (a port's
// receive queue, the control receive queue): the worker that owns it
// waits for the driver's buffers when it has something to send.
type recvQueue struct {
	d     *Device
	q     *virtio.Queue
	kick  *eventfd.EventFD
	tr    virtio.Transport
	used  virtio.Used
	chain virtio.Chain
}

func newRecvQueue(d *Device, a virtio.Activation, q int) recvQueue {
	return recvQueue{
		d: d, q: a.Queues[q], kick: a.Kicks[q], tr: a.Transport,
		used: virtio.Used{Queue: a.Queues[q], Index: q, Transport: a.Transport},
	}
}

// next returns the driver's next usable chain: device-writable buffers
// only, at least one byte. A bad chain is completed with nothing written
// and counted. When the ring is empty next publishes what was completed
// and waits for the driver's notification, or until ctx is done. An error
// other than ctx's means the driver broke the queue.
func (r *recvQueue) next(ctx context.Context) (*virtio.Chain, error) {
	c := &r.chain
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		ok, err := r.q.Pop(c)
		if err != nil {
			return nil, err
		}
		if ok {
			switch {
			case len(c.Readable) > 0:
				r.d.fault("receive chain %d has %d device-readable buffers", c.Head, len(c.Readable))
			case c.WriteLen == 0:
				r.d.fault("receive chain %d has no writable byte", c.Head)
			default:
				return c, nil
			}
			if err := r.used.Push(c.Head, 0); err != nil {
				return nil, err
			}
			continue
		}
		if err := r.used.Publish(); err != nil {
			return nil, err
		}
		pending, err := r.q.EnableNotify()
		if err != nil {
			return nil, err
		}
		if pending {
			continue
		}
		if _, err := r.kick.Wait(); err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if !errors.Is(err, eventfd.ErrCanceled) {
				r.d.hlog.Error("virtio-console: queue notification failed; queue stopped", "err", err)
			}
			return nil, fmt.Errorf("notification: %w", err)
		}
	}
}

// portTx serves a port's transmit queue (guest to host).
type portTx struct {
	d     *Device
	p     *port
	q     *virtio.Queue
	kick  *eventfd.EventFD
	tr    virtio.Transport
	used  virtio.Used
	chain virtio.Chain
	name  string
}

func newPortTx(d *Device, p *port, a virtio.Activation, q int) *portTx {
	return &portTx{
		d: d, p: p, q: a.Queues[q], kick: a.Kicks[q], tr: a.Transport,
		used: virtio.Used{Queue: a.Queues[q], Index: q, Transport: a.Transport},
		name: fmt.Sprintf("virtio-console port %d transmit queue", p.id),
	}
}

func (w *portTx) run(ctx context.Context) {
	w.p.txKick.Store(w.kick)
	defer w.p.txKick.CompareAndSwap(w.kick, nil)
	virtio.QueueLoop{
		Name:      w.name,
		Kick:      w.kick,
		Transport: w.tr,
		Faults:    &w.d.stats.guestFaults,
		Log:       w.d.log,
	}.Run(ctx, w.drain)
	if w.d.lastWrites.Load() {
		w.last()
	}
}

// last writes to the port's Out the chains the driver made available
// before it reset the device, at most a queue's worth. The reset is not
// complete until the workers have stopped, so the rings are still the
// driver's; nothing is written back to them (the driver starts afresh).
func (w *portTx) last() {
	for range w.q.Size() {
		ok, err := w.q.Pop(&w.chain)
		if err != nil {
			w.d.fault("port %d transmit queue at reset: %v", w.p.id, err)
			return
		}
		if !ok {
			return
		}
		w.take(&w.chain)
	}
}

func (w *portTx) drain(ctx context.Context) error {
	req := w.p.flushReq.Load()
	err := virtio.Drain(ctx, w.q, &w.chain, batchMax, w.serve, w.used.Publish)
	if err == nil {
		w.p.flushDone.Store(req) // everything made available before req is written
	}
	return err
}

// serve writes one chain's bytes to the port's Out and completes it.
func (w *portTx) serve(c *virtio.Chain) error {
	w.take(c)
	return w.used.Push(c.Head, 0)
}

// take writes one chain's bytes to the port's Out; a chain of the wrong
// shape is counted as the driver's fault.
func (w *portTx) take(c *virtio.Chain) {
	d := w.d
	switch {
	case len(c.Writable) > 0:
		d.fault("port %d transmit chain %d has %d device-writable buffers", w.p.id, c.Head, len(c.Writable))
	case c.ReadLen == 0:
		d.fault("port %d transmit chain %d has no byte", w.p.id, c.Head)
	default:
		if c.ReadLen > MaxTransmit {
			d.fault("port %d transmit chain %d has %d bytes; only the first %d are written", w.p.id, c.Head, c.ReadLen, MaxTransmit)
		}
		w.p.write(c.Readable, d)
	}
}

// write writes bufs, up to MaxTransmit bytes, to the port's Out, one
// buffer at a time (they alias guest memory: nothing is copied). What is
// not written is counted as discarded.
func (p *port) write(bufs [][]byte, d *Device) {
	p.outMu.Lock()
	defer p.outMu.Unlock()
	budget := MaxTransmit
	failed := false
	for _, b := range bufs {
		total := len(b)
		b = b[:min(len(b), budget)]
		budget -= len(b)
		if p.out == nil || failed || len(b) == 0 {
			p.c.discarded.Add(uint64(total))
			continue
		}
		n, err := p.out.Write(b)
		n = max(0, min(n, len(b)))
		if err == nil && n < len(b) {
			err = io.ErrShortWrite
		}
		p.c.bytesOut.Add(uint64(n))
		p.c.discarded.Add(uint64(total - n))
		if err != nil {
			failed = true
			d.hlog.Warn("virtio-console: output failed; data discarded", "port", p.id, "err", err)
		}
	}
}

// portRx serves a port's receive queue (host to guest) with what the
// port's input reader hands over.
type portRx struct {
	d         *Device
	p         *port
	rx        recvQueue
	multiport bool
	name      string
}

func newPortRx(d *Device, p *port, a virtio.Activation, q int, multiport bool) *portRx {
	return &portRx{
		d: d, p: p, rx: newRecvQueue(d, a, q), multiport: multiport,
		name: fmt.Sprintf("virtio-console port %d receive queue", p.id),
	}
}

func (w *portRx) run(ctx context.Context) {
	virtio.QueueLoop{
		Name:      w.name,
		Transport: w.rx.tr,
		Faults:    &w.d.stats.guestFaults,
		Log:       w.d.log,
	}.Run(ctx, w.serve)
}

// serve waits until the guest has the port open (a multiport driver drops
// what arrives on a port it has not opened) and a chunk of input is there,
// and delivers the chunk; what was not delivered when the run ends goes
// back to the reader.
func (w *portRx) serve(ctx context.Context) error {
	p := w.p
	if w.multiport && !p.guestOpen.Load() {
		select {
		case <-p.wake:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	select {
	case chunk := <-p.data:
		rest, err := w.deliver(ctx, chunk)
		p.rest <- rest
		return err
	case <-p.wake:
		return nil // opened or closed: look again
	case <-ctx.Done():
		return ctx.Err()
	}
}

// deliver copies chunk into the driver's buffers, waiting for them, and
// returns what is left when ctx is done or the queue breaks.
func (w *portRx) deliver(ctx context.Context, chunk []byte) (rest []byte, err error) {
	for len(chunk) > 0 {
		c, err := w.rx.next(ctx)
		if err != nil {
			return chunk, errors.Join(err, w.rx.used.Publish())
		}
		n := virtio.Scatter(c.Writable, 0, chunk)
		chunk = chunk[n:]
		w.p.c.bytesIn.Add(uint64(n))
		if err := w.rx.used.Push(c.Head, uint32(n)); err != nil {
			return chunk, err
		}
	}
	return nil, w.rx.used.Publish()
}

// readInput is a port's input reader: it reads a chunk from In, hands it
// to the port's receive worker (whichever runs: they come and go with
// activations) until all of it is delivered, and reads again. It ends at
// EOF, on an error, or once the device is closed (when a Read in progress
// returns).
func (d *Device) readInput(p *port) {
	buf := make([]byte, inputChunk)
	for {
		n, err := p.in.Read(buf)
		if n < 0 || n > len(buf) {
			n, err = 0, fmt.Errorf("reader returned %d bytes for a buffer of %d", n, len(buf))
		}
		for chunk := buf[:n]; len(chunk) > 0; {
			select {
			case p.data <- chunk:
			case <-d.done:
				return
			}
			// The worker that took the chunk always gives back the rest.
			chunk = <-p.rest
		}
		select {
		case <-d.done:
			return
		default:
		}
		if err != nil {
			if err != io.EOF {
				d.hlog.Warn("virtio-console: input failed; no more input for the port", "port", p.id, "err", err)
			}
			// Everything read was delivered (in the used ring) before
			// the driver hears that the host closed the port.
			p.hostMu.Lock()
			p.inEnded.Store(true)
			if p.ready && p.hostOpen() == 0 {
				d.send(p.id, EventPortOpen, 0)
			}
			p.hostMu.Unlock()
			return
		}
	}
}
