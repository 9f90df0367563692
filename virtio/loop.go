package virtio

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"

	"github.com/govmd/govmd/internal/eventfd"
)

// QueueLoop is the outer loop every queue worker of a device runs: serve
// the queue, sleep until the driver's next notification, and end when the
// device is reset (its Workers' context is done) or the queue is broken.
type QueueLoop struct {
	// Name names the queue in errors and logs ("virtio-net transmit queue").
	Name string
	// Kick is the queue's notification eventfd. Nil for a worker whose
	// serve function does its own waiting.
	Kick *eventfd.EventFD
	// Transport receives NeedsReset when the queue breaks.
	Transport Transport
	// Faults counts queues broken by the driver.
	Faults *atomic.Uint64
	Log    *slog.Logger
}

// Run calls serve until ctx is done or serve fails. serve handles what the
// queue holds and returns nil once it is empty (with notifications
// enabled); once ctx is done whatever it returns ends the loop quietly. Any
// other error means the driver broke the queue: it is counted, the device
// needs a reset, and the queue is not touched again.
func (l QueueLoop) Run(ctx context.Context, serve func(ctx context.Context) error) {
	for {
		err := serve(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			l.Faults.Add(1)
			l.Transport.NeedsReset(fmt.Errorf("%s: %w", l.Name, err))
			return
		}
		if l.Kick == nil {
			continue
		}
		if _, err := l.Kick.Wait(); err != nil {
			if ctx.Err() == nil && !errors.Is(err, eventfd.ErrCanceled) {
				l.Log.Error("queue notification failed; queue stopped", "queue", l.Name, "err", err)
				l.Transport.NeedsReset(fmt.Errorf("%s: %w", l.Name, err))
			}
			return
		}
	}
}

// Drain serves every chain the driver has made available on q, with the
// driver's notifications disabled meanwhile: serve handles one chain (c,
// reused across calls), and flush completes what serve left (see Used)
// after every batch chains and once the queue is empty. It returns nil
// once the queue is empty with notifications enabled, ctx.Err() as soon
// as ctx is done, or the error that broke the queue (the chains served
// before it are still flushed; so are those served before ctx was done).
func Drain(ctx context.Context, q *Queue, c *Chain, batch int, serve func(*Chain) error, flush func() error) error {
	served := 0
	for {
		if err := q.DisableNotify(); err != nil {
			return err
		}
		for {
			if err := ctx.Err(); err != nil {
				// Stopped: complete what was served, so that a queue
				// handed to another server (vhost-user's GET_VRING_BASE)
				// continues exactly after it.
				return errors.Join(err, flush())
			}
			ok, err := q.Pop(c)
			if err != nil {
				return errors.Join(err, flush())
			}
			if !ok {
				break
			}
			if err := serve(c); err != nil {
				return errors.Join(err, flush())
			}
			if served++; served >= batch {
				served = 0
				if err := flush(); err != nil {
					return err
				}
			}
		}
		served = 0
		if err := flush(); err != nil {
			return err
		}
		pending, err := q.EnableNotify()
		if err != nil || !pending {
			return err
		}
	}
}

// Used completes chains of one queue: Push records a used element, Publish
// makes the recorded ones visible to the driver and sends the used-buffer
// notification when the driver asked for one (EVENT_IDX or the avail
// flags). Owned by the queue's worker.
type Used struct {
	Queue     *Queue
	Index     int // the queue's index, for Transport.Notify
	Transport Transport
	pending   int
}

// Push records that the device wrote n bytes into the chain at head.
func (u *Used) Push(head uint16, n uint32) error {
	if err := u.Queue.Push(head, n); err != nil {
		return err
	}
	u.pending++
	return nil
}

// Pending returns how many pushed elements are not yet published.
func (u *Used) Pending() int { return u.pending }

// Publish publishes what was pushed and notifies the driver if it asked.
func (u *Used) Publish() error {
	if u.pending == 0 {
		return nil
	}
	u.pending = 0
	notify, err := u.Queue.Publish()
	if err != nil {
		return err
	}
	if notify {
		u.Transport.Notify(u.Index)
	}
	return nil
}
