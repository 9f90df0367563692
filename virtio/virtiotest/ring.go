// Package virtiotest is the driver half of a virtqueue, for tests: it lays
// out split rings in guest memory, posts descriptor chains the way a guest
// driver does, and reads back used elements. Tests of devices and
// transports use it as an in-process virtio driver; hostile-driver tests use
// its raw accessors to write malformed rings.
package virtiotest

import (
	"encoding/binary"
	"fmt"

	"github.com/govmd/govmd/memory"
	"github.com/govmd/govmd/virtio"
)

// Descriptor flags, as a driver writes them.
const (
	DescNext     = 1
	DescWrite    = 2
	DescIndirect = 4
)

// Alloc is a bump allocator of guest physical memory for test buffers.
type Alloc struct {
	Next, End uint64
}

// Get returns size bytes aligned to align (a power of two).
func (a *Alloc) Get(size, align uint64) uint64 {
	p := (a.Next + align - 1) &^ (align - 1)
	if p+size > a.End {
		panic(fmt.Sprintf("virtiotest: out of test memory (%#x+%#x > %#x)", p, size, a.End))
	}
	a.Next = p + size
	return p
}

// Ring is a driver's view of one split virtqueue.
type Ring struct {
	Mem                *memory.Memory
	Size               uint16
	Desc, Avail, Used  uint64
	availIdx, lastUsed uint16
	free               []uint16
	chainLen           []int // by head: descriptors of the posted chain, 0 when none
}

// NewRing lays out a ring of size entries at base (4 KiB aligned) in the
// legacy layout (used ring on the next 4 KiB boundary), so the same ring can
// be given to a device by address or by legacy PFN.
func NewRing(mem *memory.Memory, size uint16, base uint64) *Ring {
	n := uint64(size)
	r := &Ring{Mem: mem, Size: size, Desc: base, Avail: base + 16*n}
	r.Used = (r.Avail + 6 + 2*n + 4095) &^ 4095
	for i := 0; i < int(size); i++ {
		r.free = append(r.free, uint16(i))
	}
	r.chainLen = make([]int, size)
	zero := make([]byte, r.Used+6+8*n-base)
	_ = mem.WriteAt(zero, base)
	return r
}

// Bytes returns how much memory a ring of size entries occupies from base.
func Bytes(size uint16) uint64 {
	n := uint64(size)
	used := (16*n + 6 + 2*n + 4095) &^ 4095
	return used + 6 + 8*n + 2
}

// Config returns the queue configuration a driver would program.
func (r *Ring) Config() virtio.QueueConfig {
	return virtio.QueueConfig{Size: r.Size, DescAddr: r.Desc, AvailAddr: r.Avail, UsedAddr: r.Used}
}

// Buf is one buffer of a chain.
type Buf struct {
	Addr  uint64
	Len   uint32
	Write bool
}

// PutDesc writes descriptor i raw.
func (r *Ring) PutDesc(i uint16, addr uint64, n uint32, flags, next uint16) {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[0:], addr)
	binary.LittleEndian.PutUint32(b[8:], n)
	binary.LittleEndian.PutUint16(b[12:], flags)
	binary.LittleEndian.PutUint16(b[14:], next)
	if err := r.Mem.WriteAt(b[:], r.Desc+16*uint64(i)); err != nil {
		panic(err)
	}
}

// Free returns how many descriptors are free.
func (r *Ring) Free() int { return len(r.free) }

// Add posts a chain of buffers and makes it available. It returns the head
// index, or false if there are not enough free descriptors.
func (r *Ring) Add(bufs ...Buf) (uint16, bool) {
	if len(bufs) == 0 || len(bufs) > len(r.free) {
		return 0, false
	}
	ids := r.free[:len(bufs)]
	r.free = append([]uint16(nil), r.free[len(bufs):]...)
	for i, b := range bufs {
		var flags, next uint16
		if b.Write {
			flags |= DescWrite
		}
		if i+1 < len(bufs) {
			flags |= DescNext
			next = ids[i+1]
		}
		r.PutDesc(ids[i], b.Addr, b.Len, flags, next)
	}
	r.chainLen[ids[0]] = len(bufs)
	r.PushAvail(ids[0])
	return ids[0], true
}

// AddIndirect posts bufs through one indirect descriptor whose table is
// written at table (16 bytes per buffer).
func (r *Ring) AddIndirect(table uint64, bufs ...Buf) (uint16, bool) {
	if len(r.free) == 0 {
		return 0, false
	}
	id := r.free[0]
	r.free = r.free[1:]
	for i, b := range bufs {
		var flags, next uint16
		if b.Write {
			flags |= DescWrite
		}
		if i+1 < len(bufs) {
			flags |= DescNext
			next = uint16(i + 1)
		}
		var d [16]byte
		binary.LittleEndian.PutUint64(d[0:], b.Addr)
		binary.LittleEndian.PutUint32(d[8:], b.Len)
		binary.LittleEndian.PutUint16(d[12:], flags)
		binary.LittleEndian.PutUint16(d[14:], next)
		if err := r.Mem.WriteAt(d[:], table+16*uint64(i)); err != nil {
			panic(err)
		}
	}
	r.PutDesc(id, table, uint32(16*len(bufs)), DescIndirect, 0)
	r.chainLen[id] = 1
	r.PushAvail(id)
	return id, true
}

// PushAvail puts head in the next avail slot and publishes the avail index.
func (r *Ring) PushAvail(head uint16) {
	slot := uint64(r.availIdx % r.Size)
	if err := r.Mem.PutUint16(r.Avail+4+2*slot, head); err != nil {
		panic(err)
	}
	r.availIdx++
	r.SetAvailIdx(r.availIdx)
}

// SetAvailIdx writes the avail index raw.
func (r *Ring) SetAvailIdx(v uint16) {
	r.availIdx = v
	if err := r.Mem.StoreUint16Release(r.Avail+2, v); err != nil {
		panic(err)
	}
}

// AvailIdx returns the driver's avail index.
func (r *Ring) AvailIdx() uint16 { return r.availIdx }

// UsedIdx returns the used index the device published.
func (r *Ring) UsedIdx() uint16 {
	v, err := r.Mem.LoadUint16Acquire(r.Used + 2)
	if err != nil {
		panic(err)
	}
	return v
}

// PopUsed returns the next used element, if the device published one, and
// frees its descriptors.
func (r *Ring) PopUsed() (head uint16, n uint32, ok bool) {
	if r.UsedIdx() == r.lastUsed {
		return 0, 0, false
	}
	slot := uint64(r.lastUsed % r.Size)
	id, _ := r.Mem.Uint32(r.Used + 4 + 8*slot)
	n, _ = r.Mem.Uint32(r.Used + 4 + 8*slot + 4)
	r.lastUsed++
	head = uint16(id)
	if int(head) < len(r.chainLen) && r.chainLen[head] > 0 {
		c := r.chainLen[head]
		r.chainLen[head] = 0
		idx := head
		for i := 0; i < c; i++ {
			r.free = append(r.free, idx)
			nx, _ := r.Mem.Uint16(r.Desc + 16*uint64(idx) + 14)
			idx = nx
		}
	}
	return head, n, true
}

// SetUsedEvent writes used_event (EVENT_IDX): the device should interrupt
// once it publishes past v.
func (r *Ring) SetUsedEvent(v uint16) {
	_ = r.Mem.PutUint16(r.Avail+4+2*uint64(r.Size), v)
}

// AvailEvent reads avail_event (EVENT_IDX) as written by the device.
func (r *Ring) AvailEvent() uint16 {
	v, _ := r.Mem.Uint16(r.Used + 4 + 8*uint64(r.Size))
	return v
}

// SetAvailFlags writes the avail ring flags (1 = NO_INTERRUPT).
func (r *Ring) SetAvailFlags(v uint16) { _ = r.Mem.PutUint16(r.Avail, v) }

// UsedFlags reads the used ring flags (1 = NO_NOTIFY).
func (r *Ring) UsedFlags() uint16 {
	v, _ := r.Mem.Uint16(r.Used)
	return v
}
