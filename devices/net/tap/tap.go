// Package tap opens Linux tap interfaces as virtio-net backends.
//
// A Tap is opened with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR, so every frame read
// from or written to it is preceded by a virtio_net_hdr: the kernel produces
// and consumes the same header a virtio-net driver does, and a device model
// can pass it through without translation. TUNSETOFFLOAD (SetOffload) tells
// the kernel which checksum and segmentation offloads the reader of the tap
// (the guest, through the device) can receive; TUNSETVNETHDRSZ
// (SetVnetHdrSize) sets the header length.
//
// The file descriptor is non-blocking and registered with Go's netpoller:
// a ReadV waiting for a frame parks its goroutine, not an OS thread, and
// Cancel stops it. ReadV and WriteV reuse their iovec arrays and allocate
// nothing per frame.
package tap

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Offload flags for SetOffload (TUN_F_* in linux/if_tun.h). They describe
// what the reader of the tap can receive. Everything is nested under
// OffloadCSUM: the kernel refuses segmentation flags without it (EINVAL),
// TSO_ECN needs TSO4 or TSO6, and USO4 and USO6 only work together.
const (
	OffloadCSUM   uint32 = 0x01 // TUN_F_CSUM: partial checksums (NEEDS_CSUM)
	OffloadTSO4   uint32 = 0x02 // TUN_F_TSO4
	OffloadTSO6   uint32 = 0x04 // TUN_F_TSO6
	OffloadTSOECN uint32 = 0x08 // TUN_F_TSO_ECN
	OffloadUFO    uint32 = 0x10 // TUN_F_UFO
	OffloadUSO4   uint32 = 0x20 // TUN_F_USO4
	OffloadUSO6   uint32 = 0x40 // TUN_F_USO6
)

// MaxIovecs is the largest number of buffers one ReadV or WriteV accepts
// (the kernel's UIO_MAXIOV).
const MaxIovecs = 1024

const tunDevice = "/dev/net/tun"

// Tap is an open tap interface.
//
// Lifecycle: Open, then any number of ReadV/WriteV calls, then Close.
// ReadV must not be called concurrently with another ReadV, nor WriteV with
// another WriteV; one ReadV and one WriteV may run concurrently (an RX and a
// TX goroutine). The control methods (SetOffload, SetVnetHdrSize,
// CancelRead, ResumeRead) are safe for concurrent use with everything but
// Close.
type Tap struct {
	name      string
	existed   bool
	f         *os.File
	rc        syscall.RawConn
	supported uint32

	rd ioState // owned by the ReadV caller
	wr ioState // owned by the WriteV caller

	closeOnce sync.Once
	closeErr  error
}

// ioState is the per-direction state of the raw-connection callbacks. It is
// kept in the Tap so that the callbacks are created once and a ReadV or
// WriteV allocates nothing.
type ioState struct {
	iov  []unix.Iovec
	n    int
	err  error
	wait bool
	fn   func(fd uintptr) bool
}

// Open attaches to the tap interface name, creating it if it does not exist
// (name "" lets the kernel choose one, see Name). A tap created here is
// not persistent: it disappears when the Tap is closed. An existing
// persistent tap is used as it is and stays after Close (Existed reports
// which case applies). Every error names the tap and keeps the errno.
func Open(name string) (*Tap, error) {
	label := name
	if label == "" {
		label = "(new)"
	}
	if len(name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("tap %s: name longer than %d bytes: %w", label, unix.IFNAMSIZ-1, unix.EINVAL)
	}
	fd, err := unix.Open(tunDevice, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, openError(label, "open "+tunDevice, err)
	}
	ok := false
	defer func() {
		if !ok {
			unix.Close(fd)
		}
	}()
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return nil, openError(label, "TUNSETIFF", err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return nil, openError(label, "TUNSETIFF", err)
	}
	ok = true // attach owns fd
	return attach(fd, label)
}

// FromFD takes over fd, a tap descriptor opened by another process (govmd
// run hands its sandboxed net-device process the tap this way). It checks
// that fd is a single-queue tap with virtio headers and puts it into the
// state Open leaves a tap in. On error fd is closed.
func FromFD(fd int) (*Tap, error) {
	label := fmt.Sprintf("(descriptor %d)", fd)
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %s: %w", label, os.NewSyscallError("fcntl", err))
	}
	unix.CloseOnExec(fd)
	return attach(fd, label)
}

// attach checks the tap attached to fd and prepares it for use; it owns
// fd (closed on error).
func attach(fd int, label string) (*Tap, error) {
	owned := false
	defer func() {
		if !owned {
			unix.Close(fd)
		}
	}()
	got, err := unix.NewIfreq("")
	if err != nil {
		return nil, openError(label, "TUNGETIFF", err)
	}
	if err := unix.IoctlIfreq(fd, unix.TUNGETIFF, got); err != nil {
		return nil, openError(label, "TUNGETIFF", err)
	}
	flags := got.Uint16()
	const want = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR
	if flags&want != want {
		return nil, fmt.Errorf("tap %s: interface flags %#x lack IFF_TAP|IFF_NO_PI|IFF_VNET_HDR", label, flags)
	}
	t := &Tap{name: got.Name(), existed: flags&unix.IFF_PERSIST != 0}
	// A persistent tap keeps the header size and offloads of its previous
	// user: start from a known state.
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, 12); err != nil {
		return nil, fmt.Errorf("tap %s: TUNSETVNETHDRSZ: %w", t.name, err)
	}
	t.supported = probeOffloads(fd)
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, 0); err != nil {
		return nil, fmt.Errorf("tap %s: TUNSETOFFLOAD 0: %w", t.name, err)
	}
	// The descriptor is non-blocking, so os.NewFile registers it with the
	// netpoller; from here on the file owns fd.
	t.f = os.NewFile(uintptr(fd), tunDevice+":"+t.name)
	owned = true
	if err := t.f.SetReadDeadline(time.Time{}); err != nil {
		t.f.Close()
		return nil, fmt.Errorf("tap %s: descriptor is not pollable: %w", t.name, err)
	}
	if t.rc, err = t.f.SyscallConn(); err != nil {
		t.f.Close()
		return nil, fmt.Errorf("tap %s: %w", t.name, err)
	}
	t.rd.iov = make([]unix.Iovec, 0, 64)
	t.wr.iov = make([]unix.Iovec, 0, 64)
	t.rd.fn = t.readFn
	t.wr.fn = t.writeFn
	return t, nil
}

// openError turns a failure to open or attach the tap into one line that
// says what to do about it, keeping the errno.
func openError(name, op string, err error) error {
	var hint string
	switch {
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		hint = "permission denied: creating or attaching a tap needs root or CAP_NET_ADMIN (or a persistent tap owned by this user)"
	case errors.Is(err, unix.EBUSY):
		hint = "in use by another process"
	case errors.Is(err, unix.EINVAL) && op == "TUNSETIFF":
		hint = "an interface of that name exists but is not a single-queue tap (a tun, a multi-queue tap, or another kind of interface)"
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENODEV), errors.Is(err, unix.ENXIO):
		hint = tunDevice + " is missing (is the tun module loaded?)"
	case errors.Is(err, unix.EMFILE), errors.Is(err, unix.ENFILE):
		hint = "too many open files"
	default:
		hint = op + " failed"
	}
	return fmt.Errorf("tap %s: %s: %w", name, hint, err)
}

// probeOffloads returns the TUN_F_* flags the kernel accepts, trying each
// group the way a device would set it (everything under CSUM). The tap's
// offloads are left in an unspecified state; the caller resets them.
func probeOffloads(fd int) uint32 {
	groups := []uint32{
		OffloadCSUM,
		OffloadCSUM | OffloadTSO4,
		OffloadCSUM | OffloadTSO6,
		OffloadCSUM | OffloadTSO4 | OffloadTSO6 | OffloadTSOECN,
		OffloadCSUM | OffloadUFO,
		OffloadCSUM | OffloadUSO4 | OffloadUSO6, // USO needs both
	}
	var ok uint32
	for _, g := range groups {
		if unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, int(g)) == nil {
			ok |= g
		}
	}
	return ok
}

// Name returns the interface name.
func (t *Tap) Name() string { return t.name }

// Existed reports whether the tap was a persistent interface that existed
// before Open. Such a tap survives Close; one created by Open does not.
func (t *Tap) Existed() bool { return t.existed }

// SupportedOffloads returns the Offload* flags the kernel accepted when the
// tap was opened.
func (t *Tap) SupportedOffloads() uint32 { return t.supported }

// SetOffload sets the offloads the reader can receive (TUNSETOFFLOAD).
func (t *Tap) SetOffload(flags uint32) error {
	return t.control("TUNSETOFFLOAD", func(fd int) error {
		return unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, int(flags))
	})
}

// SetVnetHdrSize sets the length of the header preceding each frame:
// 10 (struct virtio_net_hdr) or 12 (with num_buffers, as virtio 1.x and
// mergeable receive buffers use).
func (t *Tap) SetVnetHdrSize(n int) error {
	return t.control("TUNSETVNETHDRSZ", func(fd int) error {
		return unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, n)
	})
}

func (t *Tap) control(op string, f func(fd int) error) error {
	var err error
	if cerr := t.rc.Control(func(fd uintptr) { err = f(int(fd)) }); cerr != nil {
		return fmt.Errorf("tap %s: %s: %w", t.name, op, cerr)
	}
	if err != nil {
		return fmt.Errorf("tap %s: %s: %w", t.name, op, os.NewSyscallError("ioctl", err))
	}
	return nil
}

// errAgain is returned, unwrapped, by a ReadV that does not wait when no
// frame is queued, so that this common case allocates nothing.
var errAgain error = unix.EAGAIN

// ErrTooManyBuffers is returned when a ReadV or WriteV is given more than
// MaxIovecs non-empty buffers.
var ErrTooManyBuffers = errors.New("tap: more than 1024 buffers")

// ReadV reads one frame, preceded by its virtio_net_hdr, into iovs. If no
// frame is queued it returns an error matching unix.EAGAIN when wait is
// false; when wait is true it parks the goroutine until a frame arrives or
// CancelRead is called (the error then matches os.ErrDeadlineExceeded). A frame
// longer than the buffers is truncated by the kernel: callers that must
// detect truncation pass one spare byte more than they accept.
func (t *Tap) ReadV(iovs [][]byte, wait bool) (int, error) {
	s := &t.rd
	if err := s.load(iovs); err != nil {
		return 0, err
	}
	s.wait = wait
	err := t.rc.Read(s.fn)
	clear(s.iov) // do not keep buffers reachable
	if err != nil {
		return 0, err
	}
	return s.n, s.err
}

// WriteV writes one frame, preceded by its virtio_net_hdr, gathered from
// iovs. The kernel checks the header and returns EINVAL for one it refuses.
// WriteV never waits: if the kernel cannot take the frame now (EAGAIN, which
// a tap does not normally return) the error says so and the frame is the
// caller's to drop, like a full transmit queue.
func (t *Tap) WriteV(iovs [][]byte) (int, error) {
	s := &t.wr
	if err := s.load(iovs); err != nil {
		return 0, err
	}
	err := t.rc.Write(s.fn)
	clear(s.iov)
	if err != nil {
		return 0, err
	}
	return s.n, s.err
}

func (s *ioState) load(iovs [][]byte) error {
	s.iov = s.iov[:0]
	for _, b := range iovs {
		if len(b) == 0 {
			continue
		}
		if len(s.iov) == MaxIovecs {
			clear(s.iov)
			return ErrTooManyBuffers
		}
		s.iov = append(s.iov, unix.Iovec{Base: &b[0], Len: uint64(len(b))})
	}
	return nil
}

// readFn and writeFn run inside RawConn.Read/Write; returning false asks
// the netpoller to wait for readiness and call again.
func (t *Tap) readFn(fd uintptr) bool {
	s := &t.rd
	for {
		s.n, s.err = readv(int(fd), s.iov)
		if s.err != unix.EINTR {
			break
		}
	}
	if s.err == unix.EAGAIN {
		if s.wait {
			return false
		}
		s.n, s.err = 0, errAgain
		return true
	}
	if s.err != nil {
		s.err = os.NewSyscallError("readv", s.err)
	}
	return true
}

func (t *Tap) writeFn(fd uintptr) bool {
	s := &t.wr
	for {
		s.n, s.err = writev(int(fd), s.iov)
		if s.err != unix.EINTR {
			break
		}
	}
	if s.err != nil {
		s.err = os.NewSyscallError("writev", s.err)
	}
	return true
}

// Dup returns a new descriptor of the tap, for handing it to another
// process (FromFD). The tap stays open here too.
func (t *Tap) Dup() (*os.File, error) {
	var fd int
	var derr error
	if err := t.rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, fmt.Errorf("tap %s: %w", t.name, err)
	}
	if derr != nil {
		return nil, fmt.Errorf("tap %s: %w", t.name, os.NewSyscallError("fcntl", derr))
	}
	return os.NewFile(uintptr(fd), tunDevice+":"+t.name), nil
}

// CancelRead makes a blocked ReadV return at once, and every later ReadV
// too, with an error matching os.ErrDeadlineExceeded, until ResumeRead.
// WriteV is not affected.
func (t *Tap) CancelRead() { _ = t.f.SetReadDeadline(time.Unix(1, 0)) }

// ResumeRead undoes CancelRead.
func (t *Tap) ResumeRead() { _ = t.f.SetReadDeadline(time.Time{}) }

// Close closes the descriptor. A tap created by Open disappears; a
// persistent one stays. Close is idempotent.
func (t *Tap) Close() error {
	t.closeOnce.Do(func() {
		if err := t.f.Close(); err != nil {
			t.closeErr = fmt.Errorf("tap %s: %w", t.name, err)
		}
	})
	return t.closeErr
}
