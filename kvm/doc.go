// Package kvm is a thin, typed wrapper over the Linux KVM API (/dev/kvm) for
// x86-64. It is the only package in govmd that knows KVM ioctl numbers and
// the layouts of the kvm_* structures.
//
// The API has three levels, mirroring the kernel's file descriptors:
//
//	sys, err := kvm.Open("")        // /dev/kvm: capabilities, CPUID, MSR lists
//	vm, err := sys.CreateVM()        // memory slots, irqchip, eventfds, routing
//	cpu, err := vm.CreateVCPU(0)     // registers, KVM_RUN and exits
//
// Each level must be closed by its owner; closing a VM does not close its
// vCPUs and closing the System does not close its VMs (the kernel keeps the
// objects alive until every descriptor is closed).
//
// # Threads
//
// A VCPU is owned by one goroutine that calls runtime.LockOSThread before it
// creates the vCPU and keeps the lock for the vCPU's life. Only that
// goroutine calls VCPU methods, with two exceptions meant for other
// goroutines: SetImmediateExit and Kick. VM and System methods may be called
// from any goroutine; the kernel serialises them.
//
// # Stopping a vCPU
//
// Run never retries an interrupted KVM_RUN: EINTR is how a VMM gets a vCPU
// out of the guest. To stop a vCPU running on thread tid (from ThreadID,
// recorded by the vCPU goroutine), another goroutine first records the stop
// request (for example by cancelling a context), then calls Kick(tid), which
// sets kvm_run.immediate_exit and sends KickSignal to that thread. A KVM_RUN
// in progress returns at once and Run reports ExitIntr; a KVM_RUN that had
// not started yet returns at once because immediate_exit is set. The vCPU
// loop, on ExitIntr, calls SetImmediateExit(false) first and only then checks
// for a stop request; in that order no kick is lost.
//
// KickSignal must not be ignored (signal.Ignore): an ignored signal never
// interrupts a system call. The Go runtime's default disposition for it
// (caught, no action) and signal.Notify both work. Any other signal that
// lands on the vCPU thread also ends KVM_RUN, so an ExitIntr without a stop
// request is normal: the loop just runs the vCPU again.
//
// # Exits
//
// Run returns an Exit whose accessors decode the vCPU's shared kvm_run page
// with encoding/binary at the offsets of the uapi headers; no guest- or
// kernel-written byte is ever cast to a Go struct. Values that index the run
// page (I/O data offsets, lengths, counts) are bounds-checked and reported as
// errors, never as panics. An Exit is valid until the next Run on its vCPU.
//
// # PVM hosts
//
// On a host whose /dev/kvm is PVM (see DetectHostProfile), a guest that is
// not PVM-enlightened runs entirely in KVM's instruction emulator. The tests
// of this package found there: instructions the emulator lacks (popcnt,
// int3 at CPL0) end in ExitInternalError with suberror
// InternalErrorEmulation and the instruction bytes, whether or not
// CapExitOnEmulationFailure is enabled; in real mode the emulator ignores
// the IDT limit, so an undeliverable real-mode exception jumps through a
// zero vector instead of triple-faulting (in protected mode it does
// triple-fault: ExitShutdown); port I/O, MMIO, ioeventfd, irqfd, GSI
// routing, KVM_SIGNAL_MSI, injected exceptions, single-stepping and kicks
// behave as on hardware KVM.
package kvm
