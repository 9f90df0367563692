package nettest_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	vnet "github.com/govmd/govmd/devices/net"
	"github.com/govmd/govmd/devices/net/nettest"
	"github.com/govmd/govmd/internal/netns"
	"github.com/govmd/govmd/virtio"
	"github.com/govmd/govmd/virtio/vhostuser"
	"github.com/govmd/govmd/virtio/virtiotest/pcidriver"
)

// testMAC is the virtio NIC's (and tap B's) address.
var testMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func testLog(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// transport is how the NIC's device is presented and driven (the shared
// matrix of the PCI transport's test driver).
type transport = pcidriver.Mode

var (
	transports     = pcidriver.MSIXModes
	intxTransports = pcidriver.INTxModes
)

// nic returns cfg for this transport.
func nicConfig(tr transport, cfg nettest.NICConfig) nettest.NICConfig {
	cfg.Transport, cfg.Legacy, cfg.INTx = tr.Transport, tr.Legacy, tr.INTx
	return cfg
}

// features picks the driver's feature set for this transport.
func featuresFor(tr transport, modern, legacy uint64) uint64 {
	if tr.Legacy {
		return legacy
	}
	return modern
}

// rig is a NIC on tap A bridged to tap B.
type rig struct {
	env    *nettest.NetEnv
	remote *nettest.Remote // with rigConfig.remote or process
	// dev is the device model; with rigConfig.process it runs in another
	// process, and this one is idle (its tap is env.TapA all the same).
	dev    *vnet.Device
	nic    *nettest.NIC
	bridge *nettest.Bridge
}

type rigConfig struct {
	dev vnet.Config
	nic nettest.NICConfig
	// noBridge leaves tap B unconnected.
	noBridge bool
	// remote hosts the device behind a vhost-user backend (nettest.Remote),
	// as govmd net-device does, and the NIC drives its frontend; process
	// puts that backend in a sandboxed process of its own, as govmd run
	// does, with processEnv added to its environment.
	remote, process bool
	processEnv      []string
	// backendMayDie: the test kills the backend (no error at cleanup).
	backendMayDie bool
}

func newRig(t testing.TB, cfg rigConfig) *rig {
	t.Helper()
	env := nettest.NewNetEnv(t, testMAC)
	cfg.dev.MAC = testMAC
	if cfg.dev.Log == nil {
		cfg.dev.Log = testLog(t)
	}
	dev, err := vnet.New(env.TapA, cfg.dev)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	var r0 *nettest.Remote
	var driven virtio.Device = dev
	if cfg.remote || cfg.process {
		if cfg.nic.MemSize == 0 {
			cfg.nic.MemSize = 64 << 20
		}
		var rem *nettest.Remote
		if cfg.process {
			dc := cfg.dev
			dc.Log = nil
			rem, err = nettest.NewRemoteProcess(env.TapA, dc, cfg.nic.MemSize, cfg.processEnv, cfg.dev.Log)
		} else {
			rem, err = nettest.NewRemote(dev, cfg.nic.MemSize, cfg.dev.Log)
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := rem.Close(); err != nil && !cfg.backendMayDie {
				t.Errorf("remote: %v", err)
			}
			if rem.Backend != nil && rem.Backend.Faults() != 0 || rem.Frontend.Faults() != 0 && !cfg.backendMayDie {
				t.Errorf("vhost-user faults: frontend %d", rem.Frontend.Faults())
			}
		})
		cfg.nic.Mem = rem.Mem
		driven = rem.Frontend
		r0 = rem
	}
	nic, err := nettest.NewNIC(driven, cfg.nic)
	if err != nil {
		t.Fatal(err)
	}
	if f, ok := driven.(*vhostuser.Frontend); ok {
		// The frontend hands the queues over in the background.
		for deadline := time.Now().Add(5 * time.Second); !f.Running(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) || f.Err() != nil {
				t.Fatalf("backend not serving the queues: %v", f.Err())
			}
		}
	}
	t.Cleanup(nic.Close)
	r := &rig{env: env, dev: dev, nic: nic, remote: r0}
	if !cfg.noBridge {
		r.bridge, err = nic.StartBridge(env.TapB)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := r.bridge.Stop(); err != nil {
				t.Errorf("bridge: %v", err)
			}
		})
	}
	t.Cleanup(func() {
		if v, n := nic.Violations(); n > 0 {
			t.Errorf("%d received headers broke the negotiated features, first: %v", n, v)
		}
		t.Logf("device stats: %v", dev.Stats())
	})
	return r
}

// checkBridge fails the test if the bridge met an error so far.
func (r *rig) checkBridge(t testing.TB) {
	t.Helper()
	if r.bridge != nil {
		if err := r.bridge.Err(); err != nil {
			t.Fatalf("bridge: %v", err)
		}
	}
}

// checkInterrupts fails the test unless the NIC's receive and transmit
// queues got interrupts the way its transport delivers them (MSI-X
// messages on their own vectors, or INTx), with no stray message and no
// register access the transport counted as a driver mistake.
func (r *rig) checkInterrupts(t testing.TB) {
	t.Helper()
	irq := r.nic.IRQ
	if irq.Count(vnet.RxQueue) == 0 || irq.Count(vnet.TxQueue) == 0 {
		t.Errorf("interrupts: rx %d, tx %d", irq.Count(vnet.RxQueue), irq.Count(vnet.TxQueue))
	}
	raised, spurious := irq.INTx()
	if r.nic.Cfg.INTx {
		if raised == 0 || spurious >= raised {
			t.Errorf("INTx raised %d times, %d spurious", raised, spurious)
		}
	} else {
		if raised != 0 {
			t.Errorf("INTx raised %d times with MSI-X", raised)
		}
		// Vector 0 is the configuration's, 1+q queue q's.
		if irq.Deliveries(1+vnet.RxQueue) == 0 || irq.Deliveries(1+vnet.TxQueue) == 0 {
			t.Errorf("MSI-X deliveries: rx %d, tx %d", irq.Deliveries(1+vnet.RxQueue), irq.Deliveries(1+vnet.TxQueue))
		}
	}
	if n := irq.Stray(); n != 0 {
		t.Errorf("%d stray MSI-X messages", n)
	}
	if f := r.nic.Transport.Faults(); f != 0 {
		t.Errorf("the transport counted %d driver faults", f)
	}
}

// tcpTransfer sends size random bytes over TCP from a socket in from to a
// listener on dst:port in to and checks the SHA-256 of what arrived.
func tcpTransfer(from, to *netns.NS, dst net.IP, port, size int) error {
	var ln net.Listener
	addr := net.JoinHostPort(dst.String(), fmt.Sprint(port))
	if err := to.Do(func() (err error) { ln, err = net.Listen("tcp", addr); return }); err != nil {
		return err
	}
	defer ln.Close()
	type result struct {
		sum [32]byte
		n   int64
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(60 * time.Second))
		h := sha256.New()
		n, err := io.Copy(h, c)
		var r result
		copy(r.sum[:], h.Sum(nil))
		r.n, r.err = n, err
		got <- r
	}()
	data := make([]byte, size)
	rand.Read(data)
	want := sha256.Sum256(data)
	var c net.Conn
	err := from.Do(func() (err error) {
		d := net.Dialer{Timeout: 10 * time.Second}
		c, err = d.Dial("tcp", addr)
		return
	})
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.Copy(c, bytes.NewReader(data)); err != nil {
		c.Close()
		return fmt.Errorf("send to %s: %w", addr, err)
	}
	c.Close()
	select {
	case r := <-got:
		if r.err != nil {
			return fmt.Errorf("receive on %s: %w", addr, r.err)
		}
		if r.n != int64(size) || r.sum != want {
			return fmt.Errorf("%s: received %d bytes, sha256 mismatch=%v", addr, r.n, r.sum != want)
		}
		return nil
	case <-time.After(60 * time.Second):
		return errors.New("transfer timed out")
	}
}

// udpTransfer sends count datagrams of each size from from to dst:port in
// to and returns how many arrived intact.
func udpTransfer(from, to *netns.NS, dst net.IP, port, count int, sizes []int) (int, int, error) {
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
	total := make(chan int, 1)
	done := receiveUDP(rc, total, func(b []byte) bool {
		return len(b) >= 4 && bytes.Equal(b[4:], pattern(len(b)-4, b[0]))
	})
	sent := 0
	for i := 0; i < count; i++ {
		for _, s := range sizes {
			d := make([]byte, s)
			d[0] = byte(i)
			copy(d[4:], pattern(s-4, d[0]))
			if _, err := sc.Write(d); err != nil {
				return 0, sent, fmt.Errorf("send: %w", err)
			}
			sent++
			if sent%32 == 0 {
				time.Sleep(time.Millisecond) // stay below the socket buffers
			}
		}
	}
	total <- sent
	return <-done, sent, nil
}

// receiveUDP counts the datagrams good accepts on rc until as many arrived
// as the sender says on total it sent, or nothing arrived for a second.
func receiveUDP(rc *net.UDPConn, total <-chan int, good func([]byte) bool) <-chan int {
	done := make(chan int, 1)
	go func() {
		buf := make([]byte, 65536)
		ok, want := 0, -1
		last := time.Now()
		for {
			if want < 0 {
				select {
				case want = <-total:
				default:
				}
			}
			if want >= 0 && ok >= want {
				done <- ok
				return
			}
			rc.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			n, err := rc.Read(buf)
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) && time.Since(last) < time.Second {
					continue
				}
				done <- ok
				return
			}
			last = time.Now()
			if good(buf[:n]) {
				ok++
			}
		}
	}()
	return done
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}
