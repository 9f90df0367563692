package kvm

import (
	"testing"
	"unsafe"
)

// The expected sizes and offsets below are the kernel's for x86-64, from
// include/uapi/linux/kvm.h and arch/x86/include/uapi/asm/kvm.h (Linux 6.1
// and 6.18 agree), computed with offsetof/sizeof by a C compiler.

func TestStructSizes(t *testing.T) {
	tests := []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"kvm_regs", unsafe.Sizeof(Regs{}), 144},
		{"kvm_segment", unsafe.Sizeof(Segment{}), 24},
		{"kvm_dtable", unsafe.Sizeof(DTable{}), 16},
		{"kvm_sregs", unsafe.Sizeof(Sregs{}), 312},
		{"kvm_fpu", unsafe.Sizeof(FPU{}), 416},
		{"kvm_xsave", unsafe.Sizeof(XSave{}), 4096},
		{"kvm_lapic_state", unsafe.Sizeof(LAPICState{}), 1024},
		{"kvm_mp_state", unsafe.Sizeof(MPState(0)), 4},
		{"kvm_vcpu_events", unsafe.Sizeof(VCPUEvents{}), 64},
		{"kvm_translation", unsafe.Sizeof(Translation{}), 24},
		{"kvm_guest_debug", unsafe.Sizeof(GuestDebug{}), 72},
		{"kvm_userspace_memory_region", unsafe.Sizeof(userMemoryRegion{}), 32},
		{"kvm_pit_config", unsafe.Sizeof(pitConfig{}), 64},
		{"kvm_irq_level", unsafe.Sizeof(irqLevel{}), 8},
		{"kvm_ioeventfd", unsafe.Sizeof(ioEventFD{}), 64},
		{"kvm_irqfd", unsafe.Sizeof(irqFD{}), 32},
		{"kvm_msi", unsafe.Sizeof(kvmMSI{}), 32},
		{"kvm_enable_cap", unsafe.Sizeof(enableCap{}), 104},
		{"kvm_clock_data", unsafe.Sizeof(clockData{}), 48},
		// Variable-length structures, encoded by hand in encode.go.
		{"kvm_cpuid2 header", cpuid2HeaderSize, 8},
		{"kvm_cpuid_entry2", cpuidEntrySize, 40},
		{"kvm_msrs header", msrsHeaderSize, 8},
		{"kvm_msr_entry", msrEntrySize, 16},
		{"kvm_msr_list header", msrListHeaderSize, 4},
		{"kvm_irq_routing header", routingHeaderSize, 8},
		{"kvm_irq_routing_entry", routingEntrySize, 48},
		{"kvm_run", runSize, 2352},
	}
	for _, tc := range tests {
		if tc.got != tc.want {
			t.Errorf("sizeof(struct %s) = %d, kernel has %d", tc.name, tc.got, tc.want)
		}
	}
}

func TestFieldOffsets(t *testing.T) {
	var (
		seg  Segment
		sr   Sregs
		fpu  FPU
		ev   VCPUEvents
		tr   Translation
		gd   GuestDebug
		mr   userMemoryRegion
		iev  ioEventFD
		irqf irqFD
		msi  kvmMSI
		ec   enableCap
		cd   clockData
	)
	tests := []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"kvm_regs.rip", unsafe.Offsetof(Regs{}.RIP), 128},
		{"kvm_regs.rflags", unsafe.Offsetof(Regs{}.RFLAGS), 136},
		{"kvm_segment.limit", unsafe.Offsetof(seg.Limit), 8},
		{"kvm_segment.selector", unsafe.Offsetof(seg.Selector), 12},
		{"kvm_segment.type", unsafe.Offsetof(seg.Type), 14},
		{"kvm_segment.present", unsafe.Offsetof(seg.Present), 15},
		{"kvm_segment.dpl", unsafe.Offsetof(seg.DPL), 16},
		{"kvm_segment.db", unsafe.Offsetof(seg.DB), 17},
		{"kvm_segment.s", unsafe.Offsetof(seg.S), 18},
		{"kvm_segment.l", unsafe.Offsetof(seg.L), 19},
		{"kvm_segment.g", unsafe.Offsetof(seg.G), 20},
		{"kvm_segment.avl", unsafe.Offsetof(seg.AVL), 21},
		{"kvm_segment.unusable", unsafe.Offsetof(seg.Unusable), 22},
		{"kvm_sregs.gdt", unsafe.Offsetof(sr.GDT), 192},
		{"kvm_sregs.idt", unsafe.Offsetof(sr.IDT), 208},
		{"kvm_sregs.cr0", unsafe.Offsetof(sr.CR0), 224},
		{"kvm_sregs.efer", unsafe.Offsetof(sr.EFER), 264},
		{"kvm_sregs.apic_base", unsafe.Offsetof(sr.APICBase), 272},
		{"kvm_sregs.interrupt_bitmap", unsafe.Offsetof(sr.InterruptBitmap), 280},
		{"kvm_fpu.fcw", unsafe.Offsetof(fpu.FCW), 128},
		{"kvm_fpu.fsw", unsafe.Offsetof(fpu.FSW), 130},
		{"kvm_fpu.ftwx", unsafe.Offsetof(fpu.FTWX), 132},
		{"kvm_fpu.last_opcode", unsafe.Offsetof(fpu.LastOpcode), 134},
		{"kvm_fpu.last_ip", unsafe.Offsetof(fpu.LastIP), 136},
		{"kvm_fpu.last_dp", unsafe.Offsetof(fpu.LastDP), 144},
		{"kvm_fpu.xmm", unsafe.Offsetof(fpu.XMM), 152},
		{"kvm_fpu.mxcsr", unsafe.Offsetof(fpu.MXCSR), 408},
		{"kvm_vcpu_events.interrupt", unsafe.Offsetof(ev.Interrupt), 8},
		{"kvm_vcpu_events.nmi", unsafe.Offsetof(ev.NMI), 12},
		{"kvm_vcpu_events.sipi_vector", unsafe.Offsetof(ev.SIPIVector), 16},
		{"kvm_vcpu_events.flags", unsafe.Offsetof(ev.Flags), 20},
		{"kvm_vcpu_events.smi", unsafe.Offsetof(ev.SMI), 24},
		{"kvm_vcpu_events.triple_fault", unsafe.Offsetof(ev.TripleFaultPending), 28},
		{"kvm_vcpu_events.exception_has_payload", unsafe.Offsetof(ev.ExceptionHasPayload), 55},
		{"kvm_vcpu_events.exception_payload", unsafe.Offsetof(ev.ExceptionPayload), 56},
		{"kvm_vcpu_events.exception.error_code", unsafe.Offsetof(ev.Exception.ErrorCode), 4},
		{"kvm_translation.physical_address", unsafe.Offsetof(tr.PhysicalAddress), 8},
		{"kvm_translation.valid", unsafe.Offsetof(tr.Valid), 16},
		{"kvm_translation.writeable", unsafe.Offsetof(tr.Writeable), 17},
		{"kvm_translation.usermode", unsafe.Offsetof(tr.Usermode), 18},
		{"kvm_guest_debug.arch", unsafe.Offsetof(gd.DebugRegs), 8},
		{"kvm_userspace_memory_region.guest_phys_addr", unsafe.Offsetof(mr.GuestPhysAddr), 8},
		{"kvm_userspace_memory_region.memory_size", unsafe.Offsetof(mr.MemorySize), 16},
		{"kvm_userspace_memory_region.userspace_addr", unsafe.Offsetof(mr.UserspaceAddr), 24},
		{"kvm_ioeventfd.addr", unsafe.Offsetof(iev.Addr), 8},
		{"kvm_ioeventfd.len", unsafe.Offsetof(iev.Len), 16},
		{"kvm_ioeventfd.fd", unsafe.Offsetof(iev.FD), 20},
		{"kvm_ioeventfd.flags", unsafe.Offsetof(iev.Flags), 24},
		{"kvm_irqfd.gsi", unsafe.Offsetof(irqf.GSI), 4},
		{"kvm_irqfd.flags", unsafe.Offsetof(irqf.Flags), 8},
		{"kvm_irqfd.resamplefd", unsafe.Offsetof(irqf.ResampleFD), 12},
		{"kvm_msi.address_hi", unsafe.Offsetof(msi.AddressHi), 4},
		{"kvm_msi.data", unsafe.Offsetof(msi.Data), 8},
		{"kvm_msi.flags", unsafe.Offsetof(msi.Flags), 12},
		{"kvm_msi.devid", unsafe.Offsetof(msi.DevID), 16},
		{"kvm_enable_cap.flags", unsafe.Offsetof(ec.Flags), 4},
		{"kvm_enable_cap.args", unsafe.Offsetof(ec.Args), 8},
		{"kvm_clock_data.flags", unsafe.Offsetof(cd.Flags), 8},
		{"kvm_clock_data.realtime", unsafe.Offsetof(cd.Realtime), 16},
		{"kvm_clock_data.host_tsc", unsafe.Offsetof(cd.HostTSC), 24},
	}
	for _, tc := range tests {
		if tc.got != tc.want {
			t.Errorf("offsetof(%s) = %d, kernel has %d", tc.name, tc.got, tc.want)
		}
	}
}

// TestRunOffsets checks the struct kvm_run offsets used by the exit
// decoder.
func TestRunOffsets(t *testing.T) {
	tests := []struct {
		name      string
		got, want int
	}{
		{"immediate_exit", runImmediateExit, 1},
		{"exit_reason", runExitReason, 8},
		{"ready_for_interrupt_injection", runReadyForInjection, 12},
		{"if_flag", runIFFlag, 13},
		{"cr8", runCR8, 16},
		{"apic_base", runAPICBase, 24},
		{"io.direction", runUnion + ioDirection, 32},
		{"io.size", runUnion + ioSize, 33},
		{"io.port", runUnion + ioPort, 34},
		{"io.count", runUnion + ioCount, 36},
		{"io.data_offset", runUnion + ioDataOffset, 40},
		{"mmio.phys_addr", runUnion + mmioPhysAddr, 32},
		{"mmio.data", runUnion + mmioData, 40},
		{"mmio.len", runUnion + mmioLen, 48},
		{"mmio.is_write", runUnion + mmioIsWrite, 52},
		{"internal.suberror", runUnion + internalSuberror, 32},
		{"internal.ndata", runUnion + internalNData, 36},
		{"internal.data", runUnion + internalData, 40},
		{"emulation_failure.flags", runUnion + emulFlags, 40},
		{"emulation_failure.insn_size", runUnion + emulInsnSize, 48},
		{"emulation_failure.insn_bytes", runUnion + emulInsnBytes, 49},
		{"msr.error", runUnion + msrError, 32},
		{"msr.reason", runUnion + msrReason, 40},
		{"msr.index", runUnion + msrIndex, 44},
		{"msr.data", runUnion + msrData, 48},
		{"kvm_valid_regs", runUnion + runUnionSize, 288},
	}
	for _, tc := range tests {
		if tc.got != tc.want {
			t.Errorf("offsetof(kvm_run.%s) = %d, kernel has %d", tc.name, tc.got, tc.want)
		}
	}
}
