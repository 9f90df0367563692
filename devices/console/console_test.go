package console

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
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
	memSize    = 8 << 20
	ringBase   = 0x10000
	ringStride = 0x4000
	bufBase    = 0x200000
	wait       = 5 * time.Second
)

// env is a console device behind the PCI transport, driven by the test
// driver, which plays a guest's virtio_console driver.
type env struct {
	t     *testing.T
	dev   *Device
	tr    *pcitransport.Transport
	drv   *pcidriver.Driver
	mem   *memory.Memory
	rings []*virtiotest.Ring // by queue; nil for a queue not set up
	alloc virtiotest.Alloc
	bufs  map[int]map[uint16]virtiotest.Buf // posted receive buffers, by queue and head
}

func newEnv(t *testing.T, mode pcidriver.Mode, cfg Config, multiport bool) *env {
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
	irq := pcidriver.NewIRQ(len(dev.QueueSizes()))
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
	e.start(multiport)
	return e
}

// start resets the device and sets it up as Linux's virtio_console probe
// does: every queue with MULTIPORT, queues 0 and 1 without.
func (e *env) start(multiport bool) {
	e.t.Helper()
	e.drv.Reset()
	f := e.drv.DeviceFeatures()
	if f&FMultiport == 0 || f&FEmergWrite == 0 {
		e.t.Fatalf("features %#x lack MULTIPORT or EMERG_WRITE", f)
	}
	if !multiport {
		f &^= FMultiport
	}
	if ok, err := e.drv.Negotiate(f); err != nil || !ok {
		e.t.Fatalf("features refused: %v", err)
	}
	nq := 2
	if multiport {
		nq = e.drv.NumQueues()
	}
	e.rings = make([]*virtiotest.Ring, e.drv.NumQueues())
	for q := 0; q < nq; q++ {
		e.rings[q] = virtiotest.NewRing(e.mem, e.drv.QueueMax(q), ringBase+uint64(q)*ringStride)
		if err := e.drv.SetupQueue(q, e.rings[q]); err != nil {
			e.t.Fatal(err)
		}
	}
	if err := e.drv.DriverOK(); err != nil {
		e.t.Fatal(err)
	}
	e.alloc = virtiotest.Alloc{Next: bufBase, End: memSize}
	e.bufs = map[int]map[uint16]virtiotest.Buf{}
}

func txQueue(port int) int { return rxQueue(port) + 1 }

// post posts a chain and notifies the queue.
func (e *env) post(q int, bufs ...virtiotest.Buf) uint16 {
	e.t.Helper()
	head, ok := e.rings[q].Add(bufs...)
	if !ok {
		e.t.Fatalf("queue %d full", q)
	}
	e.drv.Notify(q)
	return head
}

// buf allocates a buffer holding data (device-readable) or of n bytes
// (device-writable when write).
func (e *env) buf(data []byte, n int, write bool) virtiotest.Buf {
	e.t.Helper()
	if data != nil {
		n = len(data)
	}
	b := virtiotest.Buf{Addr: e.alloc.Get(uint64(n)+64, 64), Len: uint32(n), Write: write}
	if data != nil {
		if err := e.mem.WriteAt(data, b.Addr); err != nil {
			e.t.Fatal(err)
		}
	}
	return b
}

// postRecv posts a receive buffer of n bytes on queue q.
func (e *env) postRecv(q, n int) {
	e.t.Helper()
	b := e.buf(nil, n, true)
	head := e.post(q, b)
	if e.bufs[q] == nil {
		e.bufs[q] = map[uint16]virtiotest.Buf{}
	}
	e.bufs[q][head] = b
}

// used waits for queue q's next used element.
func (e *env) used(q int) (head uint16, n uint32) {
	e.t.Helper()
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		if h, n, ok := e.rings[q].PopUsed(); ok {
			return h, n
		}
		time.Sleep(time.Millisecond)
	}
	e.t.Fatalf("queue %d: no used element (device stats %v)", q, e.dev.Stats())
	return 0, 0
}

// noUsed checks that queue q completes nothing for a while.
func (e *env) noUsed(q int, d time.Duration) {
	e.t.Helper()
	time.Sleep(d)
	if h, n, ok := e.rings[q].PopUsed(); ok {
		e.t.Fatalf("queue %d: unexpected used element %d len %d", q, h, n)
	}
}

// recv waits for a receive buffer of queue q to come back and returns what
// the device wrote into it; the buffer is posted again (as Linux does).
func (e *env) recv(q int) []byte {
	e.t.Helper()
	h, n := e.used(q)
	b, ok := e.bufs[q][h]
	if !ok {
		e.t.Fatalf("queue %d: used head %d was not a posted receive buffer", q, h)
	}
	if n > b.Len {
		e.t.Fatalf("queue %d: used length %d beyond the buffer's %d", q, n, b.Len)
	}
	got := append([]byte(nil), e.bytes(b)[:n]...)
	delete(e.bufs[q], h)
	head := e.post(q, b)
	e.bufs[q][head] = b
	return got
}

func (e *env) bytes(b virtiotest.Buf) []byte {
	p, err := e.mem.Slice(b.Addr, uint64(b.Len))
	if err != nil {
		e.t.Fatal(err)
	}
	return p
}

// write sends data on queue q in one chain of the given buffers (one if
// none given) and waits until the device returns it, as Linux's console
// writer does.
func (e *env) write(q int, data []byte, split ...int) {
	e.t.Helper()
	var bufs []virtiotest.Buf
	for _, n := range split {
		bufs = append(bufs, e.buf(data[:n], 0, false))
		data = data[n:]
	}
	bufs = append(bufs, e.buf(data, 0, false))
	head := e.post(q, bufs...)
	if h, n := e.used(q); h != head || n != 0 {
		e.t.Fatalf("queue %d: used %d len %d, want %d len 0", q, h, n, head)
	}
}

func ctrlBytes(id uint32, event, value uint16) []byte {
	b := make([]byte, ctrlHeaderLen)
	binary.LittleEndian.PutUint32(b[0:], id)
	binary.LittleEndian.PutUint16(b[4:], event)
	binary.LittleEndian.PutUint16(b[6:], value)
	return b
}

// sendCtrl sends a control message, as __send_control_msg does.
func (e *env) sendCtrl(id uint32, event, value uint16) {
	e.t.Helper()
	e.write(ctrlTxQueue, ctrlBytes(id, event, value))
}

// msg is a control message as the driver receives it.
type msg struct {
	id           uint32
	event, value uint16
	extra        string
}

func (m msg) String() string {
	return fmt.Sprintf("{id %d event %d value %d extra %q}", m.id, m.event, m.value, m.extra)
}

// recvCtrl receives the next control message.
func (e *env) recvCtrl() msg {
	e.t.Helper()
	b := e.recvOnce(ctrlRxQueue)
	if len(b) < ctrlHeaderLen {
		e.t.Fatalf("control message of %d bytes", len(b))
	}
	return msg{binary.LittleEndian.Uint32(b), binary.LittleEndian.Uint16(b[4:]), binary.LittleEndian.Uint16(b[6:]), string(b[8:])}
}

func (e *env) expectCtrl(want ...msg) {
	e.t.Helper()
	for _, w := range want {
		if got := e.recvCtrl(); got != w {
			e.t.Fatalf("control message %v, want %v", got, w)
		}
	}
}

// portAnswer is what the device answers to PORT_READY for port i.
func portAnswer(cfg Config, i int) []msg {
	var m []msg
	if i == 0 {
		m = append(m, msg{0, EventConsolePort, 1, ""})
		if cfg.Cols != 0 {
			var size [4]byte
			binary.LittleEndian.PutUint16(size[0:], cfg.Cols)
			binary.LittleEndian.PutUint16(size[2:], cfg.Rows)
			m = append(m, msg{0, EventResize, 0, string(size[:])})
		}
	}
	m = append(m, msg{uint32(i), EventPortOpen, 1, ""})
	if n := cfg.Ports[i].Name; n != "" {
		m = append(m, msg{uint32(i), EventPortName, 1, n})
	}
	return m
}

// handshake runs the MULTIPORT start-up as Linux does: DEVICE_READY, the
// DEVICE_ADDs, then for each port rxBufs receive buffers and PORT_READY,
// and the answers; port 0 becomes the console (which opens it:
// PORT_OPEN(0, 1)). The driver posts control receive buffers for the
// messages it expects, so that none is left posted. It returns how many
// control messages the driver received.
func (e *env) handshake(cfg Config, rxBufs int) int {
	e.t.Helper()
	for range cfg.Ports {
		e.postRecv(ctrlRxQueue, 4096)
	}
	e.sendCtrl(0xffffffff, EventDeviceReady, 1)
	got := 0
	for i := range cfg.Ports {
		e.expectCtrl(msg{uint32(i), EventDeviceAdd, 1, ""})
		got++
	}
	for i := range cfg.Ports {
		for k := 0; k < rxBufs; k++ {
			e.postRecv(rxQueue(i), 4096)
		}
		a := portAnswer(cfg, i)
		for range a {
			e.postRecv(ctrlRxQueue, 4096)
		}
		e.sendCtrl(uint32(i), EventPortReady, 1)
		e.expectCtrl(a...)
		got += len(a)
		if i == 0 {
			e.sendCtrl(0, EventPortOpen, 1) // init_port_console
		}
	}
	return got
}

// recorder records the writes to every port's Out, in order.
type recorder struct {
	mu     sync.Mutex
	writes []string
	err    error // returned by every write when set
}

type portOut struct {
	r    *recorder
	port int
}

func (o portOut) Write(p []byte) (int, error) {
	o.r.mu.Lock()
	defer o.r.mu.Unlock()
	if o.r.err != nil {
		return 0, o.r.err
	}
	o.r.writes = append(o.r.writes, fmt.Sprintf("%d:%s", o.port, p))
	return len(p), nil
}

func (r *recorder) get() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.writes...)
}

func threePorts(r *recorder) Config {
	return Config{
		Ports: []Port{
			{Out: portOut{r, 0}},
			{Name: "org.govmd.one", Out: portOut{r, 1}},
			{Name: "two", Out: portOut{r, 2}},
		},
		Cols: 132, Rows: 43,
	}
}

// TestHandshake: over every way a guest meets the PCI function, the
// MULTIPORT start-up of a Linux driver: DEVICE_ADD for every port, the
// console port, its size, the names, the host side open; the guest's
// PORT_OPEN is recorded.
func TestHandshake(t *testing.T) {
	for _, mode := range pcidriver.AllModes() {
		t.Run(mode.Name, func(t *testing.T) {
			cfg := threePorts(&recorder{})
			e := newEnv(t, mode, cfg, true)
			var c [configSize]byte
			e.drv.ReadConfig(0, c[:])
			if cols, rows, n := binary.LittleEndian.Uint16(c[0:]), binary.LittleEndian.Uint16(c[2:]), binary.LittleEndian.Uint32(c[4:]); cols != 132 || rows != 43 || n != 3 {
				t.Fatalf("configuration cols %d rows %d max_nr_ports %d", cols, rows, n)
			}
			if e.dev.Features()&FSize == 0 {
				t.Fatal("size set but VIRTIO_CONSOLE_F_SIZE not offered")
			}
			got := e.handshake(cfg, 1)
			e.postRecv(ctrlRxQueue, 4096)
			e.noUsed(ctrlRxQueue, 20*time.Millisecond)
			s := e.dev.Stats()
			if !s.Ports[0].GuestOpen || s.Ports[1].GuestOpen || s.Ports[2].GuestOpen {
				t.Fatalf("guest open states after the console opened: %v", s)
			}
			e.sendCtrl(2, EventPortOpen, 1)
			e.sendCtrl(2, EventPortOpen, 0)
			e.sendCtrl(1, EventPortOpen, 1)
			s = e.dev.Stats()
			if !s.Ports[1].GuestOpen || s.Ports[2].GuestOpen {
				t.Fatalf("guest open states: %v", s)
			}
			if s.ControlOut != uint64(got) || s.ControlIn != 1+3+1+3 || s.ControlDropped != 0 || s.GuestFaults != 0 || e.tr.Faults() != 0 {
				t.Fatalf("stats %v (driver got %d messages), transport faults %d", s, got, e.tr.Faults())
			}
			if e.drv.Status()&virtio.StatusNeedsReset != 0 {
				t.Fatal("device needs a reset")
			}
		})
	}
}

// TestOutput: what the guest writes to three ports arrives on their Outs
// in the order it was written, a chain of several buffers in one piece
// after the other; a port without Out discards (counted).
func TestOutput(t *testing.T) {
	r := &recorder{}
	cfg := threePorts(r)
	cfg.Ports = append(cfg.Ports, Port{Name: "nowhere"})
	e := newEnv(t, pcidriver.MSIXModes[0], cfg, true)
	e.handshake(cfg, 0)
	var want []string
	for k := 0; k < 5; k++ {
		for _, p := range []int{0, 2, 1} {
			s := fmt.Sprintf("p%d-%d;", p, k)
			e.write(txQueue(p), []byte(s))
			want = append(want, fmt.Sprintf("%d:%s", p, s))
			if n := len(r.get()); n != len(want) { // written before the buffer came back
				t.Fatalf("%d writes after %d chains came back", n, len(want))
			}
		}
	}
	e.write(txQueue(2), []byte("split-in-three"), 5, 3)
	want = append(want, "2:split", "2:-in", "2:-three")
	e.write(txQueue(3), []byte("lost"))
	if got := r.get(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("writes\n%q\nwant\n%q", got, want)
	}
	s := e.dev.Stats()
	if s.Ports[0].BytesOut != 5*5 || s.Ports[2].BytesOut != 5*5+14 || s.Ports[3].Discarded != 4 || s.Ports[3].BytesOut != 0 || s.GuestFaults != 0 {
		t.Fatalf("stats %v", s)
	}
	// A failing Out loses the data, counted, and the port keeps working.
	r.mu.Lock()
	r.err = errors.New("disk full")
	r.mu.Unlock()
	e.write(txQueue(1), []byte("dropped"), 3)
	r.mu.Lock()
	r.err = nil
	r.mu.Unlock()
	e.write(txQueue(1), []byte("kept"))
	if got := r.get(); got[len(got)-1] != "1:kept" {
		t.Fatalf("last write %q", got[len(got)-1])
	}
	if s := e.dev.Stats(); s.Ports[1].Discarded != 7 || s.Ports[1].BytesOut != 5*5+4 || s.GuestFaults != 0 {
		t.Fatalf("stats %v", s)
	}
	// A chain of 2 MiB (one buffer twice): the first MaxTransmit bytes
	// are written, the rest discarded, and the driver is at fault.
	big := e.buf(nil, MaxTransmit, false)
	head := e.post(txQueue(0), big, big)
	if h, n := e.used(txQueue(0)); h != head || n != 0 {
		t.Fatalf("used %d len %d", h, n)
	}
	got := r.get()
	if last := got[len(got)-1]; len(last) != len("0:")+MaxTransmit {
		t.Fatalf("last write of %d bytes", len(last))
	}
	if s := e.dev.Stats(); s.Ports[0].BytesOut != 5*5+MaxTransmit || s.Ports[0].Discarded != MaxTransmit || s.GuestFaults != 1 {
		t.Fatalf("stats %v", s)
	}
}

// TestInput: host input reaches the guest only once the guest opened the
// port, through the driver's buffers, in order and complete, with at most
// one chunk held by the device while the guest posts no buffer.
func TestInput(t *testing.T) {
	pr, pw := io.Pipe()
	defer pw.Close()
	cfg := threePorts(&recorder{})
	cfg.Ports[0].In = strings.NewReader("console input")
	cfg.Ports[1].In = pr
	e := newEnv(t, pcidriver.MSIXModes[0], cfg, true)
	e.handshake(cfg, 1)
	if got := string(e.recv(rxQueue(0))); got != "console input" {
		t.Fatalf("console got %q", got)
	}
	// Port 1 is not open in the guest: nothing is given to it.
	go pw.Write([]byte("early"))
	e.noUsed(rxQueue(1), 50*time.Millisecond)
	e.sendCtrl(1, EventPortOpen, 1)
	if got := string(e.recvOnce(rxQueue(1))); got != "early" {
		t.Fatalf("port 1 got %q", got)
	}

	// Back-pressure: without buffers the device holds one chunk and the
	// writer waits.
	big := make([]byte, 20000)
	for i := range big {
		big[i] = byte('a' + i%26)
	}
	written := make(chan struct{})
	go func() { pw.Write(big); close(written) }()
	time.Sleep(50 * time.Millisecond)
	select {
	case <-written:
		t.Fatal("20000 bytes written with no guest buffer")
	default:
	}
	if s := e.dev.Stats(); s.Ports[1].BytesIn != 5 {
		t.Fatalf("stats %v with no guest buffer", s)
	}
	var got []byte
	for len(got) < len(big) {
		e.postRecv(rxQueue(1), 1000)
		got = append(got, e.recvOnce(rxQueue(1))...)
	}
	if !bytes.Equal(got, big) {
		t.Fatalf("got %d bytes, not what was written", len(got))
	}
	<-written
	pw.Close()
	s := e.dev.Stats()
	if s.Ports[0].BytesIn != 13 || !s.Ports[0].InEnded || s.Ports[1].BytesIn != 5+20000 || s.GuestFaults != 0 {
		t.Fatalf("stats %v", s)
	}
}

// TestInputEnd: a named port whose input ends is closed on the host side
// (PORT_OPEN 0) once everything read was delivered, so that a Linux reader
// gets the data and then EOF; a port whose input was empty is announced
// closed at PORT_READY, before its name; the console port is never closed.
func TestInputEnd(t *testing.T) {
	pr, pw := io.Pipe()
	cfg := threePorts(&recorder{})
	cfg.Ports[0].In = strings.NewReader("console")
	cfg.Ports[1].In = pr
	cfg.Ports[2].In = strings.NewReader("")
	e := newEnv(t, pcidriver.MSIXModes[0], cfg, true)
	for range cfg.Ports {
		e.postRecv(ctrlRxQueue, 4096)
	}
	e.sendCtrl(0xffffffff, EventDeviceReady, 1)
	for i := range cfg.Ports {
		e.expectCtrl(msg{uint32(i), EventDeviceAdd, 1, ""})
	}
	// Port 2's input is empty: let the reader see EOF first.
	deadline := time.Now().Add(5 * time.Second)
	for !e.dev.Stats().Ports[2].InEnded {
		if time.Now().After(deadline) {
			t.Fatal("port 2's empty input never ended")
		}
		time.Sleep(time.Millisecond)
	}
	for i := range cfg.Ports {
		e.postRecv(rxQueue(i), 4096)
		want := portAnswer(cfg, i)
		if i == 2 {
			want[0].value = 0 // closed, and said before the name
		}
		for range want {
			e.postRecv(ctrlRxQueue, 4096)
		}
		e.sendCtrl(uint32(i), EventPortReady, 1)
		e.expectCtrl(want...)
	}
	e.sendCtrl(0, EventPortOpen, 1)
	if got := string(e.recv(rxQueue(0))); got != "console" {
		t.Fatalf("console got %q", got)
	}
	e.sendCtrl(1, EventPortOpen, 1)
	go func() { pw.Write([]byte("last words")); pw.Close() }()
	if got := string(e.recvOnce(rxQueue(1))); got != "last words" {
		t.Fatalf("port 1 got %q", got)
	}
	// Port 1's data is in the used ring; only then its close. The
	// console's input ended too, but it is not closed.
	e.postRecv(ctrlRxQueue, 4096)
	e.expectCtrl(msg{1, EventPortOpen, 0, ""})
	e.noUsed(ctrlRxQueue, 50*time.Millisecond)
	if s := e.dev.Stats(); !s.Ports[0].InEnded || !s.Ports[1].InEnded || s.ControlDropped != 0 || s.GuestFaults != 0 {
		t.Fatalf("stats %v", s)
	}
}

// recvOnce waits for one used buffer of q and returns its bytes without
// posting it again.
func (e *env) recvOnce(q int) []byte {
	e.t.Helper()
	h, n := e.used(q)
	b, ok := e.bufs[q][h]
	if !ok {
		e.t.Fatalf("queue %d: used head %d was not a posted receive buffer", q, h)
	}
	delete(e.bufs[q], h)
	return append([]byte(nil), e.bytes(b)[:n]...)
}

// TestSinglePort: a driver without MULTIPORT uses port 0 only, open from
// the start, on queues 0 and 1.
func TestSinglePort(t *testing.T) {
	for _, mode := range pcidriver.AllModes() {
		t.Run(mode.Name, func(t *testing.T) {
			r := &recorder{}
			cfg := threePorts(r)
			cfg.Ports[0].In = strings.NewReader("typed")
			cfg.Ports[1].In = strings.NewReader("not for a single-port driver")
			e := newEnv(t, mode, cfg, false)
			e.postRecv(rxQueue(0), 64)
			if got := string(e.recv(rxQueue(0))); got != "typed" {
				t.Fatalf("got %q", got)
			}
			e.write(txQueue(0), []byte("printed"))
			if got := r.get(); len(got) != 1 || got[0] != "0:printed" {
				t.Fatalf("writes %q", got)
			}
			s := e.dev.Stats()
			if !s.Ports[0].GuestOpen || s.ControlIn != 0 || s.ControlOut != 0 || s.Ports[1].BytesIn != 0 || s.GuestFaults != 0 || e.tr.Faults() != 0 {
				t.Fatalf("stats %v, transport faults %d", s, e.tr.Faults())
			}
		})
	}
}

// TestHostile: malformed chains and control messages are refused and
// counted, and the device keeps working; a driver repeating DEVICE_READY
// or PORT_READY does not grow the control queue.
func TestHostile(t *testing.T) {
	r := &recorder{}
	cfg := threePorts(r)
	cfg.Ports[1].In = strings.NewReader("xyz")
	e := newEnv(t, pcidriver.MSIXModes[0], cfg, true)
	e.handshake(cfg, 0)
	e.sendCtrl(1, EventPortOpen, 1)
	faults := func() uint64 { return e.dev.Stats().GuestFaults }

	for _, c := range []struct {
		name  string
		q     int
		bufs  []virtiotest.Buf
		want  uint32
		fault bool
	}{
		{"transmit chain with a writable buffer", txQueue(1), []virtiotest.Buf{e.buf([]byte("data"), 0, false), e.buf(nil, 16, true)}, 0, true},
		{"transmit chain without bytes", txQueue(1), []virtiotest.Buf{e.buf(nil, 0, false)}, 0, true},
		{"receive chain with a readable buffer", rxQueue(1), []virtiotest.Buf{e.buf([]byte("r"), 0, false), e.buf(nil, 16, true)}, 0, true},
		{"receive chain without bytes", rxQueue(1), []virtiotest.Buf{e.buf(nil, 0, true)}, 0, true},
		{"good receive chain", rxQueue(1), []virtiotest.Buf{e.buf(nil, 16, true)}, 3, false},
		{"short control message", ctrlTxQueue, []virtiotest.Buf{e.buf([]byte{3, 0, 0, 0}, 0, false)}, 0, true},
		{"control message with a writable buffer", ctrlTxQueue, []virtiotest.Buf{e.buf(ctrlBytes(1, EventPortOpen, 1), 0, false), e.buf(nil, 8, true)}, 0, true},
		{"control message in two buffers", ctrlTxQueue, []virtiotest.Buf{e.buf(ctrlBytes(2, EventPortOpen, 1)[:3], 0, false), e.buf(ctrlBytes(2, EventPortOpen, 1)[3:], 0, false)}, 0, false},
		{"PORT_READY for a port that does not exist", ctrlTxQueue, []virtiotest.Buf{e.buf(ctrlBytes(99, EventPortReady, 1), 0, false)}, 0, true},
		{"PORT_OPEN for a port that does not exist", ctrlTxQueue, []virtiotest.Buf{e.buf(ctrlBytes(3, EventPortOpen, 1), 0, false)}, 0, true},
		{"PORT_OPEN with value 7", ctrlTxQueue, []virtiotest.Buf{e.buf(ctrlBytes(1, EventPortOpen, 7), 0, false)}, 0, true},
		{"DEVICE_ADD from the driver", ctrlTxQueue, []virtiotest.Buf{e.buf(ctrlBytes(1, EventDeviceAdd, 1), 0, false)}, 0, true},
		{"unknown event", ctrlTxQueue, []virtiotest.Buf{e.buf(ctrlBytes(1, 42, 1), 0, false)}, 0, true},
	} {
		before := faults()
		head := e.post(c.q, c.bufs...)
		if h, n := e.used(c.q); h != head || n != c.want {
			t.Errorf("%s: used %d len %d, want %d len %d", c.name, h, n, head, c.want)
		}
		if got := faults() - before; got != map[bool]uint64{false: 0, true: 1}[c.fault] {
			t.Errorf("%s: %d faults counted", c.name, got)
		}
	}
	if s := e.dev.Stats(); !s.Ports[1].GuestOpen || !s.Ports[2].GuestOpen || s.Ports[1].BytesIn != 3 || s.Ports[1].BytesOut != 0 {
		t.Errorf("stats after the hostile chains: %v", s)
	}

	// A control receive buffer too short for the message: refused, and
	// the message goes to the next buffer.
	before := faults()
	e.sendCtrl(1, EventPortReady, 1) // answered with PORT_OPEN and PORT_NAME
	answer := portAnswer(cfg, 1)
	answer[0].value = 0 // its input ("xyz") was delivered and ended
	e.postRecv(ctrlRxQueue, 4096)
	e.expectCtrl(answer[0])
	short := e.post(ctrlRxQueue, e.buf(nil, 12, true))
	if h, n := e.used(ctrlRxQueue); h != short || n != 0 {
		t.Fatalf("short control buffer: used %d len %d", h, n)
	}
	if faults() != before+1 {
		t.Fatal("short control buffer not counted")
	}
	e.postRecv(ctrlRxQueue, 4096)
	e.expectCtrl(answer[1:]...)

	// Floods of DEVICE_READY and PORT_READY while the driver posts no
	// control buffer: the queue keeps one of each message.
	dropped := e.dev.Stats().ControlDropped
	for i := 0; i < 50; i++ {
		e.sendCtrl(0xffffffff, EventDeviceReady, 1)
		e.sendCtrl(2, EventPortReady, 1)
		e.sendCtrl(0, EventPortReady, 1)
		if n := e.dev.ctrl.len(); n > ctrlQueueCap(3) {
			t.Fatalf("%d control messages queued", n)
		}
	}
	want := []msg{{0, EventDeviceAdd, 1, ""}, {1, EventDeviceAdd, 1, ""}, {2, EventDeviceAdd, 1, ""}}
	want = append(append(want, portAnswer(cfg, 2)...), portAnswer(cfg, 0)...)
	if s := e.dev.Stats(); s.ControlDropped-dropped != 49*uint64(len(want)) {
		t.Errorf("%d control messages dropped, want %d", s.ControlDropped-dropped, 49*len(want))
	}
	for range want {
		e.postRecv(ctrlRxQueue, 4096)
	}
	e.expectCtrl(want...)
	e.noUsed(ctrlRxQueue, 20*time.Millisecond)

	// The device still works.
	e.write(txQueue(2), []byte("still here"))
	if got := r.get(); len(got) != 1 || got[0] != "2:still here" {
		t.Fatalf("writes %q", got)
	}
	if e.drv.Status()&virtio.StatusNeedsReset != 0 || e.tr.Faults() != 0 {
		t.Fatalf("status %s, transport faults %d", virtio.StatusString(e.drv.Status()), e.tr.Faults())
	}
}

// TestBrokenQueue: a chain that breaks a queue (a descriptor out of range)
// sets DEVICE_NEEDS_RESET, and the device works again after a reset.
func TestBrokenQueue(t *testing.T) {
	cfg := threePorts(&recorder{})
	e := newEnv(t, pcidriver.MSIXModes[0], cfg, true)
	ring := e.rings[ctrlTxQueue]
	ring.PutDesc(0, bufBase, 8, virtiotest.DescNext, 999)
	ring.PushAvail(0)
	e.drv.Notify(ctrlTxQueue)
	deadline := time.Now().Add(wait)
	for e.drv.Status()&virtio.StatusNeedsReset == 0 {
		if time.Now().After(deadline) {
			t.Fatal("broken queue did not set DEVICE_NEEDS_RESET")
		}
		time.Sleep(time.Millisecond)
	}
	if e.dev.Stats().GuestFaults != 1 {
		t.Fatalf("stats %v", e.dev.Stats())
	}
	e.start(true)
	e.handshake(cfg, 0)
}

// TestResetAndClose: a reset while a chunk of input waits for the guest's
// buffers returns at once and the chunk goes to the next driver; Close
// ends the input reader once its Read returns, without reading again.
func TestResetAndClose(t *testing.T) {
	in := &gateReader{release: make(chan struct{})}
	cfg := threePorts(&recorder{})
	cfg.Ports[2].In = in
	e := newEnv(t, pcidriver.MSIXModes[0], cfg, true)
	e.handshake(cfg, 0)
	e.sendCtrl(2, EventPortOpen, 1)
	time.Sleep(20 * time.Millisecond) // the worker waits for buffers with the chunk
	done := make(chan struct{})
	go func() { e.drv.Reset(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("reset waited")
	}
	if s := e.dev.Stats(); s.Ports[0].GuestOpen || s.Ports[2].GuestOpen {
		t.Fatalf("ports open after a reset: %v", s)
	}
	e.start(true)
	e.handshake(cfg, 0)
	e.postRecv(rxQueue(2), 4096)
	e.noUsed(rxQueue(2), 20*time.Millisecond) // not open yet
	e.sendCtrl(2, EventPortOpen, 1)
	if got := string(e.recv(rxQueue(2))); got != "first" {
		t.Fatalf("got %q", got)
	}
	// The reader is now blocked in its second Read.
	deadline := time.Now().Add(wait)
	for in.reads.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatal("no second read")
		}
		time.Sleep(time.Millisecond)
	}
	if err := e.dev.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.dev.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	close(in.release) // the blocked Read returns data: not delivered, not read again
	time.Sleep(30 * time.Millisecond)
	if n := in.reads.Load(); n != 2 {
		t.Fatalf("%d reads after Close", n)
	}
	if err := e.dev.Activate(virtio.Activation{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Activate after Close: %v", err)
	}
}

// gateReader yields "first", then blocks until release and yields "more".
type gateReader struct {
	reads   atomic.Int32
	release chan struct{}
}

func (g *gateReader) Read(p []byte) (int, error) {
	if g.reads.Add(1) == 1 {
		return copy(p, "first"), nil
	}
	<-g.release
	return copy(p, "more"), nil
}

// TestEmergWrite: a write to emerg_wr puts its byte on port 0's Out,
// whether written as a 32-bit value or a byte at a time (a legacy
// driver); other configuration writes are refused and counted.
func TestEmergWrite(t *testing.T) {
	r := &recorder{}
	d, err := New(threePorts(r))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	d.WriteConfig(cfgEmergWr, []byte{'X', 0, 0, 0})
	for i, b := range []byte{'Y', 0, 0, 0} {
		d.WriteConfig(cfgEmergWr+uint64(i), []byte{b})
	}
	d.WriteConfig(cfgCols, []byte{1, 2})
	d.WriteConfig(cfgMaxNrPorts, []byte{1, 2, 3, 4})
	d.WriteConfig(configSize, []byte{1})
	d.WriteConfig(cfgEmergWr+2, []byte{1, 2, 3})
	if got := r.get(); strings.Join(got, "") != "0:X0:Y" {
		t.Fatalf("writes %q", got)
	}
	if s := d.Stats(); s.EmergWrites != 2 || s.Ports[0].BytesOut != 2 || s.GuestFaults != 4 {
		t.Fatalf("stats %v", s)
	}
	var c [16]byte
	d.ReadConfig(0, c[:])
	if !bytes.Equal(c[:], []byte{132, 0, 43, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}) {
		t.Fatalf("configuration % x", c)
	}
	d.ReadConfig(100, c[:4])
	if !bytes.Equal(c[:4], make([]byte, 4)) {
		t.Fatalf("read beyond the configuration: % x", c[:4])
	}
	if !strings.Contains(d.Stats().String(), "port2={out=0") {
		t.Fatalf("String: %s", d.Stats())
	}
}

func TestNewRejects(t *testing.T) {
	ports := func(n int) []Port { return make([]Port, n) }
	for _, c := range []struct {
		name string
		cfg  Config
	}{
		{"no port", Config{}},
		{"too many ports", Config{Ports: ports(MaxPorts + 1)}},
		{"name too long", Config{Ports: []Port{{Name: strings.Repeat("n", MaxNameLen+1)}}}},
		{"slash", Config{Ports: []Port{{}, {Name: "a/b"}}}},
		{"control character", Config{Ports: []Port{{Name: "a\nb"}}}},
		{"not ASCII", Config{Ports: []Port{{Name: "é"}}}},
		{"duplicate names", Config{Ports: []Port{{Name: "x"}, {Name: "x"}}}},
		{"columns without rows", Config{Ports: ports(1), Cols: 80}},
		{"queue size not a power of two", Config{Ports: ports(1), QueueSize: 100}},
	} {
		if _, err := New(c.cfg); err == nil {
			t.Errorf("%s: accepted", c.name)
		}
	}
	for _, cfg := range []Config{
		{Ports: ports(MaxPorts)},
		{Ports: []Port{{Name: strings.Repeat("n", MaxNameLen)}, {Name: "org.qemu.guest_agent.0"}, {Name: "with space"}}},
	} {
		d, err := New(cfg)
		if err != nil {
			t.Errorf("New: %v", err)
			continue
		}
		if n := len(d.QueueSizes()); n != 2*(len(cfg.Ports)+1) {
			t.Errorf("%d queues for %d ports", n, len(cfg.Ports))
		}
		if d.Features()&FSize != 0 {
			t.Error("SIZE offered without a size")
		}
		d.Close()
	}
}

// FuzzControl feeds fuzzer-chosen control messages (any length, split over
// buffers, with or without writable buffers) to the control transmit
// worker, then lets the control receive worker deliver what they caused.
// Nothing may panic, every chain is completed with nothing written, the
// control queue stays within its bound and every message the driver gets
// is one the device sends, well formed.
func FuzzControl(f *testing.F) {
	seed := func(msgs ...[]byte) []byte {
		var b []byte
		for _, m := range msgs {
			b = append(append(b, byte(len(m))), m...)
		}
		return b
	}
	f.Add(seed(ctrlBytes(0xffffffff, EventDeviceReady, 1), ctrlBytes(0, EventPortReady, 1), ctrlBytes(1, EventPortReady, 1), ctrlBytes(0, EventPortOpen, 1)), uint8(0), false)
	f.Add(seed(ctrlBytes(2, EventPortReady, 1), ctrlBytes(2, EventPortReady, 1), ctrlBytes(7, EventPortOpen, 1)), uint8(3), true)
	f.Add(seed([]byte{1, 2, 3}, ctrlBytes(0, 99, 0), ctrlBytes(0xffffffff, EventDeviceReady, 0)), uint8(1), false)
	f.Add(seed(append(ctrlBytes(1, EventPortOpen, 1), 1, 2, 3, 4), ctrlBytes(1, EventPortReady, 0)), uint8(9), false)
	f.Fuzz(func(t *testing.T, raw []byte, split uint8, writable bool) {
		d, err := New(Config{Ports: []Port{{}, {Name: "one"}, {}}, Cols: 80, Rows: 24, QueueSize: 64})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		mem := memory.FromBytes(memory.Region{GPA: 0, Host: make([]byte, 1<<20)})
		features := uint64(virtio.FRingIndirect | virtio.FVersion1)
		txRing := virtiotest.NewRing(mem, 64, ringBase)
		rxRing := virtiotest.NewRing(mem, 64, ringBase+ringStride)
		txq, err := virtio.NewQueue(mem, txRing.Config(), features)
		if err != nil {
			t.Fatal(err)
		}
		rxq, err := virtio.NewQueue(mem, rxRing.Config(), features)
		if err != nil {
			t.Fatal(err)
		}
		kick, err := eventfd.New()
		if err != nil {
			t.Fatal(err)
		}
		defer kick.Close()
		queues := make([]*virtio.Queue, len(d.QueueSizes()))
		kicks := make([]*eventfd.EventFD, len(queues))
		queues[ctrlTxQueue], queues[ctrlRxQueue] = txq, rxq
		kicks[ctrlTxQueue], kicks[ctrlRxQueue] = kick, kick
		a := virtio.Activation{Features: features | FMultiport, Mem: mem, Queues: queues, Kicks: kicks, Transport: nopTransport{}}

		alloc := virtiotest.Alloc{Next: 0x40000, End: 1 << 20}
		posted := 0
		for len(raw) > 0 && posted < 32 {
			n := min(int(raw[0])%24, len(raw)-1)
			m := raw[1 : 1+n]
			raw = raw[1+n:]
			addr := alloc.Get(uint64(n)+16, 16)
			_ = mem.WriteAt(m, addr)
			var bufs []virtiotest.Buf
			if s := int(split) % (n + 1); s > 0 && s < n {
				bufs = []virtiotest.Buf{{Addr: addr, Len: uint32(s)}, {Addr: addr + uint64(s), Len: uint32(n - s)}}
			} else {
				bufs = []virtiotest.Buf{{Addr: addr, Len: uint32(n)}}
			}
			if writable {
				bufs = append(bufs, virtiotest.Buf{Addr: alloc.Get(16, 16), Len: 16, Write: true})
			}
			if _, ok := txRing.Add(bufs...); !ok {
				break
			}
			posted++
		}
		tx := newCtrlTx(d, a, ctrlTxQueue)
		if err := tx.drain(context.Background()); err != nil {
			t.Fatalf("drain: %v", err)
		}
		for i := 0; i < posted; i++ {
			_, n, ok := txRing.PopUsed()
			if !ok || n != 0 {
				t.Fatalf("chain %d: used %v len %d", i, ok, n)
			}
		}
		if n := d.ctrl.len(); n > ctrlQueueCap(3) {
			t.Fatalf("%d control messages queued", n)
		}

		bufs := map[uint16]virtiotest.Buf{}
		for i := 0; i < 16; i++ {
			b := virtiotest.Buf{Addr: alloc.Get(128, 16), Len: 128, Write: true}
			h, _ := rxRing.Add(b)
			bufs[h] = b
		}
		rx := newCtrlRx(d, a, ctrlRxQueue)
		for d.ctrl.len() > 0 {
			if err := rx.serve(context.Background()); err != nil {
				t.Fatalf("control receive: %v", err)
			}
		}
		if err := rx.rx.used.Publish(); err != nil {
			t.Fatal(err)
		}
		for {
			h, n, ok := rxRing.PopUsed()
			if !ok {
				break
			}
			p, _ := mem.Slice(bufs[h].Addr, uint64(n))
			if n < ctrlHeaderLen {
				t.Fatalf("control message of %d bytes", n)
			}
			id, ev := binary.LittleEndian.Uint32(p), binary.LittleEndian.Uint16(p[4:])
			want := map[uint16]int{EventDeviceAdd: 8, EventConsolePort: 8, EventPortOpen: 8, EventResize: 12, EventPortName: 11}[ev]
			if id >= 3 || want == 0 || int(n) != want || ev == EventPortName && string(p[8:]) != "one" || (ev == EventResize || ev == EventConsolePort) && id != 0 {
				t.Fatalf("control message id %d event %d length %d: % x", id, ev, n, p)
			}
		}
		if s := d.Stats(); s.ControlIn != uint64(posted) {
			t.Fatalf("stats %v for %d chains", s, posted)
		}
	})
}

type nopTransport struct{}

func (nopTransport) Notify(int)       {}
func (nopTransport) ConfigChanged()   {}
func (nopTransport) NeedsReset(error) {}

// TestFlush: output the guest made available on a port's transmit queue
// (here without even a notification) is on the port's Out when Flush
// returns; a port whose queue is not running flushes at once; a bad port
// is an error.
func TestFlush(t *testing.T) {
	r := &recorder{}
	cfg := threePorts(r)
	e := newEnv(t, pcidriver.MSIXModes[0], cfg, true)
	e.handshake(cfg, 0)
	for _, s := range []string{"one;", "two;"} {
		if _, ok := e.rings[txQueue(2)].Add(e.buf([]byte(s), 0, false)); !ok {
			t.Fatal("queue full")
		}
	}
	if err := e.dev.Flush(wait, 2, 1); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(r.get(), "|"); got != "2:one;|2:two;" {
		t.Fatalf("after Flush: %q", got)
	}
	if err := e.dev.Flush(wait, 9); err == nil {
		t.Fatal("Flush of a missing port succeeded")
	}
	e.drv.Reset()
	if err := e.dev.Flush(wait, 2); err != nil {
		t.Fatalf("Flush after a reset: %v", err)
	}
}

// TestLastWritesAtReset: what the driver made available on the transmit
// queues and the device had not taken yet is written to the ports' Out
// when the driver resets the device (Linux resets every virtio device as
// it powers off, right after its init's last write), bounded and checked
// as ever; Close writes nothing.
func TestLastWritesAtReset(t *testing.T) {
	for _, tc := range []struct {
		name   string
		queue  func(e *env) // makes chains available, without a notification
		close  bool         // Close instead of a reset
		want   string
		faults uint64
	}{
		{name: "queued writes", queue: func(e *env) {
			e.rings[txQueue(2)].Add(e.buf([]byte("exit 0\n"), 0, false))
			e.rings[txQueue(1)].Add(e.buf([]byte("out;"), 0, false))
			e.rings[txQueue(1)].Add(e.buf([]byte("more;"), 0, false))
		}, want: "1:out;|1:more;|2:exit 0\n"},
		{name: "device-writable chain", queue: func(e *env) {
			e.rings[txQueue(2)].Add(e.buf(nil, 16, true))
			e.rings[txQueue(2)].Add(e.buf([]byte("kept"), 0, false))
		}, want: "2:kept", faults: 1},
		{name: "avail index far ahead", queue: func(e *env) {
			r := e.rings[txQueue(2)]
			r.SetAvailIdx(r.AvailIdx() + 1000)
		}, faults: 1},
		{name: "close", queue: func(e *env) {
			e.rings[txQueue(2)].Add(e.buf([]byte("exit 0\n"), 0, false))
		}, close: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &recorder{}
			cfg := threePorts(r)
			e := newEnv(t, pcidriver.MSIXModes[0], cfg, true)
			e.handshake(cfg, 0)
			tc.queue(e)
			done := make(chan struct{})
			go func() {
				if tc.close {
					e.dev.Close()
				} else {
					e.drv.Reset()
				}
				close(done)
			}()
			select {
			case <-done:
			case <-time.After(wait):
				t.Fatal("reset did not complete")
			}
			got := r.get()
			// Ports are drained in parallel; each in its own order.
			sort.SliceStable(got, func(i, j int) bool { return got[i][0] < got[j][0] })
			if strings.Join(got, "|") != tc.want {
				t.Errorf("written %q, want %q", strings.Join(got, "|"), tc.want)
			}
			if f := e.dev.Stats().GuestFaults; f != tc.faults {
				t.Errorf("%d guest faults, want %d", f, tc.faults)
			}
		})
	}
}
