package virtio

import (
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"

	"github.com/govmd/govmd/internal/eventfd"
)

// loopTransport records NeedsReset calls.
type loopTransport struct{ resets []error }

func (t *loopTransport) Notify(int)           {}
func (t *loopTransport) ConfigChanged()       {}
func (t *loopTransport) NeedsReset(err error) { t.resets = append(t.resets, err) }

func TestQueueLoop(t *testing.T) {
	errStop := errors.New("stopping")
	errBad := errors.New("bad chain")
	tests := []struct {
		name       string
		results    []error // serve's results, in order; Run must end after the last
		stopAt     int     // serve call (1-based) at which Stop is set; 0 never
		cancelKick bool    // the kick is canceled before Run: the first Wait ends the loop
		wantCalls  int
		wantFaults uint64
		wantResets int
	}{
		{name: "served then stopped", results: []error{nil, nil, errStop}, wantCalls: 3},
		{name: "stop flag without error", results: []error{nil, nil}, stopAt: 2, wantCalls: 2},
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
			var stop atomic.Bool
			var faults atomic.Uint64
			tr := &loopTransport{}
			calls := 0
			serve := func() error {
				calls++
				if calls > len(tt.results) {
					t.Fatalf("serve called %d times, after its last result", calls)
				}
				if calls == tt.stopAt {
					stop.Store(true)
				}
				if tt.results[calls-1] == nil && !stop.Load() && !tt.cancelKick {
					kick.Write() // the next notification
				}
				return tt.results[calls-1]
			}
			QueueLoop{Name: "test queue", Kick: kick, Transport: tr, Stop: &stop, Stopped: errStop,
				Faults: &faults, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}.Run(serve)
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
