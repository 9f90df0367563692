package blk

import (
	"encoding/binary"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/govmd/govmd/memory"
	"github.com/govmd/govmd/virtio"
	"github.com/govmd/govmd/virtio/pcitransport"
	"github.com/govmd/govmd/virtio/virtiotest"
	"github.com/govmd/govmd/virtio/virtiotest/pcidriver"
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

// transport is how the disk is presented and driven (the shared matrix
// of the PCI transport's test driver).
type transport = pcidriver.Mode

// forTransports runs test once per transport.
func forTransports(t *testing.T, test func(t *testing.T, tr transport)) {
	for _, tr := range pcidriver.AllModes() {
		t.Run(tr.Name, func(t *testing.T) { test(t, tr) })
	}
}

// env is one disk presented as a virtio PCI function and driven by an
// in-process guest driver through the function's registers.
type env struct {
	t     testing.TB
	path  string
	dev   *Device
	mem   *memory.Memory
	tr    *pcitransport.Transport
	drv   *pcidriver.Driver
	irq   *pcidriver.IRQ
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
	// transport defaults to a modern driver on a transitional device.
	transport transport
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
	e := &env{t: t, path: path, dev: dev, irq: pcidriver.NewIRQ(len(dev.QueueSizes()))}
	e.mem = memory.FromBytes(memory.Region{GPA: 0, Host: make([]byte, testMemSize)})
	e.tr, err = pcitransport.New(pcitransport.Config{Mode: cfg.transport.Transport, Device: dev, Mem: e.mem, MSIX: e.irq, INTx: e.irq, Log: cfg.opts.Log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.tr.Close() })
	e.drv, err = pcidriver.New(e.tr, e.irq, cfg.transport.Config)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.drv.Close)
	if e.drv.DeviceType() != virtio.DeviceBlock {
		t.Fatalf("device type %v", e.drv.DeviceType())
	}
	e.drv.Reset()
	features := e.drv.DeviceFeatures()
	if cfg.acked != nil {
		features = cfg.acked(features)
	}
	e.start(features)
	return e
}

// start runs the driver's initialization sequence with the given features
// on a reset device.
func (e *env) start(features uint64) {
	e.t.Helper()
	d := e.drv
	if ok, err := d.Negotiate(features); err != nil || !ok {
		e.t.Fatalf("features %#x refused: %v", features, err)
	}
	nq := 1
	if features&FMQ != 0 {
		nq = d.NumQueues()
	}
	e.rings = e.rings[:0]
	base := uint64(testRingBase)
	for q := 0; q < nq; q++ {
		size := d.QueueMax(q) // the device's queueSize; legacy rings have the maximum size
		r := virtiotest.NewRing(e.mem, size, base)
		base += (virtiotest.Bytes(size) + 4095) &^ 4095
		if err := d.SetupQueue(q, r); err != nil {
			e.t.Fatal(err)
		}
		e.rings = append(e.rings, r)
	}
	if base > testBufBase {
		e.t.Fatalf("rings overflow into buffers (%#x)", base)
	}
	if err := d.DriverOK(); err != nil || !e.tr.Common().Active() {
		e.t.Fatalf("activation failed: %v", err)
	}
	e.alloc = virtiotest.Alloc{Next: testBufBase, End: testMemSize}
}

// checkTransport fails the test if the transport counted a register access
// of the test driver as a driver mistake.
func (e *env) checkTransport() {
	e.t.Helper()
	if f := e.tr.Faults(); f != 0 {
		e.t.Errorf("the transport counted %d driver faults", f)
	}
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
	e.drv.Notify(0)
	h, n, ok := e.waitUsed(0, 5*time.Second)
	if !ok {
		e.t.Fatalf("request not completed (status %s)", virtio.StatusString(e.drv.Status()))
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
