package vmm

import (
	"fmt"

	"github.com/govmd/govmd/kvm"
)

// CPUProfile selects the CPU the guest sees (Config.CPUProfile).
type CPUProfile int

// CPU profiles.
const (
	ProfileAuto CPUProfile = iota // detect the host
	ProfileHost                   // everything KVM supports
	ProfilePVM                    // avoid what a software-nested PVM host cannot run
	ProfileBare                   // no hypervisor bit, no KVM paravirtual leaves
)

var profileNames = []string{"auto", "host", "pvm", "bare"}

// ParseCPUProfile parses auto, host, pvm or bare.
func ParseCPUProfile(s string) (CPUProfile, error) {
	for i, n := range profileNames {
		if s == n {
			return CPUProfile(i), nil
		}
	}
	return 0, fmt.Errorf("cpu profile %q is not one of auto, host, pvm, bare", s)
}

// String returns the profile's name as ParseCPUProfile accepts it.
func (p CPUProfile) String() string {
	if p >= 0 && int(p) < len(profileNames) {
		return profileNames[p]
	}
	return fmt.Sprintf("CPUProfile(%d)", int(p))
}

// MarshalText implements encoding.TextMarshaler.
func (p CPUProfile) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler (for flags and
// configuration files).
func (p *CPUProfile) UnmarshalText(b []byte) error {
	v, err := ParseCPUProfile(string(b))
	if err == nil {
		*p = v
	}
	return err
}

// guestProfile is what resolveProfile decided for the guest's CPUID.
type guestProfile struct {
	pvm  bool // remove what PVM's instruction emulator cannot run
	bare bool // present no hypervisor: no CPUID bit 31, no KVM leaves
}

// kvmLeaves is the CPUID range of KVM's paravirtual interface.
const (
	kvmLeafFirst = 0x40000000
	kvmLeafLast  = 0x400000ff
)

// cpuid bit positions used below.
const (
	// leaf 1 ECX
	cpuid1ECXFMA     = 1 << 12
	cpuid1ECXCX16    = 1 << 13
	cpuid1ECXX2APIC  = 1 << 21
	cpuid1ECXMOVBE   = 1 << 22
	cpuid1ECXPOPCNT  = 1 << 23
	cpuid1ECXTSCDL   = 1 << 24
	cpuid1ECXAES     = 1 << 25
	cpuid1ECXXSAVE   = 1 << 26
	cpuid1ECXOSXSAVE = 1 << 27
	cpuid1ECXAVX     = 1 << 28
	cpuid1ECXF16C    = 1 << 29
	cpuid1ECXRDRAND  = 1 << 30
	// cpuid1ECXHypervisor tells the guest it runs under a hypervisor.
	// KVM_GET_SUPPORTED_CPUID does not report it; without it Linux never
	// looks at the KVM leaves 0x40000000-1 (no kvmclock, no PV features)
	// and falls back to jiffies for time.
	cpuid1ECXHypervisor = 1 << 31
	// leaf 1 EDX
	cpuid1EDXHTT = 1 << 28
	// leaf 7.0 EBX
	cpuid7EBXFSGSBASE = 1 << 0
	cpuid7EBXAVX2     = 1 << 5
	cpuid7EBXERMS     = 1 << 9
	cpuid7EBXSMAP     = 1 << 20
	cpuid7EBXAVX512   = 1<<16 | 1<<17 | 1<<21 | 1<<26 | 1<<27 | 1<<28 | 1<<30 | 1<<31
	// leaf 7.0 ECX
	cpuid7ECXPKU    = 1 << 3
	cpuid7ECXOSPKE  = 1 << 4
	cpuid7ECXAVX512 = 1<<1 | 1<<6 | 1<<11 | 1<<12 | 1<<14
	cpuid7ECXLA57   = 1 << 16
	cpuid7ECXVAES   = 1<<9 | 1<<10
	// leaf 7.0 EDX
	cpuid7EDXFSRM       = 1 << 4
	cpuid7EDXAVX512     = 1<<2 | 1<<3 | 1<<8 | 1<<23
	cpuid7EDXArchCaps   = 1 << 29
	cpuid7EDXCoreCaps   = 1 << 30
	cpuid80000001ECXTOE = 1 << 22 // topology extensions (AMD)
	// KVM paravirtual features (leaf 0x40000001 EAX) that work through
	// hypercalls, which never complete on a PVM host for an emulated guest.
	kvmFeaturePVUnhalt     = 1 << 7
	kvmFeaturePVSendIPI    = 1 << 11
	kvmFeaturePVSchedYield = 1 << 13
)

// pvmMasks lists what the PVM profile removes, and why. Each entry was seen
// to stop a guest under PVM's instruction emulator (see docs/pvm.md).
var pvmMasks = []struct {
	leaf     uint32
	eax, ebx uint32
	ecx, edx uint32
	why      string
}{
	{leaf: 1, ecx: cpuid1ECXCX16, why: "cmpxchg16b is not emulated"},
	{leaf: 1, ecx: cpuid1ECXPOPCNT, why: "popcnt is not emulated"},
	{leaf: 1, ecx: cpuid1ECXXSAVE | cpuid1ECXOSXSAVE | cpuid1ECXAVX | cpuid1ECXF16C | cpuid1ECXFMA,
		why: "xsave/xrstor are not emulated (and AVX needs XSAVE)"},
	{leaf: 1, ecx: cpuid1ECXMOVBE | cpuid1ECXAES | cpuid1ECXRDRAND, why: "not emulated"},
	{leaf: 7, ebx: cpuid7EBXFSGSBASE, why: "rd/wrfsbase are not emulated"},
	{leaf: 7, ebx: cpuid7EBXSMAP, why: "clac/stac are not emulated"},
	{leaf: 7, ebx: cpuid7EBXAVX2 | cpuid7EBXAVX512, ecx: cpuid7ECXAVX512 | cpuid7ECXVAES | cpuid7ECXPKU | cpuid7ECXOSPKE | cpuid7ECXLA57,
		edx: cpuid7EDXAVX512, why: "needs XSAVE"},
	{leaf: 7, ebx: cpuid7EBXERMS, edx: cpuid7EDXFSRM, why: "rep movsb is emulated byte by byte"},
	{leaf: 7, edx: cpuid7EDXArchCaps | cpuid7EDXCoreCaps, why: "the host refuses MSR 0x10a (IA32_ARCH_CAPABILITIES)"},
	{leaf: 0x40000001, eax: kvmFeaturePVUnhalt | kvmFeaturePVSendIPI | kvmFeaturePVSchedYield,
		why: "KVM hypercalls from an emulated guest never complete"},
}

// guestCPUID returns the CPUID table for vCPU id of n, from what KVM
// supports. It sets the APIC IDs and a flat topology (n cores of one
// thread in one package) and, for the PVM profile, removes the features
// listed in pvmMasks; the bare profile removes the hypervisor bit and the
// KVM leaves.
func guestCPUID(supported []kvm.CPUIDEntry, id, n int, p guestProfile) []kvm.CPUIDEntry {
	out := make([]kvm.CPUIDEntry, 0, len(supported))
	coreBits := uint32(0)
	for 1<<coreBits < n {
		coreBits++
	}
	for _, e := range supported {
		if p.bare && e.Function >= kvmLeafFirst && e.Function <= kvmLeafLast {
			continue
		}
		switch e.Function {
		case 1:
			e.EBX = e.EBX&0x0000ffff | uint32(id)<<24 | uint32(n)<<16
			if !p.bare {
				e.ECX |= cpuid1ECXHypervisor
			}
			if n > 1 {
				e.EDX |= cpuid1EDXHTT
			}
		case 4:
			// Cache leaves: cores per package - 1 in EAX[31:26]; one
			// thread shares each cache level with no one else.
			e.EAX = e.EAX&0x03ffffff | uint32(n-1)<<26
			e.EAX &^= 0xfff << 14
		case 0xb, 0x1f:
			e.EDX = uint32(id)
			switch e.Index {
			case 0: // SMT level: one thread per core
				e.EAX, e.EBX, e.ECX = 0, 1, 1<<8
			case 1: // core level
				e.EAX, e.EBX, e.ECX = coreBits, uint32(n), 2<<8|1
			default:
				e.EAX, e.EBX, e.ECX = 0, 0, e.Index
			}
		case 0x80000001:
			// Without topology extensions Linux takes the topology
			// from leaves 0xb and 0x80000008 (which KVM leaves at the
			// host's values in 0x8000001e).
			e.ECX &^= cpuid80000001ECXTOE
		case 0x80000008:
			e.ECX = e.ECX&^0xf0ff | uint32(n-1) | coreBits<<12
		case 0x8000001e:
			continue
		case 0xd:
			if p.pvm {
				continue // no XSAVE
			}
		}
		if p.pvm {
			for _, m := range pvmMasks {
				if e.Function == m.leaf && (m.leaf != 7 || e.Index == 0) {
					e.EAX &^= m.eax
					e.EBX &^= m.ebx
					e.ECX &^= m.ecx
					e.EDX &^= m.edx
				}
			}
		}
		out = append(out, e)
	}
	return out
}

// resolveProfile turns Config.CPUProfile into the guest profile, with the
// reason for logs.
func resolveProfile(profile CPUProfile, detect func() kvm.HostProfile) (guestProfile, string) {
	switch profile {
	case ProfileHost:
		return guestProfile{}, "--cpu-profile host"
	case ProfilePVM:
		return guestProfile{pvm: true}, "--cpu-profile pvm"
	case ProfileBare:
		return guestProfile{bare: true}, "--cpu-profile bare"
	}
	hp := detect()
	return guestProfile{pvm: hp.PVM, bare: hp.Bare}, "detected: " + hp.Reason
}
