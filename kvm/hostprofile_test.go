package kvm

import "testing"

func TestDetectHostProfile(t *testing.T) {
	intelInfo := []byte("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme vmx sse2\n\nprocessor\t: 1\n")
	noVirtInfo := []byte("processor\t: 0\nflags\t\t: fpu vme sse2 hypervisor\n")
	tcgInfo := []byte("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: QEMU TCG CPU version 2.5+\nflags\t\t: fpu svm hypervisor\n")
	epycInfo := []byte("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu svm\n")
	tests := []struct {
		name    string
		modules []string
		cpuinfo []byte
		pvm     bool
		bare    bool
	}{
		{"kvm_pvm module", []string{"kvm", "kvm_pvm"}, noVirtInfo, true, false},
		{"kvm_pvm wins over cpu flags", []string{"kvm_pvm"}, intelInfo, true, false},
		{"kvm_intel", []string{"kvm", "kvm_intel"}, intelInfo, false, false},
		{"kvm_amd", []string{"kvm_amd"}, nil, false, false},
		{"kvm_amd on EPYC", []string{"kvm_amd"}, epycInfo, false, false},
		{"kvm_amd on QEMU TCG", []string{"kvm_amd"}, tcgInfo, false, true},
		{"no module, vmx flag", nil, intelInfo, false, false},
		{"no module, no vmx/svm", nil, noVirtInfo, true, false},
		{"nothing readable", nil, nil, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			loaded := func(name string) bool {
				for _, m := range tc.modules {
					if m == name {
						return true
					}
				}
				return false
			}
			p := detectHostProfile(loaded, tc.cpuinfo)
			if p.PVM != tc.pvm || p.Bare != tc.bare || p.Reason == "" {
				t.Fatalf("got %+v, want PVM=%t Bare=%t with a reason", p, tc.pvm, tc.bare)
			}
		})
	}
	t.Logf("this host: %+v", DetectHostProfile())
}

// FuzzCPUFlags parses arbitrary /proc/cpuinfo text.
func FuzzCPUFlags(f *testing.F) {
	f.Add([]byte("flags\t\t: fpu vmx\n"))
	f.Add([]byte("flags:"))
	f.Add([]byte(":::\nflags : svm\x00\n"))
	f.Fuzz(func(t *testing.T, cpuinfo []byte) {
		flags := cpuFlags(cpuinfo)
		for f := range flags {
			if f == "" {
				t.Fatal("empty flag")
			}
		}
		_ = detectHostProfile(func(string) bool { return false }, cpuinfo)
	})
}
