package vhostuser

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/govmd/govmd/internal/eventfd"
	"github.com/govmd/govmd/memory"
	"github.com/govmd/govmd/virtio"
	"github.com/govmd/govmd/virtio/virtiotest"
)

// echoDev is a one-queue device that completes every chain with its
// readable length, and records its activations and resets.
type echoDev struct {
	workers virtio.Workers
	mu      sync.Mutex
	acts    []virtio.Activation
	resets  int
}

func (d *echoDev) Type() virtio.DeviceType { return 99 }
func (d *echoDev) Features() uint64        { return virtio.FVersion1 | virtio.FRingEventIdx }
func (d *echoDev) QueueSizes() []uint16    { return []uint16{64} }
func (d *echoDev) ConfigSize() int         { return 8 }
func (d *echoDev) ReadConfig(off uint64, data []byte) {
	for i := range data {
		data[i] = byte(off) + byte(i) + 1
	}
}
func (d *echoDev) WriteConfig(uint64, []byte) {}

func (d *echoDev) Activate(a virtio.Activation) error {
	d.mu.Lock()
	d.acts = append(d.acts, a)
	d.mu.Unlock()
	ctx := d.workers.Start(a.Kicks[0])
	used := &virtio.Used{Queue: a.Queues[0], Transport: a.Transport}
	d.workers.Go(ctx, func(ctx context.Context) {
		var c virtio.Chain
		for {
			err := virtio.Drain(ctx, a.Queues[0], &c, 8, func(c *virtio.Chain) error { return used.Push(c.Head, c.ReadLen) }, used.Publish)
			if err != nil {
				return
			}
			if _, err := a.Kicks[0].Wait(); err != nil {
				return
			}
		}
	})
	return nil
}

func (d *echoDev) Reset() {
	d.workers.Stop()
	d.mu.Lock()
	d.resets++
	d.mu.Unlock()
}

func (d *echoDev) counts() (acts, resets int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.acts), d.resets
}

// pair returns a Conn for the test's frontend and serves a Backend for
// dev at the other end; wait returns Serve's result.
func pair(t *testing.T, dev virtio.Device) (fe *Conn, b *Backend, wait func() error) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *Conn {
		f := os.NewFile(uintptr(fd), "s")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return NewConn(c.(*net.UnixConn))
	}
	fe, be := conn(fds[0]), conn(fds[1])
	b = NewBackend(BackendConfig{Device: dev})
	done := make(chan error, 1)
	go func() { done <- b.Serve(context.Background(), be) }()
	var once sync.Once
	var serr error
	wait = func() error {
		once.Do(func() {
			select {
			case serr = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("backend did not end its session")
			}
		})
		return serr
	}
	t.Cleanup(func() { fe.Close(); wait() })
	return fe, b, wait
}

// client is a minimal frontend for driving a Backend by hand.
type client struct {
	t    *testing.T
	c    *Conn
	mem  *memory.Memory
	ring *virtiotest.Ring
	kick *eventfd.EventFD
	call *eventfd.EventFD
}

func (c *client) get(req Request, payload []byte) []byte {
	c.t.Helper()
	p, err := c.c.Call(req, 0, payload, true, time.Now().Add(5*time.Second))
	if err != nil {
		c.t.Fatalf("%s: %v", req, err)
	}
	return p
}

// ack sends a request asking for an acknowledgement and returns it.
func (c *client) ack(req Request, payload []byte, fds ...int) uint64 {
	c.t.Helper()
	p, err := c.c.Call(req, FlagNeedReply, payload, true, time.Now().Add(5*time.Second), fds...)
	if err != nil {
		c.t.Fatalf("%s: %v", req, err)
	}
	v, err := ParseU64(p)
	if err != nil {
		c.t.Fatalf("%s: %v", req, err)
	}
	return v
}

func (c *client) ok(req Request, payload []byte, fds ...int) {
	c.t.Helper()
	if v := c.ack(req, payload, fds...); v != 0 {
		c.t.Fatalf("%s refused", req)
	}
}

// newClient negotiates REPLY_ACK and sets up shared memory with a ring of
// 16 entries at 0x1000 (not yet sent).
func newClient(t *testing.T, fe *Conn) *client {
	c := &client{t: t, c: fe}
	f, _ := ParseU64(c.get(GetFeatures, nil))
	if f&FProtocolFeatures == 0 || f&virtio.FVersion1 == 0 {
		t.Fatalf("features %#x", f)
	}
	p, _ := ParseU64(c.get(GetProtocolFeatures, nil))
	if p&ProtocolReplyAck == 0 {
		t.Fatalf("protocol features %#x", p)
	}
	if err := fe.Send(SetProtocolFeatures, 0, U64(ProtocolReplyAck), time.Time{}); err != nil {
		t.Fatal(err)
	}
	c.ok(SetOwner, nil)
	var err error
	if c.mem, err = memory.NewShared([]memory.Range{{GPA: 0, Size: 1 << 20}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.mem.Close() })
	c.ring = virtiotest.NewRing(c.mem, 16, 0x1000)
	if c.kick, err = eventfd.New(); err != nil {
		t.Fatal(err)
	}
	if c.call, err = eventfd.New(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.kick.Close(); c.call.Close() })
	return c
}

func (c *client) memTable() []byte {
	r := c.mem.Regions()[0]
	return EncodeMemTable([]Region{{GuestAddr: 0, Size: uint64(len(r.Host)), UserAddr: 0x7f0000000000, Offset: r.Offset}})
}

func (c *client) va(gpa uint64) uint64 { return 0x7f0000000000 + gpa }

// start hands ring 0 over; the device is active afterwards.
func (c *client) start(base uint16) {
	c.t.Helper()
	c.ok(SetFeatures, U64(virtio.FVersion1|FProtocolFeatures))
	c.ok(SetMemTable, c.memTable(), int(c.mem.File().Fd()))
	c.ok(SetVringNum, VringState{0, 16}.Encode())
	c.ok(SetVringBase, VringState{0, uint32(base)}.Encode())
	cfg := c.ring.Config()
	c.ok(SetVringAddr, VringAddr{Desc: c.va(cfg.DescAddr), Used: c.va(cfg.UsedAddr), Avail: c.va(cfg.AvailAddr)}.Encode())
	c.ok(SetVringCall, U64(0), c.call.FD())
	c.ok(SetVringKick, U64(0), c.kick.FD())
	c.ok(SetVringEnable, VringState{0, 1}.Encode())
}

// TestBackendServesAndStops: a frontend that follows the protocol gets
// its ring served (used elements, an interrupt on the call fd), and
// GET_VRING_BASE stops the device and reports where the next server
// continues; started again from there, the device goes on.
func TestBackendServesAndStops(t *testing.T) {
	dev := &echoDev{}
	fe, b, _ := pair(t, dev)
	c := newClient(t, fe)
	c.start(0)
	if a, _ := dev.counts(); a != 1 {
		t.Fatalf("%d activations", a)
	}
	for i := 0; i < 3; i++ {
		c.ring.Add(virtiotest.Buf{Addr: 0x10000 + uint64(i)*64, Len: 64})
	}
	c.kick.Write()
	if _, err := c.call.Wait(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for c.ring.UsedIdx() != 3 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if c.ring.UsedIdx() != 3 {
		t.Fatalf("used index %d, want 3", c.ring.UsedIdx())
	}
	s, err := ParseVringState(c.get(GetVringBase, VringState{0, 0}.Encode()))
	if err != nil || s.Num != 3 {
		t.Fatalf("GET_VRING_BASE = %+v, %v; want 3", s, err)
	}
	if _, r := dev.counts(); r != 1 {
		t.Fatalf("device not stopped at GET_VRING_BASE (%d resets)", r)
	}
	// Restart from 3 with new eventfds: the next chain is served.
	c.start(3)
	c.ring.Add(virtiotest.Buf{Addr: 0x20000, Len: 64})
	c.kick.Write()
	for c.ring.UsedIdx() != 4 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if c.ring.UsedIdx() != 4 {
		t.Fatalf("after the restart the used index is %d, want 4", c.ring.UsedIdx())
	}
	if b.Faults() != 0 {
		t.Fatalf("%d faults", b.Faults())
	}
}

// TestBackendRefusesHostileFrontend: every malformed or out-of-range
// request is refused (a non-zero acknowledgement) and counted, the device
// is never started on it, and the session goes on.
func TestBackendRefusesHostileFrontend(t *testing.T) {
	pipeR, pipeW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pipeR.Close()
	defer pipeW.Close()
	unsealed, err := unix.MemfdCreate("x", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(unsealed)
	unix.Ftruncate(unsealed, 1<<20)
	tests := []struct {
		name string
		send func(c *client) uint64
	}{
		{"features not offered", func(c *client) uint64 { return c.ack(SetFeatures, U64(1<<40)) }},
		{"protocol features not offered", func(c *client) uint64 { return c.ack(SetProtocolFeatures, U64(1<<20)) }},
		{"ring index out of range", func(c *client) uint64 { return c.ack(SetVringNum, VringState{7, 16}.Encode()) }},
		{"ring size not a power of two", func(c *client) uint64 { return c.ack(SetVringNum, VringState{0, 12}.Encode()) }},
		{"ring size over the maximum", func(c *client) uint64 { return c.ack(SetVringNum, VringState{0, 128}.Encode()) }},
		{"ring size zero", func(c *client) uint64 { return c.ack(SetVringNum, VringState{0, 0}.Encode()) }},
		{"packed base", func(c *client) uint64 { return c.ack(SetVringBase, VringState{0, 1 << 16}.Encode()) }},
		{"state payload short", func(c *client) uint64 { return c.ack(SetVringNum, []byte{0, 0, 0, 0}) }},
		{"address payload short", func(c *client) uint64 { return c.ack(SetVringAddr, make([]byte, 39)) }},
		{"address log flag", func(c *client) uint64 { return c.ack(SetVringAddr, VringAddr{Flags: 1}.Encode()) }},
		{"kick not an eventfd", func(c *client) uint64 { return c.ack(SetVringKick, U64(0), int(pipeR.Fd())) }},
		{"kick without fd (polling)", func(c *client) uint64 { return c.ack(SetVringKick, U64(VringNoFD)) }},
		{"kick NOFD with an fd", func(c *client) uint64 { return c.ack(SetVringKick, U64(VringNoFD), c.kick.FD()) }},
		{"call fd missing", func(c *client) uint64 { return c.ack(SetVringCall, U64(0)) }},
		{"call reserved bits", func(c *client) uint64 { return c.ack(SetVringCall, U64(1<<20), c.call.FD()) }},
		{"err not an eventfd", func(c *client) uint64 { return c.ack(SetVringErr, U64(0), int(pipeW.Fd())) }},
		{"memory table without fd", func(c *client) uint64 { return c.ack(SetMemTable, c.memTable()) }},
		{"memory table fd not sealed", func(c *client) uint64 { return c.ack(SetMemTable, c.memTable(), unsealed) }},
		{"memory table beyond the file", func(c *client) uint64 {
			return c.ack(SetMemTable, EncodeMemTable([]Region{{Size: 4 << 20}}), int(c.mem.File().Fd()))
		}},
		{"memory table with a pipe", func(c *client) uint64 {
			return c.ack(SetMemTable, EncodeMemTable([]Region{{Size: 4096}}), int(pipeR.Fd()))
		}},
		{"memory regions overlap", func(c *client) uint64 {
			fd := int(c.mem.File().Fd())
			return c.ack(SetMemTable, EncodeMemTable([]Region{{Size: 8192}, {GuestAddr: 4096, Size: 4096, UserAddr: 1 << 30}}), fd, fd)
		}},
		{"memory region wraps", func(c *client) uint64 {
			return c.ack(SetMemTable, EncodeMemTable([]Region{{GuestAddr: ^uint64(0) - 10, Size: 4096}}), int(c.mem.File().Fd()))
		}},
		{"memory table count lies", func(c *client) uint64 {
			p := c.memTable()
			p[0] = 9
			return c.ack(SetMemTable, p, int(c.mem.File().Fd()))
		}},
		{"ring outside memory", func(c *client) uint64 {
			c.ok(SetFeatures, U64(virtio.FVersion1|FProtocolFeatures))
			c.ok(SetMemTable, c.memTable(), int(c.mem.File().Fd()))
			c.ok(SetVringNum, VringState{0, 16}.Encode())
			c.ok(SetVringAddr, VringAddr{Desc: 0x1000, Used: c.va(0x3000), Avail: c.va(0x2000)}.Encode())
			c.ok(SetVringKick, U64(0), c.kick.FD())
			return c.ack(SetVringEnable, VringState{0, 1}.Encode())
		}},
		{"ring straddles the end of memory", func(c *client) uint64 {
			c.ok(SetFeatures, U64(virtio.FVersion1|FProtocolFeatures))
			c.ok(SetMemTable, c.memTable(), int(c.mem.File().Fd()))
			c.ok(SetVringNum, VringState{0, 16}.Encode())
			c.ok(SetVringAddr, VringAddr{Desc: c.va(1<<20 - 64), Used: c.va(0x3000), Avail: c.va(0x2000)}.Encode())
			c.ok(SetVringKick, U64(0), c.kick.FD())
			return c.ack(SetVringEnable, VringState{0, 1}.Encode())
		}},
		{"config beyond the device's", func(c *client) uint64 { return c.ack(SetConfig, Config{Offset: 4, Data: make([]byte, 8)}.Encode()) }},
		{"dirty logging", func(c *client) uint64 { return c.ack(SetLogBase, make([]byte, 16)) }},
		{"unknown request", func(c *client) uint64 { return c.ack(Request(77), nil) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dev := &echoDev{}
			fe, b, _ := pair(t, dev)
			c := newClient(t, fe)
			if v := tt.send(c); v == 0 {
				t.Fatal("accepted")
			}
			if b.Faults() == 0 {
				t.Error("not counted")
			}
			if a, _ := dev.counts(); a != 0 {
				t.Error("device started")
			}
			// The session goes on.
			if f, _ := ParseU64(c.get(GetFeatures, nil)); f&virtio.FVersion1 == 0 {
				t.Errorf("GET_FEATURES after the refusal: %#x", f)
			}
		})
	}
}

// TestBackendEndsBrokenSessions: what cannot be answered (a broken
// header, an oversized or truncated message, too many descriptors, a bad
// request without REPLY_ACK) ends the session with an error, and the
// device is stopped.
func TestBackendEndsBrokenSessions(t *testing.T) {
	raw := func(fe *Conn, b []byte, fds ...int) error {
		var oob []byte
		if len(fds) > 0 {
			oob = unix.UnixRights(fds...)
		}
		_, _, err := fe.c.WriteMsgUnix(b, oob, nil)
		return err
	}
	hdr := func(req, flags, size uint32) []byte {
		b := le.AppendUint32(nil, req)
		b = le.AppendUint32(b, flags)
		return le.AppendUint32(b, size)
	}
	tests := []struct {
		name string
		send func(t *testing.T, fe *Conn)
	}{
		{"version 2", func(t *testing.T, fe *Conn) { raw(fe, hdr(1, 2, 0)) }},
		{"reserved flag", func(t *testing.T, fe *Conn) { raw(fe, hdr(1, 1|0x100, 0)) }},
		{"oversized payload", func(t *testing.T, fe *Conn) { raw(fe, hdr(5, 1, 1<<20)) }},
		{"truncated payload", func(t *testing.T, fe *Conn) {
			raw(fe, append(hdr(8, 1, 8), 0, 0, 0, 0))
			fe.Shutdown()
		}},
		{"too many fds", func(t *testing.T, fe *Conn) {
			e, _ := eventfd.New()
			defer e.Close()
			fds := make([]int, MaxFDs+2)
			for i := range fds {
				fds[i] = e.FD()
			}
			raw(fe, hdr(12, 1, 8), fds...)
		}},
		{"bad request without REPLY_ACK", func(t *testing.T, fe *Conn) { fe.Send(SetVringNum, 0, VringState{9, 16}.Encode(), time.Time{}) }},
		{"bad GET", func(t *testing.T, fe *Conn) { fe.Send(GetVringBase, 0, VringState{9, 0}.Encode(), time.Time{}) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dev := &echoDev{}
			fe, _, wait := pair(t, dev)
			tt.send(t, fe)
			err := wait()
			if err == nil {
				t.Fatal("session ended without an error")
			}
			if tt.name != "truncated payload" && !errors.Is(err, ErrProtocol) {
				t.Errorf("session ended with %v, not a protocol error", err)
			}
		})
	}
}

// TestBackendFrontendGone: a frontend that disappears while the device
// runs ends the session cleanly and stops the device.
func TestBackendFrontendGone(t *testing.T) {
	dev := &echoDev{}
	fe, _, wait := pair(t, dev)
	c := newClient(t, fe)
	c.start(0)
	fe.Close()
	if err := wait(); err != nil {
		t.Fatalf("Serve = %v", err)
	}
	if a, r := dev.counts(); a != 1 || r != 1 {
		t.Fatalf("%d activations, %d resets", a, r)
	}
}
