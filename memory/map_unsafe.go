package memory

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// hugePageSize is the size of an x86-64 transparent huge page.
const hugePageSize = 2 << 20

// mapRAM maps size bytes of private anonymous memory for guest RAM, its
// start aligned to hugePageSize, and asks for transparent huge pages
// (best effort: MADV_HUGEPAGE fails where THP is not built in). KVM maps
// guest memory with 2 MiB pages in EPT/NPT only where the host address is
// as aligned as the guest physical one, so the alignment is what lets a
// region's huge pages reach the guest.
func mapRAM(size uint64) ([]byte, error) {
	return mapAligned(size, -1, 0)
}

// mapRAMFile is mapRAM for size bytes of the file fd at offset off, shared.
func mapRAMFile(fd int, off, size uint64) ([]byte, error) {
	return mapAligned(size, fd, off)
}

// mapAligned maps size bytes at a hugePageSize-aligned address: anonymous
// private memory (fd -1) or the file fd from offset off, shared.
func mapAligned(size uint64, fd int, off uint64) ([]byte, error) {
	total := uintptr(size) + hugePageSize
	p, err := unix.MmapPtr(-1, 0, nil, total, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, err
	}
	start := uintptr(p)
	aligned := (start + hugePageSize - 1) &^ (hugePageSize - 1)
	head := aligned - start
	tail := total - head - uintptr(size)
	if head > 0 {
		if err := unix.MunmapPtr(p, head); err != nil {
			_ = unix.MunmapPtr(p, total)
			return nil, err
		}
	}
	ram := unsafe.Add(p, head)
	if tail > 0 {
		if err := unix.MunmapPtr(unsafe.Add(ram, uintptr(size)), tail); err != nil {
			_ = unix.MunmapPtr(ram, uintptr(size)+tail)
			return nil, err
		}
	}
	if fd >= 0 {
		// Replace the reservation by the file, at the same address.
		q, err := unix.MmapPtr(fd, int64(off), ram, uintptr(size), unix.PROT_READ|unix.PROT_WRITE,
			unix.MAP_SHARED|unix.MAP_FIXED|unix.MAP_NORESERVE)
		if err != nil {
			_ = unix.MunmapPtr(ram, uintptr(size))
			return nil, err
		}
		ram = q
	}
	b := unsafe.Slice((*byte)(ram), size)
	_ = unix.Madvise(b, unix.MADV_HUGEPAGE)
	return b, nil
}

// mapFile maps size bytes of the file fd from offset off, shared, for
// MapFiles: full is the whole mapping (from off rounded down to a page),
// b the requested bytes in it.
func mapFile(fd int, off, size uint64) (full, b []byte, err error) {
	delta := off % pageSize
	n := uintptr(size + delta)
	p, err := unix.MmapPtr(fd, int64(off-delta), nil, n, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_SHARED|unix.MAP_NORESERVE)
	if err != nil {
		return nil, nil, err
	}
	full = unsafe.Slice((*byte)(p), n)
	return full, full[delta:], nil
}

// unmapRAM unmaps what mapRAM mapped. (unix.Munmap only takes mappings
// made by unix.Mmap.)
func unmapRAM(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	return unix.MunmapPtr(unsafe.Pointer(&b[0]), uintptr(len(b)))
}

// HostAddr returns the address of the region's mapping in this process
// (what a vhost-user memory table calls the user address).
func (r Region) HostAddr() uint64 {
	if len(r.Host) == 0 {
		return 0
	}
	return uint64(uintptr(unsafe.Pointer(&r.Host[0])))
}
