// Package eventfd wraps Linux eventfds as pollable files: KVM signals queue
// notifications into them (ioeventfd) and reads interrupts out of them
// (irqfd), and device goroutines wait on them through Go's netpoller, so a
// blocked wait costs no OS thread.
package eventfd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// EventFD is a non-blocking eventfd registered with the netpoller. Write and
// Wait may be called from different goroutines concurrently.
type EventFD struct {
	f  *os.File
	fd int
}

// New creates an eventfd with a zero counter.
func New() (*EventFD, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, os.NewSyscallError("eventfd", err)
	}
	return &EventFD{f: os.NewFile(uintptr(fd), "eventfd"), fd: fd}, nil
}

// Check checks that fd, received from another process (a vhost-user
// peer's kick, call or error notifier), is an eventfd, and makes it
// close-on-exec and non-blocking, so that signalling it never blocks even
// if the peer lets its counter fill up.
func Check(fd int) error {
	link, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return fmt.Errorf("eventfd: file descriptor %d: %w", fd, err)
	}
	if link != "anon_inode:[eventfd]" {
		return fmt.Errorf("eventfd: file descriptor %d is %q, not an eventfd", fd, link)
	}
	unix.CloseOnExec(fd)
	if err := unix.SetNonblock(fd, true); err != nil {
		return os.NewSyscallError("fcntl", err)
	}
	return nil
}

// FromFD takes over fd, an eventfd received from another process (see
// Check). On error fd is closed.
func FromFD(fd int) (*EventFD, error) {
	if err := Check(fd); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &EventFD{f: os.NewFile(uintptr(fd), "eventfd"), fd: fd}, nil
}

// Signal adds one to the counter of the eventfd fd (non-blocking, as Check
// leaves it) without taking it over.
func Signal(fd int) error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], 1)
	if _, err := unix.Write(fd, b[:]); err != nil {
		return os.NewSyscallError("write", err)
	}
	return nil
}

// FD returns the file descriptor, for registration with KVM. It stays valid
// until Close.
func (e *EventFD) FD() int { return e.fd }

// Write adds one to the counter, waking a waiter.
func (e *EventFD) Write() error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], 1)
	_, err := e.f.Write(b[:])
	if err != nil {
		return fmt.Errorf("eventfd write: %w", err)
	}
	return nil
}

// ErrCanceled is returned by Wait after Cancel.
var ErrCanceled = errors.New("eventfd: wait canceled")

// Wait blocks until the counter is non-zero, resets it and returns the count.
// It returns ErrCanceled once Cancel was called.
func (e *EventFD) Wait() (uint64, error) {
	var b [8]byte
	_, err := e.f.Read(b[:])
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return 0, ErrCanceled
		}
		return 0, fmt.Errorf("eventfd read: %w", err)
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

// TryRead resets the counter without blocking and reports whether it was
// non-zero.
func (e *EventFD) TryRead() bool {
	var b [8]byte
	n, err := unix.Read(e.fd, b[:])
	return err == nil && n == 8
}

// Cancel makes current and future Waits return ErrCanceled until Resume.
func (e *EventFD) Cancel() { _ = e.f.SetReadDeadline(time.Unix(1, 0)) }

// Resume undoes Cancel.
func (e *EventFD) Resume() { _ = e.f.SetReadDeadline(time.Time{}) }

// Close closes the eventfd.
func (e *EventFD) Close() error { return e.f.Close() }
