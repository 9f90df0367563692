package pci

import (
	"encoding/binary"
	"fmt"
	"math/bits"
)

// BARKind is the address space and width of a BAR.
type BARKind uint8

// BAR kinds.
const (
	BARUnused BARKind = iota
	BARIO             // I/O space, 32-bit register, at most 256 bytes
	BARMem32          // memory space below 4 GiB
	BARMem64          // memory space anywhere; uses two registers
)

func (k BARKind) String() string {
	switch k {
	case BARUnused:
		return "unused"
	case BARIO:
		return "io"
	case BARMem32:
		return "mem32"
	case BARMem64:
		return "mem64"
	}
	return fmt.Sprintf("BARKind(%d)", uint8(k))
}

// Type bits in the low bits of a BAR register.
const (
	barIOSpace    = 0x1
	barMem64      = 0x4
	barPrefetch   = 0x8
	barIOAddrMask = ^uint32(0x3)
	barMemAddr    = ^uint32(0xf)
)

// AddBAR declares BAR index as a kind BAR of size bytes. size is a power of
// two, at least 16 for memory and 4 for I/O BARs (at most 256 for I/O, 2 GiB
// for 32-bit memory). A 64-bit BAR also takes register index+1. The guest
// sizes a BAR by writing all ones and reading back the size mask with the
// type bits. AddBAR must be called before the function is added to a Root.
func (c *ConfigSpace) AddBAR(index int, kind BARKind, size uint64, prefetchable bool) error {
	if index < 0 || index >= NumBARs {
		return fmt.Errorf("pci: BAR index %d out of range", index)
	}
	if bits.OnesCount64(size) != 1 {
		return fmt.Errorf("pci: BAR %d size %#x is not a power of two", index, size)
	}
	var typ uint32
	switch kind {
	case BARIO:
		if size < 4 || size > 256 {
			return fmt.Errorf("pci: I/O BAR %d size %#x not in [4, 256]", index, size)
		}
		if prefetchable {
			return fmt.Errorf("pci: I/O BAR %d cannot be prefetchable", index)
		}
		typ = barIOSpace
	case BARMem32:
		if size < 16 || size > 1<<31 {
			return fmt.Errorf("pci: 32-bit memory BAR %d size %#x not in [16, 2G]", index, size)
		}
	case BARMem64:
		if size < 16 || size > 1<<63 {
			return fmt.Errorf("pci: 64-bit memory BAR %d size %#x too small", index, size)
		}
		if index+1 >= NumBARs {
			return fmt.Errorf("pci: 64-bit BAR %d needs two registers", index)
		}
		typ = barMem64
	default:
		return fmt.Errorf("pci: BAR %d: invalid kind %v", index, kind)
	}
	if prefetchable {
		typ |= barPrefetch
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.owned {
		return fmt.Errorf("pci: BAR %d added after the function was attached", index)
	}
	if c.bars[index].kind != BARUnused || c.bars[index].upper ||
		(kind == BARMem64 && (c.bars[index+1].kind != BARUnused || c.bars[index+1].upper)) {
		return fmt.Errorf("pci: BAR %d already in use", index)
	}
	le := binary.LittleEndian
	reg := RegBAR0 + 4*index
	mask := ^(size - 1)
	le.PutUint32(c.data[reg:], typ)
	if kind == BARIO {
		le.PutUint32(c.wmask[reg:], uint32(mask)&barIOAddrMask)
	} else {
		le.PutUint32(c.wmask[reg:], uint32(mask)&barMemAddr)
	}
	c.bars[index] = barInfo{kind: kind, size: size, prefetch: prefetchable}
	if kind == BARMem64 {
		le.PutUint32(c.data[reg+4:], 0)
		le.PutUint32(c.wmask[reg+4:], uint32(mask>>32))
		c.bars[index+1] = barInfo{upper: true}
	}
	return nil
}

// BAR describes BAR index: its kind (BARUnused for an unused register or the
// upper half of a 64-bit BAR), size and prefetchable flag.
func (c *ConfigSpace) BAR(index int) (kind BARKind, size uint64, prefetchable bool) {
	if index < 0 || index >= NumBARs {
		return BARUnused, 0, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.bars[index]
	return b.kind, b.size, b.prefetch
}

// BARAddress returns the address BAR index currently holds (whatever the
// guest or firmware last wrote, including a sizing pattern), or 0 for an
// unused register.
func (c *ConfigSpace) BARAddress(index int) uint64 {
	if index < 0 || index >= NumBARs {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.barAddressLocked(index)
}

func (c *ConfigSpace) barAddressLocked(index int) uint64 {
	le := binary.LittleEndian
	reg := RegBAR0 + 4*index
	lo := le.Uint32(c.data[reg:])
	switch c.bars[index].kind {
	case BARIO:
		return uint64(lo & barIOAddrMask)
	case BARMem32:
		return uint64(lo & barMemAddr)
	case BARMem64:
		return uint64(lo&barMemAddr) | uint64(le.Uint32(c.data[reg+4:]))<<32
	}
	return 0
}

// setBARAddress stores addr in BAR index (firmware placement), keeping the
// type bits. addr must be aligned to the BAR size.
func (c *ConfigSpace) setBARAddress(index int, addr uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	le := binary.LittleEndian
	reg := RegBAR0 + 4*index
	b := c.bars[index]
	lo := le.Uint32(c.data[reg:])
	switch b.kind {
	case BARIO:
		le.PutUint32(c.data[reg:], lo&^barIOAddrMask|uint32(addr)&barIOAddrMask)
	case BARMem32:
		le.PutUint32(c.data[reg:], lo&^barMemAddr|uint32(addr)&barMemAddr)
	case BARMem64:
		le.PutUint32(c.data[reg:], lo&^barMemAddr|uint32(addr)&barMemAddr)
		le.PutUint32(c.data[reg+4:], uint32(addr>>32))
	}
}
