package blk

import (
	"encoding/binary"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/govmd/govmd/memory"
	"github.com/govmd/govmd/virtio"
	"github.com/govmd/govmd/virtio/virtiotest"
)

// Guest memory layout of the test driver.
const (
	testMemSize  = 8 << 20
	testRingBase = 0x10000
	testBufBase  = 0x100000
	testImage    = 1 << 20 // bytes
)

// pattern is the initial content of test images: no 512-byte sector is all
// zeros and every sector differs.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*13+i>>9) | 1
	}
	return b
}

// writeImage creates an image file with the given content.
func writeImage(t testing.TB, content []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, content, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// testWriter sends log output to the test log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

type fakeIRQ struct{ queue, config atomic.Int32 }

func (i *fakeIRQ) QueueInterrupt(int) { i.queue.Add(1) }
func (i *fakeIRQ) ConfigInterrupt()   { i.config.Add(1) }

// env is one disk driven by an in-process virtio driver through
// virtio.Common, the way a transport would.
type env struct {
	t     testing.TB
	path  string
	dev   *Device
	mem   *memory.Memory
	c     *virtio.Common
	irq   *fakeIRQ
	rings []*virtiotest.Ring
	alloc virtiotest.Alloc
}

type envConfig struct {
	opts  Options
	path  string // an existing image; default: a new file with image
	image []byte // default: pattern(testImage)
	// acked is applied to the offered features (default: all offered).
	acked func(offered uint64) uint64
	// wrap lets a test interpose on the backend.
	wrap func(backend) backend
}

func newEnv(t testing.TB, cfg envConfig) *env {
	t.Helper()
	if cfg.image == nil {
		cfg.image = pattern(testImage)
	}
	path := cfg.path
	if path == "" {
		path = writeImage(t, cfg.image)
	}
	if cfg.opts.Log == nil {
		cfg.opts.Log = slog.New(slog.NewTextHandler(testWriter{t}, nil))
	}
	dev, err := Open(path, cfg.opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	if cfg.wrap != nil {
		dev.be = cfg.wrap(dev.be)
	}
	e := &env{t: t, path: path, dev: dev, irq: &fakeIRQ{}}
	e.mem = memory.FromBytes(memory.Region{GPA: 0, Host: make([]byte, testMemSize)})
	e.c, err = virtio.NewCommon(dev, e.mem, e.irq, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.c.Close() })
	features := e.c.OfferedFeatures(false)
	if cfg.acked != nil {
		features = cfg.acked(features)
	}
	e.start(features)
	return e
}

// start runs the driver's initialization sequence with the given features.
func (e *env) start(features uint64) {
	e.t.Helper()
	c := e.c
	c.SetStatus(virtio.StatusAcknowledge)
	c.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver)
	c.DriverFeatureSelect(0)
	c.SetDriverFeatures(uint32(features))
	c.DriverFeatureSelect(1)
	c.SetDriverFeatures(uint32(features >> 32))
	c.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK)
	if c.Status()&virtio.StatusFeaturesOK == 0 {
		e.t.Fatal("FEATURES_OK refused")
	}
	nq := 1
	if features&FMQ != 0 {
		nq = c.NumQueues()
	}
	e.rings = e.rings[:0]
	base := uint64(testRingBase)
	size := e.dev.queueSize
	for q := 0; q < nq; q++ {
		r := virtiotest.NewRing(e.mem, size, base)
		base += (virtiotest.Bytes(size) + 4095) &^ 4095
		c.SelectQueue(uint16(q))
		c.SetQueueSize(r.Size)
		cfg := r.Config()
		c.SetQueueAddr(virtio.QueueDesc, false, uint32(cfg.DescAddr))
		c.SetQueueAddr(virtio.QueueAvail, false, uint32(cfg.AvailAddr))
		c.SetQueueAddr(virtio.QueueUsed, false, uint32(cfg.UsedAddr))
		c.SetQueueEnabled(true)
		e.rings = append(e.rings, r)
	}
	if base > testBufBase {
		e.t.Fatalf("rings overflow into buffers (%#x)", base)
	}
	c.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK | virtio.StatusDriverOK)
	if s := c.Status(); s&virtio.StatusNeedsReset != 0 || !c.Active() {
		e.t.Fatalf("activation failed: status %s", virtio.StatusString(s))
	}
	e.alloc = virtiotest.Alloc{Next: testBufBase, End: testMemSize}
}

// chainSpec says how a request's bytes are cut into descriptors. Nil cuts
// mean one descriptor for all readable (or writable) bytes.
type chainSpec struct {
	readSegs  []int
	writeSegs []int
	indirect  bool
}

// simple is the classic layout: header, data, status in separate
// descriptors.
func simple(readable []byte, writeLen int) chainSpec {
	s := chainSpec{readSegs: []int{headerSize}}
	if n := len(readable) - headerSize; n > 0 {
		s.readSegs = append(s.readSegs, n)
	}
	if writeLen > 1 {
		s.writeSegs = append(s.writeSegs, writeLen-1)
	}
	s.writeSegs = append(s.writeSegs, 1)
	return s
}

// post builds the chain in guest memory and makes it available on queue q;
// it returns the guest addresses of the writable segments.
func (e *env) post(q int, readable []byte, writeLen int, spec chainSpec) (head uint16, writable []virtiotest.Buf) {
	e.t.Helper()
	if spec.readSegs == nil && len(readable) > 0 {
		spec.readSegs = []int{len(readable)}
	}
	if spec.writeSegs == nil && writeLen > 0 {
		spec.writeSegs = []int{writeLen}
	}
	var bufs []virtiotest.Buf
	off := 0
	for _, n := range spec.readSegs {
		addr := e.alloc.Get(uint64(n)+64, 64) // gaps keep segments apart
		if err := e.mem.WriteAt(readable[off:off+n], addr); err != nil {
			e.t.Fatal(err)
		}
		off += n
		bufs = append(bufs, virtiotest.Buf{Addr: addr, Len: uint32(n)})
	}
	if off != len(readable) {
		e.t.Fatalf("readSegs cover %d of %d bytes", off, len(readable))
	}
	total := 0
	for _, n := range spec.writeSegs {
		addr := e.alloc.Get(uint64(n)+64, 64)
		fill := make([]byte, n)
		for i := range fill {
			fill[i] = 0xee // poison: shows what the device did not write
		}
		_ = e.mem.WriteAt(fill, addr)
		total += n
		b := virtiotest.Buf{Addr: addr, Len: uint32(n), Write: true}
		bufs = append(bufs, b)
		writable = append(writable, b)
	}
	if total != writeLen {
		e.t.Fatalf("writeSegs cover %d of %d bytes", total, writeLen)
	}
	var ok bool
	if spec.indirect {
		table := e.alloc.Get(16*uint64(len(bufs)), 16)
		head, ok = e.rings[q].AddIndirect(table, bufs...)
	} else {
		head, ok = e.rings[q].Add(bufs...)
	}
	if !ok {
		e.t.Fatal("ring full")
	}
	return head, writable
}

// waitUsed waits for the next used element of queue q.
func (e *env) waitUsed(q int, timeout time.Duration) (head uint16, n uint32, ok bool) {
	deadline := time.Now().Add(timeout)
	for {
		if head, n, ok := e.rings[q].PopUsed(); ok {
			return head, n, true
		}
		if time.Now().After(deadline) {
			return 0, 0, false
		}
		time.Sleep(50 * time.Microsecond)
	}
}

// do runs one request on queue 0 and returns the bytes of its writable
// buffers (data followed by the status byte) and the used length.
func (e *env) do(readable []byte, writeLen int, spec chainSpec) (written []byte, used uint32) {
	e.t.Helper()
	head, wbufs := e.post(0, readable, writeLen, spec)
	e.c.Notify(0)
	h, n, ok := e.waitUsed(0, 5*time.Second)
	if !ok {
		e.t.Fatalf("request not completed (status %s)", virtio.StatusString(e.c.Status()))
	}
	if h != head {
		e.t.Fatalf("used head %d, want %d", h, head)
	}
	return e.readBufs(wbufs), n
}

func (e *env) readBufs(bufs []virtiotest.Buf) []byte {
	var out []byte
	for _, b := range bufs {
		p := make([]byte, b.Len)
		if err := e.mem.ReadAt(p, b.Addr); err != nil {
			e.t.Fatal(err)
		}
		out = append(out, p...)
	}
	return out
}

func (e *env) image() []byte {
	e.t.Helper()
	b, err := os.ReadFile(e.path)
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

// hdr encodes a request header.
func hdr(typ uint32, sector uint64) []byte {
	b := make([]byte, headerSize)
	binary.LittleEndian.PutUint32(b[0:], typ)
	binary.LittleEndian.PutUint64(b[8:], sector)
	return b
}

// seg encodes a discard/write-zeroes segment.
func seg(sector uint64, num, flags uint32) []byte {
	b := make([]byte, segmentSize)
	binary.LittleEndian.PutUint64(b[0:], sector)
	binary.LittleEndian.PutUint32(b[8:], num)
	binary.LittleEndian.PutUint32(b[12:], flags)
	return b
}

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// hookBackend wraps a backend with optional overrides, for fault injection
// and ordering checks.
type hookBackend struct {
	backend
	mu        sync.Mutex
	syncs     int
	onSync    func() error
	onPreadv  func() error
	onPunch   func() error
	onZero    func() error
	onPwritev func() error
}

func (h *hookBackend) sync() error {
	h.mu.Lock()
	h.syncs++
	f := h.onSync
	h.mu.Unlock()
	if f != nil {
		if err := f(); err != nil {
			return err
		}
	}
	return h.backend.sync()
}

func (h *hookBackend) syncCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.syncs
}

func (h *hookBackend) preadv(iovs [][]byte, off int64) (int, error) {
	if h.onPreadv != nil {
		if err := h.onPreadv(); err != nil {
			return 0, err
		}
	}
	return h.backend.preadv(iovs, off)
}

func (h *hookBackend) pwritev(iovs [][]byte, off int64) (int, error) {
	if h.onPwritev != nil {
		if err := h.onPwritev(); err != nil {
			return 0, err
		}
	}
	return h.backend.pwritev(iovs, off)
}

func (h *hookBackend) punchHole(off, n int64) error {
	if h.onPunch != nil {
		if err := h.onPunch(); err != nil {
			return err
		}
	}
	return h.backend.punchHole(off, n)
}

func (h *hookBackend) zeroRange(off, n int64) error {
	if h.onZero != nil {
		if err := h.onZero(); err != nil {
			return err
		}
	}
	return h.backend.zeroRange(off, n)
}
