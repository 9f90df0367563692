package nettest_test

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	vnet "github.com/govmd/govmd/devices/net"
	"github.com/govmd/govmd/devices/net/netdevice"
	"github.com/govmd/govmd/devices/net/nettest"
	"github.com/govmd/govmd/devices/net/tap"
	"github.com/govmd/govmd/virtio"
)

// TestRemote runs the traffic and run-time offload tests with the device
// behind a vhost-user backend and the driver on govmd's frontend, over
// each transport: the same device, hosted the way govmd net-device hosts
// it, behaves the same.
func TestRemote(t *testing.T) {
	for _, tr := range append(transports[:len(transports):len(transports)], intxTransports...) {
		t.Run("traffic/"+tr.Name, func(t *testing.T) { testTraffic(t, profiles[0], tr, true) })
	}
	for _, tr := range transports {
		t.Run("ctrl-offloads/"+tr.Name, func(t *testing.T) { testCtrlGuestOffloadsAtRunTime(t, tr, true) })
	}
	t.Run("reset-clears-offloads", func(t *testing.T) {
		r := newRig(t, rigConfig{remote: true, noBridge: true, nic: nettest.NICConfig{Features: nettest.LinuxFeatures}})
		checkEthtool(t, r.env, vnet.TapOffloads(r.nic.Acked), "at DRIVER_OK")
		r.nic.Drv.Reset()
		checkEthtool(t, r.env, 0, "after reset")
	})
}

func TestMain(m *testing.M) {
	nettest.MaybeServeBackend() // when started as a net-device process
	os.Exit(m.Run())
}

// TestSandboxedProcess runs the device in its own process, as govmd run
// does by default: traffic both ways, the tap's offloads follow the
// driver (at DRIVER_OK and on the control queue, which the backend
// serves), the process is confined (no capabilities, no_new_privs, a
// seccomp filter, not root), and a forbidden system call kills it, which
// the frontend reports as NEEDS_RESET.
func TestSandboxedProcess(t *testing.T) {
	t.Run("exits-cleanly", func(t *testing.T) {
		// The whole session, to the frontend closing it: the process
		// exits with status 0 (checked at cleanup), so no system call on
		// the way was outside its filter.
		r := newRig(t, rigConfig{process: true, nic: nettest.NICConfig{Features: nettest.LinuxFeatures}})
		if err := tcpTransfer(r.env.NA, r.env.NB, nettest.AddrB4, 7200, 1<<20); err != nil {
			t.Fatal(err)
		}
		r.nic.Drv.Reset()
		checkEthtool(t, r.env, 0, "after reset")
	})
	r := newRig(t, rigConfig{process: true, backendMayDie: true,
		processEnv: []string{netdevice.TestViolationEnv + "=1"},
		nic:        nettest.NICConfig{Features: nettest.LinuxFeatures}})
	env := r.env
	if err := tcpTransfer(env.NB, env.NA, nettest.AddrA4, 7201, 2<<20); err != nil {
		t.Fatalf("guest->host: %v", err)
	}
	if err := tcpTransfer(env.NA, env.NB, nettest.AddrB4, 7202, 2<<20); err != nil {
		t.Fatalf("host->guest: %v", err)
	}
	checkEthtool(t, env, vnet.TapOffloads(r.nic.Acked), "at DRIVER_OK")
	if ack, err := r.nic.SetGuestOffloads(vnet.FGuestCsum); err != nil || ack != vnet.CtrlOK {
		t.Fatalf("GUEST_OFFLOADS_SET: %d %v", ack, err)
	}
	checkEthtool(t, env, tap.OffloadCSUM, "after GUEST_OFFLOADS_SET GUEST_CSUM")

	// The process's live counters, through the stats channel (confined:
	// the channel works inside the seccomp filter).
	st, err := r.remote.Process.Stats(5 * time.Second)
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	if st.TxPackets == 0 || st.RxPackets == 0 || st.TxBytes < 2<<20 || st.RxBytes < 2<<20 || st.Features != r.nic.Acked {
		t.Errorf("stats after 2 MiB each way: %v", st)
	}

	pid := r.remote.Process.Pid()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]func(string) bool{
		"CapEff":     func(v string) bool { return v == "0000000000000000" },
		"NoNewPrivs": func(v string) bool { return v == "1" },
		"Seccomp":    func(v string) bool { return v == "2" },
		"Uid":        func(v string) bool { return !strings.HasPrefix(v, "0") },
	}
	for _, line := range strings.Split(string(status), "\n") {
		k, v, _ := strings.Cut(line, ":")
		v = strings.TrimSpace(v)
		if ok, found := want[k]; found {
			if !ok(v) {
				t.Errorf("backend %s: %q", k, v)
			}
			delete(want, k)
		}
	}
	for k := range want {
		t.Errorf("backend status has no %s", k)
	}

	if err := syscall.Kill(pid, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.remote.Process.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the backend survived a forbidden system call")
	}
	if d := r.remote.Process.Describe(); !strings.Contains(d, "seccomp") {
		t.Errorf("backend ended: %s", d)
	}
	deadline := time.Now().Add(5 * time.Second)
	for r.nic.Common.Status()&virtio.StatusNeedsReset == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if r.nic.Common.Status()&virtio.StatusNeedsReset == 0 {
		t.Error("device not marked NEEDS_RESET after the backend died")
	}
	if r.remote.Frontend.Err() == nil {
		t.Error("frontend reports no error")
	}
	if _, err := r.remote.Process.Stats(time.Second); err == nil {
		t.Error("stats of a dead process")
	}
}
