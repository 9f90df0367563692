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
	b := unsafe.Slice((*byte)(ram), size)
	_ = unix.Madvise(b, unix.MADV_HUGEPAGE)
	return b, nil
}

// unmapRAM unmaps what mapRAM mapped. (unix.Munmap only takes mappings
// made by unix.Mmap.)
func unmapRAM(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	return unix.MunmapPtr(unsafe.Pointer(&b[0]), uintptr(len(b)))
}
