package rng

import (
	"context"
	"fmt"
	"time"

	"github.com/govmd/govmd/internal/eventfd"
	"github.com/govmd/govmd/virtio"
)

// worker serves the request queue. It is owned by its goroutine from
// Activate until it exits.
type worker struct {
	d     *Device
	q     *virtio.Queue
	kick  *eventfd.EventFD
	tr    virtio.Transport
	used  virtio.Used
	chain virtio.Chain
	ctx   context.Context
	limit bucket
}

func newWorker(d *Device, a virtio.Activation) *worker {
	return &worker{
		d:     d,
		q:     a.Queues[0],
		kick:  a.Kicks[0],
		tr:    a.Transport,
		used:  virtio.Used{Queue: a.Queues[0], Index: 0, Transport: a.Transport},
		limit: newBucket(d.cfg.RateLimit, time.Now()),
	}
}

// run serves the queue until the device is reset (ctx is done) or the
// queue breaks.
func (w *worker) run(ctx context.Context) {
	virtio.QueueLoop{
		Name:      "virtio-rng request queue",
		Kick:      w.kick,
		Transport: w.tr,
		Faults:    &w.d.stats.guestFaults,
		Log:       w.d.log,
	}.Run(ctx, w.drain)
}

// drain serves every available request.
func (w *worker) drain(ctx context.Context) error {
	w.ctx = ctx
	return virtio.Drain(ctx, w.q, &w.chain, batchMax, w.serve, w.used.Publish)
}

// serve fills one request's buffers (refusing a malformed one) and
// completes it. Only a host failure (getrandom) or the end of the run
// stops the queue.
func (w *worker) serve(c *virtio.Chain) error {
	d := w.d
	d.stats.requests.Add(1)
	switch {
	case len(c.Readable) > 0:
		d.stats.refused.Add(1)
		d.fault("request chain %d has %d device-readable buffers", c.Head, len(c.Readable))
		return w.used.Push(c.Head, 0)
	case c.WriteLen == 0:
		d.stats.refused.Add(1)
		d.fault("request chain %d has no writable byte", c.Head)
		return w.used.Push(c.Head, 0)
	}
	want := int(c.WriteLen)
	if want > d.cfg.MaxRequest {
		d.stats.capped.Add(1)
		want = d.cfg.MaxRequest
	}
	if err := w.throttle(want); err != nil {
		return err
	}
	n := 0
	for _, b := range c.Writable {
		if n == want {
			break
		}
		b = b[:min(len(b), want-n)]
		for len(b) > 0 {
			k, err := d.cfg.Source(b)
			if err != nil {
				return fmt.Errorf("entropy source: %w", err)
			}
			b = b[k:]
			n += k
		}
	}
	d.stats.bytes.Add(uint64(n))
	return w.used.Push(c.Head, uint32(n))
}

// throttle waits until n bytes fit the rate limit, or the run ends.
func (w *worker) throttle(n int) error {
	wait := w.limit.take(n, time.Now())
	if wait <= 0 {
		return nil
	}
	w.d.stats.throttled.Add(1)
	// What is done so far goes to the driver before the worker sleeps.
	if err := w.used.Publish(); err != nil {
		return err
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-w.ctx.Done():
		return w.ctx.Err()
	}
}

// bucket is a token bucket of bytes: rate per second, a burst of one
// second's worth. A negative rate means no limit.
type bucket struct {
	rate   int64
	tokens float64
	last   time.Time
}

func newBucket(rate int64, now time.Time) bucket {
	return bucket{rate: rate, tokens: float64(rate), last: now}
}

// take removes n tokens and returns how long to wait before using them
// (0 if they were there). The debt is carried: the next take waits for it.
func (b *bucket) take(n int, now time.Time) time.Duration {
	if b.rate < 0 {
		return 0
	}
	b.tokens = min(float64(b.rate), b.tokens+now.Sub(b.last).Seconds()*float64(b.rate))
	b.last = now
	b.tokens -= float64(n)
	if b.tokens >= 0 {
		return 0
	}
	return time.Duration(-b.tokens / float64(b.rate) * float64(time.Second))
}
