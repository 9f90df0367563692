package nettest_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	vnet "github.com/govmd/govmd/devices/net"
	"github.com/govmd/govmd/devices/net/nettest"
	"github.com/govmd/govmd/devices/net/tap"
	"github.com/govmd/govmd/memory"
	"github.com/govmd/govmd/virtio"
	"github.com/govmd/govmd/virtio/virtiotest"
)

// The loop benchmarks (BenchmarkLoop) push frames from the in-process
// guest through the device into tap A and back, next to the same
// readv/writev loop on tap A without the device.

var loopDst = net.IPv4(10, 201, 5, 5).To4()

// Buffer geometry shared by the device and raw variants.
const (
	loopQueueSize = vnet.DefaultQueueSize // receive and transmit rings
	loopTxSlots   = 64                    // transmit buffers (the NIC's default)
	loopMemSize   = 64 << 20              // guest memory (the NIC's default)
)

// ipv4Frame builds an Ethernet/IPv4 frame of size bytes from the guest's
// address to loopDst, carrying TCP (a header with ACK) or UDP (no
// checksum).
func ipv4Frame(dst, src net.HardwareAddr, tcp bool, size int) []byte {
	f := make([]byte, size)
	copy(f[0:6], dst)
	copy(f[6:12], src)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(size-14))
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
	ip[8] = 64
	ip[9] = 17
	if tcp {
		ip[9] = 6
	}
	copy(ip[12:16], nettest.AddrB4)
	copy(ip[16:20], loopDst)
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	l4 := f[34:]
	binary.BigEndian.PutUint16(l4[0:], 40000)
	binary.BigEndian.PutUint16(l4[2:], 9)
	if tcp {
		binary.BigEndian.PutUint32(l4[4:], 1)
		l4[12] = 5 << 4
		l4[13] = 0x10 // ACK
		binary.BigEndian.PutUint16(l4[14:], 65535)
	} else {
		binary.BigEndian.PutUint16(l4[4:], uint16(size-34))
	}
	return f
}

// loopEnv prepares NA to send frames from the guest back to it. IPv6 is
// off on tap A so that only the benchmark's frames cross it.
func loopEnv(b *testing.B) *nettest.NetEnv {
	env := nettest.NewNetEnv(b, testMAC)
	na := env.NA
	for _, s := range []struct{ path, v string }{
		{"net/ipv4/ip_forward", "1"},
		{"net/ipv4/conf/all/send_redirects", "0"},
		{"net/ipv4/conf/govmdA/send_redirects", "0"},
		{"net/ipv6/conf/govmdA/disable_ipv6", "1"},
	} {
		if err := na.Sysctl(s.path, s.v); err != nil {
			b.Fatal(err)
		}
	}
	l, err := na.NL.LinkByName("govmdA")
	if err != nil {
		b.Fatal(err)
	}
	if err := na.NL.NeighAdd(&netlink.Neigh{LinkIndex: l.Attrs().Index, State: netlink.NUD_PERMANENT,
		IP: nettest.AddrB4, HardwareAddr: testMAC}); err != nil {
		b.Fatal(err)
	}
	if err := na.NL.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: loopDst.Mask(net.CIDRMask(24, 32)), Mask: net.CIDRMask(24, 32)},
		Gw: nettest.AddrB4, LinkIndex: l.Attrs().Index}); err != nil {
		b.Fatal(err)
	}
	return env
}

type loopCase struct {
	name     string
	features uint64
	hdr      vnet.Header
	tcp      bool
	size     int
	rxBuf    int // mergeable receive buffer size; 0: the NIC's default
}

// The TSO frame is the largest the kernel forwards whole: 65535 bytes
// with the Ethernet header. From 65536 bytes (gso_max_size) on, the
// forwarding path segments it in software before tap A (netif_skb_features
// drops the GSO features), and 46 MTU frames come back instead of one.
var loopCases = []loopCase{
	{name: "tso-64KiB", features: nettest.LinuxFeatures, tcp: true, size: 65535, rxBuf: 4096,
		hdr: vnet.Header{Flags: vnet.HdrFNeedsCsum, GSOType: vnet.GSOTCPv4, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}},
	{name: "mtu-no-offload", features: virtio.FVersion1 | vnet.FMrgRxbuf | virtio.FRingEventIdx, size: 1514},
	{name: "64B", features: virtio.FVersion1 | vnet.FMrgRxbuf | virtio.FRingEventIdx, size: 64},
}

func (c loopCase) rxBufSize() int {
	if c.rxBuf != 0 {
		return c.rxBuf
	}
	return 2048 // nettest.NICConfig's default
}

// rxNeed is how many bytes of receive buffers the device offers the tap
// per read: the header and the largest frame the tap may deliver with the
// driver's receive offloads (the device's maxRxFrame).
func (c loopCase) rxNeed() int {
	gso := tap.OffloadTSO4 | tap.OffloadTSO6 | tap.OffloadUFO | tap.OffloadUSO4 | tap.OffloadUSO6
	if vnet.TapOffloads(c.features)&gso != 0 {
		return vnet.HdrLen + vnet.MaxFrame
	}
	return vnet.HdrLen + vnet.DefaultMTU + 14 + 4
}

// segments returns how many frames come back for one frame sent: one,
// unless the frame is too large for the kernel to forward it as a GSO
// frame (see loopCases).
func (c loopCase) segments() int64 {
	if c.hdr.GSOType == vnet.GSONone || c.size < 65536 {
		return 1
	}
	payload := c.size - 14 - 20 - 20
	return int64((payload + int(c.hdr.GSOSize) - 1) / int(c.hdr.GSOSize))
}

// loopWindow bounds the frames in flight (sent and not yet received), so
// that the sender does not overflow tap A's queue.
const loopWindow = 512

// loopCounters count a loop benchmark's frames; the sender waits on
// progress when the window is full.
type loopCounters struct {
	sent, rxFrames, rxBytes, lost atomic.Int64
	progress                      chan struct{}
	start                         time.Time
	cpu0                          time.Duration
	timer                         *time.Timer // the sender's wait
}

func newLoopCounters() *loopCounters { return &loopCounters{progress: make(chan struct{}, 1)} }

// begin starts the clocks.
func (l *loopCounters) begin() {
	l.start, l.cpu0 = time.Now(), cpuTime()
}

func (l *loopCounters) received(frames, bytes int) {
	l.rxFrames.Add(int64(frames))
	l.rxBytes.Add(int64(bytes))
	select {
	case l.progress <- struct{}{}:
	default:
	}
}

// wait blocks while the window is full. Frames that do not come back
// within 100 ms are counted as lost. Only the sender calls it.
func (l *loopCounters) wait(segs int64, kick func()) {
	for {
		out := l.sent.Load()*segs - l.lost.Load() - l.rxFrames.Load()
		if out <= loopWindow {
			return
		}
		kick()
		if l.timer == nil {
			l.timer = time.NewTimer(100 * time.Millisecond)
		} else {
			l.timer.Reset(100 * time.Millisecond)
		}
		select {
		case <-l.progress:
		case <-l.timer.C:
			l.lost.Add(out)
		}
	}
}

// finish waits until every frame came back or nothing arrived for 500 ms.
func (l *loopCounters) finish(segs int64) {
	last, lastN := time.Now(), l.rxFrames.Load()
	for l.sent.Load()*segs-l.lost.Load() > l.rxFrames.Load() && time.Since(last) < 500*time.Millisecond {
		time.Sleep(time.Millisecond)
		if k := l.rxFrames.Load(); k != lastN {
			last, lastN = time.Now(), k
		}
	}
}

// report reports the rates from begin to now (after finish).
func (l *loopCounters) report(b *testing.B, segs int64) {
	el := time.Since(l.start).Seconds()
	b.ReportMetric(float64(l.rxBytes.Load())*8/el/1e9, "Gbit/s")
	b.ReportMetric(float64(l.rxFrames.Load())/el, "pps")
	b.ReportMetric((cpuTime()-l.cpu0).Seconds()/el, "cpus")
	if want := l.sent.Load() * segs; want > 0 {
		b.ReportMetric(100*float64(want-l.rxFrames.Load())/float64(want), "%lost")
	}
}

// cpuTime returns the user and system CPU time the process has used.
func cpuTime() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkLoop measures the device's data path. Each frame class has two
// sub-benchmarks that do the same work on the same tap in the same setup:
//
//   - device: the in-process guest driver posts frames on the transmit
//     queue; the device writes them to tap A; NA forwards them (they are
//     addressed to 10.201.5.5, routed back through tap A to the guest's
//     address), so they come back through tap A and the device's receive
//     queue to the guest, which reposts its buffers.
//   - raw: the limit of this setup. A host loop does the device's
//     readv/writev on tap A with no device and no guest: the same frames
//     from the same kind of memory (an mmap'd region like guest RAM), taken
//     in turn from as many transmit buffers as the NIC has, written with the
//     iovecs the device uses (virtio header, Ethernet header, the rest),
//     read back into a ring of buffers of the NIC's receive-buffer size,
//     as many per read as the device offers the tap, plus its spare byte.
//
// Both report Gbit/s and pps of the frames that came back (Ethernet frames
// without the virtio header; every frame crosses the tap twice), the CPUs
// the process used (cpus: CPU time over wall time) and the frames lost.
// The device variant also reports rxwait/frame: how often the device's
// receive path waited for the guest to post buffers, per frame.
func BenchmarkLoop(b *testing.B) {
	for _, c := range loopCases {
		b.Run(c.name, func(b *testing.B) {
			b.Run("device", func(b *testing.B) { loopDevice(b, c, false, false) })
			if c.name == "tso-64KiB" {
				b.Run("device-api", func(b *testing.B) { loopDevice(b, c, false, true) })
			}
			b.Run("vhost-user-process", func(b *testing.B) { loopDevice(b, c, true, false) })
			b.Run("raw", func(b *testing.B) { loopRaw(b, c) })
		})
	}
}

// loopDevice runs the loop through the device in this process, or with
// process in a sandboxed net-device process behind vhost-user (as govmd
// run hosts a NIC by default). With apiLoad, the control API serves the
// device's counters on a unix socket meanwhile, and a client sends it
// bursts of apiBurst concurrent GET /vm/counters (see startAPILoad).
func loopDevice(b *testing.B, c loopCase, process, apiLoad bool) {
	env := loopEnv(b)
	dev, err := vnet.New(env.TapA, vnet.Config{MAC: testMAC, QueueSize: loopQueueSize})
	if err != nil {
		b.Fatal(err)
	}
	defer dev.Close()
	cfg := nettest.NICConfig{Features: c.features, RxBufSize: c.rxBufSize(),
		QueueSize: loopQueueSize, TxSlots: loopTxSlots, MemSize: loopMemSize}
	if os.Getenv("GOVMD_BENCH_MEMFD") == "1" && !process {
		// Guest memory in a memfd (as with a sandboxed NIC) instead of
		// private anonymous memory: what sharing it costs.
		m, err := memory.NewShared([]memory.Range{{GPA: 0, Size: loopMemSize}})
		if err != nil {
			b.Fatal(err)
		}
		cfg.Mem = m
	}
	var driven virtio.Device = dev
	var rem *nettest.Remote
	if process {
		if rem, err = nettest.NewRemoteProcess(env.TapA, vnet.Config{MAC: testMAC}, loopMemSize, nil, nil); err != nil {
			b.Fatal(err)
		}
		defer func() {
			if err := rem.Close(); err != nil {
				b.Errorf("net-device: %v", err)
			}
		}()
		cfg.Mem, driven = rem.Mem, rem.Frontend
	}
	n, err := nettest.NewNIC(driven, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer n.Close()
	if rem != nil {
		for deadline := time.Now().Add(5 * time.Second); !rem.Frontend.Running(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				b.Fatalf("backend not serving the queues: %v", rem.Frontend.Err())
			}
		}
	}
	macA, _ := env.NA.NL.LinkByName("govmdA")
	frame := ipv4Frame(macA.Attrs().HardwareAddr, testMAC, c.tcp, c.size)
	if err := n.FillTx(c.hdr, frame); err != nil {
		b.Fatal(err)
	}
	segs := c.segments()
	cnt := newLoopCounters()
	var load *apiLoadGen
	if apiLoad {
		load = startAPILoad(b, dev)
	}
	var stop atomic.Bool
	done := make(chan error, 1)
	go func() {
		var bytes int
		count := func(_ vnet.Header, l int) { bytes += l }
		for !stop.Load() {
			bytes = 0
			k, err := n.DrainRx(count)
			if err != nil {
				done <- err
				return
			}
			if k > 0 {
				cnt.received(k, bytes)
			}
			n.WaitRx(5 * time.Millisecond)
		}
		done <- nil
	}()
	cnt.begin()
	for b.Loop() {
		cnt.wait(segs, n.KickTx)
		if err := n.PostTx(n.HdrLen+len(frame), 5*time.Second); err != nil {
			b.Fatal(err)
		}
		if cnt.sent.Add(1)%16 == 0 {
			n.KickTx()
		}
	}
	n.KickTx()
	cnt.finish(segs)
	stop.Store(true)
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	cnt.report(b, segs)
	if load != nil {
		load.report(b, time.Since(cnt.start))
	}
	if !process {
		s := dev.Stats()
		b.ReportMetric(float64(s.RxNoBuffer)/float64(max(s.RxPackets, 1)), "rxwait/frame")
	}
	if v, k := n.Violations(); k != 0 {
		b.Fatalf("header violations: %v", v)
	}
}

func loopRaw(b *testing.B, c loopCase) {
	env := loopEnv(b)
	tp := env.TapA
	if err := tp.SetVnetHdrSize(vnet.HdrLen); err != nil {
		b.Fatal(err)
	}
	if err := tp.SetOffload(vnet.TapOffloads(c.features & vnet.GuestOffloads)); err != nil {
		b.Fatal(err)
	}
	mem, err := memory.New([]memory.Range{{GPA: 0, Size: loopMemSize}})
	if err != nil {
		b.Fatal(err)
	}
	defer mem.Close()
	alloc := virtiotest.Alloc{Next: 0x10000, End: loopMemSize}
	buf := func(size, used int) []byte {
		s, err := mem.Slice(alloc.Get(uint64(size), 64), uint64(used))
		if err != nil {
			b.Fatal(err)
		}
		return s
	}
	macA, _ := env.NA.NL.LinkByName("govmdA")
	frame := ipv4Frame(macA.Attrs().HardwareAddr, testMAC, c.tcp, c.size)
	hdr := make([]byte, vnet.HdrLen)
	c.hdr.Encode(hdr)
	// Transmit buffers, sized like the NIC's and holding header and frame.
	tx := make([][]byte, loopTxSlots)
	for i := range tx {
		tx[i] = buf(vnet.HdrLen+vnet.MaxFrame+64, vnet.HdrLen+len(frame))
		copy(tx[i], hdr)
		copy(tx[i][vnet.HdrLen:], frame)
	}
	// Receive buffers: a ring of them, like the NIC's mergeable buffers.
	bufSize := c.rxBufSize()
	rx := make([][]byte, loopQueueSize)
	for i := range rx {
		rx[i] = buf(bufSize, bufSize)
	}
	need := c.rxNeed()
	segs := c.segments()
	cnt := newLoopCounters()
	done := make(chan error, 1)
	go func() {
		var spare [1]byte
		iov := make([][]byte, 0, 64)
		next := 0
		for {
			iov = iov[:0]
			capacity := 0
			for i := 0; capacity < need && i < len(rx); i++ {
				iov = append(iov, rx[(next+i)%len(rx)])
				capacity += bufSize
			}
			iov = append(iov, spare[:])
			k, err := tp.ReadV(iov, true)
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					err = nil
				}
				done <- err
				return
			}
			if k > capacity {
				done <- fmt.Errorf("%d-byte frame overflowed %d bytes of buffers", k, capacity)
				return
			}
			next = (next + (k+bufSize-1)/bufSize) % len(rx)
			cnt.received(1, k-vnet.HdrLen)
		}
	}()
	// The iovecs the device writes: its copies of the virtio and Ethernet
	// headers, then the rest of the frame from the buffer.
	var hcopy [vnet.HdrLen]byte
	var eth [14]byte
	out := make([][]byte, 3)
	slot := 0
	cnt.begin()
	for b.Loop() {
		cnt.wait(segs, func() {})
		s := tx[slot]
		slot = (slot + 1) % len(tx)
		copy(hcopy[:], s)
		copy(eth[:], s[vnet.HdrLen:])
		out[0], out[1], out[2] = hcopy[:], eth[:], s[vnet.HdrLen+len(eth):]
		if _, err := tp.WriteV(out); err != nil {
			b.Fatal(err)
		}
		cnt.sent.Add(1)
	}
	cnt.finish(segs)
	tp.CancelRead()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	tp.ResumeRead()
	cnt.report(b, segs)
}

// BenchmarkTCPStream measures a TCP stream through the whole harness
// (NB's stack, tap B, the bridge, the device, tap A, NA's stack) with the
// Linux driver's features.
func BenchmarkTCPStream(b *testing.B) {
	for _, dir := range []string{"guest-to-host", "host-to-guest"} {
		b.Run(dir, func(b *testing.B) {
			r := newRig(b, rigConfig{nic: nettest.NICConfig{Features: nettest.LinuxFeatures}})
			from, to, dst := r.env.NB, r.env.NA, nettest.AddrA4
			if dir == "host-to-guest" {
				from, to, dst = r.env.NA, r.env.NB, nettest.AddrB4
			}
			addr := net.JoinHostPort(dst.String(), "7301")
			var ln net.Listener
			if err := to.Do(func() (err error) { ln, err = net.Listen("tcp", addr); return }); err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			got := make(chan int64, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					got <- -1
					return
				}
				k, _ := io.Copy(io.Discard, c)
				c.Close()
				got <- k
			}()
			var c net.Conn
			if err := from.Do(func() (err error) { c, err = net.Dial("tcp", addr); return }); err != nil {
				b.Fatal(err)
			}
			chunk := make([]byte, 1<<20)
			b.SetBytes(int64(len(chunk)))
			var total int64
			for b.Loop() {
				if _, err := c.Write(chunk); err != nil {
					b.Fatal(err)
				}
				total += int64(len(chunk))
			}
			c.Close()
			if k := <-got; k != total {
				b.Fatalf("received %d of %d bytes", k, total)
			}
			s := r.dev.Stats()
			b.ReportMetric(float64(s.TxPackets+s.RxPackets)/b.Elapsed().Seconds(), "frames/s")
		})
	}
}
