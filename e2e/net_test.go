package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/govmd/govmd/devices/net/netdevice"
	"github.com/govmd/govmd/internal/netns"
	"github.com/govmd/govmd/internal/sandbox"
)

// Addresses inside each test's network namespace.
const (
	hostIP  = "10.77.0.1"
	guestIP = "10.77.0.2"
	tapName = "gvtap0"
	rxPort  = 5001 // the guest listens (tcp-rx)
	txPort  = 5002 // the host listens (tcp-tx)
	// waitPort is where the guest waits for the host (wait-host).
	waitPort = 5003
)

// Feature bits as the guest prints them (/sys/bus/virtio/devices/*/features:
// character i is bit i).
const (
	bitCsum      = 0
	bitGuestCsum = 1
	bitGuestTSO4 = 7
	bitGuestTSO6 = 8
	bitHostTSO4  = 11
	bitMrgRxbuf  = 15
	bitCtrlVQ    = 17
	bitCtrlGOff  = 2
	bitVersion1  = 32
)

// pattern returns the first n bytes of the agent's test stream.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

// writeProgressing writes data in 64 KiB pieces, each within stall: a
// guest that stops taking data fails the write in about stall, however
// large the transfer (os.ErrDeadlineExceeded).
func writeProgressing(conn net.Conn, data []byte, stall time.Duration) error {
	for len(data) > 0 {
		n := min(len(data), 64<<10)
		if err := conn.SetWriteDeadline(time.Now().Add(stall)); err != nil {
			return err
		}
		if _, err := conn.Write(data[:n]); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

func hexSHA(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// netCase is one real-guest network run.
type netCase struct {
	name        string
	transport   string // govmd --net transport=
	offload     string // govmd --net offload=
	forceLegacy bool   // virtio_pci.force_legacy=1: the Linux legacy driver on a transitional device
	offloadsOff bool   // the guest turns its receive offloads off at run time
	// killBackend makes the NIC's net-device process attempt a forbidden
	// system call at the end: the sandbox kills it, govmd reports it and
	// the guest runs on to its end.
	killBackend bool
	ci          bool // part of `make test` (the rest runs in `make e2e`)
}

var netCases = []netCase{
	{name: "transitional-modern-on", transport: "transitional", offload: "on", offloadsOff: true, killBackend: true, ci: true},
	{name: "transitional-legacy-on", transport: "transitional", offload: "on", forceLegacy: true, offloadsOff: true, ci: true},
	{name: "modern-csum", transport: "modern", offload: "csum"},
	{name: "modern-off", transport: "modern", offload: "off"},
	{name: "legacy-on", transport: "legacy", offload: "on", offloadsOff: true},
	{name: "legacy-off", transport: "legacy", offload: "off"},
	{name: "modern-on", transport: "modern", offload: "on", offloadsOff: true},
}

// TestNetGuest boots the test kernel with a virtio-net NIC on a tap in a
// fresh network namespace and checks, in one boot: the features the guest
// negotiated, that the tap's offloads are exactly what the guest accepts,
// ping both ways, a TCP transfer each way with matching digests (sizes and
// the guest's digest from the host profile), and (for offloadsOff) that
// the tap follows when the guest turns its receive offloads off through
// the control queue.
func TestNetGuest(t *testing.T) {
	for _, c := range netCases {
		t.Run(c.name, func(t *testing.T) {
			if !c.ci && !full() {
				t.Skip("full matrix only (make e2e)")
			}
			runNetCase(t, c)
		})
	}
}

// guestNet is a test's network: a namespace holding a persistent tap with
// a vnet header (govmd opens it as it is) at hostIP, and the host's end of
// the guest's tcp-tx: a listener that hashes each connection.
type guestNet struct {
	ns     *netns.NS
	txDone chan string // "<bytes> <sha256>" or an error, per connection
}

// newGuestNet sets the network up; everything goes with the namespace at
// the end of the test.
func newGuestNet(t testing.TB) *guestNet {
	t.Helper()
	ns, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	if err := ns.Do(func() error {
		tap := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: tapName},
			Mode:      netlink.TUNTAP_MODE_TAP,
			Flags:     netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_ONE_QUEUE,
		}
		if err := netlink.LinkAdd(tap); err != nil {
			return fmt.Errorf("tap: %w", err)
		}
		l, err := netlink.LinkByName(tapName)
		if err != nil {
			return err
		}
		addr, _ := netlink.ParseAddr(hostIP + "/24")
		if err := netlink.AddrAdd(l, addr); err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	}); err != nil {
		t.Fatal(err)
	}
	n := &guestNet{ns: ns, txDone: make(chan string, 16)}
	var ln net.Listener
	if err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp4", fmt.Sprintf("%s:%d", hostIP, txPort))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			h := sha256.New()
			m, err := io.Copy(h, conn)
			conn.Close()
			if err != nil {
				n.txDone <- "read: " + err.Error()
				continue
			}
			n.txDone <- fmt.Sprintf("%d %x", m, h.Sum(nil))
		}
	}()
	return n
}

// send connects to the guest's tcp-rx port and writes data, each 64 KiB
// within stall; a guest that stops taking data gives an error wrapping
// os.ErrDeadlineExceeded.
func (n *guestNet) send(data []byte, stall time.Duration) error {
	return n.ns.Do(func() error {
		conn, err := net.DialTimeout("tcp4", fmt.Sprintf("%s:%d", guestIP, rxPort), 30*time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		return writeProgressing(conn, data, stall)
	})
}

func runNetCase(t *testing.T, c netCase) {
	netns.RequireNetAdmin(t)
	requireKVM(t)
	p := logProfile(t)
	gn := newGuestNet(t)
	ns := gn.ns

	size := p.TCPBytes
	if full() {
		size = p.TCPBytesFull
	}
	steps := "ready,virtio,net,ping,tcp-rx,tcp-tx"
	if c.offloadsOff {
		steps += ",offloads-off,wait-host,offloads-on,wait-host"
	}
	// The net-device is killed while the guest sleeps at the end: it must
	// wake up and finish with the NIC gone.
	kill := c.killBackend && os.Getenv("GOVMD_E2E_VMM") != "qemu" && os.Getenv(sandbox.AuditEnv) != "1"
	if c.killBackend && !kill {
		t.Logf("not checking that a sandbox violation kills the net-device (QEMU, or %s=1: violations are only logged)", sandbox.AuditEnv)
	}
	if kill {
		steps += ",sleep"
	}
	extra := fmt.Sprintf("govmd.test=%s govmd.ip=%s/24 govmd.peer=%s govmd.tcp.port=%d govmd.tcp.txport=%d govmd.tcp.bytes=%d govmd.wait.port=%d govmd.hash=%s",
		steps, guestIP, hostIP, rxPort, txPort, size, waitPort, p.Hash)
	if c.forceLegacy {
		extra += " virtio_pci.force_legacy=1"
	}
	if kill {
		extra += " govmd.wait=20"
	}
	args := []string{"run", "--kernel", image(t, "linux/vmlinux"), "--initrd", image(t, "initrd.cpio"),
		"--cmdline", cmdline(t, extra), "--cpus", "2", "--memory", "256M", "--log-level", "debug",
		"--net", fmt.Sprintf("tap=%s,transport=%s,offload=%s", tapName, c.transport, c.offload)}
	qemu := os.Getenv("GOVMD_E2E_VMM") == "qemu"
	if qemu {
		// The same guest under QEMU's virtio-net (vhost off), to tell a
		// govmd problem from one of the environment.
		args = qemuNetArgs(t, cmdline(t, extra), c)
	}
	if kill {
		t.Setenv(netdevice.TestViolationEnv, "1") // inherited by the net-device process
	}
	g := StartIn(t, ns.Name, args...)

	g.Expect(`GOVMD-NET-UP`, p.Boot)
	feat := g.Results()["net.features"]
	t.Logf("guest features %s", feat)
	bit := func(i int) bool { return len(feat) > i && feat[i] == '1' }
	legacyDriver := c.transport == "legacy" || c.forceLegacy
	if bit(bitVersion1) == legacyDriver {
		t.Errorf("VERSION_1 negotiated=%v with a %s driver", bit(bitVersion1), map[bool]string{true: "legacy", false: "modern"}[legacyDriver])
	}
	wantCsum := c.offload != "off"
	wantTSO := c.offload == "on"
	if bit(bitCsum) != wantCsum || bit(bitGuestCsum) != wantCsum {
		t.Errorf("CSUM/GUEST_CSUM = %v/%v with offload=%s", bit(bitCsum), bit(bitGuestCsum), c.offload)
	}
	if bit(bitGuestTSO4) != wantTSO || bit(bitGuestTSO6) != wantTSO || bit(bitHostTSO4) != wantTSO {
		t.Errorf("TSO bits %v/%v/%v with offload=%s", bit(bitGuestTSO4), bit(bitGuestTSO6), bit(bitHostTSO4), c.offload)
	}
	if !bit(bitMrgRxbuf) || !bit(bitCtrlVQ) {
		t.Errorf("MRG_RXBUF or CTRL_VQ not negotiated: %s", feat)
	}
	checkTapOffloads(t, ns, wantCsum, wantTSO)
	var backend int
	if !qemu {
		// The NIC's device runs in a confined net-device process.
		backend = checkSandboxed(t, g.cmd.Process.Pid)
	}

	checkTraffic(t, g, gn, p, size)

	if c.offloadsOff {
		// With GRO_HW off the guest no longer accepts TSO frames;
		// checksum offload stays. Then it takes them again.
		g.Expect(`GOVMD-WAITING port=[0-9]+ n=1`, p.Step)
		if res := g.Results(); res["gro_hw"] != "off" {
			t.Errorf("guest GRO_HW %q after offloads-off", res["gro_hw"])
		}
		checkTapOffloads(t, ns, wantCsum, false)
		release(t, ns)
		g.Expect(`GOVMD-WAITING port=[0-9]+ n=2`, p.Step)
		checkTapOffloads(t, ns, wantCsum, wantTSO)
		release(t, ns)
	}
	if kill && backend > 0 {
		g.Expect(`GOVMD-STEP sleep start`, p.Step)
		killBackend(t, g, backend)
		for _, l := range g.Console() {
			if strings.Contains(l, "GOVMD-STEP sleep status") {
				t.Fatal("the guest's sleep ended before the net-device was killed: nothing shows that the VM kept running")
			}
		}
		// The VM runs on: the guest wakes up and finishes.
		g.Expect(`GOVMD-STEP sleep status=0`, p.Step)
	}
	g.Expect(`GOVMD-DONE status=0`, p.Step)
	if st := g.Wait(p.Step); st != 0 {
		t.Fatalf("govmd exit status %d\n%s", st, g.Stderr())
	}
	if !qemu && !strings.Contains(g.Stderr(), "nic stats") {
		t.Errorf("govmd printed no NIC counters at exit:\n%s", g.Stderr())
	}
}

// checkTraffic runs the host's side of the guest's ping, tcp-rx and
// tcp-tx steps: the host pings the guest, sends it size bytes of the test
// stream and takes what it sends, and checks the guest's ping and both
// transfers' digests.
func checkTraffic(t *testing.T, g *Guest, gn *guestNet, p hostProfile, size int) {
	t.Helper()
	// Host -> guest ping while the guest is up.
	if out, err := gn.ns.Exec("ping", "-c", "3", "-W", "5", guestIP); err != nil {
		t.Errorf("host ping of the guest: %v\n%s", err, out)
	}
	// Host -> guest TCP.
	g.Expect(`GOVMD-TCP-LISTENING port=`, p.Step)
	data := pattern(size)
	if err := gn.send(data, p.NetStall); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// The guest stopped taking data for a minute: what the
			// guest's console going silent is for the other steps
			// (scripts/nested.sh reruns both, docs/pvm.md).
			t.Fatalf("guest network stalled: sending to the guest: %v", err)
		}
		t.Fatalf("sending to the guest: %v", err)
	}
	g.Expect(`GOVMD-STEP tcp-rx status=`, p.Step)
	g.Expect(`GOVMD-STEP tcp-tx status=`, p.Step)
	res := g.Results()
	if res["ping.received"] == "" || res["ping.received"] == "0" {
		t.Errorf("guest ping of the host: %s of %s received", res["ping.received"], res["ping.transmitted"])
	}
	if got, want := res["tcp.rx."+p.Hash], digest(p.Hash, data); got != want || res["tcp.rx.bytes"] != fmt.Sprint(size) {
		t.Errorf("host->guest TCP: guest got %s bytes %s %s, sent %d %s %s", res["tcp.rx.bytes"], p.Hash, got, size, p.Hash, want)
	}
	select {
	case got := <-gn.txDone:
		if want := fmt.Sprintf("%d %s", size, hexSHA(data)); got != want {
			t.Errorf("guest->host TCP: host got %q, want %q", got, want)
		}
		if res["tcp.tx.sha256"] != hexSHA(data) {
			t.Errorf("guest reports sending sha256 %s", res["tcp.tx.sha256"])
		}
	case <-time.After(p.Step):
		t.Error("guest->host TCP: no complete connection")
	}
}

// checkSandboxed finds the net-device process govmd (pid) started for
// its NIC and checks that it is confined (checkProcConfined). It returns
// the process's pid (0 if there is none).
func checkSandboxed(t *testing.T, pid int) int {
	t.Helper()
	var kids []string
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, task := range tasks {
		if b, err := os.ReadFile(task); err == nil {
			kids = append(kids, strings.Fields(string(b))...)
		}
	}
	if len(kids) != 1 {
		t.Errorf("govmd has %d child processes, want its NIC's net-device: %v", len(kids), kids)
		return 0
	}
	var n int
	fmt.Sscan(kids[0], &n)
	checkProcConfined(t, n)
	return n
}

// killBackend makes the net-device process attempt a forbidden system
// call (the test trigger, SIGUSR1): the sandbox must kill it and govmd
// say so; the caller then checks that the guest runs on.
func killBackend(t *testing.T, g *Guest, pid int) {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGUSR1); err != nil {
		t.Errorf("signalling the net-device process: %v", err)
		return
	}
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(g.Stderr(), "killed by its seccomp filter") {
		if time.Now().After(deadline) {
			t.Errorf("govmd did not report the net-device process killed by its sandbox:\n%s", g.Stderr())
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(g.Stderr(), "needs a reset") {
		t.Errorf("govmd did not report the NIC needing a reset:\n%s", g.Stderr())
	}
	for _, l := range strings.Split(g.Stderr(), "\n") {
		if strings.Contains(l, "killed by its seccomp filter") || strings.Contains(l, "needs a reset") {
			t.Logf("govmd: %s", l)
		}
	}
}

// checkTapOffloads compares the tap's ethtool -k view with what the guest
// accepts: tx-checksumming is what the kernel may hand the guest partially
// checksummed, tcp-segmentation-offload whether it may hand it TSO frames.
func checkTapOffloads(t *testing.T, ns *netns.NS, csum, tso bool) {
	t.Helper()
	out, err := ns.Exec("ethtool", "-k", tapName)
	if err != nil {
		t.Errorf("ethtool -k: %v", err)
		return
	}
	feats := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(l), ": "); ok {
			feats[k] = strings.Fields(v)[0]
		}
	}
	onoff := map[bool]string{true: "on", false: "off"}
	if feats["tx-checksumming"] != onoff[csum] {
		t.Errorf("tap tx-checksumming %q, want %s", feats["tx-checksumming"], onoff[csum])
	}
	if feats["tcp-segmentation-offload"] != onoff[tso] {
		t.Errorf("tap tcp-segmentation-offload %q, want %s", feats["tcp-segmentation-offload"], onoff[tso])
	}
}

// release lets a guest blocked in the wait-host step go on.
func release(t *testing.T, ns *netns.NS) {
	t.Helper()
	if err := ns.Do(func() error {
		c, err := net.DialTimeout("tcp4", fmt.Sprintf("%s:%d", guestIP, waitPort), 30*time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	}); err != nil {
		t.Errorf("releasing the guest: %v", err)
	}
}

// qemuNetArgs returns the argv (after the binary) of QEMU running the same
// guest with a virtio-net-pci NIC on the test's tap; StartIn runs it when
// GOVMD_BIN names qemu-system-x86_64.
func qemuNetArgs(t *testing.T, line string, c netCase) []string {
	t.Helper()
	dev := "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,romfile="
	switch c.transport {
	case "modern":
		dev += ",disable-legacy=on"
	case "legacy":
		dev += ",disable-modern=on"
	}
	if c.offload != "on" {
		dev += ",guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off,host_tso4=off,host_tso6=off,host_ecn=off,host_ufo=off"
	}
	if c.offload == "off" {
		dev += ",csum=off,guest_csum=off"
	}
	return append(qemuArgs(image(t, "linux/vmlinux"), image(t, "initrd.cpio"), line),
		"-netdev", "tap,id=n0,ifname="+tapName+",script=no,downscript=no,vhost=off", "-device", dev)
}
