package kvm

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ExitReason is kvm_run.exit_reason (KVM_EXIT_*).
type ExitReason uint32

// Exit reasons from include/uapi/linux/kvm.h. Run also reports ExitIntr
// when KVM_RUN fails with EINTR or EAGAIN (a signal or immediate_exit).
// ExitHLT happens only without the in-kernel irqchip; with it, a halted
// vCPU sleeps in KVM_RUN until an interrupt or a kick.
const (
	ExitUnknown         ExitReason = 0
	ExitException       ExitReason = 1
	ExitIO              ExitReason = 2
	ExitHypercall       ExitReason = 3
	ExitDebug           ExitReason = 4
	ExitHLT             ExitReason = 5
	ExitMMIO            ExitReason = 6
	ExitIRQWindowOpen   ExitReason = 7
	ExitShutdown        ExitReason = 8
	ExitFailEntry       ExitReason = 9
	ExitIntr            ExitReason = 10
	ExitSetTPR          ExitReason = 11
	ExitTPRAccess       ExitReason = 12
	ExitS390SIEIC       ExitReason = 13
	ExitS390Reset       ExitReason = 14
	ExitDCR             ExitReason = 15
	ExitNMI             ExitReason = 16
	ExitInternalError   ExitReason = 17
	ExitOSI             ExitReason = 18
	ExitPAPRHcall       ExitReason = 19
	ExitS390UControl    ExitReason = 20
	ExitWatchdog        ExitReason = 21
	ExitS390TSCH        ExitReason = 22
	ExitEPR             ExitReason = 23
	ExitSystemEvent     ExitReason = 24
	ExitS390STSI        ExitReason = 25
	ExitIOAPICEOI       ExitReason = 26
	ExitHyperV          ExitReason = 27
	ExitARMNISV         ExitReason = 28
	ExitX86RDMSR        ExitReason = 29
	ExitX86WRMSR        ExitReason = 30
	ExitDirtyRingFull   ExitReason = 31
	ExitAPResetHold     ExitReason = 32
	ExitX86BusLock      ExitReason = 33
	ExitXen             ExitReason = 34
	ExitRISCVSBI        ExitReason = 35
	ExitRISCVCSR        ExitReason = 36
	ExitNotify          ExitReason = 37
	ExitLoongArchIOCSR  ExitReason = 38
	ExitMemoryFault     ExitReason = 39
	ExitTDX             ExitReason = 40
	numNamedExitReasons            = 41
)

var exitNames = [numNamedExitReasons]string{
	"UNKNOWN", "EXCEPTION", "IO", "HYPERCALL", "DEBUG", "HLT", "MMIO",
	"IRQ_WINDOW_OPEN", "SHUTDOWN", "FAIL_ENTRY", "INTR", "SET_TPR",
	"TPR_ACCESS", "S390_SIEIC", "S390_RESET", "DCR", "NMI", "INTERNAL_ERROR",
	"OSI", "PAPR_HCALL", "S390_UCONTROL", "WATCHDOG", "S390_TSCH", "EPR",
	"SYSTEM_EVENT", "S390_STSI", "IOAPIC_EOI", "HYPERV", "ARM_NISV",
	"X86_RDMSR", "X86_WRMSR", "DIRTY_RING_FULL", "AP_RESET_HOLD",
	"X86_BUS_LOCK", "XEN", "RISCV_SBI", "RISCV_CSR", "NOTIFY",
	"LOONGARCH_IOCSR", "MEMORY_FAULT", "TDX",
}

// String returns the KVM_EXIT_ name, or the number for reasons newer than
// this package.
func (r ExitReason) String() string {
	if r < numNamedExitReasons {
		return "KVM_EXIT_" + exitNames[r]
	}
	return "KVM_EXIT(" + strconv.FormatUint(uint64(r), 10) + ")"
}

// Offsets in struct kvm_run (include/uapi/linux/kvm.h, x86-64).
const (
	runRequestInterruptWindow = 0
	runImmediateExit          = 1
	runExitReason             = 8
	runReadyForInjection      = 12
	runIFFlag                 = 13
	runCR8                    = 16
	runAPICBase               = 24
	runUnion                  = 32  // the per-exit-reason union
	runUnionSize              = 256 // char padding[256]
	runSize                   = 2352

	// Offsets inside the union, relative to runUnion.
	ioDirection  = 0
	ioSize       = 1
	ioPort       = 2
	ioCount      = 4
	ioDataOffset = 8

	mmioPhysAddr = 0
	mmioData     = 8
	mmioLen      = 16
	mmioIsWrite  = 20
	mmioMaxLen   = 8

	internalSuberror = 0
	internalNData    = 4
	internalData     = 8
	internalMaxData  = 16
	emulFlags        = 8
	emulInsnSize     = 16
	emulInsnBytes    = 17
	emulMaxInsnBytes = 15

	msrError  = 0
	msrReason = 8
	msrIndex  = 12
	msrData   = 16
)

// ErrBadExit is wrapped by exit accessors when the run page holds values
// that cannot be used safely (a data offset outside the page, an access
// size KVM never produces).
var ErrBadExit = errors.New("kvm: malformed exit data in kvm_run")

// Exit is the result of one Run: the exit reason and access to the
// reason-specific data in the vCPU's kvm_run page. The accessor matching
// Reason decodes that data; the others return meaningless values. An Exit
// aliases the run page, so it is valid only until the next Run on the same
// vCPU, and it must not be used after the vCPU is closed.
type Exit struct {
	Reason ExitReason
	run    []byte
}

// exitFromRun returns the Exit described by a kvm_run page.
func exitFromRun(run []byte) Exit {
	return Exit{Reason: ExitReason(u32At(run, runExitReason)), run: run}
}

func u8At(b []byte, off int) uint8 {
	if off < 0 || off >= len(b) {
		return 0
	}
	return b[off]
}

func u16At(b []byte, off int) uint16 {
	if off < 0 || off+2 > len(b) {
		return 0
	}
	return le.Uint16(b[off:])
}

func u32At(b []byte, off int) uint32 {
	if off < 0 || off+4 > len(b) {
		return 0
	}
	return le.Uint32(b[off:])
}

func u64At(b []byte, off int) uint64 {
	if off < 0 || off+8 > len(b) {
		return 0
	}
	return le.Uint64(b[off:])
}

func (e Exit) u8(off int) uint8   { return u8At(e.run, runUnion+off) }
func (e Exit) u16(off int) uint16 { return u16At(e.run, runUnion+off) }
func (e Exit) u32(off int) uint32 { return u32At(e.run, runUnion+off) }
func (e Exit) u64(off int) uint64 { return u64At(e.run, runUnion+off) }

// IODirection is the direction of a port I/O exit.
type IODirection uint8

// Port I/O directions (KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT).
const (
	IOIn  IODirection = 0
	IOOut IODirection = 1
)

// IOExit is a port I/O access (ExitIO). A string instruction (rep ins/outs)
// transfers Count items of Size bytes in one exit.
type IOExit struct {
	Direction IODirection
	Size      uint8 // bytes per item: 1, 2 or 4
	Port      uint16
	Count     uint32
	// Data is the Size*Count bytes in the run page: the values written by
	// the guest for IOOut; for IOIn the VMM fills it before the next Run.
	Data []byte
}

// IO decodes an ExitIO. It returns an error wrapping ErrBadExit if the size
// or count is invalid or the data does not lie inside the run page.
func (e Exit) IO() (IOExit, error) {
	io := IOExit{
		Direction: IODirection(e.u8(ioDirection)),
		Size:      e.u8(ioSize),
		Port:      e.u16(ioPort),
		Count:     e.u32(ioCount),
	}
	off := e.u64(ioDataOffset)
	switch io.Size {
	case 1, 2, 4:
	default:
		return io, fmt.Errorf("%w: io port %#x size %d", ErrBadExit, io.Port, io.Size)
	}
	if io.Direction > IOOut {
		return io, fmt.Errorf("%w: io port %#x direction %d", ErrBadExit, io.Port, io.Direction)
	}
	n := uint64(io.Size) * uint64(io.Count)
	if io.Count == 0 || off < runSize || off > uint64(len(e.run)) || n > uint64(len(e.run))-off {
		return io, fmt.Errorf("%w: io port %#x data %d*%d bytes at offset %#x of a %d-byte run page",
			ErrBadExit, io.Port, io.Size, io.Count, off, len(e.run))
	}
	io.Data = e.run[off : off+n : off+n]
	return io, nil
}

// MMIOExit is a memory-mapped I/O access (ExitMMIO) to guest physical
// memory that no memory slot backs.
type MMIOExit struct {
	Addr    uint64
	IsWrite bool
	// Data holds the bytes written by the guest, or receives the bytes to
	// return for a read; it aliases the run page.
	Data []byte
}

// MMIO decodes an ExitMMIO. It returns an error wrapping ErrBadExit for a
// length outside 1..8.
func (e Exit) MMIO() (MMIOExit, error) {
	m := MMIOExit{Addr: e.u64(mmioPhysAddr), IsWrite: e.u8(mmioIsWrite) != 0}
	n := e.u32(mmioLen)
	start := runUnion + mmioData
	if n == 0 || n > mmioMaxLen || start+int(n) > len(e.run) {
		return m, fmt.Errorf("%w: mmio %#x length %d", ErrBadExit, m.Addr, n)
	}
	m.Data = e.run[start : start+int(n) : start+int(n)]
	return m, nil
}

// SystemEventType is kvm_run.system_event.type (KVM_SYSTEM_EVENT_*).
type SystemEventType uint32

// System event types.
const (
	SystemEventShutdown SystemEventType = 1
	SystemEventReset    SystemEventType = 2
	SystemEventCrash    SystemEventType = 3
	SystemEventWakeup   SystemEventType = 4
	SystemEventSuspend  SystemEventType = 5
	SystemEventSEVTerm  SystemEventType = 6
	SystemEventTDXFatal SystemEventType = 7
)

// String returns the event name, for example "reset".
func (t SystemEventType) String() string {
	names := [...]string{"", "shutdown", "reset", "crash", "wakeup", "suspend", "sev-term", "tdx-fatal"}
	if t > 0 && int(t) < len(names) {
		return names[t]
	}
	return "type " + strconv.FormatUint(uint64(t), 10)
}

// SystemEventExit is an ExitSystemEvent: a guest-initiated shutdown, reset
// or crash report, for example through PSCI or a paravirtual interface.
type SystemEventExit struct {
	Type SystemEventType
	Data []uint64 // architecture-specific details, at most 16 words
}

// SystemEvent decodes an ExitSystemEvent.
func (e Exit) SystemEvent() SystemEventExit {
	return SystemEventExit{
		Type: SystemEventType(e.u32(internalSuberror)),
		Data: e.words(internalData, int(e.u32(internalNData))),
	}
}

// words copies n (at most 16) 64-bit words from offset off of the union.
func (e Exit) words(off, n int) []uint64 {
	if n > internalMaxData {
		n = internalMaxData
	}
	if n <= 0 {
		return nil
	}
	out := make([]uint64, n)
	for i := range out {
		out[i] = e.u64(off + 8*i)
	}
	return out
}

// Internal error suberrors (KVM_INTERNAL_ERROR_*).
const (
	InternalErrorEmulation            = 1 // the instruction emulator failed
	InternalErrorSimulEx              = 2 // an exception during exception delivery
	InternalErrorDeliveryEv           = 3 // an exit while delivering an event
	InternalErrorUnexpectedExitReason = 4 // an exit KVM cannot handle
)

// emulationFlagInsnBytes is KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES.
const emulationFlagInsnBytes = 1

// InternalErrorExit is an ExitInternalError: KVM could not continue the
// guest. For an emulation failure (Suberror InternalErrorEmulation) KVM
// reports the bytes of the instruction it failed to emulate.
type InternalErrorExit struct {
	Suberror uint32
	// Data is the raw kvm_run.internal.data[0:ndata]. For an emulation
	// failure with instruction bytes, words 0-2 hold the flags and bytes.
	Data []uint64
	// InsnBytes are the bytes KVM fetched at the failing instruction (at
	// most 15), or nil when KVM did not report them. They start with the
	// instruction but may run past its end: KVM reports its whole fetch
	// window, not the decoded length.
	InsnBytes []byte
}

// InternalError decodes an ExitInternalError.
func (e Exit) InternalError() InternalErrorExit {
	ie := InternalErrorExit{
		Suberror: e.u32(internalSuberror),
		Data:     e.words(internalData, int(e.u32(internalNData))),
	}
	if ie.Suberror == InternalErrorEmulation && len(ie.Data) >= 3 && ie.Data[0]&emulationFlagInsnBytes != 0 {
		n := int(e.u8(emulInsnSize))
		if n > emulMaxInsnBytes {
			n = emulMaxInsnBytes
		}
		start := runUnion + emulInsnBytes
		if n > 0 && start+n <= len(e.run) {
			ie.InsnBytes = append([]byte(nil), e.run[start:start+n]...)
		}
	}
	return ie
}

// FailEntryExit is an ExitFailEntry: the hardware refused to enter the
// guest (for VMX, the VM-entry failure exit reason).
type FailEntryExit struct {
	HardwareReason uint64
	CPU            uint32
}

// FailEntry decodes an ExitFailEntry.
func (e Exit) FailEntry() FailEntryExit {
	return FailEntryExit{HardwareReason: e.u64(0), CPU: e.u32(8)}
}

// ExceptionExit is an ExitException: an exception userspace asked to see.
type ExceptionExit struct {
	Vector    uint32
	ErrorCode uint32
}

// Exception decodes an ExitException.
func (e Exit) Exception() ExceptionExit {
	return ExceptionExit{Vector: e.u32(0), ErrorCode: e.u32(4)}
}

// DebugExit is an ExitDebug, struct kvm_debug_exit_arch: a breakpoint or
// single step requested with SetGuestDebug.
type DebugExit struct {
	Exception uint32
	PC        uint64
	DR6       uint64
	DR7       uint64
}

// Debug decodes an ExitDebug.
func (e Exit) Debug() DebugExit {
	return DebugExit{Exception: e.u32(0), PC: e.u64(8), DR6: e.u64(16), DR7: e.u64(24)}
}

// HypercallExit is an ExitHypercall (KVM_HC_MAP_GPA_RANGE and similar).
type HypercallExit struct {
	Nr       uint64
	Args     [6]uint64
	LongMode uint32
}

// Hypercall decodes an ExitHypercall.
func (e Exit) Hypercall() HypercallExit {
	h := HypercallExit{Nr: e.u64(0), LongMode: e.u32(64)}
	for i := range h.Args {
		h.Args[i] = e.u64(8 + 8*i)
	}
	return h
}

// SetHypercallResult stores the value the guest sees in RAX when the next
// Run completes an ExitHypercall.
func (e Exit) SetHypercallResult(ret uint64) { e.put64(56, ret) }

// MSRExit is an ExitX86RDMSR or ExitX86WRMSR, reported only after
// EnableCap(CapX86UserSpaceMSR, ...).
type MSRExit struct {
	Index  uint32
	Data   uint64 // the value written, for ExitX86WRMSR
	Reason uint32 // MSRExitReason*
}

// MSR decodes an ExitX86RDMSR or ExitX86WRMSR.
func (e Exit) MSR() MSRExit {
	return MSRExit{Index: e.u32(msrIndex), Data: e.u64(msrData), Reason: e.u32(msrReason)}
}

// SetMSRResult completes an MSR exit: data is the value an RDMSR returns,
// and fail makes the guest's access raise #GP instead.
func (e Exit) SetMSRResult(data uint64, fail bool) {
	e.put64(msrData, data)
	var b uint8
	if fail {
		b = 1
	}
	if i := runUnion + msrError; i < len(e.run) {
		e.run[i] = b
	}
}

func (e Exit) put64(off int, v uint64) {
	if i := runUnion + off; i >= 0 && i+8 <= len(e.run) {
		le.PutUint64(e.run[i:], v)
	}
}

// TPRAccessExit is an ExitTPRAccess.
type TPRAccessExit struct {
	RIP     uint64
	IsWrite bool
}

// TPRAccess decodes an ExitTPRAccess.
func (e Exit) TPRAccess() TPRAccessExit {
	return TPRAccessExit{RIP: e.u64(0), IsWrite: e.u32(8) != 0}
}

// IOAPICEOIVector decodes an ExitIOAPICEOI (split irqchip only).
func (e Exit) IOAPICEOIVector() uint8 { return e.u8(0) }

// MemoryFaultExit is an ExitMemoryFault.
type MemoryFaultExit struct {
	Flags uint64
	GPA   uint64
	Size  uint64
}

// MemoryFault decodes an ExitMemoryFault.
func (e Exit) MemoryFault() MemoryFaultExit {
	return MemoryFaultExit{Flags: e.u64(0), GPA: e.u64(8), Size: e.u64(16)}
}

// NotifyFlags decodes an ExitNotify.
func (e Exit) NotifyFlags() uint32 { return e.u32(0) }

// HardwareExitReason decodes an ExitUnknown: the hardware exit reason KVM
// did not handle.
func (e Exit) HardwareExitReason() uint64 { return e.u64(0) }

// String describes the exit on one line, for logs.
func (e Exit) String() string {
	var b strings.Builder
	b.WriteString(e.Reason.String())
	switch e.Reason {
	case ExitIO:
		io, err := e.IO()
		dir := "in"
		if io.Direction == IOOut {
			dir = "out"
		}
		fmt.Fprintf(&b, " %s port=%#x size=%d count=%d", dir, io.Port, io.Size, io.Count)
		if err != nil {
			b.WriteString(" (malformed)")
		} else if io.Direction == IOOut {
			writeHex(&b, " data=", io.Data, 16)
		}
	case ExitMMIO:
		m, err := e.MMIO()
		if err != nil {
			fmt.Fprintf(&b, " addr=%#x (malformed)", m.Addr)
			break
		}
		if m.IsWrite {
			fmt.Fprintf(&b, " write addr=%#x len=%d", m.Addr, len(m.Data))
			writeHex(&b, " data=", m.Data, mmioMaxLen)
		} else {
			fmt.Fprintf(&b, " read addr=%#x len=%d", m.Addr, len(m.Data))
		}
	case ExitSystemEvent:
		s := e.SystemEvent()
		fmt.Fprintf(&b, " %s data=%#x", s.Type, s.Data)
	case ExitInternalError:
		ie := e.InternalError()
		b.WriteString(" ")
		b.WriteString(suberrorName(ie.Suberror))
		if ie.InsnBytes != nil {
			writeHex(&b, " insn=", ie.InsnBytes, emulMaxInsnBytes)
		}
		if len(ie.Data) > 0 {
			fmt.Fprintf(&b, " data=%#x", ie.Data)
		}
	case ExitFailEntry:
		f := e.FailEntry()
		fmt.Fprintf(&b, " hardware_entry_failure_reason=%#x cpu=%d", f.HardwareReason, f.CPU)
	case ExitException:
		x := e.Exception()
		fmt.Fprintf(&b, " vector=%d error_code=%#x", x.Vector, x.ErrorCode)
	case ExitDebug:
		d := e.Debug()
		fmt.Fprintf(&b, " exception=%d pc=%#x dr6=%#x dr7=%#x", d.Exception, d.PC, d.DR6, d.DR7)
	case ExitHypercall:
		h := e.Hypercall()
		fmt.Fprintf(&b, " nr=%#x args=%#x", h.Nr, h.Args)
	case ExitX86RDMSR:
		m := e.MSR()
		fmt.Fprintf(&b, " index=%#x reason=%#x", m.Index, m.Reason)
	case ExitX86WRMSR:
		m := e.MSR()
		fmt.Fprintf(&b, " index=%#x data=%#x reason=%#x", m.Index, m.Data, m.Reason)
	case ExitTPRAccess:
		t := e.TPRAccess()
		fmt.Fprintf(&b, " rip=%#x write=%t", t.RIP, t.IsWrite)
	case ExitIOAPICEOI:
		fmt.Fprintf(&b, " vector=%d", e.IOAPICEOIVector())
	case ExitMemoryFault:
		m := e.MemoryFault()
		fmt.Fprintf(&b, " gpa=%#x size=%#x flags=%#x", m.GPA, m.Size, m.Flags)
	case ExitNotify:
		fmt.Fprintf(&b, " flags=%#x", e.NotifyFlags())
	case ExitUnknown:
		fmt.Fprintf(&b, " hardware_exit_reason=%#x", e.HardwareExitReason())
	}
	return b.String()
}

func suberrorName(s uint32) string {
	switch s {
	case InternalErrorEmulation:
		return "emulation failure"
	case InternalErrorSimulEx:
		return "simultaneous exceptions"
	case InternalErrorDeliveryEv:
		return "exit during event delivery"
	case InternalErrorUnexpectedExitReason:
		return "unexpected exit reason"
	}
	return "suberror " + strconv.FormatUint(uint64(s), 10)
}

func writeHex(b *strings.Builder, prefix string, data []byte, limit int) {
	b.WriteString(prefix)
	b.WriteByte('[')
	for i, c := range data {
		if i == limit {
			b.WriteString(" ...")
			break
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(b, "%02x", c)
	}
	b.WriteByte(']')
}
