package kvm

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// VM is a KVM virtual machine. Its methods may be called from any
// goroutine. Close it after its vCPUs are closed (closing it earlier is
// allowed: the kernel keeps the VM until its last vCPU is closed).
type VM struct {
	f        *os.File
	fd       int
	mmapSize int
}

// Close closes the VM file descriptor.
func (vm *VM) Close() error { return vm.f.Close() }

// CheckExtension is KVM_CHECK_EXTENSION on the VM, which reports the
// capabilities of this VM (they may differ from the system's).
func (vm *VM) CheckExtension(c Cap) (int, error) {
	return checkExtension(vm.fd, c)
}

// MemoryFlags are the flags of a memory slot (KVM_MEM_*).
type MemoryFlags uint32

// Memory slot flags.
const (
	MemLogDirtyPages MemoryFlags = 1 << 0
	MemReadonly      MemoryFlags = 1 << 1
)

// userMemoryRegion mirrors struct kvm_userspace_memory_region.
type userMemoryRegion struct {
	Slot          uint32
	Flags         uint32
	GuestPhysAddr uint64
	MemorySize    uint64
	UserspaceAddr uint64
}

const pageSize = 4096

// SetUserMemoryRegion maps host memory into the guest at gpa as memory
// slot slot (KVM_SET_USER_MEMORY_REGION), replacing the slot's previous
// mapping. host must be page aligned, a multiple of the page size long, and
// stay mapped (typically an mmap from package memory) until the slot is
// deleted or the VM is closed: KVM keeps its address.
func (vm *VM) SetUserMemoryRegion(slot uint32, flags MemoryFlags, gpa uint64, host []byte) error {
	addr := hostAddr(host)
	if len(host) == 0 || addr%pageSize != 0 || len(host)%pageSize != 0 || gpa%pageSize != 0 {
		return fmt.Errorf("kvm: memory slot %d: host %#x+%#x or guest %#x not page aligned",
			slot, addr, len(host), gpa)
	}
	r := userMemoryRegion{
		Slot:          slot,
		Flags:         uint32(flags),
		GuestPhysAddr: gpa,
		MemorySize:    uint64(len(host)),
		UserspaceAddr: uint64(addr),
	}
	if _, e := ioctlPtr(vm.fd, kvmSetUserMemoryRegion, &r); e != 0 {
		return fmt.Errorf("kvm: memory slot %d at %#x: %w", slot, gpa, ioctlErr(kvmSetUserMemoryRegion, e))
	}
	return nil
}

// DeleteUserMemoryRegion removes memory slot slot.
func (vm *VM) DeleteUserMemoryRegion(slot uint32) error {
	r := userMemoryRegion{Slot: slot}
	if _, e := ioctlPtr(vm.fd, kvmSetUserMemoryRegion, &r); e != 0 {
		return fmt.Errorf("kvm: delete memory slot %d: %w", slot, ioctlErr(kvmSetUserMemoryRegion, e))
	}
	return nil
}

// SetTSSAddr places the three pages Intel VMX needs for real-mode
// emulation at guest physical addr (KVM_SET_TSS_ADDR). The range must not
// overlap memory or devices; it is usually just below 4 GiB. Call it before
// running any vCPU.
func (vm *VM) SetTSSAddr(addr uint32) error {
	if _, e := ioctlVal(vm.fd, kvmSetTSSAddr, uintptr(addr)); e != 0 {
		return ioctlErr(kvmSetTSSAddr, e)
	}
	return nil
}

// SetIdentityMapAddr places the one-page identity-map page table Intel VMX
// needs for real mode without unrestricted guest (KVM_SET_IDENTITY_MAP_ADDR).
// Call it before creating vCPUs.
func (vm *VM) SetIdentityMapAddr(addr uint64) error {
	if _, e := ioctlPtr(vm.fd, kvmSetIdentityMapAddr, &addr); e != 0 {
		return ioctlErr(kvmSetIdentityMapAddr, e)
	}
	return nil
}

// CreateIRQChip creates the in-kernel interrupt controllers: two 8259 PICs,
// an IOAPIC and a local APIC per vCPU (KVM_CREATE_IRQCHIP), and installs
// DefaultIRQRouting. Call it before creating vCPUs.
func (vm *VM) CreateIRQChip() error {
	if _, e := ioctlVal(vm.fd, kvmCreateIRQChip, 0); e != 0 {
		return ioctlErr(kvmCreateIRQChip, e)
	}
	return nil
}

// pitConfig mirrors struct kvm_pit_config.
type pitConfig struct {
	Flags uint32
	_     [15]uint32
}

// pitSpeakerDummy is KVM_PIT_SPEAKER_DUMMY: KVM emulates the PC speaker
// port 0x61 as a dummy instead of exiting to userspace.
const pitSpeakerDummy = 1

// CreatePIT2 creates the in-kernel 8254 timer on ports 0x40-0x43 and a
// dummy PC speaker port 0x61 (KVM_CREATE_PIT2). It needs CreateIRQChip.
func (vm *VM) CreatePIT2() error {
	c := pitConfig{Flags: pitSpeakerDummy}
	if _, e := ioctlPtr(vm.fd, kvmCreatePIT2, &c); e != 0 {
		return ioctlErr(kvmCreatePIT2, e)
	}
	return nil
}

// irqLevel mirrors struct kvm_irq_level.
type irqLevel struct {
	IRQ   uint32
	Level uint32
}

// SetIRQLine sets the level of a GSI of the in-kernel irqchip
// (KVM_IRQ_LINE). An edge-triggered interrupt is a raise followed by a
// lower.
func (vm *VM) SetIRQLine(gsi uint32, level bool) error {
	l := irqLevel{IRQ: gsi}
	if level {
		l.Level = 1
	}
	if _, e := ioctlPtr(vm.fd, kvmIRQLine, &l); e != 0 {
		return fmt.Errorf("kvm: gsi %d: %w", gsi, ioctlErr(kvmIRQLine, e))
	}
	return nil
}

// ioEventFD mirrors struct kvm_ioeventfd.
type ioEventFD struct {
	DataMatch uint64
	Addr      uint64
	Len       uint32
	FD        int32
	Flags     uint32
	_         [36]uint8
}

// KVM_IOEVENTFD_FLAG_*.
const (
	ioEventFDFlagDataMatch = 1 << 0
	ioEventFDFlagPIO       = 1 << 1
	ioEventFDFlagDeassign  = 1 << 2
)

// IOEvent describes the guest writes that signal an ioeventfd.
type IOEvent struct {
	Addr uint64 // port number (PIO) or guest physical address
	Len  uint32 // 1, 2, 4 or 8 bytes; 0 matches any length (MMIO only)
	PIO  bool   // port I/O instead of MMIO
	// DataMatch, when not nil, restricts the event to writes of this value.
	DataMatch *uint64
}

func (ev IOEvent) raw(fd int) ioEventFD {
	r := ioEventFD{Addr: ev.Addr, Len: ev.Len, FD: int32(fd)}
	if ev.PIO {
		r.Flags |= ioEventFDFlagPIO
	}
	if ev.DataMatch != nil {
		r.Flags |= ioEventFDFlagDataMatch
		r.DataMatch = *ev.DataMatch
	}
	return r
}

// AddIOEventFD makes guest writes matching ev signal the eventfd fd inside
// the kernel, without an exit to userspace (KVM_IOEVENTFD).
func (vm *VM) AddIOEventFD(fd int, ev IOEvent) error {
	r := ev.raw(fd)
	if _, e := ioctlPtr(vm.fd, kvmIOEventFD, &r); e != 0 {
		return fmt.Errorf("kvm: ioeventfd at %#x: %w", ev.Addr, ioctlErr(kvmIOEventFD, e))
	}
	return nil
}

// RemoveIOEventFD undoes AddIOEventFD; fd and ev must be the values given
// to it.
func (vm *VM) RemoveIOEventFD(fd int, ev IOEvent) error {
	r := ev.raw(fd)
	r.Flags |= ioEventFDFlagDeassign
	if _, e := ioctlPtr(vm.fd, kvmIOEventFD, &r); e != 0 {
		return fmt.Errorf("kvm: remove ioeventfd at %#x: %w", ev.Addr, ioctlErr(kvmIOEventFD, e))
	}
	return nil
}

// irqFD mirrors struct kvm_irqfd.
type irqFD struct {
	FD         uint32
	GSI        uint32
	Flags      uint32
	ResampleFD uint32
	_          [16]uint8
}

// KVM_IRQFD_FLAG_*.
const (
	irqFDFlagDeassign = 1 << 0
	irqFDFlagResample = 1 << 1
)

// AddIRQFD makes a write to the eventfd fd raise GSI gsi inside the kernel
// (KVM_IRQFD). With resampleFD >= 0 the interrupt is level-triggered: KVM
// keeps the line asserted until the guest acknowledges it, then lowers it
// and signals resampleFD so the device can re-assert it if still pending.
// Pass resampleFD = -1 for an edge-triggered (or MSI) interrupt.
func (vm *VM) AddIRQFD(fd int, gsi uint32, resampleFD int) error {
	r := irqFD{FD: uint32(fd), GSI: gsi}
	if resampleFD >= 0 {
		r.Flags = irqFDFlagResample
		r.ResampleFD = uint32(resampleFD)
	}
	if _, e := ioctlPtr(vm.fd, kvmIRQFD, &r); e != 0 {
		return fmt.Errorf("kvm: irqfd for gsi %d: %w", gsi, ioctlErr(kvmIRQFD, e))
	}
	return nil
}

// RemoveIRQFD undoes AddIRQFD.
func (vm *VM) RemoveIRQFD(fd int, gsi uint32) error {
	r := irqFD{FD: uint32(fd), GSI: gsi, Flags: irqFDFlagDeassign}
	if _, e := ioctlPtr(vm.fd, kvmIRQFD, &r); e != 0 {
		return fmt.Errorf("kvm: remove irqfd for gsi %d: %w", gsi, ioctlErr(kvmIRQFD, e))
	}
	return nil
}

// SetGSIRouting replaces the whole GSI routing table (KVM_SET_GSI_ROUTING).
// To keep the irqchip's pins working, include DefaultIRQRouting.
func (vm *VM) SetGSIRouting(entries []RoutingEntry) error {
	b, err := encodeRouting(entries)
	if err != nil {
		return err
	}
	if _, e := ioctlBuf(vm.fd, kvmSetGSIRouting, b); e != 0 {
		return fmt.Errorf("kvm: %d routes: %w", len(entries), ioctlErr(kvmSetGSIRouting, e))
	}
	return nil
}

// kvmMSI mirrors struct kvm_msi.
type kvmMSI struct {
	AddressLo uint32
	AddressHi uint32
	Data      uint32
	Flags     uint32
	DevID     uint32
	_         [12]uint8
}

// SignalMSI injects an MSI directly (KVM_SIGNAL_MSI). It reports false
// when the guest had the interrupt masked or no vCPU matched.
func (vm *VM) SignalMSI(msg MSI) (delivered bool, err error) {
	m := kvmMSI{AddressLo: uint32(msg.Address), AddressHi: uint32(msg.Address >> 32), Data: msg.Data}
	r, e := ioctlPtr(vm.fd, kvmSignalMSI, &m)
	if e != 0 {
		return false, ioctlErr(kvmSignalMSI, e)
	}
	return r > 0, nil
}

// enableCap mirrors struct kvm_enable_cap.
type enableCap struct {
	Cap   uint32
	Flags uint32
	Args  [4]uint64
	_     [64]uint8
}

// EnableCap enables a VM capability with up to four arguments
// (KVM_ENABLE_CAP on the VM), for example CapExitOnEmulationFailure with
// argument 1, or CapX2APICAPI with X2APICAPI* flags.
func (vm *VM) EnableCap(c Cap, args ...uint64) error {
	ec := enableCap{Cap: uint32(c)}
	if len(args) > len(ec.Args) {
		return fmt.Errorf("kvm: enable %s: %d arguments, at most %d", c, len(args), len(ec.Args))
	}
	copy(ec.Args[:], args)
	if _, e := ioctlPtr(vm.fd, kvmEnableCap, &ec); e != 0 {
		return fmt.Errorf("kvm: enable %s: %w", c, ioctlErr(kvmEnableCap, e))
	}
	return nil
}

// clockData mirrors struct kvm_clock_data.
type clockData struct {
	Clock    uint64
	Flags    uint32
	_        uint32
	Realtime uint64
	HostTSC  uint64
	_        [4]uint32
}

// GetClock returns the guest's kvmclock time in nanoseconds (KVM_GET_CLOCK).
func (vm *VM) GetClock() (uint64, error) {
	var c clockData
	if _, e := ioctlPtr(vm.fd, kvmGetClock, &c); e != 0 {
		return 0, ioctlErr(kvmGetClock, e)
	}
	return c.Clock, nil
}

// SetClock sets the guest's kvmclock time in nanoseconds (KVM_SET_CLOCK).
func (vm *VM) SetClock(ns uint64) error {
	c := clockData{Clock: ns}
	if _, e := ioctlPtr(vm.fd, kvmSetClock, &c); e != 0 {
		return ioctlErr(kvmSetClock, e)
	}
	return nil
}

// CreateVCPU creates vCPU id (its initial APIC ID) and maps its kvm_run
// page. Create vCPUs from the goroutine, locked to its OS thread, that will
// run them.
func (vm *VM) CreateVCPU(id int) (*VCPU, error) {
	r, e := ioctlVal(vm.fd, kvmCreateVCPU, uintptr(id))
	if e != 0 {
		return nil, fmt.Errorf("kvm: vcpu %d: %w", id, ioctlErr(kvmCreateVCPU, e))
	}
	fd := int(r)
	run, err := unix.Mmap(fd, 0, vm.mmapSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("kvm: vcpu %d: %w", id, os.NewSyscallError("mmap kvm_run", err))
	}
	return &VCPU{f: os.NewFile(uintptr(fd), fmt.Sprintf("kvm-vcpu:%d", id)), fd: fd, id: id, run: run}, nil
}
