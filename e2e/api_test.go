package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/govmd/govmd/api"
	"github.com/govmd/govmd/internal/netns"
	"github.com/govmd/govmd/vmm"
)

// TestAPI boots a guest with --api-socket and a sandboxed NIC on a tap in
// a fresh namespace, and steers it, in one boot, through the API and
// through govmd ctl: GET /vm, NIC counters that grow while the host pings
// the guest, /metrics parsed with Prometheus' parser, pause (the vCPUs'
// exits, the console and the NIC stop) and resume, link down and up (the
// guest's carrier follows), and the power button (the guest powers off,
// govmd exits 0).
func TestAPI(t *testing.T) {
	netns.RequireNetAdmin(t)
	requireKVM(t)
	p := logProfile(t)
	gn := newGuestNet(t)
	sock := filepath.Join(t.TempDir(), "api.sock")
	extra := fmt.Sprintf("govmd.test=ready,net,api govmd.ip=%s/24", guestIP)
	kernel := image(t, "linux/vmlinux")
	g := StartIn(t, gn.ns.Name, "run", "--kernel", kernel, "--initrd", image(t, "initrd.cpio"),
		"--cmdline", cmdline(t, extra), "--memory", "256M", "--api-socket", sock,
		"--net", "tap="+tapName)
	g.Expect(`GOVMD-API-READY`, p.Boot)
	ctx, cancel := context.WithTimeout(context.Background(), 3*p.Step)
	defer cancel()
	c := api.NewClient(sock)
	defer c.Close()

	ctl := func(args ...string) string {
		t.Helper()
		out, err := exec.CommandContext(ctx, govmd(t), append([]string{"ctl", "--api-socket", sock}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("govmd ctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	// GET /vm and govmd ctl status.
	info, err := c.VM(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := info.Config.(map[string]any)
	if info.State != vmm.StateRunning || cfg["kernel"] != kernel || len(info.NICs) != 1 || !info.NICs[0].LinkUp || !info.NICs[0].LinkState {
		t.Errorf("GET /vm: %+v", info)
	}
	if out := ctl("status"); !strings.Contains(out, "state:   running") || !strings.Contains(out, tapName+", link up") {
		t.Errorf("govmd ctl status:\n%s", out)
	}
	var viaCtl api.VMInfo
	if err := json.Unmarshal([]byte(ctl("--json", "status")), &viaCtl); err != nil || viaCtl.State != vmm.StateRunning {
		t.Errorf("govmd ctl --json status: %+v %v", viaCtl, err)
	}

	// NIC counters grow while data moves (the guest answers pings; its
	// device runs in the net-device process, which the API asks).
	nic := func() (rx, tx float64) {
		t.Helper()
		cs, err := c.Counters(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range cs.Devices {
			if d.Kind == "nic" {
				m, _ := d.Stats.(map[string]any)
				if e, ok := m["device_error"]; ok {
					t.Fatalf("NIC counters: %v", e)
				}
				rx, _ = m["RxPackets"].(float64)
				tx, _ = m["TxPackets"].(float64)
				return rx, tx
			}
		}
		t.Fatal("no NIC in /vm/counters")
		return 0, 0
	}
	ping := func(n int) error {
		_, err := gn.ns.Exec("ping", "-c", fmt.Sprint(n), "-i", "0.2", "-W", "2", guestIP)
		return err
	}
	// reachable pings the guest until it answers (a resumed guest first
	// works through what queued up; in nested KVM everything is slow).
	reachable := func(what string) {
		t.Helper()
		var err error
		for deadline := time.Now().Add(p.Step); time.Now().Before(deadline); {
			if err = ping(1); err == nil {
				return
			}
		}
		t.Fatalf("the guest does not answer pings %s: %v", what, err)
	}
	reachable("once up")
	rx0, tx0 := nic()
	if err := ping(5); err != nil {
		t.Fatalf("ping of the guest: %v", err)
	}
	rx1, tx1 := nic()
	if rx1 < rx0+5 || tx1 <= tx0 {
		t.Errorf("NIC counters after 5 pings: rx %v -> %v, tx %v -> %v", rx0, rx1, tx0, tx1)
	}
	if out := ctl("counters"); !regexp.MustCompile(`nic 0 \(` + tapName + `\):.* tx_packets=[1-9]`).MatchString(out) {
		t.Errorf("govmd ctl counters:\n%s", out)
	}

	// /metrics parses with Prometheus' own parser and has the counters.
	checkMetrics := func(b []byte) {
		t.Helper()
		parser := expfmt.NewTextParser(model.LegacyValidation)
		fams, err := parser.TextToMetricFamilies(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("/metrics does not parse: %v", err)
		}
		for _, name := range []string{"govmd_nic_rx_packets", "govmd_nic_tx_packets", "govmd_vcpu_exits_total", "govmd_vm_uptime_seconds"} {
			f := fams[name]
			if f == nil || len(f.Metric) == 0 {
				t.Errorf("/metrics has no %s", name)
			}
		}
		if f := fams["govmd_nic_rx_packets"]; f != nil && len(f.Metric) > 0 && f.Metric[0].GetUntyped().GetValue() < rx1 {
			t.Errorf("govmd_nic_rx_packets %v < %v", f.Metric[0].GetUntyped().GetValue(), rx1)
		}
	}
	mb, err := c.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checkMetrics(mb)
	checkMetrics([]byte(ctl("metrics")))

	exits := func() uint64 {
		cs, err := c.Counters(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var n uint64
		for _, v := range cs.VCPUs {
			for _, e := range v.Exits {
				n += e
			}
			n += v.KVM["exits"]
		}
		return n
	}
	ticks := func() int {
		n := 0
		for _, l := range g.Console() {
			if strings.Contains(l, "GOVMD-TICK") {
				n++
			}
		}
		return n
	}
	// expectTick waits for a tick printed after the first `after` ones
	// that matches re.
	expectTick := func(after int, re string) {
		t.Helper()
		rx := regexp.MustCompile(re)
		for deadline := time.Now().Add(p.Step); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			// A dead guest prints no more ticks: say so now, not
			// after the whole step (nested KVM's L0 fault, which
			// scripts/nested.sh reruns on "guest kernel failed").
			if crash := g.crashLine(); crash != "" {
				t.Fatalf("guest kernel failed while waiting for a tick matching %q: %q", re, crash)
			}
			if g.exited() {
				t.Fatalf("the VMM exited while waiting for a tick matching %q; stderr:\n%s", re, g.Stderr())
			}
			n := 0
			for _, l := range g.Console() {
				if !strings.Contains(l, "GOVMD-TICK") {
					continue
				}
				if n++; n > after && rx.MatchString(l) {
					return
				}
			}
		}
		t.Fatalf("no tick matching %q after tick %d", re, after)
	}

	// Pause and resume, once through the API and once through govmd ctl.
	for round, how := range []string{"api", "ctl"} {
		if how == "api" {
			if err := c.Action(ctx, "pause"); err != nil {
				t.Fatal(err)
			}
		} else {
			ctl("pause")
		}
		if info, _ := c.VM(ctx); info.State != vmm.StatePaused {
			t.Errorf("state after pause (%s): %s", how, info.State)
		}
		e0, k0 := exits(), ticks()
		_, tx0 := nic()
		if err := ping(3); err == nil {
			t.Errorf("a paused guest answered pings (%s)", how)
		}
		time.Sleep(2 * time.Second)
		_, tx := nic()
		if e, k := exits(), ticks(); e != e0 || k != k0 || tx != tx0 {
			t.Errorf("paused guest moved (%s): exits %d -> %d, ticks %d -> %d, NIC tx %v -> %v", how, e0, e, k0, k, tx0, tx)
		}
		if how == "api" {
			if err := c.Action(ctx, "resume"); err != nil {
				t.Fatal(err)
			}
		} else {
			ctl("resume")
		}
		expectTick(k0, `GOVMD-TICK`)
		reachable(fmt.Sprintf("after resume (%s, round %d)", how, round))
	}

	// Link down makes the guest see no carrier, up brings it back.
	k := ticks()
	if err := c.SetLink(ctx, "0", false); err != nil {
		t.Fatal(err)
	}
	expectTick(k, `carrier=0`)
	if info, _ := c.VM(ctx); info.NICs[0].LinkUp {
		t.Error("GET /vm says link up after link down")
	}
	k = ticks()
	ctl("link", tapName, "up")
	expectTick(k, `carrier=1`)
	k = ticks()
	ctl("link", "0", "down")
	expectTick(k, `carrier=0`)
	k = ticks()
	if err := c.SetLink(ctx, tapName, true); err != nil {
		t.Fatal(err)
	}
	expectTick(k, `carrier=1`)

	// The power button: the guest powers off, govmd exits 0.
	if out := ctl("power-button"); !strings.Contains(out, "power button pressed") {
		t.Errorf("govmd ctl power-button: %q", out)
	}
	g.Expect(`GOVMD-POWER-BUTTON`, p.Step)
	if st := g.Wait(p.Step); st != 0 {
		t.Fatalf("govmd exit status %d after the power button\n%s", st, g.Stderr())
	}
}
