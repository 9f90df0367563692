package e2e

import (
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/govmd/govmd/kvm"
)

// hostProfile is the kind of KVM the e2e tests run on, and everything
// about a guest run that depends on it: time budgets, transfer sizes, the
// digest the guest computes, the kernel command line and QEMU's CPU. A
// guest runs at very different speeds on the three: on hardware (or
// ordinary nested) KVM in seconds, in nested KVM on QEMU TCG about ten
// times slower, and on PVM every guest instruction, user mode included, is
// emulated (docs/pvm.md has the table per test).
type hostProfile struct {
	// Name is kvm (hardware or ordinary nested KVM), pvm (kvm_pvm) or tcg
	// (KVM nested in a QEMU TCG VM, scripts/nested.sh).
	Name string
	// Boot bounds a boot of the test kernel to the agent's first line.
	Boot time.Duration
	// Silence is how long a healthy guest may print nothing: longer than
	// the longest silent phase of a boot (unpacking the initramfs) or of
	// an agent step on this profile.
	Silence time.Duration
	// Step bounds one agent step after the boot (a transfer, a disk
	// write and read-back, a ping).
	Step time.Duration
	// NetStall is how long a TCP transfer into the guest may make no
	// progress.
	NetStall time.Duration
	// TCPBytes is what the CI subset sends each way; the full matrix
	// (make e2e) sends TCPBytesFull.
	TCPBytes, TCPBytesFull int
	// BlkBytes is what the disk tests write and read back.
	BlkBytes int
	// Hash is the digest the guest computes of data it received or read
	// (govmd.hash): sha256 where user code runs natively, crc32 on PVM,
	// where sha256sum of 1 MiB takes minutes of emulated user code.
	Hash string
	// PVMCmdline adds images/out/cmdline-pvm to the guest's command line
	// (what a guest kernel needs under PVM's emulator).
	PVMCmdline bool
	// QEMUCPU is QEMU's -cpu for the guests that run next to govmd's,
	// and QEMUAppend what QEMU's guests add to the command line.
	QEMUCPU, QEMUAppend string
}

var profiles = map[string]hostProfile{
	"kvm": {
		Name: "kvm", Boot: 2 * time.Minute, Silence: time.Minute, Step: 2 * time.Minute,
		NetStall: 30 * time.Second, TCPBytes: 4 << 20, TCPBytesFull: 4 << 20, BlkBytes: 1 << 20,
		Hash: "sha256", QEMUCPU: "host",
	},
	"tcg": {
		// In nested KVM on TCG guests stall now and then (docs/pvm.md):
		// the CI subset moves less data, and scripts/nested.sh reruns a
		// test that failed with one of the stall messages.
		Name: "tcg", Boot: 6 * time.Minute, Silence: 2 * time.Minute, Step: 5 * time.Minute,
		NetStall: time.Minute, TCPBytes: 1 << 20, TCPBytesFull: 4 << 20, BlkBytes: 1 << 20,
		Hash: "sha256", QEMUCPU: "host,kvm=off,-hypervisor",
	},
	"pvm": {
		// A boot to userspace takes about a minute of emulation (two on
		// a busy machine), user code runs at ~150k instructions/s: 256
		// KiB through busybox nc and crc32 takes about half a minute.
		// QEMU's guests run without ACPI: its DSDT takes ~20 s to
		// interpret there and its _PRT loop times out.
		Name: "pvm", Boot: 8 * time.Minute, Silence: 3 * time.Minute, Step: 6 * time.Minute,
		NetStall: 2 * time.Minute, TCPBytes: 256 << 10, TCPBytesFull: 256 << 10, BlkBytes: 256 << 10,
		Hash: "crc32", PVMCmdline: true, QEMUCPU: "host,-arch-capabilities,-cx16", QEMUAppend: "acpi=off",
	},
}

var (
	profileOnce sync.Once
	theProfile  hostProfile
	profileWhy  string
)

// profile returns the host's profile: GOVMD_E2E_PROFILE (kvm, pvm or tcg)
// if set, to test one profile's logic on another kind of host, else what
// kvm.DetectHostProfile finds.
func profile() hostProfile {
	profileOnce.Do(func() {
		name := os.Getenv("GOVMD_E2E_PROFILE")
		switch {
		case name != "":
			profileWhy = "GOVMD_E2E_PROFILE"
		default:
			hp := kvm.DetectHostProfile()
			switch {
			case hp.PVM:
				name = "pvm"
			case hp.Bare:
				name = "tcg"
			default:
				name = "kvm"
			}
			profileWhy = hp.Reason
		}
		p, ok := profiles[name]
		if !ok {
			panic(fmt.Sprintf("GOVMD_E2E_PROFILE=%q: want kvm, pvm or tcg", name))
		}
		theProfile = p
	})
	return theProfile
}

// logProfile records the profile in a test's log once per test.
func logProfile(t testing.TB) hostProfile {
	t.Helper()
	p := profile()
	t.Logf("host profile %s (%s)", p.Name, profileWhy)
	return p
}

// digest returns the hex digest of b as the agent prints it for
// govmd.hash=name (crc32: zlib/IEEE CRC-32 as 8 hex digits).
func digest(name string, b []byte) string {
	switch name {
	case "crc32":
		return fmt.Sprintf("%08x", crc32.ChecksumIEEE(b))
	case "md5":
		s := md5.Sum(b)
		return hex.EncodeToString(s[:])
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestProfiles(t *testing.T) {
	for name, p := range profiles {
		if p.Name != name {
			t.Errorf("profile %s named %s", name, p.Name)
		}
		if p.Silence >= p.Boot || p.NetStall > p.Step || p.Boot <= 0 {
			t.Errorf("%s: budgets out of order: %+v", name, p)
		}
		if p.Hash != "sha256" && p.Hash != "crc32" {
			t.Errorf("%s: hash %q", name, p.Hash)
		}
		if p.TCPBytes <= 0 || p.TCPBytesFull < p.TCPBytes || p.BlkBytes <= 0 {
			t.Errorf("%s: sizes %+v", name, p)
		}
	}
	// The digests the agent prints for the test stream (images/README.md).
	data := pattern(65536)
	for _, c := range []struct{ name, want string }{
		{"crc32", fmt.Sprintf("%08x", crc32.ChecksumIEEE(data))},
		{"sha256", hexSHA(data)},
	} {
		if got := digest(c.name, data); got != c.want || len(got) == 0 {
			t.Errorf("digest(%s) = %s, want %s", c.name, got, c.want)
		}
	}
}
