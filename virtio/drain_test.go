package virtio_test

import (
	"context"
	"errors"
	"testing"

	"github.com/govmd/govmd/virtio"
	"github.com/govmd/govmd/virtio/virtiotest"
)

// notifyTransport records notifications.
type notifyTransport struct{ notifies []int }

func (t *notifyTransport) Notify(q int)     { t.notifies = append(t.notifies, q) }
func (t *notifyTransport) ConfigChanged()   {}
func (t *notifyTransport) NeedsReset(error) {}

// TestDrainUsed: Drain serves every chain in batches, Used publishes and
// notifies after each, and a context that is done stops it.
func TestDrainUsed(t *testing.T) {
	mem := newMem(t)
	r := virtiotest.NewRing(mem, 8, ringBase)
	q, err := virtio.NewQueue(mem, r.Config(), 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		r.Add(virtiotest.Buf{Addr: 0x8000 + uint64(i)*64, Len: 64, Write: true})
	}
	tr := &notifyTransport{}
	used := &virtio.Used{Queue: q, Index: 2, Transport: tr}
	var c virtio.Chain
	served := 0
	serve := func(c *virtio.Chain) error { served++; return used.Push(c.Head, 7) }
	if err := virtio.Drain(context.Background(), q, &c, 2, serve, used.Publish); err != nil {
		t.Fatal(err)
	}
	// 5 chains in batches of 2: published after 2, 4 and 5.
	if served != 5 || len(tr.notifies) != 3 || tr.notifies[0] != 2 || used.Pending() != 0 {
		t.Fatalf("served %d, notifications %v, pending %d", served, tr.notifies, used.Pending())
	}
	for i := 0; i < 5; i++ {
		if _, n, ok := r.PopUsed(); !ok || n != 7 {
			t.Fatalf("used element %d: %v %d", i, ok, n)
		}
	}
	r.Add(virtiotest.Buf{Addr: 0x9000, Len: 64, Write: true})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := virtio.Drain(ctx, q, &c, 2, serve, used.Publish); !errors.Is(err, context.Canceled) || served != 5 {
		t.Fatalf("Drain with a done context = %v, served %d", err, served)
	}
}

// TestDrainStopCompletes: a Drain stopped between two chains publishes
// what it served and leaves the rest available, so that NextAvail is
// exactly where the queue's next server (a vhost-user backend after
// GET_VRING_BASE) must continue.
func TestDrainStopCompletes(t *testing.T) {
	mem := newMem(t)
	r := virtiotest.NewRing(mem, 8, ringBase)
	q, err := virtio.NewQueue(mem, r.Config(), 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		r.Add(virtiotest.Buf{Addr: 0x8000 + uint64(i)*64, Len: 64, Write: true})
	}
	used := &virtio.Used{Queue: q, Transport: &notifyTransport{}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var c virtio.Chain
	serve := func(c *virtio.Chain) error { cancel(); return used.Push(c.Head, 1) }
	if err := virtio.Drain(ctx, q, &c, 64, serve, used.Publish); !errors.Is(err, context.Canceled) {
		t.Fatalf("Drain = %v", err)
	}
	if _, _, ok := r.PopUsed(); !ok {
		t.Fatal("the chain served before the stop was not published")
	}
	if _, _, ok := r.PopUsed(); ok {
		t.Fatal("more than one chain completed")
	}
	if q.NextAvail() != 1 {
		t.Fatalf("NextAvail = %d, want 1", q.NextAvail())
	}
}
