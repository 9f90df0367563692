// Package console is a virtio console device (virtio-console, device ID 3,
// virtio 1.x section 5.3) with multiple ports (VIRTIO_CONSOLE_F_MULTIPORT):
// port 0 is the console (hvc0 in a Linux guest), the others are named
// serial ports (/dev/vportNpM, /sys/class/virtio-ports/vportNpM/name).
//
// Each port has a receive queue (host to guest) and a transmit queue (guest
// to host). What the guest writes to a port is written to the port's Out,
// before the buffer is returned to the driver; what the port's In yields is
// given to the guest as the driver posts receive buffers, one read chunk at
// a time (back-pressure: the device never buffers more). A driver that
// acks MULTIPORT also gets a control queue pair: it announces itself
// (DEVICE_READY), the device adds every port (DEVICE_ADD), the driver
// announces each port (PORT_READY) and the device answers with what the
// port is (CONSOLE_PORT, RESIZE, PORT_NAME) and that the host side is open
// (PORT_OPEN). A driver without MULTIPORT (a legacy single-port driver)
// uses queues 0 and 1 only: port 0, considered open.
//
// Guest input is hostile. Every chain is checked (direction, lengths,
// control message size, port ids, events); a bad one is completed with
// nothing written, counted and logged at a limited rate, and the device
// keeps working. Control messages for the driver wait in a queue bounded by
// the number of ports (a duplicate of a waiting message is not queued), so
// a driver that repeats DEVICE_READY or PORT_READY cannot grow it. What
// one transmit chain costs is bounded by MaxTransmit; nothing is allocated
// per chain.
package console

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/govmd/govmd/internal/eventfd"
	"github.com/govmd/govmd/internal/ratelimit"
	"github.com/govmd/govmd/virtio"
)

// DeviceType is the virtio device ID of a console.
const DeviceType virtio.DeviceType = 3

// Feature bits (virtio 1.x 5.3.3).
const (
	FSize       = 1 << 0 // cols and rows in the configuration are valid
	FMultiport  = 1 << 1 // control queues, max_nr_ports
	FEmergWrite = 1 << 2 // emerg_wr in the configuration
)

// Limits and defaults.
const (
	// MaxPorts is the most ports a device has: 2*(MaxPorts+1) queues
	// and one configuration vector fit an MSI-X table of 65 entries.
	MaxPorts = 31
	// MaxNameLen is the longest port name, in bytes.
	MaxNameLen = 64
	// DefaultQueueSize is every queue's size by default.
	DefaultQueueSize = 64
	// MaxTransmit caps the bytes of one transmit chain written to Out
	// (a Linux driver sends at most 32 KiB); the rest is discarded.
	MaxTransmit = 1 << 20
	// inputChunk is the most bytes read from a port's In at a time, and
	// so the most host-to-guest bytes the device holds per port.
	inputChunk = 4 << 10
	// batchMax bounds the chains completed before they are published.
	batchMax = 16
)

// Configuration space layout (struct virtio_console_config, little
// endian).
const (
	cfgCols       = 0  // le16
	cfgRows       = 2  // le16
	cfgMaxNrPorts = 4  // le32
	cfgEmergWr    = 8  // le32, write-only
	configSize    = 12 // bytes
)

// Port is one port of the device. Port 0 is always the console port (hvc0
// in a Linux guest).
type Port struct {
	// Name is announced to the driver (VIRTIO_CONSOLE_PORT_NAME): a Linux
	// guest shows it in /sys/class/virtio-ports/vportNpM/name (and udev
	// links /dev/virtio-ports/NAME). Empty: no name. At most MaxNameLen
	// bytes of printable ASCII without '/', unique among the ports;
	// checked by New.
	Name string
	// Out receives what the guest writes to the port (guest -> host), in
	// order, from the port's transmit queue worker: the bytes are written
	// to Out before the buffer is returned to the driver (a Linux hvc
	// console writer spins until then; a writer on a named port does not:
	// see Flush).
	// Writes to one port's Out are serialized. nil: discarded (counted). A
	// write error is logged (rate-limited) and the rest of the chain
	// discarded (counted); the port keeps working. Out should not block
	// for long: the transmit queue waits for it, and so does a device
	// reset.
	Out io.Writer
	// In, if not nil, is read by a goroutine of the device and what it
	// yields is given to the guest (host -> guest) through the port's
	// receive queue, as the driver posts buffers and (with MULTIPORT)
	// while the guest has the port open. The device holds at most one read
	// chunk of up to 4 KiB; In is not read again before that chunk is
	// delivered. EOF or an error ends input for the port: once what was
	// read is delivered, a MULTIPORT driver is told the host closed the
	// port (PORT_OPEN 0), so that a Linux reader gets EOF. The reader
	// goroutine starts at the first Activate and survives device resets
	// (a chunk it holds is kept for the next driver); it ends after Close,
	// as soon as its Read returns (Close does not wait for it, and does
	// not close In: the caller may, to end a Read that would block).
	In io.Reader
}

// Config configures the device.
type Config struct {
	// Ports are the ports, port 0 first: 1 to MaxPorts.
	Ports []Port
	// Cols and Rows are the console's size, offered in the configuration
	// space (VIRTIO_CONSOLE_F_SIZE) and to a MULTIPORT driver in a RESIZE
	// message for port 0. Both 0: not offered.
	Cols, Rows uint16
	// QueueSize is every queue's size (default DefaultQueueSize; a power
	// of two up to 32768).
	QueueSize uint16
	Log       *slog.Logger
}

// Device is a virtio console. It implements virtio.Device.
//
// Lifecycle: New, then a transport drives Activate and Reset (never
// concurrently with each other), then Close. Stats, ReadConfig and
// WriteConfig are safe for concurrent use.
type Device struct {
	cfg   Config
	log   *slog.Logger
	glog  *ratelimit.Logger // driver mistakes
	hlog  *ratelimit.Logger // host-side errors (Out, In)
	ports []*port
	ctrl  ctrlQueue
	stats counters

	mu      sync.Mutex // guards closed, inputs and the fields below; held by Activate, Reset and Close
	closed  bool
	inputs  bool          // the input readers were started
	done    chan struct{} // closed by Close: the input readers end
	workers virtio.Workers
	// lastWrites tells the transmit workers, as they stop, to write what
	// the driver made available before it reset the device (set by
	// Reset, not by Close).
	lastWrites atomic.Bool
}

// port is one port's host side. Its channels and counters live as long as
// the device; its workers come and go with activations.
type port struct {
	id   uint32
	name string
	out  io.Writer
	in   io.Reader

	outMu sync.Mutex // serializes writes to out (transmit worker, emerg_wr)

	// The input hand-over: the reader sends a chunk on data, the receive
	// worker that takes it sends back on rest what it did not deliver
	// (possibly nothing); the reader reads In again only once the chunk
	// is gone.
	data chan []byte
	rest chan []byte // capacity 1: the worker never waits
	// wake tells the receive worker that the guest opened or closed the
	// port (capacity 1).
	wake chan struct{}

	// Flush's hand-over with the transmit worker: Flush asks with
	// flushReq and kicks the worker, which stores in flushDone the
	// request it saw before a drain that emptied the queue.
	flushReq, flushDone atomic.Uint64
	txKick              atomic.Pointer[eventfd.EventFD] // while the transmit worker runs

	guestOpen atomic.Bool // the driver's last PORT_OPEN (guest_connected)
	inEnded   atomic.Bool // In returned EOF or an error, all of it delivered

	// hostMu orders the PORT_OPEN messages the device sends: the one at
	// PORT_READY and the one when input ends.
	hostMu sync.Mutex
	ready  bool // the driver sent PORT_READY since the last reset

	c portCounters
}

// hostOpen is the value of the port's PORT_OPEN message (host_connected
// in Linux): 0 once its input has ended, else 1. A port without input
// stays open, and so does the console (port 0: hvc has no end of input).
func (p *port) hostOpen() uint16 {
	if p.in != nil && p.id != 0 && p.inEnded.Load() {
		return 0
	}
	return 1
}

var _ virtio.Device = (*Device)(nil)

// Flush waits until what the guest had made available on the transmit
// queues of the given ports when Flush was called has been written to
// their Out, or until timeout. A Linux guest's write(2) to a named port
// returns once its buffer is queued, before the device has taken it (only
// the console's writes wait), so queued output of one port may be behind
// a later write on another: a host that acts on a message on one port
// (a program's exit status) flushes the others (its output) first. A port
// whose queue is not running has nothing to flush.
func (d *Device) Flush(timeout time.Duration, ids ...int) error {
	deadline := time.Now().Add(timeout)
	for _, id := range ids {
		if id < 0 || id >= len(d.ports) {
			return fmt.Errorf("console: no port %d", id)
		}
		p := d.ports[id]
		want := p.flushReq.Add(1)
		k := p.txKick.Load()
		if k == nil {
			continue
		}
		if err := k.Write(); err != nil {
			return fmt.Errorf("console: port %d: %w", id, err)
		}
		for p.flushDone.Load() < want {
			if p.txKick.Load() == nil {
				break // the worker stopped (reset)
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("console: port %d: its transmit queue was not drained within %s", id, timeout)
			}
			time.Sleep(200 * time.Microsecond)
		}
	}
	return nil
}

// ErrClosed is returned by Activate after Close.
var ErrClosed = errors.New("console: device closed")

// New returns a console device.
func New(cfg Config) (*Device, error) {
	n := len(cfg.Ports)
	if n < 1 || n > MaxPorts {
		return nil, fmt.Errorf("console: %d ports, want 1 to %d", n, MaxPorts)
	}
	names := map[string]int{}
	for i, p := range cfg.Ports {
		if err := checkName(p.Name); err != nil {
			return nil, fmt.Errorf("console: port %d: %w", i, err)
		}
		if p.Name == "" {
			continue
		}
		if j, ok := names[p.Name]; ok {
			return nil, fmt.Errorf("console: ports %d and %d are both named %q", j, i, p.Name)
		}
		names[p.Name] = i
	}
	if (cfg.Cols == 0) != (cfg.Rows == 0) {
		return nil, fmt.Errorf("console: size %dx%d: give both columns and rows, or neither", cfg.Cols, cfg.Rows)
	}
	if cfg.QueueSize == 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	if s := cfg.QueueSize; s > virtio.MaxQueueSize || s&(s-1) != 0 {
		return nil, fmt.Errorf("console: queue size %d is not a power of two up to %d", s, virtio.MaxQueueSize)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	cfg.Ports = append([]Port(nil), cfg.Ports...)
	d := &Device{
		cfg:  cfg,
		log:  cfg.Log,
		glog: ratelimit.New(cfg.Log, 10*time.Second, 10),
		hlog: ratelimit.New(cfg.Log, 10*time.Second, 10),
		done: make(chan struct{}),
	}
	for i, p := range cfg.Ports {
		d.ports = append(d.ports, &port{
			id: uint32(i), name: p.Name, out: p.Out, in: p.In,
			data: make(chan []byte),
			rest: make(chan []byte, 1),
			wake: make(chan struct{}, 1),
		})
	}
	d.ctrl.init(ctrlQueueCap(n))
	return d, nil
}

// checkName checks a port name: at most MaxNameLen bytes of printable
// ASCII without '/' (it becomes a file name in the guest).
func checkName(s string) error {
	if len(s) > MaxNameLen {
		return fmt.Errorf("name of %d bytes, at most %d", len(s), MaxNameLen)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '/' {
			return fmt.Errorf("name %q: byte %#02x at %d is not printable ASCII other than '/'", s, c, i)
		}
	}
	return nil
}

// Type returns DeviceType.
func (d *Device) Type() virtio.DeviceType { return DeviceType }

// Features returns the offered feature bits.
func (d *Device) Features() uint64 {
	f := uint64(virtio.FVersion1 | virtio.FRingEventIdx | virtio.FRingIndirect | FMultiport | FEmergWrite)
	if d.cfg.Cols != 0 {
		f |= FSize
	}
	return f
}

// Queue indexes (virtio 1.x 5.3.2): port 0's pair, the control pair, then
// the other ports' pairs.
const (
	ctrlRxQueue = 2 // control receiveq: device to driver
	ctrlTxQueue = 3 // control transmitq: driver to device
)

// rxQueue returns the index of port id's receive queue (host to guest);
// its transmit queue follows it.
func rxQueue(id int) int {
	if id == 0 {
		return 0
	}
	return 2 + 2*id
}

// QueueSizes returns the sizes of 2*(ports+1) queues: port 0's receive and
// transmit queues, the control receive and transmit queues, then a
// receive and a transmit queue for each other port.
func (d *Device) QueueSizes() []uint16 {
	s := make([]uint16, 2*(len(d.ports)+1))
	for i := range s {
		s[i] = d.cfg.QueueSize
	}
	return s
}

// ConfigSize returns the size of struct virtio_console_config.
func (d *Device) ConfigSize() int { return configSize }

// ReadConfig reads cols, rows, max_nr_ports and emerg_wr (which reads 0).
func (d *Device) ReadConfig(off uint64, data []byte) {
	var c [configSize]byte
	c[cfgCols], c[cfgCols+1] = byte(d.cfg.Cols), byte(d.cfg.Cols>>8)
	c[cfgRows], c[cfgRows+1] = byte(d.cfg.Rows), byte(d.cfg.Rows>>8)
	c[cfgMaxNrPorts] = byte(len(d.ports))
	clear(data)
	if off < configSize {
		copy(data, c[off:])
	}
}

// WriteConfig handles a write to emerg_wr: its first byte is written to
// port 0's Out (a legacy driver writes the field a byte at a time: the
// other bytes are ignored). A write elsewhere is a driver mistake.
func (d *Device) WriteConfig(off uint64, data []byte) {
	end := off + uint64(len(data))
	if off < cfgEmergWr || end > configSize || end < off {
		d.fault("write of %d bytes to the configuration at %#x (only emerg_wr, at %#x, is writable)", len(data), off, cfgEmergWr)
		return
	}
	if off != cfgEmergWr || len(data) == 0 {
		return
	}
	d.stats.emergWrites.Add(1)
	d.ports[0].write([][]byte{data[:1]}, d)
}

// Activate starts the workers of the queues the driver enabled: with
// MULTIPORT, every port's and the control queues; without, port 0's.
func (d *Device) Activate(a virtio.Activation) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	if d.workers.Running() {
		return errors.New("console: already active")
	}
	nq := 2 * (len(d.ports) + 1)
	if len(a.Queues) != nq || len(a.Kicks) != nq {
		return fmt.Errorf("console: activation has %d queues and %d eventfds, want %d", len(a.Queues), len(a.Kicks), nq)
	}
	for i, q := range a.Queues {
		if q != nil && a.Kicks[i] == nil {
			return fmt.Errorf("console: queue %d has no notification eventfd", i)
		}
	}
	multiport := a.Features&FMultiport != 0
	d.startInputs()
	if !multiport {
		// A single-port driver has no way to say it opened the console:
		// it is open.
		d.ports[0].guestOpen.Store(true)
	}

	// The workers of the enabled queues, and their notification eventfds.
	var waits []virtio.Interruptible
	var runs []func(context.Context)
	serve := func(q int, run func(q int) func(context.Context)) {
		if a.Queues[q] != nil {
			waits = append(waits, a.Kicks[q])
			runs = append(runs, run(q))
		}
	}
	nports := 1
	if multiport {
		nports = len(d.ports)
		serve(ctrlRxQueue, func(q int) func(context.Context) { return newCtrlRx(d, a, q).run })
		serve(ctrlTxQueue, func(q int) func(context.Context) { return newCtrlTx(d, a, q).run })
	}
	for _, p := range d.ports[:nports] {
		if p.in != nil {
			serve(rxQueue(int(p.id)), func(q int) func(context.Context) { return newPortRx(d, p, a, q, multiport).run })
		}
		serve(rxQueue(int(p.id))+1, func(q int) func(context.Context) { return newPortTx(d, p, a, q).run })
	}
	if len(runs) == 0 {
		return nil // the driver enabled no queue the device serves
	}
	ctx := d.workers.Start(waits...)
	for _, run := range runs {
		d.workers.Go(ctx, run)
	}
	return nil
}

// startInputs starts one reader per port with an In, once. d.mu is held.
func (d *Device) startInputs() {
	if d.inputs {
		return
	}
	d.inputs = true
	for _, p := range d.ports {
		if p.in != nil {
			go d.readInput(p)
		}
	}
}

// Reset stops the workers and waits for them, forgets the control
// messages not yet delivered and marks every port closed by the guest. An
// input chunk not yet delivered stays with its reader for the next driver.
//
// What the driver had made available on the transmit queues is written to
// the ports' Out first (see portTx.last): a Linux guest resets every
// virtio device as it powers off (virtio_dev_shutdown), right after its
// last write(2), which returns before the device took the buffer. QEMU
// does the same when it stops a queue's notifier.
func (d *Device) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.lastWrites.Store(true)
	defer d.lastWrites.Store(false)
	d.resetLocked()
}

func (d *Device) resetLocked() {
	d.workers.Stop()
	d.ctrl.reset()
	for _, p := range d.ports {
		p.guestOpen.Store(false)
		p.hostMu.Lock()
		p.ready = false
		p.hostMu.Unlock()
		select {
		case <-p.wake:
		default:
		}
	}
}

// Close stops the device and ends the input readers (each when its Read
// returns). It is idempotent.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.resetLocked()
	if !d.closed {
		d.closed = true
		close(d.done)
	}
	return nil
}

func (d *Device) fault(format string, args ...any) {
	d.stats.guestFaults.Add(1)
	d.glog.Warn("virtio-console driver error", "err", fmt.Sprintf(format, args...))
}
