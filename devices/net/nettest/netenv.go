package nettest

import (
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/govmd/govmd/devices/net/tap"
	"github.com/govmd/govmd/internal/netns"
)

// Addresses of the two ends of a NetEnv.
var (
	AddrA4 = net.IPv4(10, 201, 0, 1).To4()
	AddrB4 = net.IPv4(10, 201, 0, 2).To4()
	AddrA6 = net.ParseIP("fd00:201::1")
	AddrB6 = net.ParseIP("fd00:201::2")
)

// NetEnv is the two-namespace setup of the harness: tap A in NA is the
// device's backend (10.201.0.1/24, fd00:201::1/64); tap B in NB is the
// guest's side of the bridge (10.201.0.2/24, fd00:201::2/64) with the NIC's
// MAC address.
type NetEnv struct {
	NA, NB     *netns.NS
	TapA, TapB *tap.Tap
	MAC        net.HardwareAddr
}

// NewNetEnv creates the namespaces and taps; everything is removed when
// the test ends, whether it passed or not. mac is the NIC's address.
func NewNetEnv(t testing.TB, mac net.HardwareAddr) *NetEnv {
	t.Helper()
	netns.RequireNetAdmin(t)
	netns.RemoveStale()
	e := &NetEnv{MAC: mac}
	var err error
	newNS := func() *netns.NS {
		ns, err := netns.New()
		if err != nil {
			t.Skipf("cannot create a network namespace: %v", err)
		}
		t.Cleanup(func() { ns.Close() })
		return ns
	}
	e.NA, e.NB = newNS(), newNS()
	openTap := func(ns *netns.NS, name string) *tap.Tap {
		var tp *tap.Tap
		if err := ns.Do(func() error { tp, err = tap.Open(name); return err }); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tp.Close() }) // runs before the namespace is deleted
		return tp
	}
	e.TapA = openTap(e.NA, "govmdA")
	e.TapB = openTap(e.NB, "govmdB")
	if err := configure(e.NA, "govmdA", nil, AddrA4, AddrA6); err != nil {
		t.Fatal(err)
	}
	if err := configure(e.NB, "govmdB", mac, AddrB4, AddrB6); err != nil {
		t.Fatal(err)
	}
	return e
}

// configure sets an interface's address, MTU and link state.
func configure(ns *netns.NS, name string, mac net.HardwareAddr, a4, a6 net.IP) error {
	l, err := ns.NL.LinkByName(name)
	if err != nil {
		return fmt.Errorf("%s in %s: %w", name, ns.Name, err)
	}
	if mac != nil {
		if err := ns.NL.LinkSetHardwareAddr(l, mac); err != nil {
			return fmt.Errorf("%s: set MAC: %w", name, err)
		}
	}
	if err := addAddrs(ns, l, a4, 24, a6, 64); err != nil {
		return err
	}
	if err := ns.NL.LinkSetUp(l); err != nil {
		return fmt.Errorf("%s up: %w", name, err)
	}
	return nil
}

func addAddrs(ns *netns.NS, l netlink.Link, a4 net.IP, bits4 int, a6 net.IP, bits6 int) error {
	if a4 != nil {
		if err := ns.NL.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: a4, Mask: net.CIDRMask(bits4, 32)}}); err != nil {
			return fmt.Errorf("%s: add %v: %w", l.Attrs().Name, a4, err)
		}
	}
	if a6 != nil {
		if err := ns.NL.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: a6, Mask: net.CIDRMask(bits6, 128)}, Flags: unix.IFA_F_NODAD}); err != nil {
			return fmt.Errorf("%s: add %v: %w", l.Attrs().Name, a6, err)
		}
	}
	return nil
}

// AddVLAN creates VLAN id on both taps (interfaces vA.<id> and vB.<id>)
// with 10.202.<id%256>.1/24 and .2/24, and returns those addresses.
func (e *NetEnv) AddVLAN(id int) (a, b net.IP, err error) {
	a = net.IPv4(10, 202, byte(id), 1).To4()
	b = net.IPv4(10, 202, byte(id), 2).To4()
	a6 := net.ParseIP(fmt.Sprintf("fd00:202:%x::1", id))
	b6 := net.ParseIP(fmt.Sprintf("fd00:202:%x::2", id))
	for _, s := range []struct {
		ns         *netns.NS
		parent, nm string
		a4, a6     net.IP
	}{{e.NA, "govmdA", fmt.Sprintf("vA.%d", id), a, a6}, {e.NB, "govmdB", fmt.Sprintf("vB.%d", id), b, b6}} {
		p, err := s.ns.NL.LinkByName(s.parent)
		if err != nil {
			return nil, nil, err
		}
		v := &netlink.Vlan{LinkAttrs: netlink.LinkAttrs{Name: s.nm, ParentIndex: p.Attrs().Index}, VlanId: id}
		if err := s.ns.NL.LinkAdd(v); err != nil {
			return nil, nil, fmt.Errorf("add %s: %w", s.nm, err)
		}
		l, err := s.ns.NL.LinkByName(s.nm)
		if err != nil {
			return nil, nil, err
		}
		if err := addAddrs(s.ns, l, s.a4, 24, s.a6, 64); err != nil {
			return nil, nil, err
		}
		if err := s.ns.NL.LinkSetUp(l); err != nil {
			return nil, nil, err
		}
	}
	return a, b, nil
}

// TagVLAN makes both taps' links carry VLAN id: a tc program on each tap
// pushes an 802.1Q tag on every frame the namespace sends and pops it from
// every frame it receives, so every frame through the device is tagged
// while the stacks use the untagged addresses. (This kernel may lack
// 802.1Q interfaces; the frames on the link are the same.) UntagVLAN
// undoes it.
func (e *NetEnv) TagVLAN(id int) error {
	push, err := loadTCProgram("govmd_vlan_push", vlanPushProgram(id))
	if err != nil {
		return err
	}
	defer unix.Close(push)
	pop, err := loadTCProgram("govmd_vlan_pop", vlanPopProgram())
	if err != nil {
		return err
	}
	defer unix.Close(pop)
	for _, s := range []struct {
		ns   *netns.NS
		name string
	}{{e.NA, "govmdA"}, {e.NB, "govmdB"}} {
		l, err := s.ns.NL.LinkByName(s.name)
		if err != nil {
			return err
		}
		idx := l.Attrs().Index
		q := &netlink.Clsact{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}}
		if err := s.ns.NL.QdiscAdd(q); err != nil {
			return fmt.Errorf("%s: clsact: %w", s.name, err)
		}
		for _, f := range []struct {
			parent uint32
			fd     int
			name   string
		}{{netlink.HANDLE_MIN_EGRESS, push, "vlan_push"}, {netlink.HANDLE_MIN_INGRESS, pop, "vlan_pop"}} {
			filter := &netlink.BpfFilter{
				FilterAttrs: netlink.FilterAttrs{LinkIndex: idx, Parent: f.parent, Handle: netlink.MakeHandle(0, 1),
					Protocol: unix.ETH_P_ALL, Priority: 1},
				Fd: f.fd, Name: f.name, DirectAction: true,
			}
			if err := s.ns.NL.FilterAdd(filter); err != nil {
				return fmt.Errorf("%s: %s filter: %w", s.name, f.name, err)
			}
		}
	}
	return nil
}

// UntagVLAN removes TagVLAN's programs.
func (e *NetEnv) UntagVLAN() error {
	for _, s := range []struct {
		ns   *netns.NS
		name string
	}{{e.NA, "govmdA"}, {e.NB, "govmdB"}} {
		l, err := s.ns.NL.LinkByName(s.name)
		if err != nil {
			return err
		}
		q := &netlink.Clsact{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}}
		if err := s.ns.NL.QdiscDel(q); err != nil {
			return fmt.Errorf("%s: clsact: %w", s.name, err)
		}
	}
	return nil
}

// TapFeatures returns the features ethtool -k reports for tap A, as a map
// from feature name (e.g. "tcp-segmentation-offload") to "on"/"off".
func (e *NetEnv) TapFeatures() (map[string]string, error) {
	out, err := e.NA.Exec("ethtool", "-k", e.TapA.Name())
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) > 0 {
			m[k] = f[0]
		}
	}
	return m, nil
}
