// Package netns gives tests their own network namespaces: New creates one
// (with its loopback up), Do runs code whose sockets and taps belong to it,
// Exec runs a command in it, and Close deletes it with everything in it.
// Traffic the tests generate stays inside such namespaces. RequireNetAdmin
// skips a test that cannot create them; RemoveStale deletes the ones left
// by test processes that died.
package netns

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// nsPrefix starts the name of every namespace this package creates:
// govmd-t-<pid>-<n>.
const nsPrefix = "govmd-t-"

var nsCounter atomic.Uint64

// NS is a named network namespace created for a test. Traffic the tests
// generate stays inside such namespaces.
type NS struct {
	Name   string
	Handle vnetns.NsHandle
	NL     *netlink.Handle
}

// New creates a namespace named govmd-t-<pid>-<n> with its loopback up.
// The calling goroutine's namespace is not changed.
func New() (*NS, error) {
	name := fmt.Sprintf("%s%d-%d", nsPrefix, os.Getpid(), nsCounter.Add(1))
	type result struct {
		h   vnetns.NsHandle
		err error
	}
	c := make(chan result, 1)
	go func() {
		// The thread switches namespace and is never unlocked, so it
		// exits with this goroutine instead of serving others.
		runtime.LockOSThread()
		h, err := vnetns.NewNamed(name)
		c <- result{h, err}
	}()
	r := <-c
	if r.err != nil {
		_ = vnetns.DeleteNamed(name)
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
	return vnetns.DeleteNamed(ns.Name)
}

// Do runs f on a goroutine whose OS thread is in the namespace and returns
// its error. Sockets and taps f opens belong to the namespace and may then
// be used from any goroutine.
func (ns *NS) Do(f func() error) error {
	c := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := vnetns.Set(ns.Handle); err != nil {
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

// RemoveStale deletes namespaces left by earlier test processes that died
// before their cleanup ran (their pid no longer exists).
func RemoveStale() {
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
			_ = vnetns.DeleteNamed(e.Name())
		}
	}
}
