package memory

import (
	"fmt"
	"sync/atomic"
	"unsafe"
)

// Virtqueue ring indices are shared with a driver running on another CPU.
// They are accessed through the naturally aligned 32-bit word that contains
// them, with sync/atomic, so that the compiler neither tears nor reorders
// them and the stores act as full barriers (LOCK CMPXCHG on amd64).
//
// The aligned word always lies inside the region: regions are page aligned,
// so a 2-aligned 16-bit field never makes its containing 4-aligned word cross
// a region boundary.

func word16(b []byte) (*uint32, uint, error) {
	p := uintptr(unsafe.Pointer(&b[0]))
	if p%2 != 0 {
		return nil, 0, fmt.Errorf("memory: 16-bit ring field at misaligned host address")
	}
	shift := uint(p%4) * 8
	return (*uint32)(unsafe.Add(unsafe.Pointer(&b[0]), -int(p%4))), shift, nil
}

// LoadUint16Acquire reads a 2-aligned little-endian 16-bit value with
// acquire ordering: later loads are not performed before it.
func (m *Memory) LoadUint16Acquire(gpa uint64) (uint16, error) {
	if gpa%2 != 0 {
		return 0, fmt.Errorf("%w: misaligned 16-bit access at %#x", ErrRange, gpa)
	}
	b, err := m.Slice(gpa, 2)
	if err != nil {
		return 0, err
	}
	w, shift, err := word16(b)
	if err != nil {
		return 0, err
	}
	return uint16(atomic.LoadUint32(w) >> shift), nil
}

// StoreUint16Release writes a 2-aligned little-endian 16-bit value after all
// earlier stores are visible, and before any later load (a full barrier).
// The other half of the containing word is preserved even if the guest
// writes it concurrently.
func (m *Memory) StoreUint16Release(gpa uint64, v uint16) error {
	if gpa%2 != 0 {
		return fmt.Errorf("%w: misaligned 16-bit access at %#x", ErrRange, gpa)
	}
	b, err := m.Slice(gpa, 2)
	if err != nil {
		return err
	}
	w, shift, err := word16(b)
	if err != nil {
		return err
	}
	mask := uint32(0xffff) << shift
	for {
		old := atomic.LoadUint32(w)
		nw := old&^mask | uint32(v)<<shift
		if atomic.CompareAndSwapUint32(w, old, nw) {
			return nil
		}
	}
}

var fenceWord atomic.Uint32

// Fence is a full memory barrier: stores before it are visible to other CPUs
// before loads after it are performed (virtio's virtio_mb()).
func Fence() { fenceWord.Add(0) }
