package net

import (
	"os"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/govmd/govmd/devices/net/tap"
	"github.com/govmd/govmd/internal/eventfd"
	"github.com/govmd/govmd/memory"
	"github.com/govmd/govmd/virtio"
	"github.com/govmd/govmd/virtio/virtiotest"
)

// fakeBE is a Backend for tests that drive the workers directly: it keeps
// the last frame written (in a preallocated buffer, so that it allocates
// nothing) and returns a fixed frame on every read.
type fakeBE struct {
	mu        sync.Mutex
	supported uint32
	offload   uint32
	hdrSize   int
	out       []byte
	writes    int
	in        []byte // returned by ReadV; nil: EAGAIN
}

func newFakeBE() *fakeBE {
	return &fakeBE{
		supported: tap.OffloadCSUM | tap.OffloadTSO4 | tap.OffloadTSO6 | tap.OffloadTSOECN | tap.OffloadUFO | tap.OffloadUSO4 | tap.OffloadUSO6,
		out:       make([]byte, 0, 2*MaxFrame),
	}
}

func (f *fakeBE) ReadV(iovs [][]byte, wait bool) (int, error) {
	if f.in == nil {
		if wait {
			return 0, os.ErrDeadlineExceeded
		}
		return 0, unix.EAGAIN
	}
	return virtio.Scatter(iovs, 0, f.in), nil // truncates like the tap
}

func (f *fakeBE) WriteV(iovs [][]byte) (int, error) {
	f.out = f.out[:0]
	for _, b := range iovs {
		f.out = append(f.out, b...)
	}
	f.writes++
	return len(f.out), nil
}

func (f *fakeBE) SetVnetHdrSize(n int) error { f.hdrSize = n; return nil }

func (f *fakeBE) SetOffload(flags uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if flags&^f.supported != 0 {
		return unix.EINVAL
	}
	f.offload = flags
	return nil
}

func (f *fakeBE) SupportedOffloads() uint32 { return f.supported }
func (f *fakeBE) CancelRead()               {}
func (f *fakeBE) ResumeRead()               {}

// fakeTransport records what the workers signal.
type fakeTransport struct {
	notifies   atomic.Int32
	needsReset atomic.Int32
	lastErr    atomic.Value
}

func (t *fakeTransport) Notify(int)     { t.notifies.Add(1) }
func (t *fakeTransport) ConfigChanged() {}
func (t *fakeTransport) NeedsReset(err error) {
	t.needsReset.Add(1)
	t.lastErr.Store(err)
}

// qenv is one queue in test memory, with the driver's ring.
type qenv struct {
	mem   *memory.Memory
	ring  *virtiotest.Ring
	q     *virtio.Queue
	alloc virtiotest.Alloc
}

func newQEnv(t testing.TB, size uint16, features uint64, memSize uint64) *qenv {
	t.Helper()
	mem := memory.FromBytes(memory.Region{GPA: 0, Host: make([]byte, memSize)})
	e := &qenv{mem: mem, alloc: virtiotest.Alloc{Next: 0x1000, End: memSize}}
	e.ring = virtiotest.NewRing(mem, size, e.alloc.Get(virtiotest.Bytes(size), 4096))
	q, err := virtio.NewQueue(mem, e.ring.Config(), features)
	if err != nil {
		t.Fatal(err)
	}
	e.q = q
	return e
}

// activation returns an Activation with q at index idx.
func (e *qenv) activation(idx int, features uint64, tr virtio.Transport) virtio.Activation {
	qs := make([]*virtio.Queue, 3)
	qs[idx] = e.q
	return virtio.Activation{Features: features, Mem: e.mem, Queues: qs, Kicks: make([]*eventfd.EventFD, 3), Transport: tr}
}

// postBytes writes data to fresh guest memory and posts it as a chain
// split per layout (the rest in one more descriptor), readable or
// writable.
func (e *qenv) postBytes(data []byte, layout []int, write bool) uint16 {
	addr := e.alloc.Get(uint64(len(data))+1, 8)
	if err := e.mem.WriteAt(data, addr); err != nil {
		panic(err)
	}
	var bufs []virtiotest.Buf
	off := 0
	for _, l := range layout {
		if off == len(data) {
			break
		}
		l = min(l, len(data)-off)
		bufs = append(bufs, virtiotest.Buf{Addr: addr + uint64(off), Len: uint32(l), Write: write})
		off += l
	}
	if off < len(data) || len(bufs) == 0 {
		bufs = append(bufs, virtiotest.Buf{Addr: addr + uint64(off), Len: uint32(len(data) - off), Write: write})
	}
	head, ok := e.ring.Add(bufs...)
	if !ok {
		panic("ring full")
	}
	return head
}

func newTestDevice(t testing.TB, be Backend, cfg Config) *Device {
	t.Helper()
	if cfg.MAC == nil {
		cfg.MAC = []byte{0x52, 0x54, 0, 1, 2, 3}
	}
	d, err := New(be, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}
