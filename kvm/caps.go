package kvm

import "strconv"

// Cap is a KVM capability number (KVM_CAP_*), for CheckExtension and
// EnableCap.
type Cap uint32

// Capabilities used by govmd. Values from include/uapi/linux/kvm.h.
const (
	CapIRQChip                Cap = 0   // KVM_CAP_IRQCHIP
	CapHLT                    Cap = 1   // KVM_CAP_HLT
	CapUserMemory             Cap = 3   // KVM_CAP_USER_MEMORY
	CapSetTSSAddr             Cap = 4   // KVM_CAP_SET_TSS_ADDR
	CapExtCPUID               Cap = 7   // KVM_CAP_EXT_CPUID
	CapNRVCPUs                Cap = 9   // KVM_CAP_NR_VCPUS: recommended maximum
	CapNRMemslots             Cap = 10  // KVM_CAP_NR_MEMSLOTS
	CapPIT                    Cap = 11  // KVM_CAP_PIT
	CapMPState                Cap = 14  // KVM_CAP_MP_STATE
	CapSyncMMU                Cap = 16  // KVM_CAP_SYNC_MMU
	CapSetGuestDebug          Cap = 23  // KVM_CAP_SET_GUEST_DEBUG
	CapIRQRouting             Cap = 25  // KVM_CAP_IRQ_ROUTING: returns the number of GSIs
	CapIRQInjectStatus        Cap = 26  // KVM_CAP_IRQ_INJECT_STATUS
	CapIRQFD                  Cap = 32  // KVM_CAP_IRQFD
	CapPIT2                   Cap = 33  // KVM_CAP_PIT2
	CapIOEventFD              Cap = 36  // KVM_CAP_IOEVENTFD
	CapSetIdentityMapAddr     Cap = 37  // KVM_CAP_SET_IDENTITY_MAP_ADDR
	CapAdjustClock            Cap = 39  // KVM_CAP_ADJUST_CLOCK
	CapInternalErrorData      Cap = 40  // KVM_CAP_INTERNAL_ERROR_DATA
	CapVCPUEvents             Cap = 41  // KVM_CAP_VCPU_EVENTS
	CapEnableCap              Cap = 54  // KVM_CAP_ENABLE_CAP
	CapXSave                  Cap = 55  // KVM_CAP_XSAVE
	CapXCRs                   Cap = 56  // KVM_CAP_XCRS
	CapTSCControl             Cap = 60  // KVM_CAP_TSC_CONTROL
	CapGetTSCKHz              Cap = 61  // KVM_CAP_GET_TSC_KHZ
	CapMaxVCPUs               Cap = 66  // KVM_CAP_MAX_VCPUS
	CapSignalMSI              Cap = 77  // KVM_CAP_SIGNAL_MSI
	CapReadonlyMem            Cap = 81  // KVM_CAP_READONLY_MEM
	CapIRQFDResample          Cap = 82  // KVM_CAP_IRQFD_RESAMPLE
	CapIOEventFDNoLength      Cap = 100 // KVM_CAP_IOEVENTFD_NO_LENGTH
	CapCheckExtensionVM       Cap = 105 // KVM_CAP_CHECK_EXTENSION_VM
	CapSplitIRQChip           Cap = 121 // KVM_CAP_SPLIT_IRQCHIP
	CapIOEventFDAnyLength     Cap = 122 // KVM_CAP_IOEVENTFD_ANY_LENGTH
	CapMaxVCPUID              Cap = 128 // KVM_CAP_MAX_VCPU_ID
	CapX2APICAPI              Cap = 129 // KVM_CAP_X2APIC_API
	CapImmediateExit          Cap = 136 // KVM_CAP_IMMEDIATE_EXIT
	CapX86DisableExits        Cap = 143 // KVM_CAP_X86_DISABLE_EXITS
	CapGetMSRFeatures         Cap = 153 // KVM_CAP_GET_MSR_FEATURES
	CapX86UserSpaceMSR        Cap = 188 // KVM_CAP_X86_USER_SPACE_MSR
	CapExitOnEmulationFailure Cap = 204 // KVM_CAP_EXIT_ON_EMULATION_FAILURE
)

// Arguments of EnableCap(CapX2APICAPI, ...).
const (
	X2APICAPIUse32BitIDs           = 1 << 0 // KVM_X2APIC_API_USE_32BIT_IDS
	X2APICAPIDisableBroadcastQuirk = 1 << 1 // KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK
)

// Arguments of EnableCap(CapX86UserSpaceMSR, ...): which MSR accesses exit
// to userspace as ExitX86RDMSR/ExitX86WRMSR instead of injecting #GP.
const (
	MSRExitReasonInval   = 1 << 0 // KVM_MSR_EXIT_REASON_INVAL
	MSRExitReasonUnknown = 1 << 1 // KVM_MSR_EXIT_REASON_UNKNOWN
	MSRExitReasonFilter  = 1 << 2 // KVM_MSR_EXIT_REASON_FILTER
)

var capNames = map[Cap]string{
	CapIRQChip: "IRQCHIP", CapHLT: "HLT", CapUserMemory: "USER_MEMORY",
	CapSetTSSAddr: "SET_TSS_ADDR", CapExtCPUID: "EXT_CPUID", CapNRVCPUs: "NR_VCPUS",
	CapNRMemslots: "NR_MEMSLOTS", CapPIT: "PIT", CapMPState: "MP_STATE",
	CapSyncMMU: "SYNC_MMU", CapSetGuestDebug: "SET_GUEST_DEBUG", CapIRQRouting: "IRQ_ROUTING",
	CapIRQInjectStatus: "IRQ_INJECT_STATUS", CapIRQFD: "IRQFD", CapPIT2: "PIT2",
	CapIOEventFD: "IOEVENTFD", CapSetIdentityMapAddr: "SET_IDENTITY_MAP_ADDR",
	CapAdjustClock: "ADJUST_CLOCK", CapInternalErrorData: "INTERNAL_ERROR_DATA",
	CapVCPUEvents: "VCPU_EVENTS", CapEnableCap: "ENABLE_CAP", CapXSave: "XSAVE",
	CapXCRs: "XCRS", CapTSCControl: "TSC_CONTROL", CapGetTSCKHz: "GET_TSC_KHZ",
	CapMaxVCPUs: "MAX_VCPUS", CapSignalMSI: "SIGNAL_MSI", CapReadonlyMem: "READONLY_MEM",
	CapIRQFDResample: "IRQFD_RESAMPLE", CapIOEventFDNoLength: "IOEVENTFD_NO_LENGTH",
	CapCheckExtensionVM: "CHECK_EXTENSION_VM", CapSplitIRQChip: "SPLIT_IRQCHIP",
	CapIOEventFDAnyLength: "IOEVENTFD_ANY_LENGTH", CapMaxVCPUID: "MAX_VCPU_ID",
	CapX2APICAPI: "X2APIC_API", CapImmediateExit: "IMMEDIATE_EXIT",
	CapX86DisableExits: "X86_DISABLE_EXITS", CapGetMSRFeatures: "GET_MSR_FEATURES",
	CapX86UserSpaceMSR: "X86_USER_SPACE_MSR", CapExitOnEmulationFailure: "EXIT_ON_EMULATION_FAILURE",
}

// String returns the KVM_CAP_ name, or the number for capabilities this
// package does not name.
func (c Cap) String() string {
	if n, ok := capNames[c]; ok {
		return "KVM_CAP_" + n
	}
	return "KVM_CAP(" + strconv.FormatUint(uint64(c), 10) + ")"
}
