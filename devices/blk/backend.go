package blk

import (
	"context"
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// backend is the storage under the device: the image file in production, a
// wrapper around it in tests (to observe ordering or inject errors). Offsets
// and lengths are in bytes and already checked against the capacity. Methods
// are called concurrently from the queue workers.
type backend interface {
	// preadv and pwritev transfer once, like the system calls (short
	// transfers are possible; the caller loops).
	preadv(iovs [][]byte, off int64) (int, error)
	pwritev(iovs [][]byte, off int64) (int, error)
	// sync makes completed writes stable (fdatasync).
	sync() error
	// punchHole deallocates a range; later reads return zeros.
	punchHole(off, n int64) error
	// zeroRange makes a range read as zeros without deallocating it.
	zeroRange(off, n int64) error
}

// fileBackend is an open image file.
type fileBackend struct {
	fd int
	f  *os.File // keeps fd open
}

func newFileBackend(f *os.File) *fileBackend {
	return &fileBackend{fd: int(f.Fd()), f: f}
}

func (b *fileBackend) preadv(iovs [][]byte, off int64) (int, error) {
	n, err := unix.Preadv(b.fd, iovs, off)
	if err != nil {
		return 0, os.NewSyscallError("preadv", err)
	}
	return n, nil
}

func (b *fileBackend) pwritev(iovs [][]byte, off int64) (int, error) {
	n, err := unix.Pwritev(b.fd, iovs, off)
	if err != nil {
		return 0, os.NewSyscallError("pwritev", err)
	}
	return n, nil
}

func (b *fileBackend) sync() error {
	for {
		err := unix.Fdatasync(b.fd)
		if err != unix.EINTR {
			return os.NewSyscallError("fdatasync", err)
		}
	}
}

func (b *fileBackend) punchHole(off, n int64) error {
	return b.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

func (b *fileBackend) zeroRange(off, n int64) error {
	return b.fallocate(unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

func (b *fileBackend) fallocate(mode uint32, off, n int64) error {
	for {
		err := unix.Fallocate(b.fd, mode, off, n)
		if err != unix.EINTR {
			return os.NewSyscallError("fallocate", err)
		}
	}
}

// iovMax is the kernel's limit on iovecs per preadv/pwritev (UIO_MAXIOV).
const iovMax = 1024

// errShortIO reports that the image ended before the requested range (the
// file shrank under the device).
var errShortIO = errors.New("image shorter than its capacity")

// readFull reads into iovs from off until they are full. It consumes iovs
// (the slice headers are advanced; the caller's scratch space).
func readFull(be backend, iovs [][]byte, off int64) (int, error) {
	return transferFull(be, false, iovs, off)
}

// writeFull writes iovs at off. It consumes iovs like readFull.
func writeFull(be backend, iovs [][]byte, off int64) (int, error) {
	return transferFull(be, true, iovs, off)
}

func transferFull(be backend, write bool, iovs [][]byte, off int64) (int, error) {
	total := 0
	for {
		for len(iovs) > 0 && len(iovs[0]) == 0 {
			iovs = iovs[1:]
		}
		if len(iovs) == 0 {
			return total, nil
		}
		batch := iovs[:min(len(iovs), iovMax)]
		var n int
		var err error
		if write {
			n, err = be.pwritev(batch, off)
		} else {
			n, err = be.preadv(batch, off)
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return total, err
		}
		if n <= 0 {
			return total, errShortIO
		}
		total += n
		off += int64(n)
		for n > 0 && len(iovs) > 0 {
			k := min(n, len(iovs[0]))
			iovs[0] = iovs[0][k:]
			n -= k
			if len(iovs[0]) == 0 {
				iovs = iovs[1:]
			}
		}
	}
}

// zeros is the source of the write-zeroes fallback. It is never written.
var zeros [64 << 10]byte

// discard deallocates a range if the file system can; otherwise it does
// nothing (discard is a hint).
func (d *Device) discard(off, n int64) error {
	if d.noPunch.Load() {
		return nil
	}
	err := d.be.punchHole(off, n)
	if errors.Is(err, unix.EOPNOTSUPP) {
		d.noPunch.Store(true)
		d.log.Info("file system cannot punch holes; discard is a no-op")
		return nil
	}
	return err
}

// writeZeroes makes a range read as zeros: by punching a hole if unmap is
// allowed, else with FALLOC_FL_ZERO_RANGE, else by writing zeros. A mode the
// file system refuses (EOPNOTSUPP) is not tried again.
func (d *Device) writeZeroes(ctx context.Context, off, n int64, unmap bool) error {
	if unmap && !d.noPunch.Load() {
		err := d.be.punchHole(off, n)
		if !errors.Is(err, unix.EOPNOTSUPP) {
			return err
		}
		d.noPunch.Store(true)
		d.log.Info("file system cannot punch holes; write-zeroes falls back")
	}
	if !d.noZeroRange.Load() {
		err := d.be.zeroRange(off, n)
		if !errors.Is(err, unix.EOPNOTSUPP) {
			return err
		}
		d.noZeroRange.Store(true)
		d.log.Info("file system cannot zero ranges; write-zeroes writes zeros")
	}
	var iovs [16][]byte
	for n > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		k := 0
		chunk := int64(0)
		for k < len(iovs) && chunk < n {
			l := min(int64(len(zeros)), n-chunk)
			iovs[k] = zeros[:l]
			chunk += l
			k++
		}
		if _, err := writeFull(d.be, iovs[:k], off); err != nil {
			return err
		}
		off += chunk
		n -= chunk
	}
	return nil
}
