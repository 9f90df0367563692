package console

import (
	"context"
	"encoding/binary"
	"sync"

	"github.com/govmd/govmd/internal/eventfd"
	"github.com/govmd/govmd/virtio"
)

// Control events (struct virtio_console_control, virtio 1.x 5.3.6.2).
const (
	EventDeviceReady  = 0 // driver: ready (value 1) or failed (0)
	EventDeviceAdd    = 1 // device: port id exists
	EventDeviceRemove = 2 // device: port id is gone
	EventPortReady    = 3 // driver: port id set up (1) or failed (0)
	EventConsolePort  = 4 // device: port id is a console
	EventResize       = 5 // device: console size (le16 cols, le16 rows follow)
	EventPortOpen     = 6 // both: the sender's side of port id is open (1) or closed (0)
	EventPortName     = 7 // device: the port's name follows (no NUL)
)

// ctrlHeaderLen is the size of struct virtio_console_control: le32 id, le16
// event, le16 value.
const ctrlHeaderLen = 8

// ctrlMsg is a control message for the driver. What follows the header
// (the name, the size) is taken from the device's configuration when it is
// sent.
type ctrlMsg struct {
	id           uint32
	event, value uint16
}

// ctrlQueueCap bounds the control messages waiting for the driver. As a
// waiting message is never queued twice, the distinct messages the device
// sends (DEVICE_ADD, PORT_NAME, PORT_OPEN 1 and PORT_OPEN 0 for every
// port, CONSOLE_PORT and RESIZE for port 0) always fit.
func ctrlQueueCap(ports int) int { return 4*ports + 2 }

// ctrlQueue holds the control messages for the driver until it posts
// buffers for them: a fixed ring, filled by the control transmit worker
// and emptied by the control receive worker.
type ctrlQueue struct {
	mu      sync.Mutex
	ring    []ctrlMsg
	head, n int
	wake    chan struct{} // a message was queued (capacity 1)
}

func (q *ctrlQueue) init(capacity int) {
	q.ring = make([]ctrlMsg, capacity)
	q.wake = make(chan struct{}, 1)
}

// push queues m unless an identical message is waiting or the queue is
// full; it reports whether m was queued.
func (q *ctrlQueue) push(m ctrlMsg) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	for i := 0; i < q.n; i++ {
		if q.ring[(q.head+i)%len(q.ring)] == m {
			return false
		}
	}
	if q.n == len(q.ring) {
		return false
	}
	q.ring[(q.head+q.n)%len(q.ring)] = m
	q.n++
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return true
}

// peek returns the oldest waiting message.
func (q *ctrlQueue) peek() (ctrlMsg, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.n == 0 {
		return ctrlMsg{}, false
	}
	return q.ring[q.head], true
}

// pop removes the oldest waiting message.
func (q *ctrlQueue) pop() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.n > 0 {
		q.head = (q.head + 1) % len(q.ring)
		q.n--
	}
}

// len returns how many messages wait.
func (q *ctrlQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n
}

// reset forgets every waiting message.
func (q *ctrlQueue) reset() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.head, q.n = 0, 0
	select {
	case <-q.wake:
	default:
	}
}

// send queues a control message for the driver; a message that is not
// queued is counted as dropped.
func (d *Device) send(id uint32, event, value uint16) {
	if !d.ctrl.push(ctrlMsg{id: id, event: event, value: value}) {
		d.stats.controlDropped.Add(1)
	}
}

// control handles one control message from the driver. id, event and value
// are guest input.
func (d *Device) control(id uint32, event, value uint16) {
	n := uint32(len(d.ports))
	switch event {
	case EventDeviceReady:
		// Linux sends it with id VIRTIO_CONSOLE_BAD_ID (~0): the id means
		// nothing here.
		if value != 1 {
			d.glog.Warn("virtio-console: the driver failed to set up the device", "value", value)
			return
		}
		for i := uint32(0); i < n; i++ {
			d.send(i, EventDeviceAdd, 1)
		}
	case EventPortReady:
		if id >= n {
			d.fault("PORT_READY for port %d of %d", id, n)
			return
		}
		if value != 1 {
			d.glog.Warn("virtio-console: the driver failed to set up a port", "port", id, "value", value)
			return
		}
		p := d.ports[id]
		if id == 0 {
			d.send(0, EventConsolePort, 1)
			if d.cfg.Cols != 0 {
				d.send(0, EventResize, 0)
			}
		}
		// The host side is open (a Linux writer to a port waits until it
		// is: will_write_block) until the port's input has ended and all
		// of it was delivered (a Linux reader then gets EOF). It is said
		// before the name: a guest program that finds the port by its
		// name must not see it closed, which a read takes for EOF.
		p.hostMu.Lock()
		p.ready = true
		d.send(id, EventPortOpen, p.hostOpen())
		p.hostMu.Unlock()
		if p.name != "" {
			d.send(id, EventPortName, 1)
		}
	case EventPortOpen:
		if id >= n {
			d.fault("PORT_OPEN for port %d of %d", id, n)
			return
		}
		if value > 1 {
			d.fault("PORT_OPEN for port %d with value %d", id, value)
			return
		}
		p := d.ports[id]
		p.guestOpen.Store(value == 1)
		select {
		case p.wake <- struct{}{}:
		default:
		}
	default:
		d.fault("control event %d (port %d, value %d) is not one a driver sends", event, id, value)
	}
}

// encode writes message m, with what follows its header, into b (which
// holds at least ctrlHeaderLen+MaxNameLen bytes) and returns its length.
func (d *Device) encode(b []byte, m ctrlMsg) int {
	binary.LittleEndian.PutUint32(b[0:], m.id)
	binary.LittleEndian.PutUint16(b[4:], m.event)
	binary.LittleEndian.PutUint16(b[6:], m.value)
	switch m.event {
	case EventResize:
		binary.LittleEndian.PutUint16(b[8:], d.cfg.Cols)
		binary.LittleEndian.PutUint16(b[10:], d.cfg.Rows)
		return ctrlHeaderLen + 4
	case EventPortName:
		return ctrlHeaderLen + copy(b[ctrlHeaderLen:], d.ports[m.id].name)
	}
	return ctrlHeaderLen
}

// ctrlTx serves the control transmit queue (driver to device).
type ctrlTx struct {
	d     *Device
	q     *virtio.Queue
	kick  *eventfd.EventFD
	tr    virtio.Transport
	used  virtio.Used
	chain virtio.Chain
}

func newCtrlTx(d *Device, a virtio.Activation, q int) *ctrlTx {
	return &ctrlTx{
		d: d, q: a.Queues[q], kick: a.Kicks[q], tr: a.Transport,
		used: virtio.Used{Queue: a.Queues[q], Index: q, Transport: a.Transport},
	}
}

func (w *ctrlTx) run(ctx context.Context) {
	virtio.QueueLoop{
		Name:      "virtio-console control transmit queue",
		Kick:      w.kick,
		Transport: w.tr,
		Faults:    &w.d.stats.guestFaults,
		Log:       w.d.log,
	}.Run(ctx, w.drain)
}

func (w *ctrlTx) drain(ctx context.Context) error {
	return virtio.Drain(ctx, w.q, &w.chain, batchMax, w.serve, w.used.Publish)
}

// serve handles one control message and completes its chain (the device
// writes nothing into it).
func (w *ctrlTx) serve(c *virtio.Chain) error {
	d := w.d
	d.stats.controlIn.Add(1)
	switch {
	case len(c.Writable) > 0:
		d.fault("control message chain %d has %d device-writable buffers", c.Head, len(c.Writable))
	case c.ReadLen < ctrlHeaderLen:
		d.fault("control message chain %d has %d bytes, want %d", c.Head, c.ReadLen, ctrlHeaderLen)
	default:
		var h [ctrlHeaderLen]byte
		virtio.Gather(h[:], c.Readable, 0)
		d.control(binary.LittleEndian.Uint32(h[0:]), binary.LittleEndian.Uint16(h[4:]), binary.LittleEndian.Uint16(h[6:]))
	}
	return w.used.Push(c.Head, 0)
}

// ctrlRx serves the control receive queue (device to driver): it waits
// for a message, then for a buffer to put it in.
type ctrlRx struct {
	d   *Device
	rx  recvQueue
	buf [ctrlHeaderLen + MaxNameLen]byte
}

func newCtrlRx(d *Device, a virtio.Activation, q int) *ctrlRx {
	return &ctrlRx{d: d, rx: newRecvQueue(d, a, q)}
}

func (w *ctrlRx) run(ctx context.Context) {
	virtio.QueueLoop{
		Name:      "virtio-console control receive queue",
		Transport: w.rx.tr,
		Faults:    &w.d.stats.guestFaults,
		Log:       w.d.log,
	}.Run(ctx, w.serve)
}

// serve delivers the oldest waiting message, or waits for one. A buffer
// too short for the message is completed with nothing written; the
// message waits for the next one.
func (w *ctrlRx) serve(ctx context.Context) error {
	d := w.d
	m, ok := d.ctrl.peek()
	if !ok {
		if err := w.rx.used.Publish(); err != nil {
			return err
		}
		select {
		case <-d.ctrl.wake:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	c, err := w.rx.next(ctx)
	if err != nil {
		return err
	}
	n := d.encode(w.buf[:], m)
	if int(c.WriteLen) < n {
		d.fault("control receive chain %d has %d writable bytes for a message of %d", c.Head, c.WriteLen, n)
		return w.rx.used.Push(c.Head, 0)
	}
	virtio.Scatter(c.Writable, 0, w.buf[:n])
	d.ctrl.pop()
	d.stats.controlOut.Add(1)
	return w.rx.used.Push(c.Head, uint32(n))
}
