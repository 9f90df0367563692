// Package memory is guest physical memory: anonymous host mappings placed at
// guest physical addresses, and one accessor that bounds-checks every
// (address, length) pair a guest or a loader asks for.
//
// Every method returns an error for an address range that is not entirely
// inside one region; none of them panics on a guest-supplied value. Guest
// memory is shared with the guest (and with device goroutines) while the VM
// runs, so readers must treat its contents as changing under them: copy a
// value out once, check it, then use the copy.
package memory

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
)

// ErrRange is returned (wrapped) for an access outside guest memory, or one
// that straddles two regions.
var ErrRange = errors.New("guest address range not in guest memory")

// Range is a span of guest physical address space.
type Range struct {
	GPA  uint64
	Size uint64
}

// End returns the first address after r.
func (r Range) End() uint64 { return r.GPA + r.Size }

// Region is one contiguous piece of guest RAM and its host mapping.
type Region struct {
	GPA  uint64
	Host []byte
}

// Memory is the guest's RAM: a sorted set of non-overlapping regions.
// It is safe for concurrent use: the region list never changes after New.
type Memory struct {
	regions []Region
	mapped  bool
}

// New maps private anonymous memory for each range (2 MiB aligned, with
// transparent huge pages where the host has them; see mapRAM). Ranges
// must not overlap and must be page aligned.
func New(ranges []Range) (*Memory, error) {
	rs := append([]Range(nil), ranges...)
	sort.Slice(rs, func(i, j int) bool { return rs[i].GPA < rs[j].GPA })
	m := &Memory{mapped: true}
	for i, r := range rs {
		if r.Size == 0 || r.GPA%pageSize != 0 || r.Size%pageSize != 0 {
			m.Close()
			return nil, fmt.Errorf("memory: range %#x+%#x is empty or not page aligned", r.GPA, r.Size)
		}
		if r.GPA+r.Size < r.GPA {
			m.Close()
			return nil, fmt.Errorf("memory: range %#x+%#x wraps", r.GPA, r.Size)
		}
		if i > 0 && rs[i-1].End() > r.GPA {
			m.Close()
			return nil, fmt.Errorf("memory: ranges %#x and %#x overlap", rs[i-1].GPA, r.GPA)
		}
		b, err := mapRAM(r.Size)
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("memory: mmap %d bytes: %w", r.Size, err)
		}
		m.regions = append(m.regions, Region{GPA: r.GPA, Host: b})
	}
	return m, nil
}

// FromBytes wraps host byte slices as guest memory without mapping anything.
// It is meant for tests and fuzzing.
func FromBytes(regions ...Region) *Memory {
	rs := append([]Region(nil), regions...)
	sort.Slice(rs, func(i, j int) bool { return rs[i].GPA < rs[j].GPA })
	return &Memory{regions: rs}
}

const pageSize = 4096

// Close unmaps the regions that New mapped.
func (m *Memory) Close() error {
	var errs []error
	if m.mapped {
		for _, r := range m.regions {
			if err := unmapRAM(r.Host); err != nil {
				errs = append(errs, fmt.Errorf("memory: munmap: %w", err))
			}
		}
	}
	m.regions = nil
	return errors.Join(errs...)
}

// Regions returns the regions, sorted by guest address. The caller must not
// change the slice.
func (m *Memory) Regions() []Region { return m.regions }

// Size returns the total number of bytes of RAM.
func (m *Memory) Size() uint64 {
	var n uint64
	for _, r := range m.regions {
		n += uint64(len(r.Host))
	}
	return n
}

// Slice returns the host bytes backing [gpa, gpa+n). The range must lie
// entirely inside one region. n may be zero (the address must still be
// inside a region, or exactly at its end).
func (m *Memory) Slice(gpa, n uint64) ([]byte, error) {
	// Binary search for the last region starting at or below gpa (by hand:
	// sort.Search's closure is not inlined, and this is on every data
	// path's per-buffer path).
	rs := m.regions
	lo, hi := 0, len(rs)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if rs[mid].GPA > gpa {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	i := lo - 1
	if i < 0 {
		return nil, fmt.Errorf("%w: %#x+%#x", ErrRange, gpa, n)
	}
	r := rs[i]
	off := gpa - r.GPA
	size := uint64(len(r.Host))
	if off > size || n > size-off {
		return nil, fmt.Errorf("%w: %#x+%#x", ErrRange, gpa, n)
	}
	return r.Host[off : off+n : off+n], nil
}

// Contains reports whether [gpa, gpa+n) is backed by one region.
func (m *Memory) Contains(gpa, n uint64) bool {
	_, err := m.Slice(gpa, n)
	return err == nil
}

// ReadAt copies len(p) bytes from guest address gpa into p.
func (m *Memory) ReadAt(p []byte, gpa uint64) error {
	b, err := m.Slice(gpa, uint64(len(p)))
	if err != nil {
		return err
	}
	copy(p, b)
	return nil
}

// WriteAt copies p to guest address gpa.
func (m *Memory) WriteAt(p []byte, gpa uint64) error {
	b, err := m.Slice(gpa, uint64(len(p)))
	if err != nil {
		return err
	}
	copy(b, p)
	return nil
}

// Uint16 reads a little-endian 16-bit value.
func (m *Memory) Uint16(gpa uint64) (uint16, error) {
	b, err := m.Slice(gpa, 2)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint16(b), nil
}

// Uint32 reads a little-endian 32-bit value.
func (m *Memory) Uint32(gpa uint64) (uint32, error) {
	b, err := m.Slice(gpa, 4)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b), nil
}

// Uint64 reads a little-endian 64-bit value.
func (m *Memory) Uint64(gpa uint64) (uint64, error) {
	b, err := m.Slice(gpa, 8)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b), nil
}

// PutUint16 writes a little-endian 16-bit value.
func (m *Memory) PutUint16(gpa uint64, v uint16) error {
	b, err := m.Slice(gpa, 2)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint16(b, v)
	return nil
}

// PutUint32 writes a little-endian 32-bit value.
func (m *Memory) PutUint32(gpa uint64, v uint32) error {
	b, err := m.Slice(gpa, 4)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint32(b, v)
	return nil
}

// PutUint64 writes a little-endian 64-bit value.
func (m *Memory) PutUint64(gpa uint64, v uint64) error {
	b, err := m.Slice(gpa, 8)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint64(b, v)
	return nil
}
