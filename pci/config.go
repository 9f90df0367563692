package pci

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
)

// ConfigSize is the size of a function's configuration space. Offsets from
// ConfigSize up to the 4 KiB reachable through ECAM read as zero and ignore
// writes (no PCI Express extended capabilities).
const ConfigSize = 256

// Offsets of the type 0 configuration header registers.
const (
	RegVendorID        = 0x00
	RegDeviceID        = 0x02
	RegCommand         = 0x04
	RegStatus          = 0x06
	RegRevision        = 0x08
	RegProgIF          = 0x09
	RegSubclass        = 0x0a
	RegClass           = 0x0b
	RegCacheLineSize   = 0x0c
	RegLatencyTimer    = 0x0d
	RegHeaderType      = 0x0e
	RegBAR0            = 0x10
	RegSubsystemVendor = 0x2c
	RegSubsystemID     = 0x2e
	RegExpansionROM    = 0x30
	RegCapabilities    = 0x34
	RegInterruptLine   = 0x3c
	RegInterruptPin    = 0x3d
)

// Command register bits the guest may change.
const (
	CommandIO          = 1 << 0
	CommandMemory      = 1 << 1
	CommandBusMaster   = 1 << 2
	CommandINTxDisable = 1 << 10
)

// Status register bits.
const (
	StatusInterrupt = 1 << 3 // read-only, driven by the device
	StatusCapList   = 1 << 4 // read-only, set when a capability exists
	// statusW1C are the error bits a guest clears by writing ones:
	// master data parity error, signaled/received target abort, received
	// master abort, signaled system error, detected parity error.
	statusW1C = 1<<8 | 1<<11 | 1<<12 | 1<<13 | 1<<14 | 1<<15
)

// Interrupt pin values (register 0x3D).
const (
	PinNone byte = 0
	PinA    byte = 1
	PinB    byte = 2
	PinC    byte = 3
	PinD    byte = 4
)

// capStart is where the first capability goes: right after the header.
const capStart = 0x40

// NumBARs is the number of BAR registers in a type 0 header.
const NumBARs = 6

// Identity is what a function reports in its configuration header.
type Identity struct {
	Vendor, Device             uint16
	Revision                   uint8
	Class, Subclass, ProgIF    uint8
	SubsystemVendor, Subsystem uint16
	// HeaderType is the header layout (0 for an ordinary function); bit 7
	// is the multi-function flag.
	HeaderType uint8
}

// Hook extends guest accesses to the bytes [Start, Start+Len) of a
// configuration space. Read is called after the stored bytes were copied
// into data and may change them; Write is called after the masked write was
// applied. off is the offset of the whole access, which may extend beyond
// the hooked range. Hooks run without the ConfigSpace lock held, so they may
// call any ConfigSpace method; concurrent guest accesses may run hooks
// concurrently.
type Hook struct {
	Start, Len int
	Read       func(off int, data []byte)
	Write      func(off int, data []byte)
}

func (h *Hook) overlaps(off, n int) bool {
	return off < h.Start+h.Len && h.Start < off+n
}

type barInfo struct {
	kind     BARKind
	size     uint64
	prefetch bool
	upper    bool // the upper register of a 64-bit BAR
}

// ConfigSpace is the 256-byte configuration space of one PCI function. Every
// byte has a guest write mask and a write-1-to-clear mask; the device itself
// changes read-only state with the Set* methods.
//
// Construction (AddBAR, AddCapability, AddHook, SetInterruptPin) happens
// before the function is added to a Root. Afterwards all methods are safe for
// concurrent use: vCPUs access the space while device goroutines update the
// interrupt status.
type ConfigSpace struct {
	mu      sync.Mutex
	data    [ConfigSize]byte
	wmask   [ConfigSize]byte
	w1c     [ConfigSize]byte
	bars    [NumBARs]barInfo
	capNext int // offset for the next capability
	capLast int // offset of the last capability, 0 if none
	hooks   []Hook
	owned   bool // added to a Root
}

// NewConfigSpace returns the configuration space of a function with the
// given identity. The guest may write the command register's I/O, memory,
// bus master and INTx disable bits, clear the status error bits, and write
// the cache line size and interrupt line registers; everything else is read
// only until BARs and capabilities add writable bits.
func NewConfigSpace(id Identity) *ConfigSpace {
	c := &ConfigSpace{capNext: capStart}
	le := binary.LittleEndian
	le.PutUint16(c.data[RegVendorID:], id.Vendor)
	le.PutUint16(c.data[RegDeviceID:], id.Device)
	c.data[RegRevision] = id.Revision
	c.data[RegProgIF] = id.ProgIF
	c.data[RegSubclass] = id.Subclass
	c.data[RegClass] = id.Class
	c.data[RegHeaderType] = id.HeaderType
	le.PutUint16(c.data[RegSubsystemVendor:], id.SubsystemVendor)
	le.PutUint16(c.data[RegSubsystemID:], id.Subsystem)
	le.PutUint16(c.wmask[RegCommand:], CommandIO|CommandMemory|CommandBusMaster|CommandINTxDisable)
	le.PutUint16(c.w1c[RegStatus:], statusW1C)
	c.wmask[RegCacheLineSize] = 0xff
	c.wmask[RegInterruptLine] = 0xff
	return c
}

// validSize reports whether an access of n bytes at off is one the
// configuration space answers: 1, 2 or 4 bytes at a non-negative offset.
func validSize(off, n int) bool {
	return off >= 0 && (n == 1 || n == 2 || n == 4)
}

// Read performs a guest read. Bytes beyond ConfigSize and accesses that are
// not 1, 2 or 4 bytes read as zero.
func (c *ConfigSpace) Read(off int, data []byte) {
	clear(data)
	if !validSize(off, len(data)) {
		return
	}
	c.mu.Lock()
	for i := range data {
		if o := off + i; o < ConfigSize {
			data[i] = c.data[o]
		}
	}
	hooks := c.hooks
	c.mu.Unlock()
	for i := range hooks {
		if h := &hooks[i]; h.Read != nil && h.overlaps(off, len(data)) {
			h.Read(off, data)
		}
	}
}

// Write performs a guest write: only bits in the write mask change, and
// write-1-to-clear bits written as one are cleared. Bytes beyond ConfigSize
// and accesses that are not 1, 2 or 4 bytes are ignored.
func (c *ConfigSpace) Write(off int, data []byte) {
	if !validSize(off, len(data)) {
		return
	}
	c.mu.Lock()
	for i, v := range data {
		o := off + i
		if o >= ConfigSize {
			break
		}
		c.data[o] = c.data[o]&^c.wmask[o] | v&c.wmask[o]
		c.data[o] &^= v & c.w1c[o]
	}
	hooks := c.hooks
	c.mu.Unlock()
	for i := range hooks {
		if h := &hooks[i]; h.Write != nil && h.overlaps(off, len(data)) {
			h.Write(off, data)
		}
	}
}

// Get copies stored bytes into data without running hooks. Bytes beyond
// ConfigSize read as zero. It is the device's view, for any length.
func (c *ConfigSpace) Get(off int, data []byte) {
	clear(data)
	if off < 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range data {
		if o := off + i; o < ConfigSize {
			data[i] = c.data[o]
		}
	}
}

// Set stores bytes regardless of the write masks and without running
// hooks: the device changing its own read-only state. Bytes beyond
// ConfigSize are ignored.
func (c *ConfigSpace) Set(off int, data []byte) {
	if off < 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, v := range data {
		if o := off + i; o < ConfigSize {
			c.data[o] = v
		}
	}
}

func (c *ConfigSpace) get16(off int) uint16 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return binary.LittleEndian.Uint16(c.data[off:])
}

// Command returns the command register.
func (c *ConfigSpace) Command() uint16 { return c.get16(RegCommand) }

// Status returns the status register.
func (c *ConfigSpace) Status() uint16 { return c.get16(RegStatus) }

// INTxDisabled reports whether the guest set the command register's INTx
// disable bit: the device must then not assert its interrupt pin.
func (c *ConfigSpace) INTxDisabled() bool { return c.Command()&CommandINTxDisable != 0 }

// SetInterruptStatus sets or clears the status register's interrupt bit,
// which mirrors the state of the device's INTx line.
func (c *ConfigSpace) SetInterruptStatus(asserted bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if asserted {
		c.data[RegStatus] |= StatusInterrupt
	} else {
		c.data[RegStatus] &^= StatusInterrupt
	}
}

// SetInterruptPin sets the read-only interrupt pin register: PinNone or
// PinA..PinD.
func (c *ConfigSpace) SetInterruptPin(pin byte) error {
	if pin > PinD {
		return fmt.Errorf("pci: interrupt pin %d out of range", pin)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.data[RegInterruptPin] = pin
	return nil
}

// InterruptPin returns the interrupt pin register.
func (c *ConfigSpace) InterruptPin() byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.data[RegInterruptPin]
}

// InterruptLine returns the interrupt line register (firmware or guest
// written; informational only).
func (c *ConfigSpace) InterruptLine() byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.data[RegInterruptLine]
}

// AddHook extends guest accesses to a range of the space, see Hook. It must
// be called before the function is added to a Root.
func (c *ConfigSpace) AddHook(h Hook) error {
	if h.Start < 0 || h.Len <= 0 || h.Start+h.Len > ConfigSize {
		return fmt.Errorf("pci: hook range %#x+%#x out of configuration space", h.Start, h.Len)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	// Copy on append: readers use the slice they loaded without the lock.
	hooks := make([]Hook, len(c.hooks), len(c.hooks)+1)
	copy(hooks, c.hooks)
	c.hooks = append(hooks, h)
	return nil
}

// ErrNoSpace is returned when a capability does not fit in the
// configuration space.
var ErrNoSpace = errors.New("pci: configuration space full")

// Capability IDs with helpers in this package.
const (
	CapVendor = 0x09
	CapMSIX   = 0x11
)

// AddCapability appends a capability to the list that starts at register
// 0x34 and returns its offset. The capability is laid out as id, next
// pointer, then body; writeMask, if not nil, has one mask byte per body
// byte. Offsets are dword aligned and the list is linked in the order of
// the calls. The status register's capability-list bit is set.
func (c *ConfigSpace) AddCapability(id byte, body, writeMask []byte) (int, error) {
	if writeMask != nil && len(writeMask) != len(body) {
		return 0, fmt.Errorf("pci: capability %#x: write mask is %d bytes, body %d", id, len(writeMask), len(body))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	off := c.capNext
	n := 2 + len(body)
	if off+n > ConfigSize {
		return 0, fmt.Errorf("%w: capability %#x of %d bytes at %#x", ErrNoSpace, id, n, off)
	}
	c.data[off] = id
	c.data[off+1] = 0
	copy(c.data[off+2:], body)
	if writeMask != nil {
		copy(c.wmask[off+2:], writeMask)
	}
	if c.capLast == 0 {
		c.data[RegCapabilities] = byte(off)
	} else {
		c.data[c.capLast+1] = byte(off)
	}
	c.capLast = off
	c.capNext = (off + n + 3) &^ 3
	c.data[RegStatus] |= StatusCapList
	return off, nil
}

// AddVendorCapability adds a vendor-specific capability (ID 0x09) as used by
// virtio 1.x: cap_vndr, cap_next, cap_len, then body. cap_len counts the
// three header bytes. writeMask, if not nil, covers body.
func (c *ConfigSpace) AddVendorCapability(body, writeMask []byte) (int, error) {
	if len(body)+3 > 0xff {
		return 0, fmt.Errorf("pci: vendor capability of %d bytes too long", len(body)+3)
	}
	if writeMask != nil && len(writeMask) != len(body) {
		return 0, fmt.Errorf("pci: vendor capability: write mask is %d bytes, body %d", len(writeMask), len(body))
	}
	b := append([]byte{byte(len(body) + 3)}, body...)
	var m []byte
	if writeMask != nil {
		m = append([]byte{0}, writeMask...)
	}
	return c.AddCapability(CapVendor, b, m)
}
