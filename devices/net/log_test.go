package net

import (
	"context"
	"encoding/binary"
	"log/slog"
	"sync/atomic"
	"testing"

	"github.com/govmd/govmd/internal/eventfd"
	"github.com/govmd/govmd/virtio"
)

// countHandler counts the records at Info level and above.
type countHandler struct{ n atomic.Int64 }

func (h *countHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }
func (h *countHandler) Handle(context.Context, slog.Record) error    { h.n.Add(1); return nil }
func (h *countHandler) WithAttrs([]slog.Attr) slog.Handler           { return h }
func (h *countHandler) WithGroup(string) slog.Handler                { return h }

// TestGuestCannotFloodTheLog: everything a guest can make the device do
// as often as it likes (turn its receive offloads on and off, activate
// and reset the device) is logged through a rate limiter. Before, 5000
// CTRL_GUEST_OFFLOADS_SET commands gave 5000 records.
func TestGuestCannotFloodTheLog(t *testing.T) {
	h := &countHandler{}
	be := newFakeBE()
	d := newTestDevice(t, be, Config{Log: slog.New(h)})
	const acked = FCsum | FGuestCsum | FCtrlGuestOffloads | FGuestTSO4 | FGuestTSO6 | FCtrlVQ | virtio.FVersion1
	e := newQEnv(t, 16, acked, 1<<20)
	w := newCtrlWorker(d, e.activation(CtrlQueue, acked, &fakeTransport{}), &rxWait{be: be})
	for i := 0; i < 5000; i++ {
		off := uint64(FGuestCsum)
		if i%2 == 0 {
			off |= FGuestTSO4 | FGuestTSO6
		}
		if err := w.execCtrl(CtrlClassGuestOffloads, CtrlGuestOffloadsSet, binary.LittleEndian.AppendUint64(nil, off)); err != nil {
			t.Fatalf("command %d: %v", i, err)
		}
	}
	for i := 0; i < 500; i++ {
		a := virtio.Activation{Features: acked, Queues: make([]*virtio.Queue, 3), Kicks: make([]*eventfd.EventFD, 3)}
		if err := d.Activate(a); err != nil {
			t.Fatalf("activation %d: %v", i, err)
		}
		d.Reset()
	}
	if n := h.n.Load(); n > 20 {
		t.Errorf("5000 offload changes and 500 activations gave %d log records at info or above, want at most 20", n)
	}
}
