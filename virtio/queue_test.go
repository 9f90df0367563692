package virtio_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/govmd/govmd/memory"
	"github.com/govmd/govmd/virtio"
	"github.com/govmd/govmd/virtio/virtiotest"
)

const (
	memSize  = 1 << 20
	ringBase = 0x10000
	bufBase  = 0x40000
)

func newMem(t testing.TB) *memory.Memory {
	t.Helper()
	return memory.FromBytes(memory.Region{GPA: 0, Host: make([]byte, memSize)})
}

func TestPopPushRoundTrip(t *testing.T) {
	mem := newMem(t)
	r := virtiotest.NewRing(mem, 8, ringBase)
	_ = mem.WriteAt([]byte("hello"), bufBase)
	head, _ := r.Add(virtiotest.Buf{Addr: bufBase, Len: 5}, virtiotest.Buf{Addr: bufBase + 0x100, Len: 64, Write: true})
	q, err := virtio.NewQueue(mem, r.Config(), 0)
	if err != nil {
		t.Fatal(err)
	}
	var c virtio.Chain
	ok, err := q.Pop(&c)
	if !ok || err != nil {
		t.Fatalf("Pop = %v, %v", ok, err)
	}
	if c.Head != head || len(c.Readable) != 1 || len(c.Writable) != 1 || c.ReadLen != 5 || c.WriteLen != 64 {
		t.Fatalf("chain = %+v", c)
	}
	if !bytes.Equal(c.Readable[0], []byte("hello")) {
		t.Fatalf("readable = %q", c.Readable[0])
	}
	copy(c.Writable[0], "world")
	if ok, _ := q.Pop(&c); ok {
		t.Fatal("second Pop on empty ring returned a chain")
	}
	if err := q.Push(head, 5); err != nil {
		t.Fatal(err)
	}
	notify, err := q.Publish()
	if err != nil || !notify {
		t.Fatalf("Publish = %v, %v", notify, err)
	}
	h, n, ok := r.PopUsed()
	if !ok || h != head || n != 5 {
		t.Fatalf("used = %d %d %v", h, n, ok)
	}
	got := make([]byte, 5)
	_ = mem.ReadAt(got, bufBase+0x100)
	if string(got) != "world" {
		t.Fatalf("device write = %q", got)
	}
}

func TestIndirect(t *testing.T) {
	mem := newMem(t)
	r := virtiotest.NewRing(mem, 4, ringBase)
	bufs := []virtiotest.Buf{{Addr: bufBase, Len: 10}, {Addr: bufBase + 10, Len: 20}, {Addr: bufBase + 100, Len: 30, Write: true}}
	r.AddIndirect(0x30000, bufs...)
	q, err := virtio.NewQueue(mem, r.Config(), virtio.FRingIndirect)
	if err != nil {
		t.Fatal(err)
	}
	var c virtio.Chain
	if ok, err := q.Pop(&c); !ok || err != nil {
		t.Fatalf("Pop = %v, %v", ok, err)
	}
	if len(c.Readable) != 2 || len(c.Writable) != 1 || c.ReadLen != 30 || c.WriteLen != 30 {
		t.Fatalf("chain = %+v", c)
	}
	// Without the feature the same chain is a driver error.
	r2 := virtiotest.NewRing(mem, 4, ringBase+0x8000)
	r2.AddIndirect(0x30000, bufs...)
	q2, _ := virtio.NewQueue(mem, r2.Config(), 0)
	if _, err := q2.Pop(&c); !errors.Is(err, virtio.ErrGuest) {
		t.Fatalf("indirect without feature: err = %v", err)
	}
}

// TestHostileRings is the hostile-driver list for the walker: each case
// writes a malformed ring and expects a guest error, never a panic or hang.
func TestHostileRings(t *testing.T) {
	tests := []struct {
		name     string
		features uint64
		setup    func(r *virtiotest.Ring, mem *memory.Memory)
	}{
		{"self loop", 0, func(r *virtiotest.Ring, _ *memory.Memory) {
			r.PutDesc(0, bufBase, 1, virtiotest.DescNext, 0)
			r.PushAvail(0)
		}},
		{"two-cycle", 0, func(r *virtiotest.Ring, _ *memory.Memory) {
			r.PutDesc(0, bufBase, 1, virtiotest.DescNext, 1)
			r.PutDesc(1, bufBase, 1, virtiotest.DescNext, 0)
			r.PushAvail(0)
		}},
		{"head out of range", 0, func(r *virtiotest.Ring, _ *memory.Memory) { r.PushAvail(200) }},
		{"next out of range", 0, func(r *virtiotest.Ring, _ *memory.Memory) {
			r.PutDesc(0, bufBase, 1, virtiotest.DescNext, 9)
			r.PushAvail(0)
		}},
		{"buffer outside memory", 0, func(r *virtiotest.Ring, _ *memory.Memory) {
			r.PutDesc(0, memSize-4, 8, 0, 0)
			r.PushAvail(0)
		}},
		{"buffer address wraps", 0, func(r *virtiotest.Ring, _ *memory.Memory) {
			r.PutDesc(0, ^uint64(0)-2, 16, 0, 0)
			r.PushAvail(0)
		}},
		{"avail index jump", 0, func(r *virtiotest.Ring, _ *memory.Memory) { r.SetAvailIdx(100) }},
		{"readable after writable", 0, func(r *virtiotest.Ring, _ *memory.Memory) {
			r.PutDesc(0, bufBase, 4, virtiotest.DescNext|virtiotest.DescWrite, 1)
			r.PutDesc(1, bufBase, 4, 0, 0)
			r.PushAvail(0)
		}},
		{"nested indirect", virtio.FRingIndirect, func(r *virtiotest.Ring, mem *memory.Memory) {
			r.PutDesc(0, 0x30000, 16, virtiotest.DescIndirect, 0)
			var d [16]byte
			d[0] = 0x30 // points at itself
			d[2] = 0x03
			d[8] = 16
			d[12] = virtiotest.DescIndirect
			_ = mem.WriteAt(d[:], 0x30000)
			r.PushAvail(0)
		}},
		{"indirect with next", virtio.FRingIndirect, func(r *virtiotest.Ring, _ *memory.Memory) {
			r.PutDesc(0, 0x30000, 16, virtiotest.DescIndirect|virtiotest.DescNext, 1)
			r.PushAvail(0)
		}},
		{"indirect bad length", virtio.FRingIndirect, func(r *virtiotest.Ring, _ *memory.Memory) {
			r.PutDesc(0, 0x30000, 17, virtiotest.DescIndirect, 0)
			r.PushAvail(0)
		}},
		{"indirect table outside memory", virtio.FRingIndirect, func(r *virtiotest.Ring, _ *memory.Memory) {
			r.PutDesc(0, memSize-16, 32, virtiotest.DescIndirect, 0)
			r.PushAvail(0)
		}},
		{"indirect table too long", virtio.FRingIndirect, func(r *virtiotest.Ring, _ *memory.Memory) {
			r.PutDesc(0, 0x30000, 16*100, virtiotest.DescIndirect, 0)
			r.PushAvail(0)
		}},
		{"indirect loop", virtio.FRingIndirect, func(r *virtiotest.Ring, mem *memory.Memory) {
			r.PutDesc(0, 0x30000, 32, virtiotest.DescIndirect, 0)
			var d [32]byte
			d[8], d[12], d[14] = 1, virtiotest.DescNext, 1
			d[16+8], d[16+12], d[16+14] = 1, virtiotest.DescNext, 0
			_ = mem.WriteAt(d[:], 0x30000)
			r.PushAvail(0)
		}},
		{"length overflow", 0, func(r *virtiotest.Ring, _ *memory.Memory) {
			// Two 3 GiB descriptors cannot both be in 1 MiB of memory,
			// so this fails on the address check; still no panic.
			r.PutDesc(0, 0, 0xc0000000, virtiotest.DescNext, 1)
			r.PutDesc(1, 0, 0xc0000000, 0, 0)
			r.PushAvail(0)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mem := newMem(t)
			r := virtiotest.NewRing(mem, 8, ringBase)
			tc.setup(r, mem)
			q, err := virtio.NewQueue(mem, r.Config(), tc.features)
			if err != nil {
				t.Fatal(err)
			}
			var c virtio.Chain
			ok, err := q.Pop(&c)
			if ok || !errors.Is(err, virtio.ErrGuest) {
				t.Fatalf("Pop = %v, %v; want a guest error", ok, err)
			}
		})
	}
}

func TestNewQueueRejects(t *testing.T) {
	mem := newMem(t)
	good := virtio.QueueConfig{Size: 8, DescAddr: 0x1000, AvailAddr: 0x2000, UsedAddr: 0x3000}
	tests := []struct {
		name string
		mod  func(*virtio.QueueConfig)
	}{
		{"size zero", func(c *virtio.QueueConfig) { c.Size = 0 }},
		{"size not power of two", func(c *virtio.QueueConfig) { c.Size = 6 }},
		{"desc outside", func(c *virtio.QueueConfig) { c.DescAddr = memSize - 16 }},
		{"used outside", func(c *virtio.QueueConfig) { c.UsedAddr = memSize }},
		{"avail misaligned", func(c *virtio.QueueConfig) { c.AvailAddr = 0x2001 }},
		{"used misaligned", func(c *virtio.QueueConfig) { c.UsedAddr = 0x3002 }},
		{"desc misaligned", func(c *virtio.QueueConfig) { c.DescAddr = 0x1008 }},
	}
	if _, err := virtio.NewQueue(mem, good, 0); err != nil {
		t.Fatalf("good config refused: %v", err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good
			tc.mod(&cfg)
			if _, err := virtio.NewQueue(mem, cfg, 0); !errors.Is(err, virtio.ErrGuest) {
				t.Fatalf("err = %v, want guest error", err)
			}
		})
	}
}

func TestEventIdx(t *testing.T) {
	mem := newMem(t)
	r := virtiotest.NewRing(mem, 8, ringBase)
	q, err := virtio.NewQueue(mem, r.Config(), virtio.FRingEventIdx)
	if err != nil {
		t.Fatal(err)
	}
	var c virtio.Chain
	// The driver wants an interrupt only after the third used element.
	r.SetUsedEvent(2)
	for i := 0; i < 3; i++ {
		head, _ := r.Add(virtiotest.Buf{Addr: bufBase, Len: 4, Write: true})
		if ok, err := q.Pop(&c); !ok || err != nil {
			t.Fatal(ok, err)
		}
		_ = q.Push(head, 0)
		notify, err := q.Publish()
		if err != nil {
			t.Fatal(err)
		}
		if want := i == 2; notify != want {
			t.Fatalf("element %d: notify = %v, want %v", i, notify, want)
		}
	}
	// Enabling notifications publishes avail_event = last_avail.
	pending, err := q.EnableNotify()
	if err != nil || pending {
		t.Fatalf("EnableNotify = %v, %v", pending, err)
	}
	if got := r.AvailEvent(); got != 3 {
		t.Fatalf("avail_event = %d, want 3", got)
	}
	r.Add(virtiotest.Buf{Addr: bufBase, Len: 4})
	if pending, _ := q.EnableNotify(); !pending {
		t.Fatal("EnableNotify missed a pending buffer")
	}
}

func TestNoInterruptFlag(t *testing.T) {
	mem := newMem(t)
	r := virtiotest.NewRing(mem, 8, ringBase)
	q, _ := virtio.NewQueue(mem, r.Config(), 0)
	var c virtio.Chain
	r.SetAvailFlags(1)
	head, _ := r.Add(virtiotest.Buf{Addr: bufBase, Len: 4})
	q.Pop(&c)
	q.Push(head, 0)
	if notify, _ := q.Publish(); notify {
		t.Fatal("interrupt despite VRING_AVAIL_F_NO_INTERRUPT")
	}
	if err := q.DisableNotify(); err != nil || r.UsedFlags() != 1 {
		t.Fatalf("DisableNotify: %v flags=%d", err, r.UsedFlags())
	}
	if _, err := q.EnableNotify(); err != nil || r.UsedFlags() != 0 {
		t.Fatalf("EnableNotify: %v flags=%d", err, r.UsedFlags())
	}
}

func TestUnpop(t *testing.T) {
	mem := newMem(t)
	r := virtiotest.NewRing(mem, 8, ringBase)
	h0, _ := r.Add(virtiotest.Buf{Addr: bufBase, Len: 4, Write: true})
	h1, _ := r.Add(virtiotest.Buf{Addr: bufBase + 4, Len: 4, Write: true})
	q, _ := virtio.NewQueue(mem, r.Config(), 0)
	var c virtio.Chain
	q.Pop(&c)
	q.Pop(&c)
	q.Unpop(1)
	q.Pop(&c)
	if c.Head != h1 {
		t.Fatalf("after Unpop got head %d, want %d (h0=%d)", c.Head, h1, h0)
	}
}

// FuzzQueueWalker writes fuzzer-chosen descriptor tables and avail rings and
// pops until the queue is empty or broken: the walker must never panic,
// never loop, and only return buffers inside guest memory.
func FuzzQueueWalker(f *testing.F) {
	f.Add(uint64(virtio.FRingIndirect), []byte{1, 0}, []byte{0, 0, 4, 0, 0, 0, 0, 0, 16, 0, 0, 0, 1, 0, 0, 0})
	f.Add(uint64(0), []byte{8, 0}, make([]byte, 16*8))
	f.Fuzz(func(t *testing.T, features uint64, avail []byte, descs []byte) {
		mem := memory.FromBytes(memory.Region{GPA: 0, Host: make([]byte, 0x20000)})
		r := virtiotest.NewRing(mem, 8, 0x1000)
		if len(descs) > 16*8 {
			descs = descs[:16*8]
		}
		_ = mem.WriteAt(descs, r.Desc)
		// Also use descs as an indirect table at 0x8000.
		_ = mem.WriteAt(descs, 0x8000)
		if len(avail) > 2+2*8 {
			avail = avail[:2+2*8]
		}
		_ = mem.WriteAt(avail, r.Avail+2)
		q, err := virtio.NewQueue(mem, r.Config(), features)
		if err != nil {
			t.Fatal(err)
		}
		var c virtio.Chain
		for i := 0; i < 20; i++ {
			ok, err := q.Pop(&c)
			if err != nil || !ok {
				return
			}
			if int(c.ReadLen)+int(c.WriteLen) > 0x20000*9 || len(c.Readable)+len(c.Writable) > 8 {
				t.Fatalf("chain too long: %d buffers", len(c.Readable)+len(c.Writable))
			}
			_ = q.Push(c.Head, c.WriteLen)
			_, _ = q.Publish()
		}
	})
}

func TestRingState(t *testing.T) {
	mem := newMem(t)
	r := virtiotest.NewRing(mem, 8, ringBase)
	q, err := virtio.NewQueue(mem, r.Config(), virtio.FRingEventIdx)
	if err != nil {
		t.Fatal(err)
	}
	r.SetUsedEvent(5)
	var c virtio.Chain
	for i := 0; i < 3; i++ {
		r.Add(virtiotest.Buf{Addr: bufBase, Len: 4, Write: true})
	}
	for i := 0; i < 2; i++ {
		if ok, err := q.Pop(&c); !ok || err != nil {
			t.Fatal(ok, err)
		}
		_ = q.Push(c.Head, 4)
	}
	if _, err := q.Publish(); err != nil {
		t.Fatal(err)
	}
	if _, err := q.EnableNotify(); err != nil {
		t.Fatal(err)
	}
	got, err := q.RingState()
	if err != nil {
		t.Fatal(err)
	}
	want := virtio.RingState{AvailIdx: 3, UsedIdx: 2, UsedEvent: 5, AvailEvent: 2}
	if got != want {
		t.Fatalf("RingState = %v, want %v", got, want)
	}
}
