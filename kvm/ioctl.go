package kvm

import (
	"os"

	"golang.org/x/sys/unix"
)

// Linux asm-generic ioctl request encoding (include/uapi/asm-generic/ioctl.h):
// bits 0-7 number, 8-15 type, 16-29 argument size, 30-31 direction.
const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2

	iocNRShift   = 0
	iocTypeShift = 8
	iocSizeShift = 16
	iocDirShift  = 30

	// kvmIO is KVMIO, the ioctl type byte of every KVM request.
	kvmIO = 0xae
)

func ioc(dir, nr, size uintptr) uintptr {
	return dir<<iocDirShift | kvmIO<<iocTypeShift | nr<<iocNRShift | size<<iocSizeShift
}

func iocIO(nr uintptr) uintptr                 { return ioc(iocNone, nr, 0) }
func iocR(nr, size uintptr) uintptr            { return ioc(iocRead, nr, size) }
func iocW(nr, size uintptr) uintptr            { return ioc(iocWrite, nr, size) }
func iocRW(nr, size uintptr) uintptr           { return ioc(iocRead|iocWrite, nr, size) }
func ioctlName(req uintptr) string             { return "ioctl " + requestName(req) }
func ioctlErr(req uintptr, e unix.Errno) error { return os.NewSyscallError(ioctlName(req), e) }

// Request numbers. Each value is written out as a literal (as the kernel
// headers compute it on x86-64) next to the C macro it comes from;
// TestIoctlNumbers recomputes every one with iocIO, iocR, iocW and iocRW.
const (
	// ioctls on /dev/kvm.
	kvmGetAPIVersion          = 0xae00     // _IO(KVMIO, 0x00)
	kvmCreateVM               = 0xae01     // _IO(KVMIO, 0x01)
	kvmGetMSRIndexList        = 0xc004ae02 // _IOWR(KVMIO, 0x02, struct kvm_msr_list)
	kvmCheckExtension         = 0xae03     // _IO(KVMIO, 0x03)
	kvmGetVCPUMmapSize        = 0xae04     // _IO(KVMIO, 0x04)
	kvmGetSupportedCPUID      = 0xc008ae05 // _IOWR(KVMIO, 0x05, struct kvm_cpuid2)
	kvmGetMSRFeatureIndexList = 0xc004ae0a // _IOWR(KVMIO, 0x0a, struct kvm_msr_list)

	// ioctls on a VM fd.
	kvmCreateVCPU          = 0xae41     // _IO(KVMIO, 0x41)
	kvmSetUserMemoryRegion = 0x4020ae46 // _IOW(KVMIO, 0x46, struct kvm_userspace_memory_region)
	kvmSetTSSAddr          = 0xae47     // _IO(KVMIO, 0x47)
	kvmSetIdentityMapAddr  = 0x4008ae48 // _IOW(KVMIO, 0x48, __u64)
	kvmCreateIRQChip       = 0xae60     // _IO(KVMIO, 0x60)
	kvmIRQLine             = 0x4008ae61 // _IOW(KVMIO, 0x61, struct kvm_irq_level)
	kvmSetGSIRouting       = 0x4008ae6a // _IOW(KVMIO, 0x6a, struct kvm_irq_routing)
	kvmIRQFD               = 0x4020ae76 // _IOW(KVMIO, 0x76, struct kvm_irqfd)
	kvmCreatePIT2          = 0x4040ae77 // _IOW(KVMIO, 0x77, struct kvm_pit_config)
	kvmIOEventFD           = 0x4040ae79 // _IOW(KVMIO, 0x79, struct kvm_ioeventfd)
	kvmSetClock            = 0x4030ae7b // _IOW(KVMIO, 0x7b, struct kvm_clock_data)
	kvmGetClock            = 0x8030ae7c // _IOR(KVMIO, 0x7c, struct kvm_clock_data)
	kvmEnableCap           = 0x4068aea3 // _IOW(KVMIO, 0xa3, struct kvm_enable_cap)
	kvmSignalMSI           = 0x4020aea5 // _IOW(KVMIO, 0xa5, struct kvm_msi)

	// ioctls on a vCPU fd.
	kvmRun           = 0xae80     // _IO(KVMIO, 0x80)
	kvmGetRegs       = 0x8090ae81 // _IOR(KVMIO, 0x81, struct kvm_regs)
	kvmSetRegs       = 0x4090ae82 // _IOW(KVMIO, 0x82, struct kvm_regs)
	kvmGetSregs      = 0x8138ae83 // _IOR(KVMIO, 0x83, struct kvm_sregs)
	kvmSetSregs      = 0x4138ae84 // _IOW(KVMIO, 0x84, struct kvm_sregs)
	kvmTranslate     = 0xc018ae85 // _IOWR(KVMIO, 0x85, struct kvm_translation)
	kvmGetMSRs       = 0xc008ae88 // _IOWR(KVMIO, 0x88, struct kvm_msrs)
	kvmSetMSRs       = 0x4008ae89 // _IOW(KVMIO, 0x89, struct kvm_msrs)
	kvmGetFPU        = 0x81a0ae8c // _IOR(KVMIO, 0x8c, struct kvm_fpu)
	kvmSetFPU        = 0x41a0ae8d // _IOW(KVMIO, 0x8d, struct kvm_fpu)
	kvmGetLAPIC      = 0x8400ae8e // _IOR(KVMIO, 0x8e, struct kvm_lapic_state)
	kvmSetLAPIC      = 0x4400ae8f // _IOW(KVMIO, 0x8f, struct kvm_lapic_state)
	kvmSetCPUID2     = 0x4008ae90 // _IOW(KVMIO, 0x90, struct kvm_cpuid2)
	kvmGetMPState    = 0x8004ae98 // _IOR(KVMIO, 0x98, struct kvm_mp_state)
	kvmSetMPState    = 0x4004ae99 // _IOW(KVMIO, 0x99, struct kvm_mp_state)
	kvmSetGuestDebug = 0x4048ae9b // _IOW(KVMIO, 0x9b, struct kvm_guest_debug)
	kvmGetVCPUEvents = 0x8040ae9f // _IOR(KVMIO, 0x9f, struct kvm_vcpu_events)
	kvmSetVCPUEvents = 0x4040aea0 // _IOW(KVMIO, 0xa0, struct kvm_vcpu_events)
	kvmGetXSave      = 0x9000aea4 // _IOR(KVMIO, 0xa4, struct kvm_xsave)
	kvmSetXSave      = 0x5000aea5 // _IOW(KVMIO, 0xa5, struct kvm_xsave)

	// ioctls on a VM or vCPU fd.
	kvmGetStatsFD = 0xaece // _IO(KVMIO, 0xce)
)

// requestName names a request for error messages.
func requestName(req uintptr) string {
	switch req {
	case kvmGetAPIVersion:
		return "KVM_GET_API_VERSION"
	case kvmGetStatsFD:
		return "KVM_GET_STATS_FD"
	case kvmCreateVM:
		return "KVM_CREATE_VM"
	case kvmGetMSRIndexList:
		return "KVM_GET_MSR_INDEX_LIST"
	case kvmCheckExtension:
		return "KVM_CHECK_EXTENSION"
	case kvmGetVCPUMmapSize:
		return "KVM_GET_VCPU_MMAP_SIZE"
	case kvmGetSupportedCPUID:
		return "KVM_GET_SUPPORTED_CPUID"
	case kvmGetMSRFeatureIndexList:
		return "KVM_GET_MSR_FEATURE_INDEX_LIST"
	case kvmCreateVCPU:
		return "KVM_CREATE_VCPU"
	case kvmSetUserMemoryRegion:
		return "KVM_SET_USER_MEMORY_REGION"
	case kvmSetTSSAddr:
		return "KVM_SET_TSS_ADDR"
	case kvmSetIdentityMapAddr:
		return "KVM_SET_IDENTITY_MAP_ADDR"
	case kvmCreateIRQChip:
		return "KVM_CREATE_IRQCHIP"
	case kvmIRQLine:
		return "KVM_IRQ_LINE"
	case kvmSetGSIRouting:
		return "KVM_SET_GSI_ROUTING"
	case kvmIRQFD:
		return "KVM_IRQFD"
	case kvmCreatePIT2:
		return "KVM_CREATE_PIT2"
	case kvmIOEventFD:
		return "KVM_IOEVENTFD"
	case kvmSetClock:
		return "KVM_SET_CLOCK"
	case kvmGetClock:
		return "KVM_GET_CLOCK"
	case kvmEnableCap:
		return "KVM_ENABLE_CAP"
	case kvmSignalMSI:
		return "KVM_SIGNAL_MSI"
	case kvmRun:
		return "KVM_RUN"
	case kvmGetRegs:
		return "KVM_GET_REGS"
	case kvmSetRegs:
		return "KVM_SET_REGS"
	case kvmGetSregs:
		return "KVM_GET_SREGS"
	case kvmSetSregs:
		return "KVM_SET_SREGS"
	case kvmTranslate:
		return "KVM_TRANSLATE"
	case kvmGetMSRs:
		return "KVM_GET_MSRS"
	case kvmSetMSRs:
		return "KVM_SET_MSRS"
	case kvmGetFPU:
		return "KVM_GET_FPU"
	case kvmSetFPU:
		return "KVM_SET_FPU"
	case kvmGetLAPIC:
		return "KVM_GET_LAPIC"
	case kvmSetLAPIC:
		return "KVM_SET_LAPIC"
	case kvmSetCPUID2:
		return "KVM_SET_CPUID2"
	case kvmGetMPState:
		return "KVM_GET_MP_STATE"
	case kvmSetMPState:
		return "KVM_SET_MP_STATE"
	case kvmSetGuestDebug:
		return "KVM_SET_GUEST_DEBUG"
	case kvmGetVCPUEvents:
		return "KVM_GET_VCPU_EVENTS"
	case kvmSetVCPUEvents:
		return "KVM_SET_VCPU_EVENTS"
	case kvmGetXSave:
		return "KVM_GET_XSAVE"
	case kvmSetXSave:
		return "KVM_SET_XSAVE"
	}
	return "KVM_UNKNOWN_IOCTL"
}

// RuntimeIoctls are the KVM ioctl requests a VMM makes once its VM is set
// up and its vCPUs created: running the vCPUs and reading their state
// (error reports, sampling), carrying out an instruction KVM's emulator
// could not (setting the registers, injecting the exception it raises),
// interrupts (lines, MSIs, routes, irqfds), and doorbells (ioeventfds
// follow the guest's BAR programming). A confined VMM allows only these
// (see internal/sandbox).
func RuntimeIoctls() []uint64 {
	return []uint64{
		kvmRun, kvmGetRegs, kvmGetSregs, kvmTranslate, kvmGetMSRs, kvmGetFPU, kvmGetLAPIC,
		kvmGetMPState, kvmGetVCPUEvents, kvmGetXSave,
		kvmSetRegs, kvmSetVCPUEvents,
		kvmIRQLine, kvmSetGSIRouting, kvmIRQFD, kvmIOEventFD, kvmSignalMSI, kvmGetClock,
	}
}
