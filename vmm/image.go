package vmm

import (
	"runtime/debug"

	"golang.org/x/sys/unix"
)

// mapImage maps a user's kernel file read-only (what names it in errors),
// after the checks of openImage. Mapped, only the pages the loader reads
// (the ELF headers and loadable segments of a vmlinux, ~10 of its 17 MB)
// are touched, and they are copied once, from the page cache into guest
// RAM; reading the file would copy it all into the heap first. release
// unmaps it. The file may shrink while mapped: use the bytes only inside
// guardFaults.
func mapImage(path, what string, limit int64) (b []byte, release func(), err error) {
	f, size, err := openImage(path, what, limit)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	if size == 0 {
		return nil, func() {}, nil
	}
	b, err = unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_PRIVATE)
	if err != nil {
		// A file system without mmap: read it.
		b, err := readImage(path, what, limit)
		return b, func() {}, err
	}
	return b, func() { _ = unix.Munmap(b) }, nil
}

// guardFaults runs f, turning a memory fault in it (a mapped file that
// was truncated meanwhile: SIGBUS) into an error naming the file.
func guardFaults(what, path string, f func() error) (err error) {
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		if r := recover(); r != nil {
			fault, ok := r.(interface{ Addr() uintptr })
			if !ok {
				panic(r)
			}
			err = configErr("%s %s changed while being read (fault at %#x)", what, path, fault.Addr())
		}
	}()
	return f()
}
