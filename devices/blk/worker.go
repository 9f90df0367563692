package blk

import (
	"context"
	"errors"
	"fmt"

	"github.com/govmd/govmd/internal/eventfd"
	"github.com/govmd/govmd/virtio"
)

// batchMax bounds how many requests are completed together: completions are
// published (and, in write-through mode, synced) at least this often.
const batchMax = 64

// completion is a served request waiting to be published.
type completion struct {
	head   uint16
	status []byte // the request's status byte in guest memory
	res    result
}

// worker serves one request queue. It is owned by its goroutine from
// Activate until it exits; nothing in it is shared.
type worker struct {
	d         *Device
	idx       int
	q         *virtio.Queue
	kick      *eventfd.EventFD
	transport virtio.Transport
	used      virtio.Used
	features  uint64
	ctx       context.Context // the run's: done when the device is reset

	writeThrough bool // FLUSH not negotiated: writes are synced before completion
	segMax       bool // SEG_MAX negotiated: enforce it
	sizeMax      bool // SIZE_MAX negotiated: enforce it

	chain  virtio.Chain
	req    request
	done   []completion
	segBuf [max(MaxDiscardSeg, MaxWriteZeroesSeg) * segmentSize]byte
}

func newWorker(d *Device, idx int, a virtio.Activation) *worker {
	return &worker{
		d:            d,
		idx:          idx,
		q:            a.Queues[idx],
		kick:         a.Kicks[idx],
		transport:    a.Transport,
		used:         virtio.Used{Queue: a.Queues[idx], Index: idx, Transport: a.Transport},
		features:     a.Features,
		writeThrough: a.Features&FFlush == 0,
		segMax:       a.Features&FSegMax != 0,
		sizeMax:      a.Features&FSizeMax != 0,
		done:         make([]completion, 0, batchMax),
	}
}

// run serves the queue until the device is reset (ctx is done) or the
// queue breaks.
func (w *worker) run(ctx context.Context) {
	virtio.QueueLoop{
		Name:      fmt.Sprintf("virtio-blk queue %d", w.idx),
		Kick:      w.kick,
		Transport: w.transport,
		Faults:    &w.d.stats.guestFaults,
		Log:       w.d.log,
	}.Run(ctx, w.drain)
}

// drain serves requests until the queue is empty with notifications
// enabled. Requests served before an error are still completed.
func (w *worker) drain(ctx context.Context) error {
	w.ctx = ctx
	return virtio.Drain(ctx, w.q, &w.chain, batchMax, w.serve, w.complete)
}

// serve parses and executes one request and queues its completion. An
// error means the request cannot be completed.
func (w *worker) serve(c *virtio.Chain) error {
	var res result
	switch err := parseRequest(c, &w.req); {
	case errors.Is(err, errNoStatus):
		return fmt.Errorf("%w: descriptor chain %d: %w", virtio.ErrGuest, c.Head, err)
	case err != nil:
		res = w.fault("chain %d: %v", c.Head, err)
	default:
		res = w.execute(&w.req)
	}
	if err := w.ctx.Err(); err != nil {
		return err // a long request was cut short by a reset
	}
	w.done = append(w.done, completion{head: c.Head, status: w.req.status, res: res})
	return nil
}

// complete makes the queued completions visible to the driver: it syncs the
// image first if any of them needs it (so a FLUSH, or a write in
// write-through mode, completes only once fdatasync has returned), writes
// their status bytes, pushes and publishes them and interrupts the driver if
// it asked for it.
func (w *worker) complete() error {
	if len(w.done) == 0 {
		return nil
	}
	d := w.d
	needSync := false
	for i := range w.done {
		needSync = needSync || w.done[i].res.sync
	}
	if needSync {
		if err := d.be.sync(); err != nil {
			if !d.syncFailed.Swap(true) {
				d.log.Error("disk sync failed; the disk now fails writes and flushes", "err", err)
			}
			for i := range w.done {
				if c := &w.done[i]; c.res.sync {
					c.res.status = StatusIOErr
					d.stats.errors.Add(1)
				}
			}
		}
	}
	var err error
	for i := range w.done {
		c := &w.done[i]
		c.status[0] = c.res.status
		if err = w.used.Push(c.head, c.res.written+1); err != nil {
			break
		}
	}
	clear(w.done) // drop references to guest memory
	w.done = w.done[:0]
	return errors.Join(err, w.used.Publish())
}
