package virtio

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/govmd/govmd/internal/eventfd"
)

// loopTransport records NeedsReset calls and notifications.
type loopTransport struct {
	resets   []error
	notifies []int
}

func (t *loopTransport) Notify(q int)         { t.notifies = append(t.notifies, q) }
func (t *loopTransport) ConfigChanged()       {}
func (t *loopTransport) NeedsReset(err error) { t.resets = append(t.resets, err) }

func TestQueueLoop(t *testing.T) {
	errBad := errors.New("bad chain")
	tests := []struct {
		name       string
		results    []error // serve's results, in order; Run must end after the last
		stopAt     int     // serve call (1-based) at which the context is canceled; 0 never
		cancelKick bool    // the kick is canceled before Run: the first Wait ends the loop
		wantCalls  int
		wantFaults uint64
		wantResets int
	}{
		{name: "served then stopped", results: []error{nil, nil, context.Canceled}, stopAt: 3, wantCalls: 3},
		{name: "stopped without error", results: []error{nil, nil}, stopAt: 2, wantCalls: 2},
		{name: "broken queue", results: []error{nil, errBad}, wantCalls: 2, wantFaults: 1, wantResets: 1},
		{name: "broken queue while stopping is not a fault", results: []error{errBad}, stopAt: 1, wantCalls: 1},
		{name: "kick canceled", results: []error{nil}, cancelKick: true, wantCalls: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kick, err := eventfd.New()
			if err != nil {
				t.Fatal(err)
			}
			defer kick.Close()
			if tt.cancelKick {
				kick.Cancel()
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var faults atomic.Uint64
			tr := &loopTransport{}
			calls := 0
			serve := func(ctx context.Context) error {
				calls++
				if calls > len(tt.results) {
					t.Fatalf("serve called %d times, after its last result", calls)
				}
				if calls == tt.stopAt {
					cancel()
				}
				if tt.results[calls-1] == nil && ctx.Err() == nil && !tt.cancelKick {
					kick.Write() // the next notification
				}
				return tt.results[calls-1]
			}
			QueueLoop{Name: "test queue", Kick: kick, Transport: tr,
				Faults: &faults, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}.Run(ctx, serve)
			if calls != tt.wantCalls || faults.Load() != tt.wantFaults || len(tr.resets) != tt.wantResets {
				t.Errorf("calls %d faults %d resets %v; want %d, %d, %d resets",
					calls, faults.Load(), tr.resets, tt.wantCalls, tt.wantFaults, tt.wantResets)
			}
			for _, r := range tr.resets {
				if !errors.Is(r, errBad) {
					t.Errorf("reset reason %v does not wrap the serve error", r)
				}
			}
		})
	}
}

// TestWorkers: Stop cancels the run's context, interrupts a goroutine
// blocked on a registered wait, joins it and re-arms the wait, so that the
// next run's goroutine can wait again.
func TestWorkers(t *testing.T) {
	kick, err := eventfd.New()
	if err != nil {
		t.Fatal(err)
	}
	defer kick.Close()
	var w Workers
	if w.Running() {
		t.Fatal("running before Start")
	}
	w.Stop() // no run: nothing to do
	for run := 0; run < 3; run++ {
		ctx := w.Start(kick, nil)
		waiting := make(chan struct{})
		var waitErr error
		var sawDone bool
		w.Go(ctx, func(ctx context.Context) {
			close(waiting)
			_, waitErr = kick.Wait()
			sawDone = ctx.Err() != nil
		})
		<-waiting
		if !w.Running() {
			t.Fatalf("run %d: not running", run)
		}
		time.Sleep(10 * time.Millisecond) // let it block
		w.Stop()
		if waitErr == nil || !sawDone || w.Running() {
			t.Fatalf("run %d: wait ended with %v, context done %v, running %v", run, waitErr, sawDone, w.Running())
		}
	}
	// Re-armed: a notification is seen again.
	if err := kick.Write(); err != nil {
		t.Fatal(err)
	}
	if n, err := kick.Wait(); n != 1 || err != nil {
		t.Fatalf("after Stop: Wait = %d, %v", n, err)
	}
}
