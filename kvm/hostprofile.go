package kvm

import (
	"bufio"
	"bytes"
	"os"
	"strings"
)

// HostProfile describes which KVM implementation backs /dev/kvm.
type HostProfile struct {
	// PVM is true when /dev/kvm is PVM (the kvm_pvm module: KVM without
	// hardware virtualization). Guests that are not PVM-enlightened then
	// run in KVM's instruction emulator: slowly, and with
	// ExitInternalError for instructions the emulator lacks.
	PVM bool
	// Bare is true when the guest should see no paravirtual interface
	// (no hypervisor CPUID bit, no KVM leaves): KVM here is itself nested
	// on QEMU's TCG software emulation, where a nested guest's TSCs are
	// skewed across its vCPUs. With kvmclock such a guest reads a TSC
	// frequency it cannot use, fails its local APIC timer check and then
	// has no timer interrupts (sleeps never end). Without the KVM leaves
	// it calibrates its timers against the PIT, which works there.
	Bare bool
	// Reason says what the decision is based on, for logs.
	Reason string
}

// DetectHostProfile inspects /sys/module and /proc/cpuinfo. It never fails:
// missing files lead to a best guess, explained in Reason.
func DetectHostProfile() HostProfile {
	cpuinfo, _ := os.ReadFile("/proc/cpuinfo")
	return detectHostProfile(func(name string) bool {
		_, err := os.Stat("/sys/module/" + name)
		return err == nil
	}, cpuinfo)
}

// IsPVM reports DetectHostProfile().PVM.
func IsPVM() bool { return DetectHostProfile().PVM }

func detectHostProfile(moduleLoaded func(string) bool, cpuinfo []byte) HostProfile {
	if isQEMUTCG(cpuinfo) {
		return HostProfile{Bare: true, Reason: "the host CPU is QEMU TCG (KVM nested on software emulation)"}
	}
	switch {
	case moduleLoaded("kvm_pvm"):
		return HostProfile{PVM: true, Reason: "module kvm_pvm is loaded"}
	case moduleLoaded("kvm_intel"):
		return HostProfile{Reason: "module kvm_intel is loaded (VMX)"}
	case moduleLoaded("kvm_amd"):
		return HostProfile{Reason: "module kvm_amd is loaded (SVM)"}
	}
	flags := cpuFlags(cpuinfo)
	switch {
	case flags == nil:
		return HostProfile{Reason: "no KVM vendor module found and no CPU flags readable"}
	case flags["vmx"] || flags["svm"]:
		return HostProfile{Reason: "CPU has vmx/svm"}
	}
	return HostProfile{PVM: true, Reason: "CPU has neither vmx nor svm"}
}

// cpuinfoField returns the value of the first line of a /proc/cpuinfo
// text whose key is key, and whether there is one.
func cpuinfoField(cpuinfo []byte, key string) (string, bool) {
	sc := bufio.NewScanner(bytes.NewReader(cpuinfo))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		k, val, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return val, true
		}
	}
	return "", false
}

// cpuFlags returns the set of words on the first "flags" line of a
// /proc/cpuinfo text, or nil if there is none.
func cpuFlags(cpuinfo []byte) map[string]bool {
	val, ok := cpuinfoField(cpuinfo, "flags")
	if !ok {
		return nil
	}
	flags := make(map[string]bool)
	for _, f := range strings.Fields(val) {
		flags[f] = true
	}
	return flags
}

// isQEMUTCG reports whether the first "model name" of a /proc/cpuinfo text
// is QEMU's TCG CPU (QEMU without hardware acceleration names its CPU
// models "QEMU TCG CPU version ...").
func isQEMUTCG(cpuinfo []byte) bool {
	val, _ := cpuinfoField(cpuinfo, "model name")
	return strings.Contains(val, "QEMU TCG CPU")
}
