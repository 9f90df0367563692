package rng

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/govmd/govmd/internal/eventfd"
	"github.com/govmd/govmd/memory"
	"github.com/govmd/govmd/virtio"
	"github.com/govmd/govmd/virtio/pcitransport"
	"github.com/govmd/govmd/virtio/virtiotest"
	"github.com/govmd/govmd/virtio/virtiotest/pcidriver"
)

const (
	memSize  = 4 << 20
	ringBase = 0x10000
	bufBase  = 0x20000
)

// env is an rng device behind the PCI transport, driven by the test
// driver, with its request queue set up.
type env struct {
	t     *testing.T
	dev   *Device
	tr    *pcitransport.Transport
	drv   *pcidriver.Driver
	mem   *memory.Memory
	ring  *virtiotest.Ring
	alloc virtiotest.Alloc
}

func newEnv(t *testing.T, mode pcidriver.Mode, cfg Config) *env {
	t.Helper()
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	dev, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	e := &env{t: t, dev: dev, mem: memory.FromBytes(memory.Region{GPA: 0, Host: make([]byte, memSize)})}
	irq := pcidriver.NewIRQ(1)
	e.tr, err = pcitransport.New(pcitransport.Config{Mode: mode.Transport, Device: dev, Mem: e.mem, MSIX: irq, INTx: irq})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.tr.Close() })
	e.drv, err = pcidriver.New(e.tr, irq, mode.Config)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.drv.Close)
	if e.drv.DeviceType() != DeviceType {
		t.Fatalf("device type %v", e.drv.DeviceType())
	}
	e.drv.Reset()
	if ok, err := e.drv.Negotiate(e.drv.DeviceFeatures()); err != nil || !ok {
		t.Fatalf("features refused: %v", err)
	}
	e.ring = virtiotest.NewRing(e.mem, e.drv.QueueMax(0), ringBase)
	if err := e.drv.SetupQueue(0, e.ring); err != nil {
		t.Fatal(err)
	}
	if err := e.drv.DriverOK(); err != nil {
		t.Fatal(err)
	}
	e.alloc = virtiotest.Alloc{Next: bufBase, End: memSize}
	return e
}

// request posts a chain of writable buffers of the given sizes (and
// readable ones of the sizes in readable) and returns their addresses.
func (e *env) request(readable []int, writable ...int) (uint16, []virtiotest.Buf) {
	e.t.Helper()
	var bufs []virtiotest.Buf
	for _, n := range readable {
		bufs = append(bufs, virtiotest.Buf{Addr: e.alloc.Get(uint64(n)+64, 64), Len: uint32(n)})
	}
	for _, n := range writable {
		addr := e.alloc.Get(uint64(n)+64, 64)
		bufs = append(bufs, virtiotest.Buf{Addr: addr, Len: uint32(n), Write: true})
	}
	head, ok := e.ring.Add(bufs...)
	if !ok {
		e.t.Fatal("ring full")
	}
	e.drv.Notify(0)
	return head, bufs[len(readable):]
}

// used waits for the next used element.
func (e *env) used() (head uint16, n uint32) {
	e.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if h, n, ok := e.ring.PopUsed(); ok {
			return h, n
		}
		time.Sleep(time.Millisecond)
	}
	e.t.Fatal("no used element")
	return 0, 0
}

func (e *env) bytes(b virtiotest.Buf) []byte {
	p, err := e.mem.Slice(b.Addr, uint64(b.Len))
	if err != nil {
		e.t.Fatal(err)
	}
	return p
}

// TestEntropy: over every way a guest meets the PCI function, a request
// of 4 KiB split over two buffers is filled with random bytes.
func TestEntropy(t *testing.T) {
	for _, mode := range pcidriver.AllModes() {
		t.Run(mode.Name, func(t *testing.T) {
			e := newEnv(t, mode, Config{})
			head, bufs := e.request(nil, 1000, 3096)
			h, n := e.used()
			if h != head || n != 4096 {
				t.Fatalf("used element %d len %d, want %d len 4096", h, n, head)
			}
			got := append(append([]byte(nil), e.bytes(bufs[0])...), e.bytes(bufs[1])...)
			if bytes.Count(got, []byte{0}) > 100 { // 16 expected
				t.Fatalf("%d zero bytes in 4 KiB of entropy", bytes.Count(got, []byte{0}))
			}
			if s := e.dev.Stats(); s.Requests != 1 || s.Bytes != 4096 || s.GuestFaults != 0 || e.tr.Faults() != 0 {
				t.Fatalf("stats %v, transport faults %d", s, e.tr.Faults())
			}
		})
	}
}

// TestHostileChains: a chain with device-readable buffers or without a
// writable byte is refused (completed with nothing written) and counted;
// one longer than the cap is filled up to the cap; the device keeps
// serving after each.
func TestHostileChains(t *testing.T) {
	e := newEnv(t, pcidriver.MSIXModes[0], Config{MaxRequest: 512})
	for _, c := range []struct {
		name     string
		readable []int
		writable []int
		want     uint32
	}{
		{"device-readable buffer", []int{16}, []int{64}, 0},
		{"zero-length writable buffer", nil, []int{0}, 0},
		{"longer than the cap", nil, []int{400, 400, 400}, 512},
		{"ordinary", nil, []int{32}, 32},
	} {
		head, bufs := e.request(c.readable, c.writable...)
		h, n := e.used()
		if h != head || n != c.want {
			t.Errorf("%s: used %d len %d, want %d len %d", c.name, h, n, head, c.want)
		}
		if c.name == "longer than the cap" &&
			(!bytes.Equal(e.bytes(bufs[2]), make([]byte, 400)) || !bytes.Equal(e.bytes(bufs[1])[112:], make([]byte, 288))) {
			t.Errorf("%s: wrote past the cap", c.name)
		}
	}
	s := e.dev.Stats()
	if s.Requests != 4 || s.Refused != 2 || s.Capped != 1 || s.GuestFaults != 2 || s.Bytes != 512+32 {
		t.Errorf("stats %v", s)
	}
	if e.drv.Status()&virtio.StatusNeedsReset != 0 {
		t.Error("a hostile chain broke the device")
	}
}

// TestRateLimit: beyond the rate the worker waits (the driver gets its
// bytes later, never more than the limit allows), and a reset while it
// waits returns at once.
func TestRateLimit(t *testing.T) {
	e := newEnv(t, pcidriver.MSIXModes[0], Config{RateLimit: 4096})
	start := time.Now()
	e.request(nil, 4096) // the burst
	e.used()
	e.request(nil, 2048) // half a second's worth more
	e.used()
	if el := time.Since(start); el < 400*time.Millisecond {
		t.Errorf("6 KiB at 4 KiB/s took %v", el)
	}
	if e.dev.Stats().Throttled != 1 {
		t.Errorf("stats %v", e.dev.Stats())
	}
	e.request(nil, 40960) // ten seconds' worth
	time.Sleep(50 * time.Millisecond)
	done := make(chan struct{})
	go func() { e.drv.Reset(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("reset waited for the rate limit")
	}
}

func TestBucket(t *testing.T) {
	t0 := time.Unix(1000, 0)
	b := newBucket(1000, t0)
	if w := b.take(1000, t0); w != 0 {
		t.Fatalf("burst: wait %v", w)
	}
	if w := b.take(500, t0); w != 500*time.Millisecond {
		t.Fatalf("over the burst: wait %v", w)
	}
	// After the wait the debt is paid; a second later a full second's
	// worth is there again, never more.
	if w := b.take(0, t0.Add(500*time.Millisecond)); w != 0 {
		t.Fatalf("after waiting: %v", w)
	}
	if w := b.take(1000, t0.Add(10*time.Second)); w != 0 {
		t.Fatalf("refilled: %v", w)
	}
	if w := b.take(1, t0.Add(10*time.Second)); w <= 0 {
		t.Fatal("the bucket holds more than one second's worth")
	}
	u := newBucket(-1, t0)
	if w := u.take(1<<30, t0); w != 0 {
		t.Fatal("no limit waited")
	}
}

func TestNewRejects(t *testing.T) {
	for _, cfg := range []Config{{MaxRequest: -1}, {MaxRequest: 2 << 20}} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}

// FuzzRequest feeds fuzzer-chosen chains (readable and writable buffers,
// direct or indirect) to the worker. It must never panic, never write
// outside the chain's writable buffers or beyond the cap, and complete
// every chain.
func FuzzRequest(f *testing.F) {
	f.Add([]byte{0, 64}, uint8(0), false)
	f.Add([]byte{16, 0, 64}, uint8(1), true)
	f.Add([]byte{0, 0}, uint8(0), false)
	f.Add([]byte{0, 255, 255, 255}, uint8(0), true)
	f.Fuzz(func(t *testing.T, layout []byte, nRead uint8, indirect bool) {
		if len(layout) > 16 {
			layout = layout[:16]
		}
		const cap = 300
		d, err := New(Config{MaxRequest: cap, RateLimit: -1})
		if err != nil {
			t.Fatal(err)
		}
		mem := memory.FromBytes(memory.Region{GPA: 0, Host: make([]byte, 1<<20)})
		ring := virtiotest.NewRing(mem, QueueSize, ringBase)
		q, err := virtio.NewQueue(mem, ring.Config(), virtio.FRingIndirect|virtio.FVersion1)
		if err != nil {
			t.Fatal(err)
		}
		alloc := virtiotest.Alloc{Next: bufBase, End: 1 << 20}
		var bufs []virtiotest.Buf
		writable := 0
		for i, l := range layout {
			n := int(l) * 8
			b := virtiotest.Buf{Addr: alloc.Get(uint64(n)+64, 64), Len: uint32(n), Write: i >= int(nRead)%(len(layout)+1)}
			if b.Write {
				writable += n
			}
			bufs = append(bufs, b)
		}
		if len(bufs) == 0 {
			return
		}
		var ok bool
		if indirect {
			_, ok = ring.AddIndirect(alloc.Get(16*uint64(len(bufs)), 16), bufs...)
		} else {
			_, ok = ring.Add(bufs...)
		}
		if !ok {
			return
		}
		kick, _ := eventfd.New()
		defer kick.Close()
		w := newWorker(d, virtio.Activation{Queues: []*virtio.Queue{q}, Kicks: []*eventfd.EventFD{kick}, Transport: nopTransport{}})
		if err := w.drain(context.Background()); err != nil && !errors.Is(err, virtio.ErrGuest) {
			t.Fatalf("drain: %v", err)
		}
		if _, n, ok := ring.PopUsed(); ok {
			readable := int(nRead)%(len(layout)+1) > 0 && layout[0] > 0
			if n > cap || int(n) > writable || readable && n != 0 {
				t.Fatalf("used len %d (writable %d, cap %d, readable %v)", n, writable, cap, readable)
			}
		}
		if alloc.Next > 1<<20 {
			t.Fatal("allocator overflow")
		}
	})
}

type nopTransport struct{}

func (nopTransport) Notify(int)       {}
func (nopTransport) ConfigChanged()   {}
func (nopTransport) NeedsReset(error) {}
