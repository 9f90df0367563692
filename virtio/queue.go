package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/govmd/govmd/memory"
)

// ErrGuest marks an error caused by the driver: a malformed ring, descriptor
// or request. The device drops the request or sets DEVICE_NEEDS_RESET; the
// VMM keeps running.
var ErrGuest = errors.New("guest error")

func guestErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrGuest, fmt.Sprintf(format, args...))
}

// MaxQueueSize is the largest split virtqueue the specification allows.
const MaxQueueSize = 32768

// Descriptor flags.
const (
	descFNext     = 1
	descFWrite    = 2
	descFIndirect = 4
)

// Ring flags.
const (
	usedFNoNotify     = 1
	availFNoInterrupt = 1
)

const descSize = 16

// QueueConfig is the driver-programmed configuration of one virtqueue, as
// latched by the transport at DRIVER_OK.
type QueueConfig struct {
	Size      uint16
	DescAddr  uint64
	AvailAddr uint64
	UsedAddr  uint64
}

// Queue is one split virtqueue in use by a device. A Queue is not safe for
// concurrent use: one device goroutine owns it between Activate and Reset.
type Queue struct {
	cfg      QueueConfig
	mem      *memory.Memory
	eventIdx bool
	indirect bool

	lastAvail uint16 // next avail ring entry to consume
	usedIdx   uint16 // shadow of used->idx including unpublished entries
	published uint16 // used->idx as last published
	signalled uint16 // used->idx at the last interrupt decision
	noNotify  bool   // VRING_USED_F_NO_NOTIFY currently set

	// lastIRQ is used->idx+1 when Publish last asked for an interrupt (0:
	// never), for diagnostics from other goroutines.
	lastIRQ atomic.Uint32
}

// NewQueue checks a latched queue configuration against guest memory and the
// negotiated features and returns a queue ready for use. The used ring's
// index is read from guest memory so that a queue re-activated without a
// reset continues where it was (it is 0 after a reset).
func NewQueue(mem *memory.Memory, cfg QueueConfig, features uint64) (*Queue, error) {
	if cfg.Size == 0 || cfg.Size > MaxQueueSize || cfg.Size&(cfg.Size-1) != 0 {
		return nil, guestErr("queue size %d is not a power of two up to %d", cfg.Size, MaxQueueSize)
	}
	n := uint64(cfg.Size)
	areas := []struct {
		name  string
		addr  uint64
		size  uint64
		align uint64
	}{
		{"descriptor table", cfg.DescAddr, descSize * n, 16},
		{"available ring", cfg.AvailAddr, 6 + 2*n, 2},
		{"used ring", cfg.UsedAddr, 6 + 8*n, 4},
	}
	for _, a := range areas {
		if a.addr%a.align != 0 {
			return nil, guestErr("%s at %#x is not %d-byte aligned", a.name, a.addr, a.align)
		}
		if !mem.Contains(a.addr, a.size) {
			return nil, guestErr("%s %#x+%#x is outside guest memory", a.name, a.addr, a.size)
		}
	}
	q := &Queue{
		cfg:      cfg,
		mem:      mem,
		eventIdx: features&FRingEventIdx != 0,
		indirect: features&FRingIndirect != 0,
	}
	used, err := mem.LoadUint16Acquire(cfg.UsedAddr + 2)
	if err != nil {
		return nil, err
	}
	q.usedIdx, q.published, q.signalled, q.lastAvail = used, used, used, used
	return q, nil
}

// Size returns the number of entries.
func (q *Queue) Size() uint16 { return q.cfg.Size }

// NextAvail returns the free-running index of the next available-ring
// entry the device will consume (what a vhost-user backend reports at
// GET_VRING_BASE). Only while no worker uses the queue.
func (q *Queue) NextAvail() uint16 { return q.lastAvail }

// SetNextAvail makes the device continue at available-ring index v (a
// vhost-user frontend's SET_VRING_BASE: where the queue's previous server
// stopped). Only before a worker uses the queue.
func (q *Queue) SetNextAvail(v uint16) { q.lastAvail = v }

// Config returns the configuration the queue was created with.
func (q *Queue) Config() QueueConfig { return q.cfg }

// Chain is one descriptor chain resolved into host slices of guest memory.
// Readable buffers (driver to device) come first in the chain, writable ones
// (device to driver) after them. A Chain is reused across Pop calls to avoid
// allocating per request; its slices alias guest memory, which the guest can
// change at any time.
type Chain struct {
	Head     uint16
	Readable [][]byte
	Writable [][]byte
	// ReadLen and WriteLen are the total bytes of the readable and writable
	// buffers.
	ReadLen, WriteLen uint32
}

func (c *Chain) reset() {
	clear(c.Readable) // drop references to guest memory
	clear(c.Writable)
	c.Readable = c.Readable[:0]
	c.Writable = c.Writable[:0]
	c.ReadLen, c.WriteLen = 0, 0
}

// Pending returns how many chains the driver has made available and the
// device has not yet popped. An error means the avail index is corrupt.
func (q *Queue) Pending() (uint16, error) {
	avail, err := q.mem.LoadUint16Acquire(q.cfg.AvailAddr + 2)
	if err != nil {
		return 0, err
	}
	n := avail - q.lastAvail
	if n > q.cfg.Size {
		return 0, guestErr("avail index %d is %d ahead of the device (queue size %d)", avail, n, q.cfg.Size)
	}
	return n, nil
}

// Pop takes the next available chain into c. It returns false when the ring
// is empty. On error the chain is unusable and the queue should be
// considered broken (the device sets DEVICE_NEEDS_RESET).
func (q *Queue) Pop(c *Chain) (bool, error) {
	n, err := q.Pending()
	if err != nil || n == 0 {
		return false, err
	}
	slot := uint64(q.lastAvail % q.cfg.Size)
	head, err := q.mem.Uint16(q.cfg.AvailAddr + 4 + 2*slot)
	if err != nil {
		return false, err
	}
	q.lastAvail++
	c.reset()
	c.Head = head
	if err := q.walk(c, head); err != nil {
		return false, err
	}
	return true, nil
}

// Unpop returns the last n popped chains to the ring, so that the next Pop
// sees them again. Chains that were Pushed must not be returned.
func (q *Queue) Unpop(n uint16) { q.lastAvail -= n }

type desc struct {
	addr  uint64
	len   uint32
	flags uint16
	next  uint16
}

func readDesc(b []byte) desc {
	return desc{
		addr:  binary.LittleEndian.Uint64(b[0:]),
		len:   binary.LittleEndian.Uint32(b[8:]),
		flags: binary.LittleEndian.Uint16(b[12:]),
		next:  binary.LittleEndian.Uint16(b[14:]),
	}
}

// walk follows a chain from head. The total number of descriptors visited,
// including those of an indirect table, is bounded by the queue size, so a
// loop in the chain ends with an error.
func (q *Queue) walk(c *Chain, head uint16) error {
	table := q.cfg.DescAddr
	tableLen := uint32(q.cfg.Size)
	idx := head
	budget := int(q.cfg.Size)
	inIndirect := false
	for {
		if uint32(idx) >= tableLen {
			return guestErr("descriptor index %d out of range %d", idx, tableLen)
		}
		if budget == 0 {
			return guestErr("descriptor chain from head %d is longer than the queue size (loop?)", head)
		}
		budget--
		raw, err := q.mem.Slice(table+uint64(idx)*descSize, descSize)
		if err != nil {
			return guestErr("descriptor table: %v", err)
		}
		d := readDesc(raw) // copied once: the guest may change it under us
		if d.flags&descFIndirect != 0 {
			switch {
			case !q.indirect:
				return guestErr("indirect descriptor without VIRTIO_F_RING_INDIRECT_DESC")
			case inIndirect:
				return guestErr("nested indirect descriptor")
			case d.flags&descFNext != 0:
				return guestErr("indirect descriptor with NEXT flag")
			case d.len == 0 || d.len%descSize != 0:
				return guestErr("indirect table length %d is not a multiple of %d", d.len, descSize)
			}
			n := d.len / descSize
			if int(n) > budget+1 {
				return guestErr("indirect table of %d descriptors exceeds the queue size", n)
			}
			if !q.mem.Contains(d.addr, uint64(d.len)) {
				return guestErr("indirect table %#x+%#x outside guest memory", d.addr, d.len)
			}
			table, tableLen, idx, inIndirect = d.addr, n, 0, true
			budget++ // the indirect descriptor itself carries no buffer
			continue
		}
		if err := q.addBuffer(c, d); err != nil {
			return err
		}
		if d.flags&descFNext == 0 {
			return nil
		}
		idx = d.next
	}
}

func (q *Queue) addBuffer(c *Chain, d desc) error {
	buf, err := q.mem.Slice(d.addr, uint64(d.len))
	if err != nil {
		return guestErr("buffer %#x+%#x outside guest memory", d.addr, d.len)
	}
	if d.flags&descFWrite != 0 {
		if c.WriteLen+d.len < c.WriteLen {
			return guestErr("writable length overflows")
		}
		c.Writable = append(c.Writable, buf)
		c.WriteLen += d.len
		return nil
	}
	if len(c.Writable) > 0 {
		return guestErr("readable descriptor after a writable one")
	}
	if c.ReadLen+d.len < c.ReadLen {
		return guestErr("readable length overflows")
	}
	c.Readable = append(c.Readable, buf)
	c.ReadLen += d.len
	return nil
}

// Push adds a used element for the chain with the given head, recording that
// the device wrote n bytes into its writable buffers. The element becomes
// visible to the driver at the next Publish.
func (q *Queue) Push(head uint16, n uint32) error {
	slot := uint64(q.usedIdx % q.cfg.Size)
	b, err := q.mem.Slice(q.cfg.UsedAddr+4+8*slot, 8)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint32(b[0:], uint32(head))
	binary.LittleEndian.PutUint32(b[4:], n)
	q.usedIdx++
	return nil
}

// Publish makes every pushed element visible to the driver (the used index is
// stored after the elements, with release ordering) and reports whether the
// driver asked to be interrupted for them.
func (q *Queue) Publish() (notify bool, err error) {
	if q.usedIdx == q.published {
		return false, nil
	}
	if err := q.mem.StoreUint16Release(q.cfg.UsedAddr+2, q.usedIdx); err != nil {
		return false, err
	}
	q.published = q.usedIdx
	memory.Fence() // the index store must be visible before reading used_event
	notify, err = q.needInterrupt()
	if notify {
		q.lastIRQ.Store(uint32(q.published) + 1)
	}
	return notify, err
}

// LastInterrupt returns the used index at which Publish last asked for an
// interrupt, and false if it never did. Safe from any goroutine.
func (q *Queue) LastInterrupt() (uint16, bool) {
	v := q.lastIRQ.Load()
	return uint16(v - 1), v != 0
}

func (q *Queue) needInterrupt() (bool, error) {
	old := q.signalled
	q.signalled = q.published
	if !q.eventIdx {
		flags, err := q.mem.LoadUint16Acquire(q.cfg.AvailAddr)
		if err != nil {
			return false, err
		}
		return flags&availFNoInterrupt == 0, nil
	}
	event, err := q.mem.LoadUint16Acquire(q.cfg.AvailAddr + 4 + 2*uint64(q.cfg.Size))
	if err != nil {
		return false, err
	}
	// vring_need_event: interrupt if event lies in [old, new).
	return q.published-event-1 < q.published-old, nil
}

// EnableNotify asks the driver to notify the device when it adds buffers and
// reports whether buffers arrived meanwhile (the caller must then process the
// queue instead of waiting).
func (q *Queue) EnableNotify() (pending bool, err error) {
	if q.eventIdx {
		if err := q.mem.StoreUint16Release(q.cfg.UsedAddr+4+8*uint64(q.cfg.Size), q.lastAvail); err != nil {
			return false, err
		}
	} else if q.noNotify {
		if err := q.mem.StoreUint16Release(q.cfg.UsedAddr, 0); err != nil {
			return false, err
		}
		q.noNotify = false
	}
	memory.Fence()
	n, err := q.Pending()
	return n > 0, err
}

// DisableNotify tells the driver that notifications are not needed while the
// device is processing the queue. It is a hint; the driver may still notify.
func (q *Queue) DisableNotify() error {
	if q.eventIdx || q.noNotify {
		return nil
	}
	q.noNotify = true
	return q.mem.StoreUint16Release(q.cfg.UsedAddr, usedFNoNotify)
}

// RingState is what a queue's rings in guest memory say, for diagnostics:
// the driver's avail index and flags, the used index and flags the device
// published, and the two EVENT_IDX fields (used_event, written by the
// driver; avail_event, written by the device).
type RingState struct {
	AvailIdx, AvailFlags, UsedEvent uint16
	UsedIdx, UsedFlags, AvailEvent  uint16
	// LastInterrupt is the used index of the device's last interrupt
	// request, if Interrupted (filled in by Common.RingStates).
	LastInterrupt uint16
	Interrupted   bool
}

func (r RingState) String() string {
	irq := "never"
	if r.Interrupted {
		irq = fmt.Sprint(r.LastInterrupt)
	}
	return fmt.Sprintf("avail_idx=%d used_idx=%d avail_flags=%#x used_flags=%#x used_event=%d avail_event=%d last_interrupt_at=%s",
		r.AvailIdx, r.UsedIdx, r.AvailFlags, r.UsedFlags, r.UsedEvent, r.AvailEvent, irq)
}

// RingState reads the rings from guest memory. It touches no device-side
// state, so it may be called while the device's goroutine runs.
func (q *Queue) RingState() (RingState, error) {
	var r RingState
	var err error
	load := func(gpa uint64) uint16 {
		if err != nil {
			return 0
		}
		var v uint16
		v, err = q.mem.LoadUint16Acquire(gpa)
		return v
	}
	n := uint64(q.cfg.Size)
	r.AvailFlags = load(q.cfg.AvailAddr)
	r.AvailIdx = load(q.cfg.AvailAddr + 2)
	r.UsedEvent = load(q.cfg.AvailAddr + 4 + 2*n)
	r.UsedFlags = load(q.cfg.UsedAddr)
	r.UsedIdx = load(q.cfg.UsedAddr + 2)
	r.AvailEvent = load(q.cfg.UsedAddr + 4 + 8*n)
	return r, err
}
