package kvm

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// DefaultPath is the KVM device node.
const DefaultPath = "/dev/kvm"

// APIVersion is the only KVM API version this package (and Linux since
// 2.6.22) speaks.
const APIVersion = 12

// System is an open /dev/kvm: the system-wide KVM handle. Its methods may be
// called from any goroutine. Close it when no more VMs will be created;
// VMs created from it stay usable.
type System struct {
	f  *os.File
	fd int
}

// Open opens the KVM device at path (DefaultPath if empty) and checks that
// it speaks API version 12.
func Open(path string) (*System, error) {
	if path == "" {
		path = DefaultPath
	}
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	s := &System{f: os.NewFile(uintptr(fd), path), fd: fd}
	v, err := s.APIVersion()
	if err != nil {
		s.Close()
		return nil, err
	}
	if v != APIVersion {
		s.Close()
		return nil, fmt.Errorf("kvm: %s speaks API version %d, want %d", path, v, APIVersion)
	}
	return s, nil
}

// Close closes /dev/kvm.
func (s *System) Close() error { return s.f.Close() }

// APIVersion returns KVM_GET_API_VERSION (12 on every supported kernel).
func (s *System) APIVersion() (int, error) {
	r, e := ioctlVal(s.fd, kvmGetAPIVersion, 0)
	if e != 0 {
		return 0, ioctlErr(kvmGetAPIVersion, e)
	}
	return int(r), nil
}

// CheckExtension returns KVM_CHECK_EXTENSION for c: 0 if the capability is
// absent, otherwise 1 or a capability-specific value (a count, a bit mask).
func (s *System) CheckExtension(c Cap) (int, error) {
	return checkExtension(s.fd, c)
}

func checkExtension(fd int, c Cap) (int, error) {
	r, e := ioctlVal(fd, kvmCheckExtension, uintptr(c))
	if e != 0 {
		return 0, fmt.Errorf("kvm: %s: %w", c, ioctlErr(kvmCheckExtension, e))
	}
	return int(r), nil
}

// VCPUMmapSize returns the size of the region to mmap from a vCPU fd: the
// kvm_run page plus the pages that follow it (port I/O data, coalesced MMIO).
func (s *System) VCPUMmapSize() (int, error) {
	r, e := ioctlVal(s.fd, kvmGetVCPUMmapSize, 0)
	if e != 0 {
		return 0, ioctlErr(kvmGetVCPUMmapSize, e)
	}
	if int(r) < runSize {
		return 0, fmt.Errorf("kvm: vcpu mmap size %d smaller than struct kvm_run (%d)", r, runSize)
	}
	return int(r), nil
}

// SupportedCPUID returns KVM_GET_SUPPORTED_CPUID: the CPUID leaves KVM can
// expose, with every bit KVM and the host support set. The buffer starts
// small and doubles while the kernel answers E2BIG.
func (s *System) SupportedCPUID() ([]CPUIDEntry, error) {
	for n := 64; ; n *= 2 {
		b := encodeCPUID2(make([]CPUIDEntry, n))
		_, e := ioctlBuf(s.fd, kvmGetSupportedCPUID, b)
		if e == unix.E2BIG && n < maxCPUIDEntries {
			continue
		}
		if e != 0 {
			return nil, ioctlErr(kvmGetSupportedCPUID, e)
		}
		return decodeCPUID2(b)
	}
}

// MSRIndexList returns KVM_GET_MSR_INDEX_LIST: the MSRs that
// GetMSRs/SetMSRs on a vCPU save and restore.
func (s *System) MSRIndexList() ([]uint32, error) {
	return s.msrList(kvmGetMSRIndexList)
}

// FeatureMSRIndexList returns KVM_GET_MSR_FEATURE_INDEX_LIST: the
// feature MSRs (for example IA32_ARCH_CAPABILITIES) whose host-supported
// values GetFeatureMSRs reads.
func (s *System) FeatureMSRIndexList() ([]uint32, error) {
	return s.msrList(kvmGetMSRFeatureIndexList)
}

// msrList asks with an empty list first; the kernel answers E2BIG and
// stores the required count.
func (s *System) msrList(req uintptr) ([]uint32, error) {
	n := 0
	for try := 0; try < 4; try++ {
		b := encodeMSRList(n)
		_, e := ioctlBuf(s.fd, req, b)
		if e == unix.E2BIG {
			need := int(le.Uint32(b))
			if need <= n || need > maxMSRs {
				return nil, fmt.Errorf("kvm: %s: kernel asks for %d entries", requestName(req), need)
			}
			n = need
			continue
		}
		if e != 0 {
			return nil, ioctlErr(req, e)
		}
		return decodeMSRList(b)
	}
	return nil, fmt.Errorf("kvm: %s: list keeps growing", requestName(req))
}

// GetFeatureMSRs fills in the Data of each entry with the value KVM
// supports for that feature MSR (KVM_GET_MSRS on /dev/kvm).
func (s *System) GetFeatureMSRs(entries []MSREntry) error {
	if err := getMSRs(s.fd, entries); err != nil {
		return fmt.Errorf("kvm: feature MSRs: %w", err)
	}
	return nil
}

// getMSRs is KVM_GET_MSRS on a system or vCPU fd. The kernel stops at the
// first MSR it cannot read and returns how many it read.
func getMSRs(fd int, entries []MSREntry) error {
	if len(entries) == 0 {
		return nil
	}
	if len(entries) > maxMSRs {
		return fmt.Errorf("%d MSRs in one call, at most %d", len(entries), maxMSRs)
	}
	b := encodeMSRs(entries)
	r, e := ioctlBuf(fd, kvmGetMSRs, b)
	if e != 0 {
		return ioctlErr(kvmGetMSRs, e)
	}
	n := int(r)
	decodeMSRData(b, entries, n)
	if n < len(entries) {
		return &MSRError{Op: "get", Index: entries[n].Index}
	}
	return nil
}

// MSRError reports the first MSR KVM refused in GetMSRs or SetMSRs; the
// entries before it were processed.
type MSRError struct {
	Op    string // "get" or "set"
	Index uint32
}

// Error implements error.
func (e *MSRError) Error() string {
	return fmt.Sprintf("%s MSR %#x refused by KVM", e.Op, e.Index)
}

// CreateVM creates a VM (KVM_CREATE_VM, default machine type).
func (s *System) CreateVM() (*VM, error) {
	mmapSize, err := s.VCPUMmapSize()
	if err != nil {
		return nil, err
	}
	r, e := ioctlVal(s.fd, kvmCreateVM, 0)
	if e != 0 {
		return nil, ioctlErr(kvmCreateVM, e)
	}
	fd := int(r)
	return &VM{f: os.NewFile(uintptr(fd), "kvm-vm"), fd: fd, mmapSize: mmapSize}, nil
}
