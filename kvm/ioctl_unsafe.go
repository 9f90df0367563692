package kvm

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// This file holds every raw ioctl and every pointer conversion of the
// package. Callers get the kernel's return value and a bare errno (no
// allocation on the success path); they wrap the errno with ioctlErr.
//
// A signal (the Go runtime's preemption signal, a kick) can interrupt any
// KVM ioctl; KVM then returns EINTR, for example from KVM_CREATE_VM. Every
// ioctl but KVM_RUN is retried: an interrupted KVM_RUN is how a vCPU is
// kicked out of the guest, so VCPU.Run reports it instead.

// ioctlVal issues an ioctl whose argument is a plain integer.
func ioctlVal(fd int, req, arg uintptr) (uintptr, unix.Errno) {
	for {
		r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
		if e != unix.EINTR || req == kvmRun {
			return r, e
		}
	}
}

// ioctlPtr issues an ioctl whose argument points to *p. T must be a type
// whose Go layout equals the kernel structure (see layout_unsafe_test.go).
func ioctlPtr[T any](fd int, req uintptr, p *T) (uintptr, unix.Errno) {
	for {
		r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(p)))
		if e != unix.EINTR {
			return r, e
		}
	}
}

// ioctlBuf issues an ioctl whose argument is a byte buffer the caller
// encoded with encoding/binary (variable-length structures). The kernel
// copies it with copy_from_user/copy_to_user, so alignment does not matter.
func ioctlBuf(fd int, req uintptr, b []byte) (uintptr, unix.Errno) {
	if len(b) == 0 {
		return 0, unix.EINVAL
	}
	for {
		r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(&b[0])))
		if e != unix.EINTR {
			return r, e
		}
	}
}

// hostAddr returns the host virtual address of b[0], or 0 for an empty b.
// The caller must keep the memory mapped for as long as the kernel uses the
// address.
func hostAddr(b []byte) uintptr {
	if len(b) == 0 {
		return 0
	}
	return uintptr(unsafe.Pointer(&b[0]))
}
