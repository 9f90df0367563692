package net

import (
	"bytes"
	"context"
	"encoding/binary"
	"testing"

	"github.com/govmd/govmd/virtio"
	"github.com/govmd/govmd/virtio/virtiotest"
)

// tcpFrame returns a virtio header and an Ethernet/IPv4/TCP frame of n
// bytes (contents are not a valid packet; the device does not parse past
// the Ethernet header).
func tcpFrame(hdrLen, n int, gso bool) []byte {
	b := make([]byte, hdrLen+n)
	h := Header{Flags: HdrFNeedsCsum, CsumStart: 34, CsumOffset: 16}
	if gso {
		h.GSOType, h.GSOSize, h.HdrLen = GSOTCPv4, 1448, 66
	}
	h.Encode(b[:hdrLen])
	f := b[hdrLen:]
	copy(f, []byte{0x52, 0x54, 0, 1, 2, 3, 0x52, 0x54, 0, 1, 2, 3, 8, 0})
	for i := 14; i < n; i++ {
		f[i] = byte(i)
	}
	return b
}

// TestTxNoAllocs checks that sending a frame (a 64 KiB TSO frame split
// across descriptors) allocates nothing.
func TestTxNoAllocs(t *testing.T) {
	acked := FCsum | FHostTSO4 | virtio.FVersion1 | virtio.FRingEventIdx
	be := newFakeBE()
	d := newTestDevice(t, be, Config{Locked: true})
	e := newQEnv(t, 256, acked, 4<<20)
	w := newTxWorker(d, e.activation(TxQueue, acked, &fakeTransport{}))
	data := tcpFrame(HdrLen, 65000, true)
	addr := e.alloc.Get(uint64(len(data)), 64)
	e.mem.WriteAt(data, addr)
	bufs := []virtiotest.Buf{{Addr: addr, Len: 5}, {Addr: addr + 5, Len: 10}, {Addr: addr + 15, Len: uint32(len(data) - 15)}}
	var failed bool
	run := func() {
		e.ring.AddQuiet(bufs...)
		e.ring.SetAvailIdx(e.ring.AvailIdx())
		if err := w.drain(context.Background()); err != nil {
			failed = true
		}
		if _, _, ok := e.ring.PopUsed(); !ok {
			failed = true
		}
	}
	run()
	if a := testing.AllocsPerRun(200, run); a != 0 {
		t.Errorf("%v allocations per transmitted frame", a)
	}
	if failed || be.writes != 202 || !bytes.Equal(be.out[HdrLen:], data[HdrLen:]) {
		t.Fatalf("frames not sent: writes=%d stats=%v", be.writes, d.Stats())
	}
}

// TestRxNoAllocs checks that receiving frames allocates nothing, with
// mergeable buffers (a 64 KiB GSO frame over 2 KiB buffers) and with
// Linux's big-packet layout.
func TestRxNoAllocs(t *testing.T) {
	for _, tc := range []struct {
		name   string
		acked  uint64
		layout []int
		bufLen int
		bufs   int
	}{
		{"mergeable", FGuestCsum | FGuestTSO4 | FMrgRxbuf | virtio.FVersion1 | virtio.FRingEventIdx, nil, 2048, 256},
		{"big", FGuestCsum | FGuestTSO4 | virtio.FVersion1, []int{HdrLen}, HdrLen + MaxFrame, 8},
		{"small", virtio.FVersion1, nil, HdrLen + 1518, 256},
	} {
		t.Run(tc.name, func(t *testing.T) {
			be := newFakeBE()
			d := newTestDevice(t, be, Config{})
			e := newQEnv(t, 256, tc.acked, 8<<20)
			d.guestOff.Store(tc.acked & GuestOffloads)
			w := newRxWorker(d, e.activation(RxQueue, tc.acked, &fakeTransport{}), &rxWait{be: be})
			chains := make([][]virtiotest.Buf, 256)
			for i := 0; i < tc.bufs; i++ {
				addr := e.alloc.Get(uint64(tc.bufLen), 64)
				var bufs []virtiotest.Buf
				off := 0
				for _, l := range tc.layout {
					bufs = append(bufs, virtiotest.Buf{Addr: addr, Len: uint32(l), Write: true})
					off += l
				}
				bufs = append(bufs, virtiotest.Buf{Addr: addr + uint64(off), Len: uint32(tc.bufLen - off), Write: true})
				head, _ := e.ring.AddQuiet(bufs...)
				chains[head] = bufs
			}
			e.ring.SetAvailIdx(e.ring.AvailIdx())
			be.in = tcpFrame(HdrLen, 60000, tc.acked&FGuestTSO4 != 0)
			if tc.acked&FGuestCsum == 0 {
				be.in = tcpFrame(HdrLen, 1514, false)
				Header{}.Encode(be.in[:HdrLen])
			}
			var failed bool
			held := make([][]virtiotest.Buf, 0, 64)
			run := func() {
				if err := w.step(context.Background()); err != nil {
					failed = true
				}
				if err := w.used.Publish(); err != nil {
					failed = true
				}
				held = held[:0]
				for {
					head, _, ok := e.ring.PopUsed()
					if !ok {
						break
					}
					held = append(held, chains[head])
				}
				for _, bufs := range held {
					head, _ := e.ring.AddQuiet(bufs...)
					chains[head] = bufs
				}
				e.ring.SetAvailIdx(e.ring.AvailIdx())
			}
			// Warm up: every entry of the worker's chain pool gets its
			// buffer slices the first time it is used.
			for i := 0; i < 300; i++ {
				run()
			}
			if a := testing.AllocsPerRun(100, run); a != 0 {
				t.Errorf("%v allocations per received frame", a)
			}
			if s := d.Stats(); failed || s.RxPackets != 401 {
				t.Fatalf("frames not received: %v", s)
			}
		})
	}
}

// ctrlOracle is the expected acknowledgement of a control request,
// written from the specification's numbers.
func ctrlOracle(req []byte, acked uint64) byte {
	if len(req) < 2 || len(req) > 16<<10 {
		return 1
	}
	class, cmd, data := req[0], req[1], req[2:]
	switch {
	case class == 0 && cmd <= 1 && acked&(1<<18) != 0 && len(data) == 1:
		return 0
	case class == 1 && cmd == 0 && acked&(1<<18) != 0:
		if len(data) < 4 {
			return 1
		}
		n1 := uint64(binary.LittleEndian.Uint32(data))
		if uint64(len(data)) < 4+6*n1+4 {
			return 1
		}
		n2 := uint64(binary.LittleEndian.Uint32(data[4+6*n1:]))
		if uint64(len(data)) != 8+6*n1+6*n2 {
			return 1
		}
		return 0
	case class == 5 && cmd == 0 && acked&(1<<2) != 0 && len(data) == 8:
		guestBits := uint64(1<<1 | 1<<7 | 1<<8 | 1<<9 | 1<<10 | 1<<54 | 1<<55)
		if binary.LittleEndian.Uint64(data)&^(acked&guestBits) != 0 {
			return 1
		}
		return 0
	}
	return 1
}

// FuzzCtrlQueue posts one control request built from fuzz input (split
// into up to two readable descriptors, with 0 to 2 writable bytes) and
// checks the device's answer against an independent oracle, and that the
// receive offloads it leaves are a subset of what the driver acked and are
// what the backend was told.
func FuzzCtrlQueue(f *testing.F) {
	offl := func(v uint64) []byte { return binary.LittleEndian.AppendUint64([]byte{5, 0}, v) }
	const linux = FCsum | FGuestCsum | FCtrlGuestOffloads | FGuestTSO4 | FGuestTSO6 | FGuestECN | FGuestUFO | FCtrlVQ | FCtrlRx | virtio.FVersion1
	f.Add([]byte{0, 0, 1}, uint8(1), uint8(1), uint64(linux))
	f.Add([]byte{0, 1, 0}, uint8(2), uint8(1), uint64(linux))
	f.Add([]byte{1, 0, 1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 0, 0, 0, 0}, uint8(2), uint8(1), uint64(linux))
	f.Add(offl(FGuestCsum), uint8(2), uint8(1), uint64(linux))
	f.Add(offl(FGuestCsum|FGuestTSO4|FGuestTSO6|FGuestECN|FGuestUFO), uint8(2), uint8(1), uint64(linux))
	f.Add(offl(FGuestUSO4), uint8(2), uint8(1), uint64(linux))
	f.Add([]byte{2, 0, 1, 0}, uint8(1), uint8(1), uint64(linux))
	f.Add([]byte{7}, uint8(0), uint8(2), uint64(0))
	f.Add([]byte{0, 0, 1}, uint8(1), uint8(0), uint64(linux))
	f.Fuzz(func(t *testing.T, req []byte, split, ackLen uint8, acked uint64) {
		acked |= FCtrlVQ
		ackLen %= 3
		if len(req) == 0 && ackLen == 0 {
			return
		}
		be := newFakeBE()
		d := newTestDevice(t, be, Config{})
		e := newQEnv(t, 16, acked, 256<<10)
		tr := &fakeTransport{}
		w := newCtrlWorker(d, e.activation(CtrlQueue, acked, tr), &rxWait{be: be})
		if err := d.setGuestOffloads(acked & GuestOffloads); err != nil {
			t.Fatal(err)
		}

		var bufs []virtiotest.Buf
		if len(req) > 0 {
			addr := e.alloc.Get(uint64(len(req)), 8)
			e.mem.WriteAt(req, addr)
			s := int(split) % len(req)
			if s > 0 {
				bufs = append(bufs, virtiotest.Buf{Addr: addr, Len: uint32(s)})
			}
			bufs = append(bufs, virtiotest.Buf{Addr: addr + uint64(s), Len: uint32(len(req) - s)})
		}
		ackAddr := e.alloc.Get(2, 8)
		e.mem.WriteAt([]byte{0xee, 0xee}, ackAddr)
		if ackLen > 0 {
			bufs = append(bufs, virtiotest.Buf{Addr: ackAddr, Len: uint32(ackLen), Write: true})
		}
		e.ring.Add(bufs...)
		err := w.drain(context.Background())
		if ackLen == 0 {
			if err == nil {
				t.Fatal("request without an ack byte accepted")
			}
			return
		}
		if err != nil {
			t.Fatalf("drain: %v", err)
		}
		_, n, ok := e.ring.PopUsed()
		var ack [1]byte
		e.mem.ReadAt(ack[:], ackAddr)
		if !ok || n != 1 {
			t.Fatalf("request completed=%v with length %d", ok, n)
		}
		if want := ctrlOracle(req, acked); ack[0] != want {
			t.Fatalf("request %x (acked %s): ack %d, want %d", req, FeatureString(acked), ack[0], want)
		}
		g := d.guestOff.Load()
		if g&^(acked&GuestOffloads) != 0 || be.offload != TapOffloads(g) || d.tapFlags.Load() != be.offload {
			t.Fatalf("offloads %s (tap %s, backend %s) with acked %s", FeatureString(g), OffloadString(d.tapFlags.Load()),
				OffloadString(be.offload), FeatureString(acked))
		}
		if ack[0] == 0 && len(req) == 10 && req[0] == 5 && g != binary.LittleEndian.Uint64(req[2:]) {
			t.Fatalf("GUEST_OFFLOADS_SET acknowledged but offloads are %s", FeatureString(g))
		}
	})
}
