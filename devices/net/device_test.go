package net_test

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	stdnet "net"
	"strings"
	"testing"
	"time"

	vnet "github.com/govmd/govmd/devices/net"
	"github.com/govmd/govmd/devices/net/nettest"
	"github.com/govmd/govmd/devices/net/tap"
	"github.com/govmd/govmd/virtio"
	"github.com/govmd/govmd/virtio/virtiotest"
)

var (
	nicMAC   = [6]byte{0x52, 0x54, 0x00, 0xab, 0xcd, 0xef}
	otherMAC = [6]byte{0x52, 0x54, 0x00, 0x11, 0x22, 0x33}
	bcast    = [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	mcast    = [6]byte{0x33, 0x33, 0, 0, 0, 1}
)

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// newNIC creates a device on a fake backend and a harness driver for it.
func newNIC(t *testing.T, cfg vnet.Config, nc nettest.NICConfig) (*vnet.Device, *nettest.NIC, *nettest.FakeBackend) {
	t.Helper()
	be := nettest.NewFakeBackend(nettest.AllOffloads)
	cfg.MAC = nicMAC[:]
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(testWriter{t}, nil))
	}
	d, err := vnet.New(be, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if nc.MemSize == 0 {
		nc.MemSize = 32 << 20
	}
	n, err := nettest.NewNIC(d, nc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	return d, n, be
}

// frame returns an Ethernet frame of n bytes.
func frame(dst, src [6]byte, n int) []byte {
	f := make([]byte, max(n, 14))
	copy(f[0:6], dst[:])
	copy(f[6:12], src[:])
	f[12], f[13] = 0x08, 0x00
	for i := 14; i < n; i++ {
		f[i] = byte(i * 7)
	}
	return f[:n]
}

// withHdr prepends an encoded header of hdrLen bytes.
func withHdr(h vnet.Header, hdrLen int, f []byte) []byte {
	b := make([]byte, hdrLen, hdrLen+len(f))
	h.Encode(b)
	return append(b, f...)
}

// waitFor polls cond for up to 5 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

var tso4 = vnet.Header{Flags: vnet.HdrFNeedsCsum, GSOType: vnet.GSOTCPv4, HdrLen: 66, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}

func TestTransmit(t *testing.T) {
	d, n, be := newNIC(t, vnet.Config{}, nettest.NICConfig{Features: nettest.LinuxFeatures, TxLayout: []int{3, 7, 5, 20, 1}})
	f := frame(otherMAC, nicMAC, 60000)
	if err := n.Send(tso4, f); err != nil {
		t.Fatal(err)
	}
	small := frame(bcast, nicMAC, 60)
	if err := n.Send(vnet.Header{Flags: vnet.HdrFDataValid}, small); err != nil {
		t.Fatal(err)
	}
	if err := n.WaitTxDone(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	w := be.Written()
	if len(w) != 2 {
		t.Fatalf("%d frames written, want 2", len(w))
	}
	if got := vnet.DecodeHeader(w[0][:12]); got != tso4 || !bytes.Equal(w[0][12:], f) {
		t.Errorf("TSO frame written with header %v, data equal %v", got, bytes.Equal(w[0][12:], f))
	}
	if got := vnet.DecodeHeader(w[1][:12]); !got.IsZero() || !bytes.Equal(w[1][12:], small) {
		t.Errorf("small frame written with header %v (DATA_VALID must be cleared)", got)
	}
	if s := d.Stats(); s.TxPackets != 2 || s.TxGSO != 1 || s.TxBytes != 60060 {
		t.Errorf("stats: %v", s)
	}
	if be.HdrSize() != 12 {
		t.Errorf("header size %d", be.HdrSize())
	}
}

func TestReceive(t *testing.T) {
	for _, tc := range []struct {
		name     string
		features uint64
		layout   []int
		size     int
	}{
		{"mergeable", nettest.LinuxFeatures, nil, 60000},
		{"big", nettest.LinuxFeatures &^ vnet.FMrgRxbuf, nil, 60000},
		{"big, header split", nettest.LinuxFeatures &^ vnet.FMrgRxbuf, []int{5, 3, 9}, 60000},
		{"small", nettest.MinimalFeatures, []int{7}, 1514},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, n, be := newNIC(t, vnet.Config{}, nettest.NICConfig{Features: tc.features, RxLayout: tc.layout})
			h := vnet.Header{}
			if tc.size > 1514 {
				h = tso4
			}
			f := frame(nicMAC, otherMAC, tc.size)
			be.Inject(withHdr(h, 12, f))
			got, err := n.Recv(5 * time.Second)
			if err != nil {
				t.Fatal(err)
			}
			want := h
			want.NumBuffers = uint16(got.Buffers)
			if got.Hdr != want || !bytes.Equal(got.Data, f) {
				t.Errorf("received header %v (want %v), data equal %v", got.Hdr, want, bytes.Equal(got.Data, f))
			}
			if wantBufs := (tc.size + 12 + 2047) / 2048; tc.features&vnet.FMrgRxbuf != 0 && got.Buffers != wantBufs {
				t.Errorf("frame in %d buffers, want %d", got.Buffers, wantBufs)
			}
			if s := d.Stats(); s.RxPackets != 1 || s.RxBytes != uint64(tc.size) {
				t.Errorf("stats: %v", s)
			}
		})
	}
}

// TestReceiveSanitized injects headers a tap may produce and checks what
// each kind of driver gets: a driver that did not negotiate an offload
// never sees it, and frames it cannot handle are dropped and counted.
func TestReceiveSanitized(t *testing.T) {
	dv := vnet.Header{Flags: vnet.HdrFDataValid}
	partial := vnet.Header{Flags: vnet.HdrFNeedsCsum, CsumStart: 34, CsumOffset: 16}
	tso6ecn := vnet.Header{Flags: vnet.HdrFNeedsCsum, GSOType: vnet.GSOTCPv6 | vnet.GSOECN, GSOSize: 1428, CsumStart: 54, CsumOffset: 16}
	uso := vnet.Header{Flags: vnet.HdrFNeedsCsum, GSOType: vnet.GSOUDPL4, GSOSize: 1400, CsumStart: 34, CsumOffset: 6}
	type want struct {
		h  vnet.Header
		ok bool
	}
	zero := want{vnet.Header{}, true}
	drop := want{}
	for _, tc := range []struct {
		name     string
		features uint64
		want     [5]want // DATA_VALID, partial, TSO4, TSO6+ECN, USO
	}{
		{"nothing acked", nettest.MinimalFeatures, [5]want{zero, drop, drop, drop, drop}},
		{"nothing acked, mergeable", nettest.MinimalFeatures | vnet.FMrgRxbuf, [5]want{zero, drop, drop, drop, drop}},
		{"csum only", nettest.CsumFeatures, [5]want{{dv, true}, {partial, true}, drop, drop, drop}},
		{"vio", nettest.VioFeatures, [5]want{{dv, true}, {partial, true}, {tso4, true}, drop, drop}},
		{"linux", nettest.LinuxFeatures, [5]want{{dv, true}, {partial, true}, {tso4, true}, {tso6ecn, true}, drop}},
		{"linux with USO", nettest.LinuxFeatures | vnet.FGuestUSO4 | vnet.FGuestUSO6, [5]want{{dv, true}, {partial, true}, {tso4, true}, {tso6ecn, true}, {uso, true}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, n, be := newNIC(t, vnet.Config{}, nettest.NICConfig{Features: tc.features})
			for i, h := range []vnet.Header{dv, partial, tso4, tso6ecn, uso} {
				size := 1514
				if h.GSOType != 0 {
					size = 20000
				}
				dropped := func() uint64 { s := d.Stats(); return s.RxBadHeader + s.RxTooBig }
				before := dropped()
				f := frame(nicMAC, otherMAC, size)
				be.Inject(withHdr(h, n.HdrLen, f))
				if !tc.want[i].ok {
					// A GSO frame may also be too big for the buffers
					// of a driver without GSO: dropped either way.
					waitFor(t, "drop", func() bool { return dropped() == before+1 })
					continue
				}
				got, err := n.Recv(5 * time.Second)
				if err != nil {
					t.Fatalf("header %v: %v", h, err)
				}
				w := tc.want[i].h
				w.NumBuffers = got.Hdr.NumBuffers
				if got.Hdr != w || !bytes.Equal(got.Data, f) {
					t.Errorf("header %v delivered as %v, want %v", h, got.Hdr, w)
				}
			}
			if v, k := n.Violations(); k != 0 {
				t.Errorf("violations: %v", v)
			}
		})
	}
}

func TestReceiveTooBig(t *testing.T) {
	d, n, be := newNIC(t, vnet.Config{}, nettest.NICConfig{Features: nettest.MinimalFeatures})
	be.Inject(withHdr(vnet.Header{}, 12, frame(nicMAC, otherMAC, 3000)))
	small := frame(nicMAC, otherMAC, 100)
	be.Inject(withHdr(vnet.Header{}, 12, small))
	got, err := n.Recv(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Data, small) {
		t.Errorf("received %d bytes, want the small frame", len(got.Data))
	}
	if s := d.Stats(); s.RxTooBig != 1 || s.RxPackets != 1 {
		t.Errorf("stats: %v", s)
	}
}

// TestReceiveFewMergeableBuffers: a driver posting fewer mergeable bytes
// than a 64 KiB frame needs still receives the frames that fit.
func TestReceiveFewMergeableBuffers(t *testing.T) {
	d, n, be := newNIC(t, vnet.Config{QueueSize: 16}, nettest.NICConfig{Features: nettest.LinuxFeatures})
	small := frame(nicMAC, otherMAC, 200)
	be.Inject(withHdr(vnet.Header{}, 12, small))
	if got, err := n.Recv(5 * time.Second); err != nil || !bytes.Equal(got.Data, small) {
		t.Fatalf("small frame: %v", err)
	}
	be.Inject(withHdr(tso4, 12, frame(nicMAC, otherMAC, 40000)))
	mid := frame(nicMAC, otherMAC, 20000)
	be.Inject(withHdr(tso4, 12, mid))
	got, err := n.Recv(5 * time.Second)
	if err != nil || !bytes.Equal(got.Data, mid) {
		t.Fatalf("20000-byte frame over 16 buffers: %v", err)
	}
	if s := d.Stats(); s.RxTooBig != 1 || s.RxPackets != 2 {
		t.Errorf("stats: %v", s)
	}
}

func TestLocked(t *testing.T) {
	for _, features := range []uint64{nettest.LinuxFeatures, nettest.MinimalFeatures} {
		t.Run(vnet.FeatureString(features&vnet.FGuestCsum), func(t *testing.T) {
			// Header and Ethernet header split over small descriptors.
			d, n, be := newNIC(t, vnet.Config{Locked: true}, nettest.NICConfig{Features: features,
				TxLayout: []int{5, 9, 2, 3, 1, 4}, RxLayout: []int{7, 6, 4}})
			h := vnet.Header{}
			if features&vnet.FCsum != 0 {
				h = tso4
			}
			own := frame(otherMAC, nicMAC, 30000)
			spoofed := frame(otherMAC, otherMAC, 30000)
			for _, f := range [][]byte{spoofed, own, spoofed} {
				if err := n.Send(h, f); err != nil {
					t.Fatal(err)
				}
			}
			if err := n.WaitTxDone(5 * time.Second); err != nil {
				t.Fatal(err)
			}
			w := be.Written()
			if len(w) != 1 || !bytes.Equal(w[0][12:], own) {
				t.Errorf("%d frames written, want only the one with the NIC's source", len(w))
			}
			rh := vnet.Header{}
			for _, dst := range [][6]byte{otherMAC, nicMAC, bcast, otherMAC, mcast} {
				be.Inject(withHdr(rh, 12, frame(dst, otherMAC, 1000)))
			}
			for _, dst := range [][6]byte{nicMAC, bcast, mcast} {
				got, err := n.Recv(5 * time.Second)
				if err != nil {
					t.Fatal(err)
				}
				if [6]byte(got.Data[0:6]) != dst {
					t.Errorf("received frame for %x, want %x", got.Data[0:6], dst)
				}
			}
			if s := d.Stats(); s.TxSpoofed != 2 || s.RxFiltered != 2 || s.TxPackets != 1 || s.RxPackets != 3 {
				t.Errorf("stats: %v", s)
			}
		})
	}
}

func TestConfigSpace(t *testing.T) {
	be := nettest.NewFakeBackend(nettest.AllOffloads)
	d, err := vnet.New(be, vnet.Config{MAC: nicMAC[:], MTU: 9000})
	if err != nil {
		t.Fatal(err)
	}
	var c [16]byte
	d.ReadConfig(0, c[:])
	want := []byte{0x52, 0x54, 0x00, 0xab, 0xcd, 0xef, 1, 0, 1, 0, 0x28, 0x23, 0, 0, 0, 0}
	if !bytes.Equal(c[:], want) {
		t.Errorf("config % x, want % x", c, want)
	}
	d.WriteConfig(0, []byte{1, 2, 3, 4, 5, 6})
	d.ReadConfig(0, c[:6])
	if [6]byte(c[:6]) != nicMAC {
		t.Errorf("MAC changed by a config write: % x", c[:6])
	}
	if d.Features()&vnet.FMTU == 0 || d.ConfigSize() != 12 {
		t.Errorf("features %s, config size %d", vnet.FeatureString(d.Features()), d.ConfigSize())
	}
	if got := d.MAC(); !bytes.Equal(got, nicMAC[:]) {
		t.Errorf("MAC() = %v", got)
	}
}

func TestNewErrors(t *testing.T) {
	be := nettest.NewFakeBackend(nettest.AllOffloads)
	for _, cfg := range []vnet.Config{
		{MAC: stdnet.HardwareAddr{1, 2, 3, 4, 5, 6}},
		{MAC: stdnet.HardwareAddr{0, 0, 0, 0, 0, 0}},
		{MAC: stdnet.HardwareAddr{2, 0, 0, 0, 0}},
		{MTU: 67},
		{QueueSize: 100},
		{QueueSize: 2},
		{Offload: 7},
	} {
		if _, err := vnet.New(be, cfg); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
	d, err := vnet.New(be, vnet.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if m := d.MAC(); m[0]&1 != 0 || m[0]&2 == 0 {
		t.Errorf("random MAC %v is not unicast, locally administered", m)
	}
}

// oracleValid is the feature dependency table of virtio 1.x 5.1.3.1 for
// the offload bits, written independently of ValidateFeatures.
func oracleValid(f uint64) bool {
	has := func(b uint64) bool { return f&b != 0 }
	rules := []struct {
		feat bool
		need bool
	}{
		{has(vnet.FGuestTSO4), has(vnet.FGuestCsum)},
		{has(vnet.FGuestTSO6), has(vnet.FGuestCsum)},
		{has(vnet.FGuestECN), has(vnet.FGuestTSO4) || has(vnet.FGuestTSO6)},
		{has(vnet.FGuestUFO), has(vnet.FGuestCsum)},
		{has(vnet.FGuestUSO4), has(vnet.FGuestCsum)},
		{has(vnet.FGuestUSO6), has(vnet.FGuestCsum)},
		{has(vnet.FHostTSO4), has(vnet.FCsum)},
		{has(vnet.FHostTSO6), has(vnet.FCsum)},
		{has(vnet.FHostECN), has(vnet.FHostTSO4) || has(vnet.FHostTSO6)},
		{has(vnet.FHostUFO), has(vnet.FCsum)},
		{has(vnet.FHostUSO), has(vnet.FCsum)},
		{has(vnet.FCtrlGuestOffloads), has(vnet.FCtrlVQ)},
		{has(vnet.FCtrlRx), has(vnet.FCtrlVQ)},
	}
	for _, r := range rules {
		if r.feat && !r.need {
			return false
		}
	}
	return true
}

// TestFeatureSubsets negotiates every subset of the offload bits (and
// CTRL_VQ) and checks FEATURES_OK is refused exactly for the subsets that
// break a dependency; a sample of accepted ones is started.
func TestFeatureSubsets(t *testing.T) {
	be := nettest.NewFakeBackend(nettest.AllOffloads)
	d, err := vnet.New(be, vnet.Config{MAC: nicMAC[:]})
	if err != nil {
		t.Fatal(err)
	}
	n, err := nettest.NewNIC(d, nettest.NICConfig{Features: nettest.MinimalFeatures, MemSize: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	bits := []uint64{vnet.FCsum, vnet.FGuestCsum, vnet.FGuestTSO4, vnet.FGuestTSO6, vnet.FGuestECN, vnet.FGuestUFO,
		vnet.FHostTSO4, vnet.FHostTSO6, vnet.FHostECN, vnet.FHostUFO, vnet.FHostUSO, vnet.FGuestUSO4, vnet.FGuestUSO6,
		vnet.FCtrlGuestOffloads, vnet.FCtrlVQ}
	accepted := 0
	for m := 0; m < 1<<len(bits); m++ {
		f := virtio.FVersion1 | vnet.FMAC
		for i, b := range bits {
			if m&(1<<i) != 0 {
				f |= b
			}
		}
		n.Drv.Reset()
		ok, err := n.Drv.Negotiate(f)
		if err != nil {
			t.Fatal(err)
		}
		if ok != oracleValid(f) {
			t.Fatalf("%s: FEATURES_OK accepted=%v", vnet.FeatureString(f), ok)
		}
		if ok {
			accepted++
		}
	}
	n.Drv.Reset()
	if accepted == 0 || accepted == 1<<len(bits) {
		t.Fatalf("%d subsets accepted", accepted)
	}
	// Legacy drivers are checked at DRIVER_OK instead.
	_, err = nettest.NewNIC(d, nettest.NICConfig{Legacy: true, Exact: true, Features: vnet.FGuestTSO4, MemSize: 8 << 20})
	if err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("legacy driver with GUEST_TSO4 alone: %v", err)
	}
}

func TestLegacy(t *testing.T) {
	for _, features := range []uint64{0, nettest.LinuxLegacyFeatures} {
		t.Run(vnet.FeatureString(features&vnet.FMrgRxbuf), func(t *testing.T) {
			d, n, be := newNIC(t, vnet.Config{}, nettest.NICConfig{Legacy: true, Features: features, TxLayout: []int{4, 8}})
			wantHdr := 10
			if features&vnet.FMrgRxbuf != 0 {
				wantHdr = 12
			}
			if n.HdrLen != wantHdr || be.HdrSize() != wantHdr {
				t.Fatalf("header %d, backend %d, want %d", n.HdrLen, be.HdrSize(), wantHdr)
			}
			f := frame(otherMAC, nicMAC, 1000)
			if err := n.Send(vnet.Header{}, f); err != nil {
				t.Fatal(err)
			}
			n.WaitTxDone(5 * time.Second)
			if w := be.Written(); len(w) != 1 || len(w[0]) != wantHdr+1000 || !bytes.Equal(w[0][wantHdr:], f) {
				t.Fatalf("written %d frames", len(w))
			}
			be.Inject(withHdr(vnet.Header{Flags: vnet.HdrFDataValid}, wantHdr, f))
			got, err := n.Recv(5 * time.Second)
			if err != nil || !bytes.Equal(got.Data, f) {
				t.Fatalf("receive: %v", err)
			}
			if features == 0 && !got.Hdr.IsZero() {
				t.Errorf("legacy driver without offloads got %v", got.Hdr)
			}
			if s := d.Stats(); s.Features&virtio.FVersion1 != 0 {
				t.Errorf("legacy negotiated VERSION_1")
			}
		})
	}
}

// TestCtrlGuestOffloads switches receive offloads with the control queue.
func TestCtrlGuestOffloads(t *testing.T) {
	d, n, be := newNIC(t, vnet.Config{}, nettest.NICConfig{Features: nettest.LinuxFeatures})
	all := tap.OffloadCSUM | tap.OffloadTSO4 | tap.OffloadTSO6 | tap.OffloadTSOECN | tap.OffloadUFO
	if be.Offload() != all {
		t.Fatalf("offloads at DRIVER_OK: %s", vnet.OffloadString(be.Offload()))
	}
	steps := []struct {
		offloads uint64
		ack      byte
		tap      uint32
	}{
		{vnet.FGuestCsum, vnet.CtrlOK, tap.OffloadCSUM},
		{0, vnet.CtrlOK, 0},
		{vnet.FGuestCsum | vnet.FGuestTSO4 | vnet.FGuestTSO6 | vnet.FGuestECN | vnet.FGuestUFO, vnet.CtrlOK, all},
		{vnet.FGuestUSO4 | vnet.FGuestUSO6 | vnet.FGuestCsum, vnet.CtrlErr, all}, // offered, not acked
		{vnet.FGuestCsum | vnet.FCsum, vnet.CtrlErr, all},                        // not a receive offload
		{1 << 40, vnet.CtrlErr, all},
		{vnet.FGuestCsum | vnet.FGuestTSO6, vnet.CtrlOK, tap.OffloadCSUM | tap.OffloadTSO6},
	}
	for _, s := range steps {
		ack, err := n.SetGuestOffloads(s.offloads)
		if err != nil {
			t.Fatal(err)
		}
		if ack != s.ack || be.Offload() != s.tap {
			t.Errorf("SET %s: ack %d (want %d), tap %s (want %s)", vnet.FeatureString(s.offloads), ack, s.ack,
				vnet.OffloadString(be.Offload()), vnet.OffloadString(s.tap))
		}
	}
	// With TSO4 now off, a TSOv4 frame queued in the tap is dropped.
	be.Inject(withHdr(tso4, 12, frame(nicMAC, otherMAC, 20000)))
	waitFor(t, "drop", func() bool { return d.Stats().RxBadHeader == 1 })
	// Reset clears the tap's offloads.
	n.Drv.Reset()
	if be.Offload() != 0 {
		t.Errorf("offloads after reset: %s", vnet.OffloadString(be.Offload()))
	}
	if s := d.Stats(); s.GuestOffloads != 0 || s.Features != 0 {
		t.Errorf("stats after reset: %v", s)
	}
}

// TestCtrlGarbage sends malformed control requests: the device answers
// VIRTIO_NET_ERR, counts them and keeps working; a request it cannot
// answer at all sets DEVICE_NEEDS_RESET.
func TestCtrlGarbage(t *testing.T) {
	d, n, _ := newNIC(t, vnet.Config{}, nettest.NICConfig{Features: nettest.LinuxFeatures})
	table := func(uni, multi uint32, extra int) []byte {
		b := binary.LittleEndian.AppendUint32(nil, uni)
		b = append(b, make([]byte, 6*uni)...)
		b = binary.LittleEndian.AppendUint32(b, multi)
		return append(b, make([]byte, 6*int(multi)+extra)...)
	}
	for _, tc := range []struct {
		name       string
		class, cmd byte
		data       []byte
		want       byte
	}{
		{"promisc on", vnet.CtrlClassRx, vnet.CtrlRxPromisc, []byte{1}, vnet.CtrlOK},
		{"allmulti off", vnet.CtrlClassRx, vnet.CtrlRxAllMulti, []byte{0}, vnet.CtrlOK},
		{"promisc without data", vnet.CtrlClassRx, vnet.CtrlRxPromisc, nil, vnet.CtrlErr},
		{"promisc with 2 bytes", vnet.CtrlClassRx, vnet.CtrlRxPromisc, []byte{1, 1}, vnet.CtrlErr},
		{"rx extra mode", vnet.CtrlClassRx, 4, []byte{1}, vnet.CtrlErr},
		{"mac table", vnet.CtrlClassMAC, vnet.CtrlMACTableSet, table(1, 2, 0), vnet.CtrlOK},
		{"mac table trailing bytes", vnet.CtrlClassMAC, vnet.CtrlMACTableSet, table(1, 2, 1), vnet.CtrlErr},
		{"mac table too short", vnet.CtrlClassMAC, vnet.CtrlMACTableSet, table(3, 0, 0)[:10], vnet.CtrlErr},
		{"mac table huge count", vnet.CtrlClassMAC, vnet.CtrlMACTableSet, []byte{0xff, 0xff, 0xff, 0xff}, vnet.CtrlErr},
		{"mac addr set (not offered)", vnet.CtrlClassMAC, vnet.CtrlMACAddrSet, otherMAC[:], vnet.CtrlErr},
		{"vlan", vnet.CtrlClassVLAN, 0, []byte{1, 0}, vnet.CtrlErr},
		{"announce", vnet.CtrlClassAnnounce, 0, nil, vnet.CtrlErr},
		{"mq", vnet.CtrlClassMQ, 0, []byte{1, 0}, vnet.CtrlErr},
		{"unknown class", 200, 0, nil, vnet.CtrlErr},
		{"offloads short", vnet.CtrlClassGuestOffloads, vnet.CtrlGuestOffloadsSet, []byte{1, 2, 3}, vnet.CtrlErr},
		{"offloads unknown cmd", vnet.CtrlClassGuestOffloads, 9, make([]byte, 8), vnet.CtrlErr},
	} {
		ack, err := n.Ctrl(tc.class, tc.cmd, tc.data)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if ack != tc.want {
			t.Errorf("%s: ack %d, want %d", tc.name, ack, tc.want)
		}
	}
	// Malformed chains: a one-byte request, and a request split oddly.
	buf := n.Alloc(16)
	n.Mem.WriteAt([]byte{0, 0, 1, 0xff}, buf)
	if ack, err := n.CtrlChain([]virtiotest.Buf{{Addr: buf, Len: 1}, {Addr: buf + 3, Len: 1, Write: true}}, buf+3); err != nil || ack != vnet.CtrlErr {
		t.Errorf("one-byte request: ack %d, %v", ack, err)
	}
	n.Mem.WriteAt([]byte{0, 0, 1, 0xff}, buf)
	if ack, err := n.CtrlChain([]virtiotest.Buf{{Addr: buf, Len: 1}, {Addr: buf + 1, Len: 1}, {Addr: buf + 2, Len: 1},
		{Addr: buf + 3, Len: 0, Write: true}, {Addr: buf + 3, Len: 1, Write: true}}, buf+3); err != nil || ack != vnet.CtrlOK {
		t.Errorf("split request with an empty writable buffer: ack %d, %v", ack, err)
	}
	s := d.Stats()
	if s.CtrlErrors != 14 || s.CtrlUnsupported != 7 || s.CtrlCommands != 18 || s.GuestFaults != 7 {
		t.Errorf("stats: %v", s)
	}
	if n.Drv.Status()&virtio.StatusNeedsReset != 0 {
		t.Fatal("device needs reset after answerable requests")
	}
	// No ack byte: the request cannot be completed.
	if _, err := n.CtrlChain([]virtiotest.Buf{{Addr: buf, Len: 3}}, buf+3); err == nil {
		t.Error("request without an ack byte completed")
	}
	waitFor(t, "NEEDS_RESET", func() bool { return n.Drv.Status()&virtio.StatusNeedsReset != 0 })
}

// TestTxHostile posts malformed transmit chains: each is dropped and
// counted, nothing reaches the backend and the device keeps working.
func TestTxHostile(t *testing.T) {
	csumOnly := nettest.CsumFeatures
	for _, tc := range []struct {
		name     string
		features uint64
		h        vnet.Header
		size     int
		bad      func(s vnet.Stats) uint64
	}{
		{"csum_offset past the frame", nettest.LinuxFeatures, vnet.Header{Flags: vnet.HdrFNeedsCsum, CsumStart: 34, CsumOffset: 100}, 60, txBadHeader},
		{"csum_start past the frame", nettest.LinuxFeatures, vnet.Header{Flags: vnet.HdrFNeedsCsum, CsumStart: 2000}, 1000, txBadHeader},
		{"gso_size 0", nettest.LinuxFeatures, vnet.Header{Flags: vnet.HdrFNeedsCsum, GSOType: vnet.GSOTCPv4, CsumStart: 34, CsumOffset: 16}, 20000, txBadHeader},
		{"TSO not negotiated", csumOnly, tso4, 20000, txBadHeader},
		{"USO not negotiated", nettest.LinuxFeatures, vnet.Header{Flags: vnet.HdrFNeedsCsum, GSOType: vnet.GSOUDPL4, GSOSize: 1000, CsumStart: 34, CsumOffset: 6}, 20000, txBadHeader},
		{"ECN not negotiated", nettest.VioFeatures, vnet.Header{Flags: vnet.HdrFNeedsCsum, GSOType: vnet.GSOTCPv4 | vnet.GSOECN, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}, 20000, txBadHeader},
		{"NEEDS_CSUM without CSUM", nettest.MinimalFeatures, vnet.Header{Flags: vnet.HdrFNeedsCsum, CsumStart: 34, CsumOffset: 16}, 100, txBadHeader},
		{"unknown flags", nettest.LinuxFeatures, vnet.Header{Flags: 0x40}, 100, txBadHeader},
		{"oversized", nettest.LinuxFeatures, vnet.Header{}, vnet.MaxFrame + 1, txBadHeader},
		{"runt", nettest.LinuxFeatures, vnet.Header{}, 10, txBadHeader},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, n, be := newNIC(t, vnet.Config{}, nettest.NICConfig{Features: tc.features, TxLayout: []int{2, 9, 30}})
			if err := n.Send(tc.h, frame(otherMAC, nicMAC, tc.size)); err != nil {
				t.Fatal(err)
			}
			if err := n.WaitTxDone(5 * time.Second); err != nil {
				t.Fatal(err)
			}
			if w := be.Written(); len(w) != 0 {
				t.Fatalf("bad frame written to the backend")
			}
			s := d.Stats()
			if tc.bad(s) != 1 || s.GuestFaults != 1 {
				t.Errorf("stats: %v", s)
			}
			good := frame(otherMAC, nicMAC, 100)
			if err := n.Send(vnet.Header{}, good); err != nil {
				t.Fatal(err)
			}
			n.WaitTxDone(5 * time.Second)
			if w := be.Written(); len(w) != 1 || !bytes.Equal(w[0][n.HdrLen:], good) {
				t.Fatalf("device stopped transmitting")
			}
		})
	}
}

func txBadHeader(s vnet.Stats) uint64 { return s.TxBadHeader }

// TestTxBadChains posts chains that break the ring's rules for the
// transmit queue.
func TestTxBadChains(t *testing.T) {
	d, n, be := newNIC(t, vnet.Config{}, nettest.NICConfig{Features: nettest.LinuxFeatures})
	r := n.TxRing()
	buf := n.Alloc(4096)
	post := func(bufs ...virtiotest.Buf) {
		if _, ok := r.Add(bufs...); !ok {
			t.Fatal("ring full")
		}
		n.Drv.Notify(vnet.TxQueue)
	}
	post(virtiotest.Buf{Addr: buf, Len: 5})                                                         // shorter than the header
	post(virtiotest.Buf{Addr: buf, Len: 12}, virtiotest.Buf{Addr: buf + 12, Len: 100, Write: true}) // writable buffer
	waitFor(t, "drops", func() bool { s := d.Stats(); return s.TxBadHeader == 1 && s.TxBadChain == 1 })
	if len(be.Written()) != 0 {
		t.Fatal("bad chains reached the backend")
	}
	// A descriptor outside guest memory breaks the queue: NEEDS_RESET.
	post(virtiotest.Buf{Addr: n.Cfg.MemSize - 8, Len: 100})
	waitFor(t, "NEEDS_RESET", func() bool { return n.Drv.Status()&virtio.StatusNeedsReset != 0 })
	if n.Common.Faults() == 0 {
		t.Error("fault not counted")
	}
}

// TestBrokenAvailIndex: an avail index far ahead of the device breaks the
// queue; the device sets NEEDS_RESET and works again after a reset.
func TestBrokenAvailIndex(t *testing.T) {
	be := nettest.NewFakeBackend(nettest.AllOffloads)
	d, err := vnet.New(be, vnet.Config{MAC: nicMAC[:]})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	n, err := nettest.NewNIC(d, nettest.NICConfig{Features: nettest.LinuxFeatures, MemSize: 32 << 20})
	if err != nil {
		t.Fatal(err)
	}
	r := n.TxRing()
	r.SetAvailIdx(r.AvailIdx() + r.Size + 1)
	n.Drv.Notify(vnet.TxQueue)
	waitFor(t, "NEEDS_RESET", func() bool { return n.Drv.Status()&virtio.StatusNeedsReset != 0 })
	n.Close()
	// The same device, a new driver: everything works again.
	n, err = nettest.NewNIC(d, nettest.NICConfig{Features: nettest.VioFeatures, MemSize: 32 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	f := frame(otherMAC, nicMAC, 500)
	if err := n.Send(vnet.Header{}, f); err != nil {
		t.Fatal(err)
	}
	n.WaitTxDone(5 * time.Second)
	if w := be.Written(); len(w) != 1 {
		t.Fatalf("%d frames after reset", len(w))
	}
	if d.Stats().Features != n.Acked {
		t.Errorf("features %s after re-negotiation", vnet.FeatureString(d.Stats().Features))
	}
}

// TestRxReadOnlyChain: a receive chain without writable buffers is
// completed empty and counted; the next good chain gets the next frame.
func TestRxReadOnlyChain(t *testing.T) {
	d, n, be := newNIC(t, vnet.Config{}, nettest.NICConfig{Features: nettest.MinimalFeatures, RxBufs: 1})
	r := n.RxRing()
	bad := n.Alloc(2048)
	badHead, _ := r.Add(virtiotest.Buf{Addr: bad, Len: 2048})
	n.Drv.Notify(vnet.RxQueue)
	f := frame(nicMAC, otherMAC, 60)
	be.Inject(withHdr(vnet.Header{}, 12, f))
	waitFor(t, "delivery and drop", func() bool { s := d.Stats(); return s.RxPackets == 1 && s.RxBadChain == 1 })
	var lens = map[uint16]uint32{}
	for {
		head, l, ok := r.PopUsed()
		if !ok {
			break
		}
		lens[head] = l
	}
	if len(lens) != 2 || lens[badHead] != 0 {
		t.Fatalf("used elements %v (bad head %d)", lens, badHead)
	}
	if n.Drv.Status()&virtio.StatusNeedsReset != 0 {
		t.Fatal("NEEDS_RESET for a bad receive chain")
	}
	good := n.Alloc(2048)
	head, _ := r.Add(virtiotest.Buf{Addr: good, Len: 2048, Write: true})
	n.Drv.Notify(vnet.RxQueue)
	be.Inject(withHdr(vnet.Header{}, 12, f))
	waitFor(t, "second delivery", func() bool { return d.Stats().RxPackets == 2 })
	if h, l, ok := r.PopUsed(); !ok || h != head || l != 72 {
		t.Fatalf("used %d %d %v", h, l, ok)
	}
}

// TestQueueSizeAfterDriverOK: queue configuration written after DRIVER_OK
// is ignored (counted) and the device keeps using the latched rings.
func TestQueueSizeAfterDriverOK(t *testing.T) {
	_, n, be := newNIC(t, vnet.Config{}, nettest.NICConfig{Features: nettest.LinuxFeatures})
	c := n.Common
	c.SetQueue(vnet.TxQueue, virtio.QueueConfig{Size: 4}, true, "queue size")
	c.SetQueue(vnet.TxQueue, virtio.QueueConfig{Size: 256, DescAddr: 0x12340000}, true, "queue address")
	c.SetQueue(vnet.TxQueue, virtio.QueueConfig{Size: 256}, false, "queue enable")
	if c.IgnoredWrites() != 3 {
		t.Errorf("ignored writes %d, want 3", c.IgnoredWrites())
	}
	for i := 0; i < 300; i++ { // more than the ring size: the latched size is used
		if err := n.Send(vnet.Header{}, frame(otherMAC, nicMAC, 100)); err != nil {
			t.Fatal(err)
		}
	}
	n.WaitTxDone(5 * time.Second)
	if w := be.Written(); len(w) != 300 {
		t.Fatalf("%d frames written", len(w))
	}
}

// TestResetStopsWorkers resets the device while its receive goroutine waits
// for the backend and its transmit goroutine for a notification.
func TestResetStopsWorkers(t *testing.T) {
	d, n, be := newNIC(t, vnet.Config{}, nettest.NICConfig{Features: nettest.LinuxFeatures})
	time.Sleep(20 * time.Millisecond) // let the goroutines block
	done := make(chan struct{})
	go func() { n.Drv.Reset(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Reset did not return")
	}
	if be.Offload() != 0 || d.Stats().Features != 0 {
		t.Errorf("after reset: offload %s, stats %v", vnet.OffloadString(be.Offload()), d.Stats())
	}
	// A frame arriving now is not consumed by a stale goroutine.
	be.Inject(withHdr(vnet.Header{}, 12, frame(nicMAC, otherMAC, 60)))
	time.Sleep(20 * time.Millisecond)
	if d.Stats().RxPackets != 0 {
		t.Error("frame received after reset")
	}
}
