package harness_test

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	vnet "github.com/govmd/govmd/devices/net"
	"github.com/govmd/govmd/internal/harness"
	"github.com/govmd/govmd/virtio"
)

// The loop benchmarks send frames from the in-process guest through the
// device into tap A; NA forwards them (they are addressed to 10.201.5.5,
// routed back through tap A to the guest's address) so they come back
// through tap A and the device's receive queue to the guest. The "raw"
// variants do the same readv/writev loop on tap A with no device, which is
// the limit of this setup.

var loopDst = net.IPv4(10, 201, 5, 5).To4()

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
	copy(ip[12:16], harness.AddrB4)
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

// loopEnv prepares NA to send frames from the guest back to it.
func loopEnv(b *testing.B) *harness.NetEnv {
	env := harness.NewNetEnv(b, testMAC)
	na := env.NA
	for _, s := range []string{"net/ipv4/ip_forward", "net/ipv4/conf/all/send_redirects", "net/ipv4/conf/govmdA/send_redirects"} {
		v := "0"
		if s == "net/ipv4/ip_forward" {
			v = "1"
		}
		if err := na.Sysctl(s, v); err != nil {
			b.Fatal(err)
		}
	}
	l, err := na.NL.LinkByName("govmdA")
	if err != nil {
		b.Fatal(err)
	}
	if err := na.NL.NeighAdd(&netlink.Neigh{LinkIndex: l.Attrs().Index, State: netlink.NUD_PERMANENT,
		IP: harness.AddrB4, HardwareAddr: testMAC}); err != nil {
		b.Fatal(err)
	}
	if err := na.NL.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: loopDst.Mask(net.CIDRMask(24, 32)), Mask: net.CIDRMask(24, 32)},
		Gw: harness.AddrB4, LinkIndex: l.Attrs().Index}); err != nil {
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
	rxBuf    int
}

var loopCases = []loopCase{
	{name: "tso-64KiB", features: harness.LinuxFeatures, tcp: true, size: 14 + 65535, rxBuf: 4096,
		hdr: vnet.Header{Flags: vnet.HdrFNeedsCsum, GSOType: vnet.GSOTCPv4, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}},
	{name: "mtu-no-offload", features: virtio.FVersion1 | vnet.FMrgRxbuf | virtio.FRingEventIdx, size: 1514},
	{name: "64B", features: virtio.FVersion1 | vnet.FMrgRxbuf | virtio.FRingEventIdx, size: 64},
}

// segments returns how many frames come back for one frame sent: NA
// forwards the guest's TSO frames back out tap A segmented, because tun
// marks GSO frames from user space SKB_GSO_DODGY and has no GSO_ROBUST.
func (c loopCase) segments() int64 {
	if c.hdr.GSOType == vnet.GSONone {
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
}

func newLoopCounters() *loopCounters { return &loopCounters{progress: make(chan struct{}, 1)} }

func (l *loopCounters) received(frames, bytes int) {
	l.rxFrames.Add(int64(frames))
	l.rxBytes.Add(int64(bytes))
	select {
	case l.progress <- struct{}{}:
	default:
	}
}

// wait blocks while the window is full. Frames that do not come back
// within 100 ms are counted as lost.
func (l *loopCounters) wait(segs int64, kick func()) {
	for {
		out := l.sent.Load()*segs - l.lost.Load() - l.rxFrames.Load()
		if out <= loopWindow {
			return
		}
		kick()
		select {
		case <-l.progress:
		case <-time.After(100 * time.Millisecond):
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

func (l *loopCounters) report(b *testing.B, start time.Time, segs int64) {
	el := time.Since(start).Seconds()
	b.ReportMetric(float64(l.rxFrames.Load())/el, "rx-frames/s")
	b.ReportMetric(float64(l.rxBytes.Load())*8/el/1e9, "rx-Gbit/s")
	if want := l.sent.Load() * segs; want > 0 {
		b.ReportMetric(100*float64(want-l.rxFrames.Load())/float64(want), "%lost")
	}
}

// BenchmarkLoop pushes frames through the device into tap A and back. The
// standard MB/s is what the guest sent; rx-Gbit/s and rx-frames/s what
// came back (for TSO, as MTU segments).
func BenchmarkLoop(b *testing.B) {
	for _, c := range loopCases {
		b.Run(c.name, func(b *testing.B) {
			env := loopEnv(b)
			dev, err := vnet.New(env.TapA, vnet.Config{MAC: testMAC})
			if err != nil {
				b.Fatal(err)
			}
			defer dev.Close()
			n, err := harness.NewNIC(dev, harness.NICConfig{Features: c.features, RxBufSize: c.rxBuf})
			if err != nil {
				b.Fatal(err)
			}
			defer n.Close()
			macA, _ := env.NA.NL.LinkByName("govmdA")
			frame := ipv4Frame(macA.Attrs().HardwareAddr, testMAC, c.tcp, c.size)
			if err := n.FillTx(c.hdr, frame); err != nil {
				b.Fatal(err)
			}
			segs := c.segments()
			cnt := newLoopCounters()
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
			b.SetBytes(int64(len(frame)))
			start := time.Now()
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
			cnt.report(b, start, segs)
			if v, k := n.Violations(); k != 0 {
				b.Fatalf("header violations: %v", v)
			}
		})
	}
}

// BenchmarkLoopRaw is BenchmarkLoop without the device: the benchmark
// itself writes the frames to tap A and reads them back, with the same
// window, header size and tap offloads.
func BenchmarkLoopRaw(b *testing.B) {
	for _, c := range loopCases {
		b.Run(c.name, func(b *testing.B) {
			env := loopEnv(b)
			tp := env.TapA
			if err := tp.SetVnetHdrSize(vnet.HdrLen); err != nil {
				b.Fatal(err)
			}
			if err := tp.SetOffload(vnet.TapOffloads(c.features)); err != nil {
				b.Fatal(err)
			}
			macA, _ := env.NA.NL.LinkByName("govmdA")
			frame := ipv4Frame(macA.Attrs().HardwareAddr, testMAC, c.tcp, c.size)
			hdr := make([]byte, vnet.HdrLen)
			c.hdr.Encode(hdr)
			out := [][]byte{hdr, frame}
			segs := c.segments()
			cnt := newLoopCounters()
			done := make(chan error, 1)
			go func() {
				in := [][]byte{make([]byte, vnet.HdrLen+vnet.MaxFrame)}
				for {
					k, err := tp.ReadV(in, true)
					if err != nil {
						if errors.Is(err, os.ErrDeadlineExceeded) {
							err = nil
						}
						done <- err
						return
					}
					cnt.received(1, k-vnet.HdrLen)
				}
			}()
			b.SetBytes(int64(len(frame)))
			start := time.Now()
			for b.Loop() {
				cnt.wait(segs, func() {})
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
			cnt.report(b, start, segs)
		})
	}
}

// BenchmarkTCPStream measures a TCP stream through the whole harness
// (NB's stack, tap B, the bridge, the device, tap A, NA's stack) with the
// Linux driver's features.
func BenchmarkTCPStream(b *testing.B) {
	for _, dir := range []string{"guest-to-host", "host-to-guest"} {
		b.Run(dir, func(b *testing.B) {
			r := newRig(b, rigConfig{nic: harness.NICConfig{Features: harness.LinuxFeatures}})
			from, to, dst := r.env.NB, r.env.NA, harness.AddrA4
			if dir == "host-to-guest" {
				from, to, dst = r.env.NA, r.env.NB, harness.AddrB4
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
