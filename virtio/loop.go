package virtio

import (
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"

	"github.com/govmd/govmd/internal/eventfd"
)

// QueueLoop is the outer loop every queue worker of a device runs: serve
// the queue, sleep until the driver's next notification, and end when the
// device is reset or the queue is broken.
type QueueLoop struct {
	// Name names the queue in errors and logs ("virtio-net transmit queue").
	Name string
	// Kick is the queue's notification eventfd. Nil for a worker whose
	// serve function does its own waiting.
	Kick *eventfd.EventFD
	// Transport receives NeedsReset when the queue breaks.
	Transport Transport
	// Stop is set when the device is being reset.
	Stop *atomic.Bool
	// Stopped is the error serve returns when it saw Stop.
	Stopped error
	// Faults counts queues broken by the driver.
	Faults *atomic.Uint64
	Log    *slog.Logger
}

// Run calls serve until Stop is set or serve fails. serve handles what the
// queue holds and returns nil once it is empty (with notifications enabled);
// an error other than Stopped means the driver broke the queue: it is
// counted, the device needs a reset, and the queue is not touched again.
func (l QueueLoop) Run(serve func() error) {
	for {
		err := serve()
		if errors.Is(err, l.Stopped) || l.Stop.Load() {
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
			if !errors.Is(err, eventfd.ErrCanceled) {
				l.Log.Error("queue notification failed; queue stopped", "queue", l.Name, "err", err)
				l.Transport.NeedsReset(fmt.Errorf("%s: %w", l.Name, err))
			}
			return
		}
	}
}
