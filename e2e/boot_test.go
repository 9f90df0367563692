package e2e

import (
	"os"
	"strings"
	"testing"
	"time"
)

// bootTimeout bounds one boot of the test kernel to userspace. Under
// software-nested KVM it takes a minute or two.
const bootTimeout = 6 * time.Minute

// cmdline returns the test guests' base command line (images/out/cmdline)
// with extra appended.
func cmdline(t *testing.T, extra string) string {
	t.Helper()
	b, err := os.ReadFile(image(t, "cmdline"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b)) + " " + extra
}

// TestBootReady boots the test kernel both ways (bzImage and PVH vmlinux)
// with 2 vCPUs and checks that the guest reached userspace, saw both CPUs,
// and powered off with govmd exiting 0.
func TestBootReady(t *testing.T) {
	for _, kernel := range []string{"linux/bzImage", "linux/vmlinux"} {
		t.Run(strings.TrimPrefix(kernel, "linux/"), func(t *testing.T) {
			g := Start(t, "run", "--kernel", image(t, kernel), "--initrd", image(t, "initrd.cpio.gz"),
				"--cmdline", cmdline(t, "govmd.test=ready"), "--cpus", "2", "--memory", "256M")
			m := g.Expect(`GOVMD-READY uptime=([0-9.]+) cpus=([0-9]+)`, bootTimeout)
			if m[2] != "2" {
				t.Errorf("guest saw %s CPUs, want 2", m[2])
			}
			g.Expect(`GOVMD-DONE status=0`, time.Minute)
			if st := g.Wait(time.Minute); st != 0 {
				t.Fatalf("govmd exit status %d, want 0\n%s", st, g.Stderr())
			}
			t.Logf("GOVMD-READY at guest uptime %ss, %.1fs wall", m[1], time.Since(g.start).Seconds())
		})
	}
}
