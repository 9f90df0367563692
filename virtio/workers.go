package virtio

import (
	"context"
	"sync"
)

// Workers are the goroutines a device runs while it is active, under one
// context: the one activation and stop mechanism of every device. Start
// begins a run and returns its context, Go starts a goroutine in it, and
// Stop ends it: it cancels the context, interrupts every blocking wait
// registered with Start (a queue's notification eventfd, a backend's
// read), waits for every goroutine to return, and re-arms those waits for
// the next run.
//
// A device calls Start and Go from Activate and Stop from Reset, which the
// transport never runs concurrently with each other; Running may be
// called at any time.
type Workers struct {
	mu      sync.Mutex
	running bool
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	waits   []Interruptible
}

// Interruptible is a blocking wait that Stop interrupts: Cancel makes a
// wait in progress, and every later one, return at once (with an error);
// Resume undoes Cancel. eventfd.EventFD implements it.
type Interruptible interface {
	Cancel()
	Resume()
}

// Start begins a run whose goroutines Stop will interrupt in waits (nil
// entries are skipped), and returns its context. A run in progress is
// stopped first.
func (w *Workers) Start(waits ...Interruptible) context.Context {
	w.Stop()
	w.mu.Lock()
	defer w.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	w.running = true
	w.waits = w.waits[:0]
	for _, x := range waits {
		if x != nil {
			w.waits = append(w.waits, x)
		}
	}
	return ctx
}

// Go runs fn in a new goroutine of the current run, with the run's
// context. It must follow Start.
func (w *Workers) Go(ctx context.Context, fn func(ctx context.Context)) {
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		fn(ctx)
	}()
}

// Stop cancels the run's context, interrupts its waits, waits for its
// goroutines and re-arms the waits. It does nothing when no run is in
// progress.
func (w *Workers) Stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.running {
		return
	}
	// The context first: a goroutine that wakes up for any reason sees
	// that it must stop before it can wait again.
	w.cancel()
	for _, x := range w.waits {
		x.Cancel()
	}
	w.wg.Wait()
	for _, x := range w.waits {
		x.Resume()
	}
	clear(w.waits)
	w.waits = w.waits[:0]
	w.running = false
}

// Running reports whether a run is in progress.
func (w *Workers) Running() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.running
}
