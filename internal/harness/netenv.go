package harness

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/govmd/govmd/devices/net/tap"
)

// nsPrefix starts the name of every namespace the harness creates:
// govmd-t-<pid>-<n>.
const nsPrefix = "govmd-t-"

var nsCounter atomic.Uint64

// NS is a named network namespace created for a test. Traffic the tests
// generate stays inside such namespaces.
type NS struct {
	Name   string
	Handle netns.NsHandle
	NL     *netlink.Handle
}

// NewNS creates a namespace named govmd-t-<pid>-<n> with its loopback up.
// The calling goroutine's namespace is not changed.
func NewNS() (*NS, error) {
	name := fmt.Sprintf("%s%d-%d", nsPrefix, os.Getpid(), nsCounter.Add(1))
	type result struct {
		h   netns.NsHandle
		err error
	}
	c := make(chan result, 1)
	go func() {
		// The thread switches namespace and is never unlocked, so it
		// exits with this goroutine instead of serving others.
		runtime.LockOSThread()
		h, err := netns.NewNamed(name)
		c <- result{h, err}
	}()
	r := <-c
	if r.err != nil {
		_ = netns.DeleteNamed(name)
		return nil, fmt.Errorf("network namespace %s: %w", name, r.err)
	}
	ns := &NS{Name: name, Handle: r.h}
	nl, err := netlink.NewHandleAt(r.h)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("netlink in %s: %w", name, err)
	}
	ns.NL = nl
	lo, err := nl.LinkByName("lo")
	if err == nil {
		err = nl.LinkSetUp(lo)
	}
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("%s: loopback: %w", name, err)
	}
	return ns, nil
}

// Close deletes the namespace (and with it every interface still in it).
func (ns *NS) Close() error {
	if ns.NL != nil {
		ns.NL.Close()
	}
	ns.Handle.Close()
	return netns.DeleteNamed(ns.Name)
}

// Do runs f on a goroutine whose OS thread is in the namespace and returns
// its error. Sockets and taps f opens belong to the namespace and may then
// be used from any goroutine.
func (ns *NS) Do(f func() error) error {
	c := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := netns.Set(ns.Handle); err != nil {
			c <- fmt.Errorf("enter %s: %w", ns.Name, err)
			return
		}
		c <- f()
	}()
	return <-c
}

// Exec runs a command in the namespace (ip netns exec) and returns its
// combined output.
func (ns *NS) Exec(name string, args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns.Name, name}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), ns.Name, err, out)
	}
	return string(out), nil
}

// Sysctl writes a value under /proc/sys in the namespace, e.g.
// Sysctl("net/ipv4/ip_forward", "1").
func (ns *NS) Sysctl(path, value string) error {
	return ns.Do(func() error {
		return os.WriteFile(filepath.Join("/proc/sys", path), []byte(value), 0o644)
	})
}

// CsumErrors returns the namespace's checksum error counters: Tcp
// InCsumErrors (IPv4 and IPv6), Udp InCsumErrors and Udp6InCsumErrors.
func (ns *NS) CsumErrors() (tcp, udp, udp6 uint64, err error) {
	err = ns.Do(func() error {
		snmp, err := os.ReadFile("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		if tcp, err = snmpField(snmp, "Tcp:", "InCsumErrors"); err != nil {
			return err
		}
		if udp, err = snmpField(snmp, "Udp:", "InCsumErrors"); err != nil {
			return err
		}
		snmp6, err := os.ReadFile("/proc/thread-self/net/snmp6")
		if err != nil {
			return err
		}
		for _, line := range strings.Split(string(snmp6), "\n") {
			if f := strings.Fields(line); len(f) == 2 && f[0] == "Udp6InCsumErrors" {
				udp6, err = strconv.ParseUint(f[1], 10, 64)
				return err
			}
		}
		return errors.New("Udp6InCsumErrors not in snmp6")
	})
	return tcp, udp, udp6, err
}

// snmpField reads one counter of /proc/net/snmp, where each protocol has a
// line of names followed by a line of values.
func snmpField(snmp []byte, proto, field string) (uint64, error) {
	var names []string
	sc := bufio.NewScanner(bytes.NewReader(snmp))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || f[0] != proto {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i, n := range names {
			if n == field && i < len(f) {
				return strconv.ParseUint(f[i], 10, 64)
			}
		}
		break
	}
	return 0, fmt.Errorf("%s %s not in snmp", proto, field)
}

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
	NA, NB     *NS
	TapA, TapB *tap.Tap
	MAC        net.HardwareAddr
}

// RequireNetAdmin skips the test unless it can create namespaces and taps.
func RequireNetAdmin(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces and taps)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("no /dev/net/tun: %v", err)
	}
}

// NewNetEnv creates the namespaces and taps; everything is removed when
// the test ends, whether it passed or not. mac is the NIC's address.
func NewNetEnv(t testing.TB, mac net.HardwareAddr) *NetEnv {
	t.Helper()
	RequireNetAdmin(t)
	removeStaleNamespaces()
	e := &NetEnv{MAC: mac}
	var err error
	newNS := func() *NS {
		ns, err := NewNS()
		if err != nil {
			t.Skipf("cannot create a network namespace: %v", err)
		}
		t.Cleanup(func() { ns.Close() })
		return ns
	}
	e.NA, e.NB = newNS(), newNS()
	openTap := func(ns *NS, name string) *tap.Tap {
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
func configure(ns *NS, name string, mac net.HardwareAddr, a4, a6 net.IP) error {
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

func addAddrs(ns *NS, l netlink.Link, a4 net.IP, bits4 int, a6 net.IP, bits6 int) error {
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
		ns         *NS
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
		ns   *NS
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
		ns   *NS
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

// removeStaleNamespaces deletes namespaces left by earlier test processes
// that died before their cleanup ran (their pid no longer exists).
func removeStaleNamespaces() {
	ents, err := os.ReadDir("/var/run/netns")
	if err != nil {
		return
	}
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), nsPrefix)
		if !ok {
			continue
		}
		pidStr, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil || pid == os.Getpid() {
			continue
		}
		if unix.Kill(pid, 0) == unix.ESRCH {
			_ = netns.DeleteNamed(e.Name())
		}
	}
}
