package kvm

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

func TestOpenMissing(t *testing.T) {
	_, err := Open("/nonexistent/kvm")
	if !errors.Is(err, unix.ENOENT) {
		t.Fatalf("Open of a missing path = %v, want ENOENT", err)
	}
}

func TestSystem(t *testing.T) {
	sys := openKVM(t)
	if v, err := sys.APIVersion(); err != nil || v != APIVersion {
		t.Fatalf("APIVersion = %d, %v", v, err)
	}
	size, err := sys.VCPUMmapSize()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("vcpu mmap size %d", size)

	for _, c := range []Cap{CapUserMemory, CapIRQChip, CapIOEventFD, CapIRQFD, CapIRQRouting,
		CapSignalMSI, CapImmediateExit, CapInternalErrorData, CapExitOnEmulationFailure,
		CapX2APICAPI, CapX86UserSpaceMSR, CapPIT2, CapVCPUEvents, CapGetMSRFeatures,
		CapSetTSSAddr, CapSetIdentityMapAddr, CapXSave, CapNRMemslots, CapMaxVCPUs} {
		n, err := sys.CheckExtension(c)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%v = %d", c, n)
	}
	if n, _ := sys.CheckExtension(CapImmediateExit); n == 0 {
		t.Error("KVM lacks KVM_CAP_IMMEDIATE_EXIT, which Kick relies on")
	}

	cpuid, err := sys.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	if len(cpuid) == 0 || cpuid[0].Function != 0 {
		t.Fatalf("SupportedCPUID: %d entries, first %+v", len(cpuid), cpuid)
	}
	t.Logf("%d supported CPUID entries", len(cpuid))

	msrs, err := sys.MSRIndexList()
	if err != nil {
		t.Fatal(err)
	}
	if len(msrs) == 0 {
		t.Error("empty MSR index list")
	}
	t.Logf("%d MSRs in the index list", len(msrs))

	if n, _ := sys.CheckExtension(CapGetMSRFeatures); n > 0 {
		feats, err := sys.FeatureMSRIndexList()
		if err != nil {
			t.Fatal(err)
		}
		entries := make([]MSREntry, len(feats))
		for i, idx := range feats {
			entries[i].Index = idx
		}
		if err := sys.GetFeatureMSRs(entries); err != nil {
			t.Fatal(err)
		}
		t.Logf("feature MSRs: %#x", entries)
	}
}

func TestVMSetup(t *testing.T) {
	sys := openKVM(t)
	vm, err := sys.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	if err := vm.SetIdentityMapAddr(0xfffbc000); err != nil {
		t.Logf("SetIdentityMapAddr: %v", err)
	}
	if err := vm.SetTSSAddr(0xfffbd000); err != nil {
		t.Logf("SetTSSAddr: %v", err)
	}
	if err := vm.CreateIRQChip(); err != nil {
		t.Fatal(err)
	}
	if err := vm.CreatePIT2(); err != nil {
		t.Fatal(err)
	}
	if err := vm.SetGSIRouting(DefaultIRQRouting()); err != nil {
		t.Fatal(err)
	}
	if n, _ := vm.CheckExtension(CapX2APICAPI); n > 0 {
		if err := vm.EnableCap(CapX2APICAPI, X2APICAPIUse32BitIDs|X2APICAPIDisableBroadcastQuirk); err != nil {
			t.Error(err)
		}
	}
	if err := vm.EnableCap(CapX2APICAPI, 1, 2, 3, 4, 5); err == nil {
		t.Error("EnableCap with 5 arguments succeeded")
	}
	if err := vm.SetClock(1e9); err != nil {
		t.Error(err)
	}
	if ns, err := vm.GetClock(); err != nil || ns < 1e9 {
		t.Errorf("GetClock = %d, %v", ns, err)
	}

	// Unaligned or empty memory is refused before reaching KVM.
	buf := make([]byte, 2*pageSize)
	for _, host := range [][]byte{nil, buf[1 : 1+pageSize], buf[:100]} {
		if err := vm.SetUserMemoryRegion(1, 0, 0, host); err == nil {
			t.Errorf("SetUserMemoryRegion accepted %d bytes at %#x", len(host), hostAddr(host))
		}
	}
	if err := vm.SetUserMemoryRegion(1, 0, 0x123, buf[:pageSize]); err == nil {
		t.Error("SetUserMemoryRegion accepted an unaligned guest address")
	}
	mem, err := unix.Mmap(-1, 0, pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	if err := vm.SetUserMemoryRegion(1, MemReadonly, 0x100000, mem); err != nil {
		t.Logf("read-only slot: %v", err)
		if err := vm.SetUserMemoryRegion(1, 0, 0x100000, mem); err != nil {
			t.Fatal(err)
		}
	}
	if err := vm.DeleteUserMemoryRegion(1); err != nil {
		t.Fatal(err)
	}

	cpu, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	defer cpu.Close()
	if _, err := vm.CreateVCPU(0); !errors.Is(err, unix.EEXIST) {
		t.Errorf("second vCPU 0: %v, want EEXIST", err)
	}
	// PVM is said to refuse IA32_ARCH_CAPABILITIES (0x10a); record what
	// this host does.
	for _, v := range []uint64{0, 0x69} {
		err = cpu.SetMSRs([]MSREntry{{Index: 0x10a, Data: v}})
		t.Logf("SetMSRs(IA32_ARCH_CAPABILITIES=%#x) without CPUID: %v", v, err)
	}
	cpuid, err := sys.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	if err := cpu.SetCPUID2(cpuid); err != nil {
		t.Fatal(err)
	}
	err = cpu.SetMSRs([]MSREntry{{Index: 0x10a, Data: 0x69}})
	t.Logf("SetMSRs(IA32_ARCH_CAPABILITIES=0x69) with supported CPUID: %v", err)
}
