package kvm

import "testing"

// TestIoctlNumbers recomputes every request number from its _IO/_IOR/_IOW/
// _IOWR definition in include/uapi/linux/kvm.h, with the sizes of the
// kernel structures on x86-64.
func TestIoctlNumbers(t *testing.T) {
	tests := []struct {
		name      string
		got, want uintptr
	}{
		{"KVM_GET_API_VERSION", kvmGetAPIVersion, iocIO(0x00)},
		{"KVM_CREATE_VM", kvmCreateVM, iocIO(0x01)},
		{"KVM_GET_MSR_INDEX_LIST", kvmGetMSRIndexList, iocRW(0x02, 4)},
		{"KVM_CHECK_EXTENSION", kvmCheckExtension, iocIO(0x03)},
		{"KVM_GET_VCPU_MMAP_SIZE", kvmGetVCPUMmapSize, iocIO(0x04)},
		{"KVM_GET_SUPPORTED_CPUID", kvmGetSupportedCPUID, iocRW(0x05, 8)},
		{"KVM_GET_MSR_FEATURE_INDEX_LIST", kvmGetMSRFeatureIndexList, iocRW(0x0a, 4)},
		{"KVM_CREATE_VCPU", kvmCreateVCPU, iocIO(0x41)},
		{"KVM_SET_USER_MEMORY_REGION", kvmSetUserMemoryRegion, iocW(0x46, 32)},
		{"KVM_SET_TSS_ADDR", kvmSetTSSAddr, iocIO(0x47)},
		{"KVM_SET_IDENTITY_MAP_ADDR", kvmSetIdentityMapAddr, iocW(0x48, 8)},
		{"KVM_CREATE_IRQCHIP", kvmCreateIRQChip, iocIO(0x60)},
		{"KVM_IRQ_LINE", kvmIRQLine, iocW(0x61, 8)},
		{"KVM_SET_GSI_ROUTING", kvmSetGSIRouting, iocW(0x6a, 8)},
		{"KVM_IRQFD", kvmIRQFD, iocW(0x76, 32)},
		{"KVM_CREATE_PIT2", kvmCreatePIT2, iocW(0x77, 64)},
		{"KVM_IOEVENTFD", kvmIOEventFD, iocW(0x79, 64)},
		{"KVM_SET_CLOCK", kvmSetClock, iocW(0x7b, 48)},
		{"KVM_GET_CLOCK", kvmGetClock, iocR(0x7c, 48)},
		{"KVM_ENABLE_CAP", kvmEnableCap, iocW(0xa3, 104)},
		{"KVM_SIGNAL_MSI", kvmSignalMSI, iocW(0xa5, 32)},
		{"KVM_RUN", kvmRun, iocIO(0x80)},
		{"KVM_GET_REGS", kvmGetRegs, iocR(0x81, 144)},
		{"KVM_SET_REGS", kvmSetRegs, iocW(0x82, 144)},
		{"KVM_GET_SREGS", kvmGetSregs, iocR(0x83, 312)},
		{"KVM_SET_SREGS", kvmSetSregs, iocW(0x84, 312)},
		{"KVM_TRANSLATE", kvmTranslate, iocRW(0x85, 24)},
		{"KVM_GET_MSRS", kvmGetMSRs, iocRW(0x88, 8)},
		{"KVM_SET_MSRS", kvmSetMSRs, iocW(0x89, 8)},
		{"KVM_GET_FPU", kvmGetFPU, iocR(0x8c, 416)},
		{"KVM_SET_FPU", kvmSetFPU, iocW(0x8d, 416)},
		{"KVM_GET_LAPIC", kvmGetLAPIC, iocR(0x8e, 1024)},
		{"KVM_SET_LAPIC", kvmSetLAPIC, iocW(0x8f, 1024)},
		{"KVM_SET_CPUID2", kvmSetCPUID2, iocW(0x90, 8)},
		{"KVM_GET_MP_STATE", kvmGetMPState, iocR(0x98, 4)},
		{"KVM_SET_MP_STATE", kvmSetMPState, iocW(0x99, 4)},
		{"KVM_SET_GUEST_DEBUG", kvmSetGuestDebug, iocW(0x9b, 72)},
		{"KVM_GET_VCPU_EVENTS", kvmGetVCPUEvents, iocR(0x9f, 64)},
		{"KVM_SET_VCPU_EVENTS", kvmSetVCPUEvents, iocW(0xa0, 64)},
		{"KVM_GET_XSAVE", kvmGetXSave, iocR(0xa4, 4096)},
		{"KVM_SET_XSAVE", kvmSetXSave, iocW(0xa5, 4096)},
		{"KVM_GET_STATS_FD", kvmGetStatsFD, iocIO(0xce)},
	}
	seen := make(map[uintptr]string)
	for _, tc := range tests {
		if tc.got != tc.want {
			t.Errorf("%s = %#x, encoding gives %#x", tc.name, tc.got, tc.want)
		}
		if n := requestName(tc.got); n != tc.name {
			t.Errorf("requestName(%#x) = %s, want %s", tc.got, n, tc.name)
		}
		if prev, dup := seen[tc.got]; dup {
			t.Errorf("%s and %s share number %#x", prev, tc.name, tc.got)
		}
		seen[tc.got] = tc.name
	}
}
