package nettest

import (
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/govmd/govmd/devices/net/tap"
)

// FakeBackend is an in-memory virtio-net backend (devices/net.Backend) for
// tests that need no kernel: frames the device writes are recorded, frames
// given to Inject are read by the device, with the tap's semantics
// (blocking reads stopped by CancelRead, truncation of frames longer than the
// buffers). It is safe for concurrent use.
type FakeBackend struct {
	mu        sync.Mutex
	supported uint32
	offload   uint32
	hdrSize   int
	written   [][]byte
	rx        [][]byte
	avail     chan struct{}
	cancel    chan struct{}
	canceled  bool
	writeErr  error
	offloads  []uint32 // history of SetOffload
}

// NewFakeBackend returns a backend that accepts the given Offload* flags.
func NewFakeBackend(supported uint32) *FakeBackend {
	return &FakeBackend{supported: supported, hdrSize: 12, avail: make(chan struct{}, 1), cancel: make(chan struct{})}
}

// AllOffloads are all the offload flags a current Linux tap accepts.
const AllOffloads = tap.OffloadCSUM | tap.OffloadTSO4 | tap.OffloadTSO6 | tap.OffloadTSOECN | tap.OffloadUFO | tap.OffloadUSO4 | tap.OffloadUSO6

// Inject queues a frame (virtio header included) for the device to read.
func (f *FakeBackend) Inject(frame []byte) {
	f.mu.Lock()
	f.rx = append(f.rx, append([]byte(nil), frame...))
	f.mu.Unlock()
	select {
	case f.avail <- struct{}{}:
	default:
	}
}

// Written returns the frames the device wrote so far (header included) and
// forgets them.
func (f *FakeBackend) Written() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.written
	f.written = nil
	return w
}

// Offload returns the flags last set; Offloads the history.
func (f *FakeBackend) Offload() uint32 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.offload
}

// Offloads returns every SetOffload value so far.
func (f *FakeBackend) Offloads() []uint32 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]uint32(nil), f.offloads...)
}

// HdrSize returns the header size last set.
func (f *FakeBackend) HdrSize() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hdrSize
}

// SetWriteError makes writes fail with err (nil: succeed).
func (f *FakeBackend) SetWriteError(err error) {
	f.mu.Lock()
	f.writeErr = err
	f.mu.Unlock()
}

// ReadV implements devices/net.Backend.
func (f *FakeBackend) ReadV(iovs [][]byte, wait bool) (int, error) {
	for {
		f.mu.Lock()
		if f.canceled {
			f.mu.Unlock()
			return 0, os.ErrDeadlineExceeded
		}
		if len(f.rx) > 0 {
			fr := f.rx[0]
			f.rx = f.rx[1:]
			f.mu.Unlock()
			n := 0
			for _, b := range iovs {
				n += copy(b, fr[n:])
			}
			return n, nil
		}
		c := f.cancel
		f.mu.Unlock()
		if !wait {
			return 0, unix.EAGAIN
		}
		select {
		case <-f.avail:
		case <-c:
		}
	}
}

// WriteV implements devices/net.Backend.
func (f *FakeBackend) WriteV(iovs [][]byte) (int, error) {
	var b []byte
	for _, v := range iovs {
		b = append(b, v...)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.writeErr != nil {
		return 0, f.writeErr
	}
	f.written = append(f.written, b)
	return len(b), nil
}

// SetVnetHdrSize implements devices/net.Backend.
func (f *FakeBackend) SetVnetHdrSize(n int) error {
	if n != 10 && n != 12 {
		return unix.EINVAL
	}
	f.mu.Lock()
	f.hdrSize = n
	f.mu.Unlock()
	return nil
}

// SetOffload implements devices/net.Backend, refusing flags it does not
// support like the kernel.
func (f *FakeBackend) SetOffload(flags uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if flags&^f.supported != 0 || (flags != 0 && flags&tap.OffloadCSUM == 0) {
		return unix.EINVAL
	}
	f.offload = flags
	f.offloads = append(f.offloads, flags)
	return nil
}

// SupportedOffloads implements devices/net.Backend.
func (f *FakeBackend) SupportedOffloads() uint32 { return f.supported }

// CancelRead implements devices/net.Backend.
func (f *FakeBackend) CancelRead() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.canceled {
		f.canceled = true
		close(f.cancel)
	}
}

// ResumeRead implements devices/net.Backend.
func (f *FakeBackend) ResumeRead() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.canceled {
		f.canceled = false
		f.cancel = make(chan struct{})
	}
}
