package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/govmd/govmd/kvm"
)

// cmdline returns the test guests' base command line (images/out/cmdline,
// and on the pvm profile images/out/cmdline-pvm) with extra and
// $GOVMD_E2E_CMDLINE appended.
func cmdline(t testing.TB, extra string) string {
	t.Helper()
	files := []string{"cmdline"}
	if profile().PVMCmdline {
		files = append(files, "cmdline-pvm")
	}
	var parts []string
	for _, f := range files {
		b, err := os.ReadFile(image(t, f))
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts, strings.TrimSpace(string(b)))
	}
	line := strings.Join(parts, " ") + " " + extra
	if more := os.Getenv("GOVMD_E2E_CMDLINE"); more != "" {
		line += " " + more
	}
	return line
}

// TestBootReady boots the test kernel both ways (bzImage and PVH vmlinux)
// with 2 vCPUs and checks that the guest reached userspace, saw both CPUs,
// and powered off with govmd exiting 0; that its hardware RNG is govmd's
// virtio-rng and gives 4 KiB; and, for the bzImage, which gets govmd's
// RNG seed, that its CRNG was ready before userspace.
func TestBootReady(t *testing.T) {
	p := logProfile(t)
	for _, kernel := range []string{"linux/bzImage", "linux/vmlinux"} {
		t.Run(strings.TrimPrefix(kernel, "linux/"), func(t *testing.T) {
			args := []string{"run", "--kernel", image(t, kernel), "--initrd", image(t, "initrd.cpio"),
				"--cmdline", cmdline(t, "govmd.test=ready,rng"), "--cpus", "2", "--memory", "256M"}
			// The ELF kernel has symbols: its boot also checks the
			// guest profile.
			prof := filepath.Join(t.TempDir(), "guest-profile")
			elf := strings.HasSuffix(kernel, "vmlinux")
			if elf {
				args = append(args, "--guest-profile", prof)
			}
			// The other boot serves the control API from a directory only
			// root may enter, while govmd confines itself (nobody,
			// Landlock, seccomp; --guest-profile turns that off).
			sock := filepath.Join(t.TempDir(), "api.sock")
			if !elf {
				args = append(args, "--api-socket", sock)
			}
			g := Start(t, args...)
			m := g.Expect(`GOVMD-READY uptime=([0-9.]+) cpus=([0-9]+)`, p.Boot)
			if m[2] != "2" {
				t.Errorf("guest saw %s CPUs, want 2", m[2])
			}
			g.Expect(`GOVMD-DONE status=0`, p.Step)
			if st := g.Wait(p.Step); st != 0 {
				t.Fatalf("govmd exit status %d, want 0\n%s", st, g.Stderr())
			}
			if !elf {
				if _, err := os.Lstat(sock); err == nil && !strings.Contains(g.Stderr(), "api socket left behind") {
					t.Errorf("the API socket is left behind without a word:\n%s", g.Stderr())
				}
			}
			// govmd's MP table ends the kernel's scan of the BIOS area
			// for one (seconds under PVM's emulator without it).
			if !consoleHas(g, "found SMP MP-table at [mem 0x0009fc00-0x0009fc0f]") {
				t.Errorf("the guest did not find govmd's MP table")
			}
			// The guest must know it runs on KVM (CPUID hypervisor bit and
			// KVM leaves) and keep time with kvmclock, not jiffies; with
			// the bare profile (detected on KVM nested in QEMU TCG) it
			// must see no hypervisor at all.
			bare := kvm.DetectHostProfile().Bare
			wants := []string{"Hypervisor detected: KVM", "clocksource: Switched to clocksource kvm-clock"}
			if bare {
				wants = nil
				if consoleHas(g, "Hypervisor detected") {
					t.Errorf("bare profile: the guest detected a hypervisor")
				}
			}
			for _, want := range wants {
				if !consoleHas(g, want) {
					t.Errorf("guest console lacks %q", want)
				}
			}
			// The PIT must be on the IOAPIC pin the MADT names (IRQ0 ->
			// GSI 2), not found only through the PIC; the bare profile
			// leaves it off the IOAPIC on purpose (docs/pvm.md).
			if !bare && consoleHas(g, "8254 timer not connected to IO-APIC") {
				t.Errorf("the guest did not find the PIT on IOAPIC pin 2")
			}
			if elf {
				checkGuestProfile(t, prof)
			}
			res := g.Results()
			if res["rng.current"] != "virtio_rng.0" || res["rng.bytes"] != "4096" || res["rng.crc32"] == digest("crc32", make([]byte, 4096)) {
				t.Errorf("guest hardware RNG: current %q, read %q bytes, crc32 %q", res["rng.current"], res["rng.bytes"], res["rng.crc32"])
			}
			if !strings.Contains(g.Stderr(), "rng stats") {
				t.Errorf("govmd printed no rng counters:\n%s", g.Stderr())
			}
			if !elf {
				crng, init := consoleIndex(g, "random: crng init done"), consoleIndex(g, "Run /init as init process")
				if crng < 0 || init < 0 || crng > init {
					t.Errorf("the CRNG was not ready before userspace (crng init done at line %d, init at line %d)", crng, init)
				}
			}
			t.Logf("GOVMD-READY at guest uptime %ss, %.1fs wall", m[1], time.Since(g.start).Seconds())
		})
	}
}

// TestBootDebian boots Debian's stock cloud kernel (its virtio modules in
// the initramfs) with a NIC and a disk and checks that it reaches
// userspace and binds both virtio drivers.
func TestBootDebian(t *testing.T) {
	if !full() {
		t.Skip("full matrix only (make e2e)")
	}
	img := writeImage(t, 1<<20)
	g := Start(t, "run", "--kernel", image(t, "debian/vmlinux"), "--initrd", image(t, "debian/initrd.cpio.gz"),
		"--cmdline", cmdline(t, "govmd.test=ready,virtio"), "--cpus", "2", "--memory", "512M",
		"--disk", img)
	p := logProfile(t)
	m := g.Expect(`GOVMD-READY uptime=([0-9.]+) cpus=([0-9]+)`, 2*p.Boot)
	if m[2] != "2" {
		t.Errorf("guest saw %s CPUs, want 2", m[2])
	}
	g.Expect(`GOVMD-DONE status=0`, p.Step)
	res := g.Results()
	found := false
	for k, v := range res {
		if strings.HasSuffix(k, ".block") && v == "vda" {
			found = true
		}
	}
	if !found {
		t.Errorf("the Debian kernel's virtio_blk did not bind: %v", res)
	}
	for k, v := range res {
		if strings.HasPrefix(k, "insmod.") {
			t.Errorf("module %s: %s", k, v)
		}
	}
	if st := g.Wait(p.Step); st != 0 {
		t.Fatalf("govmd exit status %d\n%s", st, g.Stderr())
	}
	t.Logf("Debian kernel: GOVMD-READY at guest uptime %ss, %.1fs wall", m[1], time.Since(g.start).Seconds())
}

// checkGuestProfile checks a --guest-profile file: a header with the
// sample count, and samples attributed to the kernel's functions.
func checkGuestProfile(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Errorf("guest profile: %v", err)
		return
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	var samples int
	if _, err := fmt.Sscanf(lines[0], "# govmd guest profile: %d samples", &samples); err != nil || samples == 0 {
		t.Errorf("guest profile header %q", lines[0])
	}
	named := 0
	for _, l := range lines[1:] {
		if f := strings.Fields(l); len(f) == 3 && !strings.HasPrefix(f[2], "0x") {
			named++
		}
	}
	if named == 0 {
		t.Errorf("guest profile names no kernel function:\n%s", b)
	}
}

// writeImage creates a zeroed raw disk image of size bytes.
func writeImage(t *testing.T, size int) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(p, make([]byte, size), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// consoleIndex returns the index of the first console line containing s,
// or -1.
func consoleIndex(g *Guest, s string) int {
	for i, l := range g.Console() {
		if strings.Contains(l, s) {
			return i
		}
	}
	return -1
}

// consoleHas reports whether a console line contains s.
func consoleHas(g *Guest, s string) bool {
	for _, l := range g.Console() {
		if strings.Contains(l, s) {
			return true
		}
	}
	return false
}

// qemuArgs is QEMU's command line (after the binary) for booting the test
// kernel and initramfs with line as govmd's tests do: KVM, 2 vCPUs, 256
// MiB, qboot, no default devices, the serial console on stdio. Its CPU
// is the profile's: the host CPU; on KVM nested in QEMU TCG the same bare
// CPU as govmd's bare profile (no hypervisor bit, no KVM leaves); on PVM
// without the two features PVM refuses (MSR 0x10a; CMPXCHG16B), and its
// guests add the profile's QEMUAppend (acpi=off on PVM).
func qemuArgs(kernel, initrd, line string) []string {
	p := profile()
	if p.QEMUAppend != "" {
		line += " " + p.QEMUAppend
	}
	return []string{"-enable-kvm", "-cpu", p.QEMUCPU, "-smp", "2", "-m", "256", "-nodefaults", "-no-user-config",
		"-display", "none", "-serial", "stdio", "-no-reboot", "-bios", qbootROM(),
		"-kernel", kernel, "-initrd", initrd, "-append", line}
}
