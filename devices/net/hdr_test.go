package net

import (
	"bytes"
	"context"
	"encoding/binary"
	"testing"

	"github.com/govmd/govmd/virtio"
)

func TestHeaderCodec(t *testing.T) {
	h := Header{Flags: 1, GSOType: 0x81, HdrLen: 66, GSOSize: 1448, CsumStart: 34, CsumOffset: 16, NumBuffers: 3}
	var b [HdrLen]byte
	h.Encode(b[:])
	want := []byte{1, 0x81, 66, 0, 0xa8, 0x05, 34, 0, 16, 0, 3, 0}
	if !bytes.Equal(b[:], want) {
		t.Fatalf("Encode = %x, want %x", b, want)
	}
	if got := DecodeHeader(b[:]); got != h {
		t.Errorf("DecodeHeader = %v, want %v", got, h)
	}
	var short [HdrLenLegacy]byte
	h.Encode(short[:])
	if got := DecodeHeader(short[:]); got.NumBuffers != 0 || got.CsumOffset != 16 {
		t.Errorf("10-byte header decoded as %v", got)
	}
}

func TestValidateTxHeader(t *testing.T) {
	const all = FCsum | FHostTSO4 | FHostTSO6 | FHostECN | FHostUFO | FHostUSO
	tcp4 := Header{Flags: HdrFNeedsCsum, GSOType: GSOTCPv4, HdrLen: 66, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}
	with := func(h Header, f func(*Header)) Header { f(&h); return h }
	tests := []struct {
		name     string
		h        Header
		frameLen int
		acked    uint64
		wantErr  error
	}{
		{"plain", Header{}, 60, 0, nil},
		{"min frame", Header{}, 14, 0, nil},
		{"short frame", Header{}, 13, all, errTxShort},
		{"max frame", Header{}, MaxFrame, 0, nil},
		{"oversized", Header{}, MaxFrame + 1, all, errTxOversized},
		{"data valid is tolerated", Header{Flags: HdrFDataValid}, 60, 0, nil},
		{"rsc info", Header{Flags: HdrFRscInfo}, 60, all, errTxFlags},
		{"unknown flag", Header{Flags: 0x80}, 60, all, errTxFlags},
		{"csum ok", Header{Flags: HdrFNeedsCsum, CsumStart: 34, CsumOffset: 16}, 60, FCsum, nil},
		{"csum not acked", Header{Flags: HdrFNeedsCsum, CsumStart: 34, CsumOffset: 16}, 60, all &^ FCsum, errTxCsumNotAcked},
		{"csum field at the last byte", Header{Flags: HdrFNeedsCsum, CsumStart: 34, CsumOffset: 24}, 60, FCsum, nil},
		{"csum field past the end", Header{Flags: HdrFNeedsCsum, CsumStart: 34, CsumOffset: 25}, 60, FCsum, errTxCsumRange},
		{"csum start past the end", Header{Flags: HdrFNeedsCsum, CsumStart: 60}, 60, FCsum, errTxCsumRange},
		{"csum start in the ethernet header", Header{Flags: HdrFNeedsCsum, CsumStart: 13}, 60, FCsum, errTxCsumRange},
		{"csum overflow", Header{Flags: HdrFNeedsCsum, CsumStart: 0xffff, CsumOffset: 0xffff}, MaxFrame, FCsum, errTxCsumRange},
		{"csum fields ignored without NEEDS_CSUM", Header{CsumStart: 0xffff, CsumOffset: 0xffff}, 60, 0, nil},
		{"tso4", tcp4, 65000, all, nil},
		{"tso4 not acked", tcp4, 65000, all &^ FHostTSO4, errTxGSONotAcked},
		{"tso6", with(tcp4, func(h *Header) { h.GSOType = GSOTCPv6; h.CsumStart = 54 }), 65000, FCsum | FHostTSO6, nil},
		{"tso6 not acked", with(tcp4, func(h *Header) { h.GSOType = GSOTCPv6 }), 65000, FCsum | FHostTSO4, errTxGSONotAcked},
		{"ecn", with(tcp4, func(h *Header) { h.GSOType |= GSOECN }), 65000, all, nil},
		{"ecn not acked", with(tcp4, func(h *Header) { h.GSOType |= GSOECN }), 65000, all &^ FHostECN, errTxECN},
		{"ecn without gso", Header{GSOType: GSOECN}, 60, all, errTxECN},
		{"ecn on udp", with(tcp4, func(h *Header) { h.GSOType = GSOUDP | GSOECN }), 65000, all, errTxECN},
		{"ufo", with(tcp4, func(h *Header) { h.GSOType = GSOUDP; h.CsumOffset = 6 }), 65000, FCsum | FHostUFO, nil},
		{"ufo not acked", with(tcp4, func(h *Header) { h.GSOType = GSOUDP }), 65000, all &^ FHostUFO, errTxGSONotAcked},
		{"uso", with(tcp4, func(h *Header) { h.GSOType = GSOUDPL4; h.CsumOffset = 6 }), 65000, FCsum | FHostUSO, nil},
		{"uso not acked", with(tcp4, func(h *Header) { h.GSOType = GSOUDPL4 }), 65000, all &^ FHostUSO, errTxGSONotAcked},
		{"unknown gso type", with(tcp4, func(h *Header) { h.GSOType = 2 }), 65000, all, errTxGSOType},
		{"gso without NEEDS_CSUM", with(tcp4, func(h *Header) { h.Flags = 0 }), 65000, all, errTxGSONoCsum},
		{"gso size 0", with(tcp4, func(h *Header) { h.GSOSize = 0 }), 65000, all, errTxGSOSize},
		{"hdr_len beyond frame", with(tcp4, func(h *Header) { h.HdrLen = 200 }), 100, all, errTxHdrLen},
		{"hdr_len 0 is a hint", with(tcp4, func(h *Header) { h.HdrLen = 0 }), 65000, all, nil},
	}
	for _, tt := range tests {
		if err := ValidateTxHeader(tt.h, tt.frameLen, tt.acked); err != tt.wantErr {
			t.Errorf("%s: ValidateTxHeader = %v, want %v", tt.name, err, tt.wantErr)
		}
	}
}

func TestSanitizeRxHeader(t *testing.T) {
	const allRx = GuestOffloads
	tcp4 := Header{Flags: HdrFNeedsCsum, GSOType: GSOTCPv4, HdrLen: 66, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}
	with := func(h Header, f func(*Header)) Header { f(&h); return h }
	tests := []struct {
		name     string
		h        Header
		frameLen int
		enabled  uint64
		want     Header
		ok       bool
	}{
		{"plain, nothing enabled", Header{}, 60, 0, Header{}, true},
		{"DATA_VALID cleared without GUEST_CSUM", Header{Flags: HdrFDataValid}, 60, 0, Header{}, true},
		{"junk cleared without GUEST_CSUM", Header{HdrLen: 5, GSOSize: 9, CsumStart: 7, CsumOffset: 3}, 60, 0, Header{}, true},
		{"NEEDS_CSUM dropped without GUEST_CSUM", Header{Flags: HdrFNeedsCsum, CsumStart: 34, CsumOffset: 16}, 60, allRx &^ FGuestCsum, Header{}, false},
		{"GSO dropped without GUEST_CSUM", tcp4, 65000, allRx &^ FGuestCsum, Header{}, false},
		{"DATA_VALID kept with GUEST_CSUM", Header{Flags: HdrFDataValid}, 60, FGuestCsum, Header{Flags: HdrFDataValid}, true},
		{"NEEDS_CSUM kept", Header{Flags: HdrFNeedsCsum, CsumStart: 34, CsumOffset: 16}, 60, FGuestCsum, Header{Flags: HdrFNeedsCsum, CsumStart: 34, CsumOffset: 16}, true},
		{"NEEDS_CSUM outside frame", Header{Flags: HdrFNeedsCsum, CsumStart: 34, CsumOffset: 30}, 60, FGuestCsum, Header{}, false},
		{"unknown flags cleared", Header{Flags: 0xf0 | HdrFDataValid}, 60, FGuestCsum, Header{Flags: HdrFDataValid}, true},
		{"tso4 enabled", tcp4, 65000, FGuestCsum | FGuestTSO4, tcp4, true},
		{"tso4 not enabled", tcp4, 65000, FGuestCsum | FGuestTSO6, Header{}, false},
		{"tso6 not enabled", with(tcp4, func(h *Header) { h.GSOType = GSOTCPv6 }), 65000, FGuestCsum | FGuestTSO4, Header{}, false},
		{"ecn not enabled", with(tcp4, func(h *Header) { h.GSOType |= GSOECN }), 65000, FGuestCsum | FGuestTSO4, Header{}, false},
		{"ecn enabled", with(tcp4, func(h *Header) { h.GSOType |= GSOECN }), 65000, FGuestCsum | FGuestTSO4 | FGuestECN, with(tcp4, func(h *Header) { h.GSOType |= GSOECN }), true},
		{"ufo not enabled", with(tcp4, func(h *Header) { h.GSOType = GSOUDP }), 65000, allRx &^ FGuestUFO, Header{}, false},
		{"uso needs both", with(tcp4, func(h *Header) { h.GSOType = GSOUDPL4 }), 65000, FGuestCsum | FGuestUSO4, Header{}, false},
		{"uso", with(tcp4, func(h *Header) { h.GSOType = GSOUDPL4 }), 65000, FGuestCsum | FGuestUSO4 | FGuestUSO6, with(tcp4, func(h *Header) { h.GSOType = GSOUDPL4 }), true},
		{"unknown gso", with(tcp4, func(h *Header) { h.GSOType = 7 }), 65000, allRx, Header{}, false},
		{"gso without NEEDS_CSUM", with(tcp4, func(h *Header) { h.Flags = HdrFDataValid }), 65000, allRx, Header{}, false},
		{"gso size 0", with(tcp4, func(h *Header) { h.GSOSize = 0 }), 65000, allRx, Header{}, false},
	}
	for _, tt := range tests {
		got, ok := SanitizeRxHeader(tt.h, tt.frameLen, tt.enabled)
		if ok != tt.ok || (ok && got != tt.want) {
			t.Errorf("%s: SanitizeRxHeader = %v, %v; want %v, %v", tt.name, got, ok, tt.want, tt.ok)
		}
	}
}

// specValidTx is the fuzz oracle: the rules of virtio 1.x 5.1.6.2 plus the
// device's limits, written from the raw numbers without the package's
// constants or code paths.
func specValidTx(h Header, frameLen int, acked uint64) bool {
	if frameLen < 14 || frameLen > 65535+18 {
		return false
	}
	if h.Flags > 3 || int(h.HdrLen) > frameLen {
		return false
	}
	partial := h.Flags&1 != 0
	if partial {
		if acked&1 == 0 || h.CsumStart < 14 || uint32(h.CsumStart)+uint32(h.CsumOffset)+2 > uint32(frameLen) {
			return false
		}
	}
	allowed := map[uint8]uint64{
		0x00: 0,
		0x01: 1 << 11, 0x81: 1<<11 | 1<<13, // TCPv4 (+ECN)
		0x04: 1 << 12, 0x84: 1<<12 | 1<<13, // TCPv6 (+ECN)
		0x03: 1 << 14, // UDP (UFO)
		0x05: 1 << 56, // UDP_L4 (USO)
	}
	need, ok := allowed[h.GSOType]
	if !ok || acked&need != need {
		return false
	}
	if h.GSOType != 0 && (!partial || h.GSOSize == 0) {
		return false
	}
	return true
}

// FuzzTxHeader sends a transmit chain built from fuzz input (header bytes,
// frame length, negotiated features, descriptor layout, locked mode)
// through the transmit path and checks that the backend gets the frame iff
// the independent oracle accepts the header (and, locked, the source
// address is the NIC's), with a canonical copy of the header and the
// guest's frame bytes.
func FuzzTxHeader(f *testing.F) {
	hdr := func(h Header) []byte { var b [12]byte; h.Encode(b[:]); return b[:] }
	const linux = FCsum | FHostTSO4 | FHostTSO6 | FHostECN | FHostUFO | virtio.FVersion1
	f.Add(hdr(Header{}), uint32(60), uint64(0), []byte{}, false, true)
	f.Add(hdr(Header{Flags: 1, CsumStart: 34, CsumOffset: 16}), uint32(1514), linux, []byte{3, 5, 7}, true, true)
	f.Add(hdr(Header{Flags: 1, GSOType: 1, HdrLen: 66, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}), uint32(65000), linux, []byte{12, 1, 13}, true, false)
	f.Add(hdr(Header{Flags: 1, GSOType: 0x84, GSOSize: 1428, CsumStart: 54, CsumOffset: 16}), uint32(30000), linux|FHostUSO, []byte{1, 1, 1, 1}, false, true)
	f.Add(hdr(Header{Flags: 1, GSOType: 1, GSOSize: 0, CsumStart: 34, CsumOffset: 16}), uint32(9000), linux, []byte{20}, false, true)
	f.Add(hdr(Header{Flags: 3, CsumStart: 0xfff0, CsumOffset: 0xff}), uint32(MaxFrame+1), ^uint64(0), []byte{2}, false, true)
	f.Add(hdr(Header{}), uint32(13), uint64(0), []byte{}, false, true)

	mac := [6]byte{0x52, 0x54, 0, 1, 2, 3}
	f.Fuzz(func(t *testing.T, hb []byte, frameLen uint32, acked uint64, layout []byte, locked, ownSrc bool) {
		if len(hb) < 12 {
			hb = append(hb, make([]byte, 12-len(hb))...)
		}
		frameLen %= MaxFrame + 100
		be := newFakeBE()
		d := newTestDevice(t, be, Config{MAC: mac[:], Locked: locked})
		e := newQEnv(t, 16, acked, 1<<20)
		tr := &fakeTransport{}
		w := newTxWorker(d, e.activation(TxQueue, acked, tr))

		hdrLen := hdrLenFor(acked)
		h := DecodeHeader(hb[:hdrLen])
		data := make([]byte, hdrLen+int(frameLen))
		copy(data, hb[:hdrLen])
		frame := data[hdrLen:]
		for i := range frame {
			frame[i] = byte(i*31 + 7)
		}
		if len(frame) >= 12 {
			copy(frame[0:6], []byte{0x52, 0x54, 0, 9, 9, 9})
			if ownSrc {
				copy(frame[6:12], mac[:])
			}
		}
		sizes := make([]int, 0, 6)
		for _, l := range layout[:min(len(layout), 6)] {
			sizes = append(sizes, int(l%32)+1)
		}
		e.postBytes(data, sizes, false)
		if err := w.drain(context.Background()); err != nil {
			t.Fatalf("drain: %v", err)
		}
		if _, _, ok := e.ring.PopUsed(); !ok {
			t.Fatal("chain not completed")
		}
		srcOK := len(frame) >= 12 && [6]byte(frame[6:12]) == mac
		want := specValidTx(h, int(frameLen), acked) && (!locked || srcOK)
		s := d.Stats()
		if !want {
			if be.writes != 0 {
				t.Fatalf("invalid header %v (frame %d, acked %s, locked %v) reached the backend", h, frameLen, FeatureString(acked), locked)
			}
			if s.TxBadHeader+s.TxSpoofed+s.TxBadChain != 1 {
				t.Fatalf("drop not counted: %v", s)
			}
			return
		}
		if be.writes != 1 {
			t.Fatalf("valid header %v (frame %d, acked %s) not written: %v", h, frameLen, FeatureString(acked), s)
		}
		got := DecodeHeader(be.out[:hdrLen])
		if got.Flags&^1 != 0 || got.NumBuffers != 0 || got.GSOType != h.GSOType ||
			(h.GSOType != 0 && (got.GSOSize != h.GSOSize || got.HdrLen != h.HdrLen)) ||
			(h.Flags&1 != 0 && (got.CsumStart != h.CsumStart || got.CsumOffset != h.CsumOffset)) {
			t.Fatalf("header %v written as %v", h, got)
		}
		if !bytes.Equal(be.out[hdrLen:], frame) {
			t.Fatal("frame bytes changed on the way to the backend")
		}
		if s.TxPackets != 1 || s.TxBytes != uint64(frameLen) {
			t.Fatalf("counters: %v", s)
		}
	})
}

// FuzzRxHeader checks the receive sanitizer against the rules a driver
// relies on: nothing but a zero header without GUEST_CSUM, and never an
// offload the driver did not enable.
func FuzzRxHeader(f *testing.F) {
	f.Add([]byte{1, 1, 66, 0, 0xa8, 5, 34, 0, 16, 0}, uint32(65000), GuestOffloads)
	f.Add([]byte{2, 0, 0, 0, 0, 0, 0, 0, 0, 0}, uint32(60), uint64(0))
	f.Add([]byte{1, 0x84, 0, 0, 1, 0, 54, 0, 16, 0}, uint32(9000), FGuestCsum|FGuestTSO6)
	f.Fuzz(func(t *testing.T, hb []byte, frameLen uint32, enabled uint64) {
		if len(hb) < 10 {
			return
		}
		in := DecodeHeader(hb[:10])
		out, ok := SanitizeRxHeader(in, int(frameLen%70000), enabled)
		if !ok {
			return
		}
		if enabled&FGuestCsum == 0 {
			if !out.IsZero() {
				t.Fatalf("driver without GUEST_CSUM gets %v", out)
			}
			if in.Flags&HdrFNeedsCsum != 0 || in.GSOType != 0 {
				t.Fatalf("offloaded frame %v passed without GUEST_CSUM", in)
			}
			return
		}
		if out.Flags&^3 != 0 {
			t.Fatalf("flags %#x delivered", out.Flags)
		}
		need := map[uint8]uint64{0: 0, 1: 1 << 7, 4: 1 << 8, 0x81: 1<<7 | 1<<9, 0x84: 1<<8 | 1<<9, 3: 1 << 10, 5: 1<<54 | 1<<55}
		n, known := need[out.GSOType]
		if !known || enabled&n != n {
			t.Fatalf("gso_type %#x delivered with offloads %s", out.GSOType, FeatureString(enabled))
		}
		if out.GSOType != 0 && (out.Flags&1 == 0 || out.GSOSize == 0) {
			t.Fatalf("bad GSO header delivered: %v", out)
		}
		if out.Flags&1 != 0 && int(out.CsumStart)+int(out.CsumOffset)+2 > int(frameLen%70000) {
			t.Fatalf("partial checksum outside the frame: %v", out)
		}
	})
}

func TestMACTables(t *testing.T) {
	table := func(uni, multi int, extra int) []byte {
		var b []byte
		b = binary.LittleEndian.AppendUint32(b, uint32(uni))
		b = append(b, make([]byte, 6*uni)...)
		b = binary.LittleEndian.AppendUint32(b, uint32(multi))
		b = append(b, make([]byte, 6*multi+extra)...)
		return b
	}
	tests := []struct {
		data       []byte
		uni, multi uint32
		ok         bool
	}{
		{table(0, 0, 0), 0, 0, true},
		{table(2, 3, 0), 2, 3, true},
		{table(2, 3, 1), 0, 0, false},
		{table(2, 3, 0)[:30], 0, 0, false},
		{[]byte{0xff, 0xff, 0xff, 0xff}, 0, 0, false},
		{nil, 0, 0, false},
	}
	for i, tt := range tests {
		u, m, ok := parseMACTables(tt.data)
		if ok != tt.ok || (ok && (u != tt.uni || m != tt.multi)) {
			t.Errorf("%d: parseMACTables = %d %d %v", i, u, m, ok)
		}
	}
}
