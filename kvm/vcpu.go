package kvm

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// KickSignal is the signal Kick sends to a vCPU thread. Go catches it by
// default (no action), which is all a kick needs; it must not be passed to
// signal.Ignore.
const KickSignal = unix.SIGUSR1

// ErrClosed is returned by Kick and SetImmediateExit on a closed VCPU.
var ErrClosed = errors.New("kvm: vcpu closed")

// VCPU is a virtual CPU with its mapped kvm_run page.
//
// A VCPU belongs to the goroutine that runs it (locked to its OS thread,
// see the package documentation): Run, the register accessors and Close
// are called only from there. SetImmediateExit and Kick may be called from
// any goroutine at any time, including after Close.
type VCPU struct {
	f  *os.File
	fd int
	id int

	mu  sync.Mutex // guards run against unmapping while Kick writes it
	run []byte     // the mmap of the vCPU fd; nil after Close
}

// ID returns the vCPU id given to CreateVCPU.
func (v *VCPU) ID() int { return v.id }

// Close unmaps the run page and closes the vCPU fd. Exits returned by Run
// must not be used afterwards.
func (v *VCPU) Close() error {
	v.mu.Lock()
	run := v.run
	v.run = nil
	v.mu.Unlock()
	var err error
	if run != nil {
		if e := unix.Munmap(run); e != nil {
			err = fmt.Errorf("kvm: vcpu %d: %w", v.id, os.NewSyscallError("munmap kvm_run", e))
		}
	}
	return errors.Join(err, v.f.Close())
}

// Run enters the guest (KVM_RUN) and returns why it left. It does not
// retry: an interrupted KVM_RUN (EINTR, or EAGAIN) is reported as an Exit
// with Reason ExitIntr and a nil error, so that a kicked vCPU returns to its
// loop. Completing an ExitIO or ExitMMIO read means filling its Data before
// the next Run. Errors keep their errno (for example EFAULT or ENOEXEC for
// an invalid guest state).
func (v *VCPU) Run() (Exit, error) {
	_, e := ioctlVal(v.fd, kvmRun, 0)
	switch e {
	case 0:
		return exitFromRun(v.run), nil
	case unix.EINTR, unix.EAGAIN:
		return Exit{Reason: ExitIntr, run: v.run}, nil
	}
	return Exit{}, fmt.Errorf("kvm: vcpu %d: %w", v.id, ioctlErr(kvmRun, e))
}

// SetImmediateExit sets kvm_run.immediate_exit. While it is set, KVM_RUN
// completes any pending I/O and returns at once with ExitIntr instead of
// entering the guest.
func (v *VCPU) SetImmediateExit(on bool) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.run == nil {
		return ErrClosed
	}
	var b byte
	if on {
		b = 1
	}
	v.run[runImmediateExit] = b
	return nil
}

// ThreadID returns the OS thread ID of the caller, for Kick. The caller
// must be locked to its thread (runtime.LockOSThread) for the result to
// stay meaningful.
func ThreadID() int { return unix.Gettid() }

// Kick forces the vCPU out of the guest: it sets immediate_exit and sends
// KickSignal to thread tid of this process, the thread running the vCPU
// (from ThreadID). A KVM_RUN in progress, or the next one, then returns
// ExitIntr. See the package documentation for the loop that goes with it.
func (v *VCPU) Kick(tid int) error {
	if err := v.SetImmediateExit(true); err != nil {
		return err
	}
	if err := unix.Tgkill(unix.Getpid(), tid, KickSignal); err != nil {
		return fmt.Errorf("kvm: kick vcpu %d: %w", v.id, os.NewSyscallError("tgkill", err))
	}
	return nil
}

// RequestInterruptWindow sets kvm_run.request_interrupt_window: with a
// userspace irqchip, KVM then exits with ExitIRQWindowOpen as soon as the
// guest can take an interrupt.
func (v *VCPU) RequestInterruptWindow(on bool) {
	var b byte
	if on {
		b = 1
	}
	v.run[runRequestInterruptWindow] = b
}

// ReadyForInterruptInjection reports kvm_run.ready_for_interrupt_injection
// from the last exit.
func (v *VCPU) ReadyForInterruptInjection() bool { return v.run[runReadyForInjection] != 0 }

// get and set wrap the fixed-size register ioctls.
func get[T any](v *VCPU, req uintptr) (*T, error) {
	p := new(T)
	if _, e := ioctlPtr(v.fd, req, p); e != 0 {
		return nil, fmt.Errorf("kvm: vcpu %d: %w", v.id, ioctlErr(req, e))
	}
	return p, nil
}

func set[T any](v *VCPU, req uintptr, p *T) error {
	if _, e := ioctlPtr(v.fd, req, p); e != 0 {
		return fmt.Errorf("kvm: vcpu %d: %w", v.id, ioctlErr(req, e))
	}
	return nil
}

// GetRegs returns the general-purpose registers (KVM_GET_REGS).
func (v *VCPU) GetRegs() (*Regs, error) { return get[Regs](v, kvmGetRegs) }

// SetRegs sets the general-purpose registers (KVM_SET_REGS).
func (v *VCPU) SetRegs(r *Regs) error { return set(v, kvmSetRegs, r) }

// GetSregs returns the segment and control registers (KVM_GET_SREGS).
func (v *VCPU) GetSregs() (*Sregs, error) { return get[Sregs](v, kvmGetSregs) }

// SetSregs sets the segment and control registers (KVM_SET_SREGS).
func (v *VCPU) SetSregs(s *Sregs) error { return set(v, kvmSetSregs, s) }

// GetFPU returns the x87/SSE state (KVM_GET_FPU).
func (v *VCPU) GetFPU() (*FPU, error) { return get[FPU](v, kvmGetFPU) }

// SetFPU sets the x87/SSE state (KVM_SET_FPU), except MXCSR, which KVM
// ignores here (see SetXSave).
func (v *VCPU) SetFPU(f *FPU) error { return set(v, kvmSetFPU, f) }

// GetXSave returns the extended FPU state (KVM_GET_XSAVE; CapXSave).
func (v *VCPU) GetXSave() (*XSave, error) { return get[XSave](v, kvmGetXSave) }

// SetXSave sets the extended FPU state (KVM_SET_XSAVE), including MXCSR.
func (v *VCPU) SetXSave(x *XSave) error { return set(v, kvmSetXSave, x) }

// GetLAPIC returns the local APIC registers (KVM_GET_LAPIC); it needs the
// in-kernel irqchip.
func (v *VCPU) GetLAPIC() (*LAPICState, error) { return get[LAPICState](v, kvmGetLAPIC) }

// SetLAPIC sets the local APIC registers (KVM_SET_LAPIC).
func (v *VCPU) SetLAPIC(l *LAPICState) error { return set(v, kvmSetLAPIC, l) }

// GetVCPUEvents returns pending exceptions, interrupts and NMIs
// (KVM_GET_VCPU_EVENTS).
func (v *VCPU) GetVCPUEvents() (*VCPUEvents, error) { return get[VCPUEvents](v, kvmGetVCPUEvents) }

// SetVCPUEvents sets pending exceptions, interrupts and NMIs
// (KVM_SET_VCPU_EVENTS); ev.Flags selects the optional parts to apply.
func (v *VCPU) SetVCPUEvents(ev *VCPUEvents) error { return set(v, kvmSetVCPUEvents, ev) }

// SetGuestDebug configures single-stepping and breakpoints
// (KVM_SET_GUEST_DEBUG); matching events exit with ExitDebug.
func (v *VCPU) SetGuestDebug(d *GuestDebug) error { return set(v, kvmSetGuestDebug, d) }

// InjectException makes the guest take exception vector on the next Run,
// with errorCode pushed when it is not nil, for example #UD (6) for an
// instruction the VMM refuses to emulate. Other pending events are kept.
func (v *VCPU) InjectException(vector uint8, errorCode *uint32) error {
	ev, err := v.GetVCPUEvents()
	if err != nil {
		return err
	}
	ev.Exception = ExceptionEvent{Injected: 1, Nr: vector}
	if errorCode != nil {
		ev.Exception.HasErrorCode = 1
		ev.Exception.ErrorCode = *errorCode
	}
	ev.ExceptionHasPayload = 0
	ev.ExceptionPayload = 0
	// Apply only the exception; leave NMI, SIPI, shadow and SMM alone.
	ev.Flags = 0
	return v.SetVCPUEvents(ev)
}

// GetMPState returns the multiprocessing state (KVM_GET_MP_STATE).
func (v *VCPU) GetMPState() (MPState, error) {
	p, err := get[MPState](v, kvmGetMPState)
	if err != nil {
		return 0, err
	}
	return *p, nil
}

// SetMPState sets the multiprocessing state (KVM_SET_MP_STATE), for
// example MPStateUninitialized for an AP that waits for INIT-SIPI.
func (v *VCPU) SetMPState(s MPState) error { return set(v, kvmSetMPState, &s) }

// TranslateAddress translates a guest virtual address through the vCPU's
// current paging mode (KVM_TRANSLATE). ok is false when the address is not
// mapped.
func (v *VCPU) TranslateAddress(gva uint64) (gpa uint64, ok bool, err error) {
	t := Translation{LinearAddress: gva}
	if _, e := ioctlPtr(v.fd, kvmTranslate, &t); e != 0 {
		return 0, false, fmt.Errorf("kvm: vcpu %d: translate %#x: %w", v.id, gva, ioctlErr(kvmTranslate, e))
	}
	return t.PhysicalAddress, t.Valid != 0, nil
}

// SetCPUID2 sets the CPUID leaves the guest sees (KVM_SET_CPUID2). Call it
// before the first Run; later calls may fail with EINVAL or EBUSY.
func (v *VCPU) SetCPUID2(entries []CPUIDEntry) error {
	if len(entries) > maxCPUIDEntries {
		return fmt.Errorf("kvm: vcpu %d: %d CPUID entries, at most %d", v.id, len(entries), maxCPUIDEntries)
	}
	if _, e := ioctlBuf(v.fd, kvmSetCPUID2, encodeCPUID2(entries)); e != 0 {
		return fmt.Errorf("kvm: vcpu %d: %w", v.id, ioctlErr(kvmSetCPUID2, e))
	}
	return nil
}

// GetMSRs reads the MSRs named by entries[i].Index into entries[i].Data
// (KVM_GET_MSRS). If KVM refuses one, it returns an *MSRError naming it;
// the entries before it were read.
func (v *VCPU) GetMSRs(entries []MSREntry) error {
	if err := getMSRs(v.fd, entries); err != nil {
		return fmt.Errorf("kvm: vcpu %d: %w", v.id, err)
	}
	return nil
}

// SetMSRs writes the MSRs (KVM_SET_MSRS). If KVM refuses one, it returns an
// *MSRError naming it; the entries before it were written.
func (v *VCPU) SetMSRs(entries []MSREntry) error {
	if len(entries) == 0 {
		return nil
	}
	if len(entries) > maxMSRs {
		return fmt.Errorf("kvm: vcpu %d: %d MSRs in one call, at most %d", v.id, len(entries), maxMSRs)
	}
	r, e := ioctlBuf(v.fd, kvmSetMSRs, encodeMSRs(entries))
	if e != 0 {
		return fmt.Errorf("kvm: vcpu %d: %w", v.id, ioctlErr(kvmSetMSRs, e))
	}
	if n := int(r); n < len(entries) {
		return fmt.Errorf("kvm: vcpu %d: %w", v.id, &MSRError{Op: "set", Index: entries[n].Index})
	}
	return nil
}
