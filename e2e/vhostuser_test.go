package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/govmd/govmd/internal/netns"
)

// TestNetVhostUserQEMU: QEMU, a vhost-user frontend nobody here wrote,
// boots the test guest with its NIC served by govmd net-device (on the
// test's tap), on the modern and the legacy transport. In one boot: the
// guest's features, the tap's offloads exactly what it accepted, pings,
// TCP both ways with matching digests, the backend confined, and the
// tap unchanged after the guest tries `ethtool -K eth0 rx-gro-hw off`.
//
// QEMU runs with ctrl_guest_offloads=off: QEMU serves the control queue
// itself and does not pass VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET on to a
// vhost-user backend (its vhost-user net client has no set_offload), so
// with the feature on, a guest turning GRO_HW off would be told it
// succeeded while the tap kept producing TSO frames. Without it the
// guest's GRO_HW is fixed, the ethtool call fails, and the tap still
// matches what the guest accepts. govmd's own frontend hands the control
// queue to the backend, which applies the change (TestNetGuest).
func TestNetVhostUserQEMU(t *testing.T) {
	for _, c := range []struct {
		name, dev string
		legacy    bool
	}{
		{"modern", "disable-legacy=on", false},
		{"legacy", "disable-modern=on", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.legacy && !full() {
				t.Skip("full matrix only (make e2e)")
			}
			runVhostUserQEMU(t, c.dev, c.legacy)
		})
	}
}

func runVhostUserQEMU(t *testing.T, devOpts string, legacy bool) {
	netns.RequireNetAdmin(t)
	requireKVM(t)
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	p := logProfile(t)
	gn := newGuestNet(t)
	ns := gn.ns
	sock := filepath.Join(t.TempDir(), "net.sock")
	nd := startCmd(t, ns.Name, []string{govmd(t), "net-device", "--tap", tapName, "--socket", sock,
		"--mac", "52:54:00:12:34:56", "--log-level", "debug"})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) || nd.exited() {
			t.Fatalf("govmd net-device did not create %s:\n%s", sock, nd.Stderr())
		}
	}

	size := p.TCPBytes
	steps := "ready,virtio,net,ping,tcp-rx,tcp-tx,offloads-off,wait-host"
	extra := fmt.Sprintf("govmd.test=%s govmd.ip=%s/24 govmd.peer=%s govmd.tcp.port=%d govmd.tcp.txport=%d govmd.tcp.bytes=%d govmd.wait.port=%d govmd.hash=%s",
		steps, guestIP, hostIP, rxPort, txPort, size, waitPort, p.Hash)
	args := append([]string{"qemu-system-x86_64"}, qemuArgs(image(t, "linux/vmlinux"), image(t, "initrd.cpio"), cmdline(t, extra))...)
	args = append(args,
		"-object", "memory-backend-memfd,id=m,size=256M,share=on", "-numa", "node,memdev=m",
		"-chardev", "socket,id=c,path="+sock,
		"-netdev", "vhost-user,id=n,chardev=c",
		"-device", "virtio-net-pci,netdev=n,mac=52:54:00:12:34:56,romfile=,ctrl_guest_offloads=off,"+devOpts)
	g := startCmd(t, ns.Name, args)

	g.Expect(`GOVMD-NET-UP`, p.Boot)
	feat := g.Results()["net.features"]
	t.Logf("guest features %s", feat)
	bit := func(i int) bool { return len(feat) > i && feat[i] == '1' }
	if bit(bitVersion1) == legacy {
		t.Errorf("VERSION_1 negotiated=%v on the %s transport", bit(bitVersion1), map[bool]string{true: "legacy", false: "modern"}[legacy])
	}
	if !bit(bitCsum) || !bit(bitGuestCsum) || !bit(bitGuestTSO4) || !bit(bitGuestTSO6) || !bit(bitHostTSO4) {
		t.Errorf("offloads not negotiated through QEMU: %s", feat)
	}
	checkTapOffloads(t, ns, true, true)
	if pid := netDevicePID(t, nd); pid > 0 {
		checkProcConfined(t, pid)
	}

	checkTraffic(t, g, gn, p, size)
	// The guest tries to turn GRO_HW off; without CTRL_GUEST_OFFLOADS it
	// cannot, and the tap keeps exactly what it accepted.
	g.Expect(`GOVMD-STEP offloads-off status=1`, p.Step)
	if v := g.Results()["gro_hw"]; v == "off" {
		t.Errorf("the guest turned GRO_HW off without CTRL_GUEST_OFFLOADS")
	}
	g.Expect(`GOVMD-WAITING port=[0-9]+ n=1`, p.Step)
	checkTapOffloads(t, ns, true, true)
	release(t, ns)
	// One failed step: the expected one.
	g.Expect(`GOVMD-DONE status=1`, p.Step)
	if st := g.Wait(p.Step); st != 0 {
		t.Errorf("qemu exit status %d\n%s", st, g.Stderr())
	}
	// QEMU gone, the backend's session ends and it exits by itself.
	if st := nd.Wait(30 * time.Second); st != 0 {
		t.Errorf("govmd net-device exit status %d\n%s", st, nd.Stderr())
	}
	if !strings.Contains(nd.Stderr(), "net-device stats") {
		t.Errorf("govmd net-device printed no counters at exit:\n%s", nd.Stderr())
	}
	if _, err := os.Stat(sock); err == nil {
		t.Errorf("the socket %s is left behind", sock)
	}
}

// netDevicePID returns the pid of a net-device started with startCmd
// (ip netns exec execs it, so the pid is the command's).
func netDevicePID(t *testing.T, g *Guest) int {
	t.Helper()
	return g.cmd.Process.Pid
}

// checkProcConfined checks /proc/PID/status of a net-device process: no
// capabilities, no_new_privs, a seccomp filter, not root.
func checkProcConfined(t *testing.T, pid int) {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Error(err)
		return
	}
	got := map[string]string{}
	for _, line := range strings.Split(string(status), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			got[k] = strings.TrimSpace(v)
		}
	}
	uid := strings.Fields(got["Uid"])
	if got["CapEff"] != "0000000000000000" || got["NoNewPrivs"] != "1" || got["Seccomp"] != "2" || len(uid) == 0 || uid[0] == "0" {
		t.Errorf("net-device process %d not confined: CapEff %s NoNewPrivs %s Seccomp %s Uid %s", pid, got["CapEff"], got["NoNewPrivs"], got["Seccomp"], got["Uid"])
	} else {
		t.Logf("net-device process %d: CapEff %s NoNewPrivs %s Seccomp %s Uid %s", pid, got["CapEff"], got["NoNewPrivs"], got["Seccomp"], got["Uid"])
	}
}
