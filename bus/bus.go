// Package bus routes guest port I/O and MMIO accesses to the device that
// occupies the address. A VM has one bus for each address space.
//
// An access to an address no device claims is not an error for the VM: reads
// return all ones, writes are dropped, and the first access to each such
// address is logged once.
package bus

import (
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
)

// Handler is implemented by anything that occupies a range of guest address
// space. off is relative to the start of the registered range, and len(data)
// is 1, 2, 4 or 8. A Handler must treat every access as untrusted guest input:
// a malformed access is ignored (reads return zeros or all ones), never a host
// error and never a panic.
type Handler interface {
	Read(off uint64, data []byte)
	Write(off uint64, data []byte)
}

// ErrOverlap is returned when a range overlaps one already registered.
var ErrOverlap = errors.New("bus: range overlaps a registered device")

type entry struct {
	base, size uint64
	h          Handler
}

// Bus is a set of non-overlapping address ranges. It is safe for concurrent
// use: vCPUs read and write while a PCI BAR move re-registers ranges.
type Bus struct {
	name string
	log  *slog.Logger

	mu      sync.RWMutex
	entries []entry // sorted by base

	unclaimedMu sync.Mutex
	unclaimed   map[uint64]struct{}
}

// maxUnclaimedLogged bounds the memory used to remember which unclaimed
// addresses were already logged.
const maxUnclaimedLogged = 1024

// New returns an empty bus. name appears in log lines ("pio", "mmio").
func New(name string, log *slog.Logger) *Bus {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Bus{name: name, log: log, unclaimed: map[uint64]struct{}{}}
}

// Register claims [base, base+size) for h.
func (b *Bus) Register(base, size uint64, h Handler) error {
	if size == 0 || base+size < base {
		return fmt.Errorf("bus %s: invalid range %#x+%#x", b.name, base, size)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	i := sort.Search(len(b.entries), func(i int) bool { return b.entries[i].base >= base })
	if i > 0 {
		p := b.entries[i-1]
		if p.base+p.size > base {
			return fmt.Errorf("%w: %s %#x+%#x and %#x+%#x", ErrOverlap, b.name, base, size, p.base, p.size)
		}
	}
	if i < len(b.entries) && base+size > b.entries[i].base {
		n := b.entries[i]
		return fmt.Errorf("%w: %s %#x+%#x and %#x+%#x", ErrOverlap, b.name, base, size, n.base, n.size)
	}
	b.entries = append(b.entries, entry{})
	copy(b.entries[i+1:], b.entries[i:])
	b.entries[i] = entry{base: base, size: size, h: h}
	return nil
}

// Unregister removes the range that starts at base and belongs to h. It
// reports whether one was removed.
func (b *Bus) Unregister(base uint64, h Handler) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, e := range b.entries {
		if e.base == base && e.h == h {
			b.entries = append(b.entries[:i], b.entries[i+1:]...)
			return true
		}
	}
	return false
}

func (b *Bus) find(addr uint64, n int) (Handler, uint64, bool) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	es := b.entries
	i := sort.Search(len(es), func(i int) bool { return es[i].base > addr }) - 1
	if i < 0 {
		return nil, 0, false
	}
	e := es[i]
	off := addr - e.base
	if off >= e.size || uint64(n) > e.size-off {
		return nil, 0, false
	}
	return e.h, off, true
}

// Read performs a guest read of len(data) bytes at addr. It reports whether
// a device claimed the access; if none did, data is filled with 0xff.
func (b *Bus) Read(addr uint64, data []byte) bool {
	h, off, ok := b.find(addr, len(data))
	if !ok {
		for i := range data {
			data[i] = 0xff
		}
		b.logUnclaimed("read", addr, len(data))
		return false
	}
	h.Read(off, data)
	return true
}

// Write performs a guest write at addr. It reports whether a device claimed
// the access; if none did, the write is dropped.
func (b *Bus) Write(addr uint64, data []byte) bool {
	h, off, ok := b.find(addr, len(data))
	if !ok {
		b.logUnclaimed("write", addr, len(data))
		return false
	}
	h.Write(off, data)
	return true
}

func (b *Bus) logUnclaimed(op string, addr uint64, n int) {
	b.unclaimedMu.Lock()
	_, seen := b.unclaimed[addr]
	if !seen && len(b.unclaimed) < maxUnclaimedLogged {
		b.unclaimed[addr] = struct{}{}
	}
	b.unclaimedMu.Unlock()
	if !seen {
		b.log.Debug("unclaimed guest access (logged once per address)", "bus", b.name, "op", op, "addr", fmt.Sprintf("%#x", addr), "size", n)
	}
}
