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
	"os"
	"sort"

	"golang.org/x/sys/unix"
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
	// Offset is where the region starts in the Memory's File (NewShared).
	Offset uint64
}

// Memory is the guest's RAM: a sorted set of non-overlapping regions.
// It is safe for concurrent use: the region list never changes after New.
type Memory struct {
	regions []Region
	maps    [][]byte // mappings to unmap at Close
	file    *os.File // NewShared's memfd
}

// New maps private anonymous memory for each range (2 MiB aligned, with
// transparent huge pages where the host has them; see mapRAM). Ranges
// must not overlap and must be page aligned.
func New(ranges []Range) (*Memory, error) { return newMemory(ranges, false) }

// NewShared is New with the RAM in one memfd that other processes can map
// (vhost-user backends, to which File is sent): the ranges lie at 2 MiB
// aligned offsets in it, and it is sealed against growing and shrinking
// (a backend that maps it never sees it shrink under the mapping). Huge
// pages are asked for as with New; for shared memory the host grants them
// when /sys/kernel/mm/transparent_hugepage/shmem_enabled is "advise" or
// "always".
func NewShared(ranges []Range) (*Memory, error) { return newMemory(ranges, true) }

func newMemory(ranges []Range, shared bool) (*Memory, error) {
	rs := append([]Range(nil), ranges...)
	sort.Slice(rs, func(i, j int) bool { return rs[i].GPA < rs[j].GPA })
	m := &Memory{}
	offsets := make([]uint64, len(rs))
	var fileSize uint64
	for i, r := range rs {
		if r.Size == 0 || r.GPA%pageSize != 0 || r.Size%pageSize != 0 {
			return nil, fmt.Errorf("memory: range %#x+%#x is empty or not page aligned", r.GPA, r.Size)
		}
		if r.GPA+r.Size < r.GPA {
			return nil, fmt.Errorf("memory: range %#x+%#x wraps", r.GPA, r.Size)
		}
		if i > 0 && rs[i-1].End() > r.GPA {
			return nil, fmt.Errorf("memory: ranges %#x and %#x overlap", rs[i-1].GPA, r.GPA)
		}
		offsets[i] = fileSize
		fileSize += (r.Size + hugePageSize - 1) &^ (hugePageSize - 1)
	}
	if shared {
		f, err := newMemfd(fileSize)
		if err != nil {
			return nil, err
		}
		m.file = f
	}
	for i, r := range rs {
		var b []byte
		var err error
		if shared {
			b, err = mapRAMFile(int(m.file.Fd()), offsets[i], r.Size)
		} else {
			b, err = mapRAM(r.Size)
		}
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("memory: mmap %d bytes: %w", r.Size, err)
		}
		m.maps = append(m.maps, b)
		m.regions = append(m.regions, Region{GPA: r.GPA, Host: b, Offset: offsets[i]})
	}
	return m, nil
}

// newMemfd creates a memfd of size bytes sealed against any size change.
func newMemfd(size uint64) (*os.File, error) {
	fd, err := unix.MemfdCreate("govmd-ram", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memory: %w", os.NewSyscallError("memfd_create", err))
	}
	f := os.NewFile(uintptr(fd), "govmd-ram")
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		f.Close()
		return nil, fmt.Errorf("memory: %w", os.NewSyscallError("ftruncate", err))
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		f.Close()
		return nil, fmt.Errorf("memory: sealing: %w", os.NewSyscallError("fcntl", err))
	}
	return f, nil
}

// File returns the memfd holding the RAM of a NewShared Memory (nil
// otherwise); each region's Offset says where in it the region lies. It
// stays open until Close.
func (m *Memory) File() *os.File { return m.file }

// FileRange is a piece of guest RAM in another process's file (a
// vhost-user frontend's memory table entry).
type FileRange struct {
	GPA, Size uint64
	// FD is the file, Offset where the range starts in it. MapFiles does
	// not take FD over: the caller closes it (the mapping survives).
	FD     int
	Offset uint64
}

// MapFiles maps ranges of other processes' files shared as guest memory
// (a vhost-user backend's view of its frontend's RAM). Each file must be
// a regular file sealed against shrinking (F_SEAL_SHRINK, as memfds from
// NewShared and QEMU's memory-backend-memfd are) and hold the whole
// range: otherwise a truncation, or a range past the end of the file,
// would make accesses fault (SIGBUS) instead of failing. The ranges must
// not overlap.
func MapFiles(ranges []FileRange) (*Memory, error) {
	rs := append([]FileRange(nil), ranges...)
	sort.Slice(rs, func(i, j int) bool { return rs[i].GPA < rs[j].GPA })
	m := &Memory{}
	for i, r := range rs {
		if r.Size == 0 || r.GPA+r.Size < r.GPA || r.Offset+r.Size < r.Offset {
			m.Close()
			return nil, fmt.Errorf("memory: file range %#x+%#x at offset %#x is empty or wraps", r.GPA, r.Size, r.Offset)
		}
		if i > 0 && rs[i-1].GPA+rs[i-1].Size > r.GPA {
			m.Close()
			return nil, fmt.Errorf("memory: file ranges %#x and %#x overlap", rs[i-1].GPA, r.GPA)
		}
		if err := checkFile(r.FD, r.Offset+r.Size); err != nil {
			m.Close()
			return nil, fmt.Errorf("memory: range %#x+%#x: %w", r.GPA, r.Size, err)
		}
		full, b, err := mapFile(r.FD, r.Offset, r.Size)
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("memory: mmap %d bytes: %w", r.Size, err)
		}
		m.maps = append(m.maps, full)
		m.regions = append(m.regions, Region{GPA: r.GPA, Host: b})
	}
	return m, nil
}

// checkFile checks that fd is a regular file of at least size bytes that
// cannot shrink.
func checkFile(fd int, size uint64) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return os.NewSyscallError("fstat", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("file descriptor %d is not a regular file (mode %#o)", fd, st.Mode)
	}
	if st.Size < 0 || uint64(st.Size) < size {
		return fmt.Errorf("file of %d bytes is shorter than %d", st.Size, size)
	}
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil || seals&unix.F_SEAL_SHRINK == 0 {
		return fmt.Errorf("file is not sealed against shrinking (F_SEAL_SHRINK)")
	}
	return nil
}

// FromBytes wraps host byte slices as guest memory without mapping
// anything (tests and fuzzing).
func FromBytes(regions ...Region) *Memory {
	rs := append([]Region(nil), regions...)
	sort.Slice(rs, func(i, j int) bool { return rs[i].GPA < rs[j].GPA })
	return &Memory{regions: rs}
}

const pageSize = 4096

// Close unmaps what New, NewShared or MapFiles mapped and closes
// NewShared's file.
func (m *Memory) Close() error {
	var errs []error
	for _, b := range m.maps {
		if err := unmapRAM(b); err != nil {
			errs = append(errs, fmt.Errorf("memory: munmap: %w", err))
		}
	}
	m.maps = nil
	if m.file != nil {
		if err := m.file.Close(); err != nil {
			errs = append(errs, fmt.Errorf("memory: %w", err))
		}
		m.file = nil
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
