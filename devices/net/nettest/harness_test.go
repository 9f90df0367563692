package nettest_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	vnet "github.com/govmd/govmd/devices/net"
	"github.com/govmd/govmd/devices/net/nettest"
	"github.com/govmd/govmd/devices/net/tap"
	"github.com/govmd/govmd/internal/netns"
	"github.com/govmd/govmd/virtio"
)

// ethtoolWant is what ethtool -k shows on tap A for a set of TUNSETOFFLOAD
// flags (UFO has no ethtool feature of its own).
func ethtoolWant(f uint32) map[string]string {
	on := func(b bool) string {
		if b {
			return "on"
		}
		return "off"
	}
	return map[string]string{
		"tx-checksumming":         on(f&tap.OffloadCSUM != 0),
		"tx-tcp-segmentation":     on(f&tap.OffloadTSO4 != 0),
		"tx-tcp6-segmentation":    on(f&tap.OffloadTSO6 != 0),
		"tx-tcp-ecn-segmentation": on(f&tap.OffloadTSOECN != 0),
		"tx-udp-segmentation":     on(f&tap.OffloadUSO4 != 0),
	}
}

func checkEthtool(t *testing.T, env *nettest.NetEnv, flags uint32, what string) {
	t.Helper()
	got, err := env.TapFeatures()
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range ethtoolWant(flags) {
		if got[k] != v {
			t.Errorf("%s: tap A %s is %q, want %q (flags %s)", what, k, got[k], v, vnet.OffloadString(flags))
		}
	}
}

// specValid is the dependency table of virtio 1.x 5.1.3.1 for the bits
// these tests vary, independent of the device's ValidateFeatures.
func specValid(f uint64) bool {
	dep := func(feat, need uint64) bool { return f&feat == 0 || f&need != 0 }
	return dep(vnet.FGuestTSO4, vnet.FGuestCsum) && dep(vnet.FGuestTSO6, vnet.FGuestCsum) &&
		dep(vnet.FGuestUFO, vnet.FGuestCsum) && dep(vnet.FGuestUSO4, vnet.FGuestCsum) &&
		dep(vnet.FGuestUSO6, vnet.FGuestCsum) && dep(vnet.FGuestECN, vnet.FGuestTSO4|vnet.FGuestTSO6)
}

// TestTapOffloadsFollowDriver checks with ethtool that tap A's offloads are
// exactly what each driver accepted, for real drivers' feature sets and for
// every subset of the receive offload bits (invalid subsets must be
// refused, at FEATURES_OK or for a legacy driver at DRIVER_OK), and that a
// reset clears them, over every transport.
func TestTapOffloadsFollowDriver(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.Name, func(t *testing.T) {
			env := nettest.NewNetEnv(t, testMAC)
			dev, err := vnet.New(env.TapA, vnet.Config{MAC: testMAC, Log: testLog(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer dev.Close()
			if dev.Features()&(vnet.FGuestUSO4|vnet.FGuestUFO) != vnet.FGuestUSO4|vnet.FGuestUFO {
				t.Logf("kernel lacks UFO or USO: offered %s", vnet.FeatureString(dev.Features()))
			}
			offered := dev.Features()
			if tr.Legacy {
				offered &= 0xffffffff
			}
			try := func(name string, features uint64, exact bool) {
				n, err := nettest.NewNIC(dev, nicConfig(tr, nettest.NICConfig{Features: features, Exact: exact, MemSize: 16 << 20}))
				acked := features & offered
				if exact {
					acked = features
				}
				if !specValid(acked) {
					if !errors.Is(err, nettest.ErrFeaturesRefused) {
						t.Errorf("%s: invalid set %s not refused: %v", name, vnet.FeatureString(acked), err)
					}
					if n != nil {
						n.Close()
					}
					if got := dev.Stats().TapOffloads; got != 0 {
						t.Errorf("%s: refused set left tap offloads %s", name, vnet.OffloadString(got))
					}
					return
				}
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if tr.Legacy && n.Acked&virtio.FVersion1 != 0 {
					t.Fatalf("%s: legacy driver negotiated VERSION_1", name)
				}
				want := vnet.TapOffloads(acked)
				if got := dev.Stats().TapOffloads; got != want {
					t.Errorf("%s: tap offloads %s, want %s", name, vnet.OffloadString(got), vnet.OffloadString(want))
				}
				checkEthtool(t, env, want, name)
				n.Close()
				checkEthtool(t, env, 0, name+" after reset")
			}
			base := virtio.FVersion1 | vnet.FMAC | vnet.FMrgRxbuf
			if tr.Legacy {
				try("linux legacy", nettest.LinuxLegacyFeatures, false)
				try("vio legacy", nettest.VioFeatures&^virtio.FVersion1, false)
				try("nothing", 0, false)
				base = vnet.FMAC | vnet.FMrgRxbuf
			} else {
				try("linux", nettest.LinuxFeatures, false)
				try("vio", nettest.VioFeatures, false)
				try("csum", nettest.CsumFeatures, false)
				try("empty", nettest.MinimalFeatures, false)
			}
			bits := []uint64{vnet.FGuestCsum, vnet.FGuestTSO4, vnet.FGuestTSO6, vnet.FGuestECN, vnet.FGuestUFO, vnet.FGuestUSO4, vnet.FGuestUSO6}
			for m := 0; m < 1<<len(bits); m++ {
				f := base
				for i, b := range bits {
					if m&(1<<i) != 0 {
						f |= b
					}
				}
				if f&^offered != 0 {
					continue // the kernel lacks UFO or USO, or the bit is beyond legacy's 32
				}
				try(vnet.FeatureString(f&vnet.GuestOffloads), f, true)
			}
		})
	}
}

// profile is a guest driver and device configuration for traffic tests.
// features is what the driver acks on the modern interface, legacy on the
// legacy one.
type profile struct {
	name     string
	features uint64
	legacy   uint64
	// modernOnly profiles need feature bits beyond the legacy interface's
	// 32; intx profiles also run with MSI-X disabled.
	modernOnly, intx bool
	offload          vnet.OffloadMode
	txLayout         []int
}

var profiles = []profile{
	{name: "linux", features: nettest.LinuxFeatures, legacy: nettest.LinuxLegacyFeatures, intx: true},
	{name: "linux-uso", features: nettest.LinuxFeatures | vnet.FHostUSO | vnet.FGuestUSO4 | vnet.FGuestUSO6, modernOnly: true},
	{name: "linux-nomrg", features: nettest.LinuxFeatures &^ vnet.FMrgRxbuf, legacy: nettest.LinuxLegacyFeatures &^ vnet.FMrgRxbuf},
	{name: "vio", features: nettest.VioFeatures, legacy: nettest.VioFeatures &^ virtio.FVersion1},
	{name: "csum", features: nettest.CsumFeatures, legacy: nettest.CsumFeatures &^ virtio.FVersion1},
	{name: "none-mrg", features: nettest.MinimalFeatures | vnet.FMrgRxbuf, legacy: vnet.FMrgRxbuf},
	{name: "none", features: nettest.MinimalFeatures, legacy: 0, txLayout: []int{10, 14}, intx: true},
	{name: "linux-on-offload-off", features: nettest.LinuxFeatures, legacy: nettest.LinuxLegacyFeatures, offload: vnet.OffloadOff},
	{name: "linux-on-offload-csum", features: nettest.LinuxFeatures, legacy: nettest.LinuxLegacyFeatures, offload: vnet.OffloadCsum},
}

// TestTraffic runs TCP and UDP over IPv4 and IPv6, and TCP over a VLAN,
// in both directions between NA and NB, for each driver profile over each
// transport. A transfer proves the receiving stack accepted every
// checksum; the namespaces' checksum error counters must stay at zero, and
// the harness checks every header the driver receives against what it
// negotiated.
func TestTraffic(t *testing.T) {
	for _, p := range profiles {
		for _, tr := range append(transports[:len(transports):len(transports)], intxTransports...) {
			if tr.Legacy && p.modernOnly || tr.INTx && !p.intx {
				continue
			}
			t.Run(p.name+"/"+tr.Name, func(t *testing.T) { testTraffic(t, p, tr, false) })
		}
	}
}

func testTraffic(t *testing.T, p profile, tr transport, remote bool) {
	const tcpSize = 2 << 20
	r := newRig(t, rigConfig{
		remote: remote,
		dev:    vnet.Config{Offload: p.offload},
		nic:    nicConfig(tr, nettest.NICConfig{Features: featuresFor(tr, p.features, p.legacy), TxLayout: p.txLayout}),
	})
	if tr.Legacy && r.nic.Acked&virtio.FVersion1 != 0 {
		t.Fatal("legacy driver negotiated VERSION_1")
	}
	env := r.env
	// A VLAN sub-interface on each tap if the kernel has
	// 802.1Q, otherwise tc programs tagging the whole link.
	va, vb, err := env.AddVLAN(100)
	vlanIf := err == nil
	if !vlanIf && !errors.Is(err, unix.EOPNOTSUPP) {
		t.Fatal(err)
	}
	port := 6000
	tcp := func(name string, from, to *netns.NS, dst net.IP) {
		port++
		if err := tcpTransfer(from, to, dst, port, tcpSize); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	tcp("tcp4 guest->host", env.NB, env.NA, nettest.AddrA4)
	tcp("tcp4 host->guest", env.NA, env.NB, nettest.AddrB4)
	tcp("tcp6 guest->host", env.NB, env.NA, nettest.AddrA6)
	tcp("tcp6 host->guest", env.NA, env.NB, nettest.AddrB6)
	udp := func(name string, from, to *netns.NS, dst net.IP) {
		port++
		got, sent, err := udpTransfer(from, to, dst, port, 50, []int{64, 1200, 1472, 4000})
		if err != nil {
			t.Errorf("%s: %v", name, err)
		} else if got < sent*95/100 {
			t.Errorf("%s: %d of %d datagrams arrived", name, got, sent)
		}
	}
	udp("udp4 guest->host", env.NB, env.NA, nettest.AddrA4)
	udp("udp4 host->guest", env.NA, env.NB, nettest.AddrB4)
	udp("udp6 guest->host", env.NB, env.NA, nettest.AddrA6)
	udp("udp6 host->guest", env.NA, env.NB, nettest.AddrB6)
	if r.nic.Acked&vnet.FHostUSO != 0 {
		for _, c := range []struct {
			name     string
			from, to *netns.NS
			dst      net.IP
		}{{"udp-gso4 guest->host", env.NB, env.NA, nettest.AddrA4}, {"udp-gso4 host->guest", env.NA, env.NB, nettest.AddrB4},
			{"udp-gso6 guest->host", env.NB, env.NA, nettest.AddrA6}, {"udp-gso6 host->guest", env.NA, env.NB, nettest.AddrB6}} {
			port++
			got, sent, err := udpGSOTransfer(c.from, c.to, c.dst, port, 40)
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			} else if got < sent*95/100 {
				t.Errorf("%s: %d of %d segments arrived", c.name, got, sent)
			}
		}
	}
	rxVLAN, txVLAN := r.bridge.RxVLAN.Load(), r.bridge.TxVLAN.Load()
	if vlanIf {
		tcp("vlan tcp4 guest->host", env.NB, env.NA, va)
		tcp("vlan tcp4 host->guest", env.NA, env.NB, vb)
	} else {
		if err := env.TagVLAN(100); err != nil {
			t.Fatal(err)
		}
		tcp("vlan tcp4 guest->host", env.NB, env.NA, nettest.AddrA4)
		tcp("vlan tcp4 host->guest", env.NA, env.NB, nettest.AddrB4)
		tcp("vlan tcp6 guest->host", env.NB, env.NA, nettest.AddrA6)
		tcp("vlan tcp6 host->guest", env.NA, env.NB, nettest.AddrB6)
		if err := env.UntagVLAN(); err != nil {
			t.Fatal(err)
		}
	}
	if r.bridge.RxVLAN.Load()-rxVLAN < 100 || r.bridge.TxVLAN.Load()-txVLAN < 100 {
		t.Errorf("VLAN-tagged frames: %d to the guest, %d from it", r.bridge.RxVLAN.Load()-rxVLAN, r.bridge.TxVLAN.Load()-txVLAN)
	}
	r.checkBridge(t)
	for _, ns := range []*netns.NS{env.NA, env.NB} {
		tcpErr, udpErr, udp6Err, err := ns.CsumErrors()
		if err != nil {
			t.Fatal(err)
		}
		if tcpErr+udpErr+udp6Err != 0 {
			t.Errorf("%s: checksum errors tcp=%d udp=%d udp6=%d", ns.Name, tcpErr, udpErr, udp6Err)
		}
	}
	s := r.dev.Stats()
	if s.TxBadHeader+s.RxBadHeader+s.TxBackendErrors+s.GuestFaults != 0 {
		t.Errorf("drops: %v", s)
	}
	if r.nic.Acked&vnet.FHostTSO4 != 0 && s.TxGSO == 0 {
		t.Errorf("driver acked HOST_TSO4 but sent no GSO frame: %v", s)
	}
	if r.nic.RxGSO() && s.RxGSO == 0 {
		t.Errorf("driver acked GUEST_TSO but received no GSO frame: %v", s)
	}
	if r.nic.Acked&vnet.FGuestCsum == 0 && (s.RxGSO != 0 || s.TxGSO != 0 && r.nic.Acked&vnet.FCsum == 0) {
		t.Errorf("GSO without offloads: %v", s)
	}
	r.checkInterrupts(t)
}

// udpGSOTransfer sends count UDP_SEGMENT (GSO) writes of 10 segments of
// 1200 bytes from from to dst:port in to and returns how many segments
// arrived intact.
func udpGSOTransfer(from, to *netns.NS, dst net.IP, port, count int) (int, int, error) {
	var rc, sc *net.UDPConn
	addr := &net.UDPAddr{IP: dst, Port: port}
	if err := to.Do(func() (err error) { rc, err = net.ListenUDP("udp", addr); return }); err != nil {
		return 0, 0, err
	}
	defer rc.Close()
	rc.SetReadBuffer(8 << 20)
	if err := from.Do(func() (err error) { sc, err = net.DialUDP("udp", nil, addr); return }); err != nil {
		return 0, 0, err
	}
	defer sc.Close()
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var serr error
	raw.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_SEGMENT, 1200) })
	if serr != nil {
		return 0, 0, fmt.Errorf("UDP_SEGMENT: %w", serr)
	}
	total := make(chan int, 1)
	done := receiveUDP(rc, total, func(b []byte) bool {
		return len(b) == 1200 && b[0] == 0xa5 && b[1199] == byte(1199%256)
	})
	seg := make([]byte, 12000)
	for i := range seg {
		seg[i] = byte(i % 1200)
		if i%1200 == 0 {
			seg[i] = 0xa5
		}
	}
	for i := 0; i < count; i++ {
		if _, err := sc.Write(seg); err != nil {
			return 0, 0, err
		}
		time.Sleep(time.Millisecond)
	}
	total <- 10 * count
	return <-done, 10 * count, nil
}

// TestGSOSegmentedOnTheWire: a guest with HOST_TSO4 sends 64 KiB TSO
// frames; NA forwards them through a veth (TSO, GSO and GRO off) into a
// third namespace NC, where an AF_PACKET socket sees only frames up to the
// MTU. The device's TX GSO counter shows the guest's frames were GSO
// frames, the capture shows the kernel segmented them, and the SHA-256 of
// the transfer shows the result was right.
func TestGSOSegmentedOnTheWire(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.Name, func(t *testing.T) { testGSOSegmentedOnTheWire(t, tr) })
	}
}

func testGSOSegmentedOnTheWire(t *testing.T, tr transport) {
	r := newRig(t, rigConfig{nic: nicConfig(tr, nettest.NICConfig{Features: featuresFor(tr, nettest.LinuxFeatures, nettest.LinuxLegacyFeatures)})})
	env := r.env
	nc := newPeerNS(t, env)
	capture, stop := captureFrames(t, nc, "vC", unix.ETH_P_ALL)
	if err := tcpTransfer(env.NB, nc, net.IPv4(10, 203, 0, 2), 7001, 4<<20); err != nil {
		t.Fatal(err)
	}
	maxLen, frames := stop()
	s := r.dev.Stats()
	t.Logf("TX GSO frames from the guest: %d of %d; captured %d frames in NC, largest %d bytes", s.TxGSO, s.TxPackets, frames, maxLen)
	if s.TxGSO == 0 {
		t.Error("the guest sent no GSO frame")
	}
	if frames < (4<<20)/1500 || maxLen > 1514 {
		t.Errorf("captured %d frames, largest %d bytes (want >= %d frames, <= 1514 bytes)", frames, maxLen, (4<<20)/1500)
	}
	_ = capture
	r.checkBridge(t)
	r.checkInterrupts(t)
}

// TestForwardedToGuestWithoutCsum: frames forwarded from NC through NA
// arrive at tap A marked CHECKSUM_UNNECESSARY, for which tun sets
// DATA_VALID even when the tap has no offloads. A driver without
// GUEST_CSUM must still get all-zero headers (the harness checks every
// one) and the transfer must succeed in both directions.
func TestForwardedToGuestWithoutCsum(t *testing.T) {
	for _, tr := range transports {
		for _, mrg := range []uint64{0, vnet.FMrgRxbuf} {
			features := featuresFor(tr, nettest.MinimalFeatures|mrg, mrg)
			t.Run(tr.Name+"/"+vnet.FeatureString(features), func(t *testing.T) { testForwardedToGuestWithoutCsum(t, tr, features) })
		}
	}
}

func testForwardedToGuestWithoutCsum(t *testing.T, tr transport, features uint64) {
	r := newRig(t, rigConfig{nic: nicConfig(tr, nettest.NICConfig{Features: features})})
	nc := newPeerNS(t, r.env)
	// NC sends fully checksummed frames; GRO on vA validates
	// them and marks them CHECKSUM_UNNECESSARY, like a
	// physical NIC with receive checksum offload.
	if _, err := nc.Exec("ethtool", "-K", "vC", "tx", "off"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.env.NA.Exec("ethtool", "-K", "vA", "gro", "on"); err != nil {
		t.Fatal(err)
	}
	if err := tcpTransfer(nc, r.env.NB, nettest.AddrB4, 7002, 2<<20); err != nil {
		t.Fatal(err)
	}
	if err := tcpTransfer(r.env.NB, nc, net.IPv4(10, 203, 0, 2), 7003, 2<<20); err != nil {
		t.Fatal(err)
	}
	// RxFlagsCleared shows the tap did hand over DATA_VALID,
	// so the test exercised the sanitizer.
	if s := r.dev.Stats(); s.RxPackets < 1000 || s.RxGSO != 0 || s.RxFlagsCleared == 0 {
		t.Errorf("stats: %v", s)
	}
	r.checkBridge(t)
	r.checkInterrupts(t)
}

// newPeerNS creates namespace NC behind NA: a veth pair vA (NA,
// 10.203.0.1/24) - vC (NC, 10.203.0.2/24) with TSO, GSO and GRO off, NA
// forwarding, and routes between NB's and NC's subnets.
func newPeerNS(t *testing.T, env *nettest.NetEnv) *netns.NS {
	t.Helper()
	nc, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vA"}, PeerName: "vC"}
	if err := env.NA.NL.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	peer, err := env.NA.NL.LinkByName("vC")
	if err != nil {
		t.Fatal(err)
	}
	if err := env.NA.NL.LinkSetNsFd(peer, int(nc.Handle)); err != nil {
		t.Fatal(err)
	}
	setup := func(ns *netns.NS, name string, addr net.IP) {
		l, err := ns.NL.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := ns.NL.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: addr, Mask: net.CIDRMask(24, 32)}}); err != nil {
			t.Fatal(err)
		}
		if err := ns.NL.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
		if _, err := ns.Exec("ethtool", "-K", name, "tso", "off", "gso", "off", "gro", "off"); err != nil {
			t.Fatal(err)
		}
	}
	setup(env.NA, "vA", net.IPv4(10, 203, 0, 1))
	setup(nc, "vC", net.IPv4(10, 203, 0, 2))
	if err := env.NA.Sysctl("net/ipv4/ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	route := func(ns *netns.NS, dst string, gw net.IP) {
		_, n, _ := net.ParseCIDR(dst)
		if err := ns.NL.RouteAdd(&netlink.Route{Dst: n, Gw: gw}); err != nil {
			t.Fatal(err)
		}
	}
	route(env.NB, "10.203.0.0/24", nettest.AddrA4)
	route(nc, "10.201.0.0/24", net.IPv4(10, 203, 0, 1))
	return nc
}

// captureFrames counts the frames an AF_PACKET socket in ns sees on ifname
// and their largest length, until stop is called.
func captureFrames(t *testing.T, ns *netns.NS, ifname string, ethType uint16) (fd int, stop func() (maxLen, frames int)) {
	t.Helper()
	proto := int(htons(ethType))
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return err
		}
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 16<<20)
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000})
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifi.Index})
	})
	if err != nil {
		t.Fatal(err)
	}
	var quit atomic.Bool
	var wg sync.WaitGroup
	var maxLen, frames int
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 70000)
		for !quit.Load() {
			n, from, err := unix.Recvfrom(fd, buf, unix.MSG_TRUNC)
			if err != nil {
				continue
			}
			if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
				continue
			}
			frames++
			maxLen = max(maxLen, n)
		}
	}()
	return fd, func() (int, int) {
		time.Sleep(200 * time.Millisecond)
		quit.Store(true)
		wg.Wait()
		unix.Close(fd)
		return maxLen, frames
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// TestCtrlGuestOffloadsAtRunTime turns receive segmentation off and on with
// VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET while the link carries traffic, as
// Linux does when IP forwarding disables LRO, and checks tap A's
// offloads and the frames the guest gets.
func TestCtrlGuestOffloadsAtRunTime(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.Name, func(t *testing.T) { testCtrlGuestOffloadsAtRunTime(t, tr, false) })
	}
}

func testCtrlGuestOffloadsAtRunTime(t *testing.T, tr transport, remote bool) {
	r := newRig(t, rigConfig{remote: remote, nic: nicConfig(tr, nettest.NICConfig{Features: featuresFor(tr, nettest.LinuxFeatures, nettest.LinuxLegacyFeatures)})})
	if r.nic.Acked&vnet.FCtrlGuestOffloads == 0 {
		t.Fatalf("CTRL_GUEST_OFFLOADS not negotiated: %s", vnet.FeatureString(r.nic.Acked))
	}
	env := r.env
	all := vnet.TapOffloads(r.nic.Acked)
	checkEthtool(t, env, all, "at DRIVER_OK")
	set := func(offloads uint64, want byte) {
		t.Helper()
		ack, err := r.nic.SetGuestOffloads(offloads)
		if err != nil {
			t.Fatal(err)
		}
		if ack != want {
			t.Fatalf("SET %s: ack %d, want %d", vnet.FeatureString(offloads), ack, want)
		}
	}
	set(vnet.FGuestCsum, vnet.CtrlOK)
	checkEthtool(t, env, tap.OffloadCSUM, "after SET GUEST_CSUM")
	time.Sleep(50 * time.Millisecond) // frames queued before the change drain
	before := r.dev.Stats().RxGSO
	if err := tcpTransfer(env.NA, env.NB, nettest.AddrB4, 7101, 2<<20); err != nil {
		t.Fatal(err)
	}
	if got := r.dev.Stats().RxGSO; got != before {
		t.Errorf("%d GSO frames delivered with receive segmentation off", got-before)
	}
	set(r.nic.Acked&vnet.GuestOffloads, vnet.CtrlOK)
	checkEthtool(t, env, all, "after SET all")
	if err := tcpTransfer(env.NA, env.NB, nettest.AddrB4, 7102, 2<<20); err != nil {
		t.Fatal(err)
	}
	if r.dev.Stats().RxGSO == before {
		t.Error("no GSO frame delivered after receive segmentation was turned back on")
	}
	set(vnet.FGuestCsum|vnet.FGuestUSO4|vnet.FGuestUSO6, vnet.CtrlErr) // offered, not acked
	set(vnet.FCsum, vnet.CtrlErr)
	checkEthtool(t, env, all, "after refused SETs")
	r.checkBridge(t)
	r.checkInterrupts(t)
}

// TestLockedWithOffloads runs a locked NIC with every offload on and the
// virtio and Ethernet headers of transmitted frames split across small
// descriptors: TCP works both ways; frames with another source address
// sent by NB are dropped and counted; frames NA sends to other addresses
// are not delivered.
func TestLockedWithOffloads(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.Name, func(t *testing.T) { testLockedWithOffloads(t, tr) })
	}
}

func testLockedWithOffloads(t *testing.T, tr transport) {
	r := newRig(t, rigConfig{
		dev: vnet.Config{Locked: true},
		nic: nicConfig(tr, nettest.NICConfig{Features: featuresFor(tr, nettest.LinuxFeatures, nettest.LinuxLegacyFeatures),
			TxLayout: []int{5, 9, 2, 3, 1, 4}, RxLayout: []int{3, 11, 5}}),
	})
	env := r.env
	if err := tcpTransfer(env.NB, env.NA, nettest.AddrA4, 7201, 4<<20); err != nil {
		t.Fatal(err)
	}
	if err := tcpTransfer(env.NA, env.NB, nettest.AddrB6, 7202, 4<<20); err != nil {
		t.Fatal(err)
	}
	s := r.dev.Stats()
	if s.TxGSO == 0 || s.RxGSO == 0 || s.TxSpoofed != 0 || s.RxFiltered != 0 {
		t.Fatalf("stats after good traffic: %v", s)
	}
	const etherType = 0x88b5 // local experimental
	other := net.HardwareAddr{0x52, 0x54, 0, 9, 9, 9}
	sendRaw := func(ns *netns.NS, ifname string, dst, src net.HardwareAddr, n int) {
		t.Helper()
		err := ns.Do(func() error {
			ifi, err := net.InterfaceByName(ifname)
			if err != nil {
				return err
			}
			fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			f := make([]byte, 100)
			copy(f, dst)
			copy(f[6:], src)
			binary.BigEndian.PutUint16(f[12:], etherType)
			sa := &unix.SockaddrLinklayer{Ifindex: ifi.Index, Protocol: htons(etherType)}
			for i := 0; i < n; i++ {
				if err := unix.Sendto(fd, f, 0, sa); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	macA := macOf(t, env.NA, "govmdA")
	// NB sends 5 frames with a foreign source, 3 with its own.
	sendRaw(env.NB, "govmdB", macA, other, 5)
	sendRaw(env.NB, "govmdB", macA, testMAC, 3)
	// NA sends 4 frames to another address, 2 to the NIC, 1 broadcast.
	_, stop := captureFrames(t, env.NB, "govmdB", etherType)
	sendRaw(env.NA, "govmdA", other, macA, 4)
	sendRaw(env.NA, "govmdA", testMAC, macA, 2)
	sendRaw(env.NA, "govmdA", net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, macA, 1)
	time.Sleep(100 * time.Millisecond)
	_, frames := stop()
	s = r.dev.Stats()
	if s.TxSpoofed != 5 || s.RxFiltered != 4 {
		t.Errorf("spoofed %d (want 5), filtered %d (want 4): %v", s.TxSpoofed, s.RxFiltered, s)
	}
	if frames != 3 {
		t.Errorf("NB received %d test frames, want the 3 addressed to it", frames)
	}
	r.checkBridge(t)
	r.checkInterrupts(t)
}

func macOf(t *testing.T, ns *netns.NS, name string) net.HardwareAddr {
	t.Helper()
	l, err := ns.NL.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().HardwareAddr
}
