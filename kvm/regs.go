package kvm

import (
	"encoding/binary"
	"fmt"
)

// The types in this file mirror fixed-size kernel structures from
// arch/x86/include/uapi/asm/kvm.h and include/uapi/linux/kvm.h field for
// field, including padding, so they can be passed to ioctls directly.
// layout_unsafe_test.go checks every size and field offset against the
// kernel's.

// Regs mirrors struct kvm_regs: the general-purpose registers.
type Regs struct {
	RAX, RBX, RCX, RDX uint64
	RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11   uint64
	R12, R13, R14, R15 uint64
	RIP, RFLAGS        uint64
}

// Segment mirrors struct kvm_segment: a segment register with its hidden
// descriptor cache.
type Segment struct {
	Base     uint64
	Limit    uint32
	Selector uint16
	Type     uint8
	Present  uint8
	DPL      uint8
	DB       uint8
	S        uint8
	L        uint8
	G        uint8
	AVL      uint8
	Unusable uint8
	_        uint8
}

// DTable mirrors struct kvm_dtable: a descriptor-table register (GDTR, IDTR).
type DTable struct {
	Base  uint64
	Limit uint16
	_     [3]uint16
}

// Sregs mirrors struct kvm_sregs: segment, descriptor-table and control
// registers. InterruptBitmap has one bit per vector of a pending external
// interrupt (userspace irqchip only).
type Sregs struct {
	CS, DS, ES, FS, GS, SS Segment
	TR, LDT                Segment
	GDT, IDT               DTable
	CR0, CR2, CR3, CR4     uint64
	CR8                    uint64
	EFER                   uint64
	APICBase               uint64
	InterruptBitmap        [4]uint64
}

// FPU mirrors struct kvm_fpu: x87 and SSE state in FXSAVE form. KVM
// neither reports nor applies the MXCSR field (true of every Linux version
// up to 6.x at least); use GetXSave/SetXSave for MXCSR.
type FPU struct {
	FPR        [8][16]uint8
	FCW        uint16
	FSW        uint16
	FTWX       uint8 // abridged tag word
	_          uint8
	LastOpcode uint16
	LastIP     uint64
	LastDP     uint64
	XMM        [16][16]uint8
	MXCSR      uint32
	_          uint32
}

// Reset values of the x87 control word and MXCSR (Intel SDM vol. 1,
// 8.1.5 and 10.2.3). KVM already gives a new vCPU these values.
const (
	DefaultFCW   = 0x37f
	DefaultMXCSR = 0x1f80
)

// XSaveSize is the size of struct kvm_xsave.
const XSaveSize = 4096

// XSave mirrors struct kvm_xsave: the vCPU's extended state in the
// non-compacted XSAVE format, starting with the 512-byte FXSAVE area.
type XSave [XSaveSize]byte

// Offsets in the XSAVE area: MXCSR in the FXSAVE part, and XSTATE_BV, the
// first word of the XSAVE header.
const (
	xsaveMXCSR    = 24
	xsaveXStateBV = 512
	xfeatureSSE   = 1 << 1
)

// MXCSR returns the SSE control and status register.
func (x *XSave) MXCSR() uint32 { return binary.LittleEndian.Uint32(x[xsaveMXCSR:]) }

// SetMXCSR sets the SSE control and status register. It also marks the SSE
// state as present in XSTATE_BV: KVM_SET_XSAVE takes MXCSR only then (the
// XMM registers in the buffer are applied too).
func (x *XSave) SetMXCSR(v uint32) {
	binary.LittleEndian.PutUint32(x[xsaveMXCSR:], v)
	bv := binary.LittleEndian.Uint64(x[xsaveXStateBV:])
	binary.LittleEndian.PutUint64(x[xsaveXStateBV:], bv|xfeatureSSE)
}

// MPState mirrors struct kvm_mp_state: the vCPU's multiprocessing state.
type MPState uint32

// MP states (KVM_MP_STATE_*) meaningful on x86.
const (
	MPStateRunnable      MPState = 0
	MPStateUninitialized MPState = 1
	MPStateInitReceived  MPState = 2
	MPStateHalted        MPState = 3
	MPStateSIPIReceived  MPState = 4
)

// ExceptionEvent is the exception part of struct kvm_vcpu_events.
type ExceptionEvent struct {
	Injected     uint8
	Nr           uint8
	HasErrorCode uint8
	Pending      uint8
	ErrorCode    uint32
}

// InterruptEvent is the interrupt part of struct kvm_vcpu_events.
type InterruptEvent struct {
	Injected uint8
	Nr       uint8
	Soft     uint8
	Shadow   uint8
}

// NMIEvent is the NMI part of struct kvm_vcpu_events.
type NMIEvent struct {
	Injected uint8
	Pending  uint8
	Masked   uint8
	_        uint8
}

// SMIEvent is the SMI part of struct kvm_vcpu_events.
type SMIEvent struct {
	SMM          uint8
	Pending      uint8
	SMMInsideNMI uint8
	LatchedInit  uint8
}

// VCPUEvents mirrors struct kvm_vcpu_events: pending and in-flight
// exceptions, interrupts, NMIs and SMIs.
type VCPUEvents struct {
	Exception           ExceptionEvent
	Interrupt           InterruptEvent
	NMI                 NMIEvent
	SIPIVector          uint32
	Flags               uint32 // KVM_VCPUEVENT_VALID_*
	SMI                 SMIEvent
	TripleFaultPending  uint8
	_                   [26]uint8
	ExceptionHasPayload uint8
	ExceptionPayload    uint64
}

// Flags of VCPUEvents.Flags (KVM_VCPUEVENT_VALID_*): which optional fields
// SetVCPUEvents should apply.
const (
	VCPUEventValidNMIPending  = 0x01
	VCPUEventValidSIPIVector  = 0x02
	VCPUEventValidShadow      = 0x04
	VCPUEventValidSMM         = 0x08
	VCPUEventValidPayload     = 0x10
	VCPUEventValidTripleFault = 0x20
)

// Translation mirrors struct kvm_translation, the result of KVM_TRANSLATE.
type Translation struct {
	LinearAddress   uint64
	PhysicalAddress uint64
	Valid           uint8
	Writeable       uint8
	Usermode        uint8
	_               [5]uint8
}

// GuestDebug mirrors struct kvm_guest_debug for x86.
type GuestDebug struct {
	Control   uint32 // KVM_GUESTDBG_*
	_         uint32
	DebugRegs [8]uint64
}

// Control bits of GuestDebug (KVM_GUESTDBG_*).
const (
	GuestDebugEnable     = 0x00000001
	GuestDebugSingleStep = 0x00000002
	GuestDebugUseSWBP    = 0x00010000
	GuestDebugUseHWBP    = 0x00020000
	GuestDebugInjectDB   = 0x00040000
	GuestDebugInjectBP   = 0x00080000
)

// LAPICSize is the size of struct kvm_lapic_state: the local APIC's 4 KiB
// register page truncated to its first 1 KiB.
const LAPICSize = 1024

// LAPICState mirrors struct kvm_lapic_state: the local APIC registers at
// their xAPIC MMIO offsets, each a little-endian 32-bit value.
type LAPICState [LAPICSize]byte

// Local APIC register offsets and LVT delivery modes (Intel SDM vol. 3,
// 11.5.1).
const (
	LAPICRegID       = 0x20
	LAPICRegSpurious = 0xf0
	LAPICRegLVT0     = 0x350 // LVT LINT0
	LAPICRegLVT1     = 0x360 // LVT LINT1

	lvtDeliveryModeMask = 0x700
	LVTDeliveryFixed    = 0x000
	LVTDeliveryNMI      = 0x400
	LVTDeliveryExtINT   = 0x700
)

// Reg returns the 32-bit register at off, a multiple of 16 below
// LAPICSize; it returns 0 for any other offset.
func (l *LAPICState) Reg(off int) uint32 {
	if off < 0 || off%16 != 0 || off+4 > LAPICSize {
		return 0
	}
	return binary.LittleEndian.Uint32(l[off:])
}

// SetReg sets the 32-bit register at off. It returns an error for an
// offset that is not a multiple of 16 below LAPICSize.
func (l *LAPICState) SetReg(off int, v uint32) error {
	if off < 0 || off%16 != 0 || off+4 > LAPICSize {
		return fmt.Errorf("kvm: bad local APIC register offset %#x", off)
	}
	binary.LittleEndian.PutUint32(l[off:], v)
	return nil
}

// SetBSPLINTs routes LINT0 as ExtINT (the 8259 PIC's output) and LINT1 as
// NMI, the wiring the MP and ACPI specifications assume for the bootstrap
// processor in virtual-wire mode. Other LVT bits (mask, trigger) are kept.
func (l *LAPICState) SetBSPLINTs() {
	lvt0 := l.Reg(LAPICRegLVT0)&^lvtDeliveryModeMask | LVTDeliveryExtINT
	lvt1 := l.Reg(LAPICRegLVT1)&^lvtDeliveryModeMask | LVTDeliveryNMI
	binary.LittleEndian.PutUint32(l[LAPICRegLVT0:], lvt0)
	binary.LittleEndian.PutUint32(l[LAPICRegLVT1:], lvt1)
}

// CPUIDEntry is one struct kvm_cpuid_entry2 without its padding.
type CPUIDEntry struct {
	Function uint32
	Index    uint32
	Flags    uint32 // CPUIDFlag*
	EAX      uint32
	EBX      uint32
	ECX      uint32
	EDX      uint32
}

// Flags of CPUIDEntry.Flags (KVM_CPUID_FLAG_*).
const (
	CPUIDFlagSignificantIndex = 1 << 0
)

// MSREntry is one struct kvm_msr_entry without its padding.
type MSREntry struct {
	Index uint32
	Data  uint64
}
