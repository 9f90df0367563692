package pci

import (
	"encoding/binary"
	"sync"
	"testing"

	"github.com/govmd/govmd/bus"
)

type fuzzRig struct {
	pio, mmio *bus.Bus
	r         *Root
	d1, d2    *testDev
}

func newFuzzRig(t testing.TB) *fuzzRig {
	t.Helper()
	f := &fuzzRig{pio: bus.New("pio", nil), mmio: bus.New("mmio", nil)}
	r, err := NewRoot(f.pio, f.mmio, nil, RootConfig{
		IO:    Window{Base: 0xc000, Size: 0x4000},
		Mem32: Window{Base: 0xc0000000, Size: 0x10000000},
		Mem64: Window{Base: 0x100_0000_0000, Size: 1 << 32},
		ECAM:  Window{Base: 0xb0000000, Size: 2 * ECAMBusSize},
	})
	if err != nil {
		t.Fatal(err)
	}
	f.r = r
	f.d1 = newTestDev(t,
		barSpec{index: 0, kind: BARIO, size: 32},
		barSpec{index: 1, kind: BARMem32, size: 0x1000},
		barSpec{index: 2, kind: BARMem64, size: 0x4000, prefetch: true})
	if _, err := f.d1.cs.AddVendorCapability(make([]byte, 13), nil); err != nil {
		t.Fatal(err)
	}
	_ = f.d1.cs.SetInterruptPin(PinA)
	m, err := NewMSIX(f.d1.cs, MSIXConfig{Vectors: 5, TableBAR: 2, TableOffset: 0x2000, PBABAR: 2, PBAOffset: 0x3000,
		Deliver:  func(int, uint64, uint32) {},
		OnChange: func(int, uint64, uint32, bool) {}})
	if err != nil {
		t.Fatal(err)
	}
	f.d1.msix = m
	f.d2 = newTestDev(t, barSpec{index: 4, kind: BARMem64, size: 1 << 20})
	for _, d := range []*testDev{f.d1, f.d2} {
		if _, err := r.AddDevice(-1, d); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

var accessSizes = [...]int{1, 2, 4, 8, 3, 0}

// run interprets data as a sequence of guest accesses. Each starts with an
// op byte: bits 0-3 the access kind (mod 10), bits 4-6 the size index into
// accessSizes, bit 7 a write/select flag for some kinds.
func (f *fuzzRig) run(data []byte) {
	next := func(n int) []byte {
		if len(data) < n {
			b := make([]byte, n)
			copy(b, data)
			data = nil
			return b
		}
		b := data[:n]
		data = data[n:]
		return b
	}
	for len(data) > 0 {
		op := next(1)[0]
		size := accessSizes[int(op>>4&7)%len(accessSizes)]
		buf := make([]byte, size)
		switch op & 0x0f % 10 {
		case 0: // latch CONFIG_ADDRESS (only dwords latch)
			f.pio.Write(PortConfigAddress, next(size))
		case 1:
			f.pio.Read(PortConfigData+uint64(next(1)[0]%4), buf)
		case 2:
			f.pio.Write(PortConfigData+uint64(next(1)[0]%4), next(size))
		case 3:
			off := uint64(binary.LittleEndian.Uint32(next(4))) % (2 * ECAMBusSize)
			f.mmio.Read(0xb0000000+off, buf)
		case 4:
			off := uint64(binary.LittleEndian.Uint32(next(4))) % (2 * ECAMBusSize)
			f.mmio.Write(0xb0000000+off, next(size))
		case 5: // configuration write straight to device 1, any offset
			f.d1.cs.Write(int(int8(next(1)[0]))*2, next(size))
		case 6: // access near a BAR of device 1 or 2
			sel := next(1)[0]
			d := f.d1
			if sel&0x80 != 0 {
				d = f.d2
			}
			bar := int(sel) % NumBARs
			off := uint64(binary.LittleEndian.Uint16(next(2)))
			addr := d.cs.BARAddress(bar) + off
			kind, _, _ := d.cs.BAR(bar)
			b := f.mmio
			if kind == BARIO {
				b = f.pio
			}
			if sel&0x40 != 0 {
				b.Write(addr, next(size))
			} else {
				b.Read(addr, buf)
			}
		case 7:
			f.d1.msix.Trigger(int(int8(next(1)[0])) % 7)
		case 8: // MSI-X table and PBA through the device, any offset
			off := uint64(binary.LittleEndian.Uint16(next(2)))
			if op&0x80 != 0 {
				f.d1.WriteBAR(2, off, next(size))
			} else {
				f.d1.ReadBAR(2, off, buf)
			}
		case 9: // raw port I/O around the configuration ports
			port := 0xcf0 + uint64(next(1)[0]%0x20)
			if op&0x80 != 0 {
				f.pio.Write(port, next(size))
			} else {
				f.pio.Read(port, buf)
			}
		}
	}
}

// check verifies invariants no guest access may break.
func (f *fuzzRig) check(t *testing.T) {
	for _, d := range []*testDev{f.d1, f.d2} {
		var id [4]byte
		d.cs.Get(0, id[:])
		if binary.LittleEndian.Uint32(id[:]) != 0x10411af4 {
			t.Fatalf("vendor/device changed: %x", id)
		}
		if c := d.cs.Command(); c&^(CommandIO|CommandMemory|CommandBusMaster|CommandINTxDisable) != 0 {
			t.Fatalf("read-only command bits set: %#x", c)
		}
		for i := range NumBARs {
			kind, size, _ := d.cs.BAR(i)
			a := d.cs.BARAddress(i)
			if kind != BARUnused && a%size != 0 {
				t.Fatalf("BAR %d address %#x not aligned to %#x", i, a, size)
			}
		}
	}
	var hdr [2]byte
	f.d1.cs.Get(f.d1.msix.Capability(), hdr[:])
	if hdr[0] != CapMSIX || hdr[1] != 0 {
		t.Fatalf("capability header changed: %x", hdr)
	}
	for v := range 5 {
		if _, _, ok := f.d1.msix.Message(v); !ok {
			t.Fatal("vector vanished")
		}
	}
}

// linuxProbe is the access pattern of Linux enumerating device 1: read ids,
// disable decoding, size BAR 2 (64-bit), restore, enable MSI-X.
func linuxProbe() []byte {
	var b []byte
	latch := func(reg int) {
		b = append(b, 0x20)
		b = binary.LittleEndian.AppendUint32(b, cfgAddr(0, 1, 0, reg))
	}
	wr := func(v uint32) {
		b = append(b, 0x22, 0)
		b = binary.LittleEndian.AppendUint32(b, v)
	}
	latch(0)
	b = append(b, 0x21, 0)
	latch(RegCommand)
	wr(0)
	latch(RegBAR0 + 8)
	wr(0xffffffff)
	b = append(b, 0x21, 0)
	wr(0xc0100000)
	latch(RegBAR0 + 12)
	wr(0xffffffff)
	wr(0)
	latch(RegCommand)
	wr(CommandIO | CommandMemory | CommandBusMaster)
	latch(0x50) // MSI-X capability after the 16-byte vendor one at 0x40
	wr(uint32(msixEnable) << 16)
	b = append(b, 0x97) // trigger vector
	b = append(b, 1)
	return b
}

func FuzzConfigSpace(f *testing.F) {
	f.Add([]byte{})
	f.Add(linuxProbe())
	f.Add([]byte{0x20, 0x00, 0x08, 0x00, 0x80, 0x21, 0x00, 0x22, 0x01, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0x23, 0x10, 0x00, 0x00, 0x00, 0x34, 0xff, 0x00, 0x10, 0x00, 0x00, 0x00})
	f.Add([]byte{0x15, 0x08, 0xff, 0xff, 0xff, 0xff, 0x16, 0x02, 0x00, 0x20, 0xff, 0xff})
	f.Add([]byte{0x98, 0x0c, 0x20, 0x00, 0x00, 0x00, 0x00, 0x07, 0x00, 0x88, 0x00, 0x30})
	f.Add([]byte{0x99, 0x09, 0x06, 0x09, 0x0c, 0x19, 0x0a, 0x29, 0x0f})
	f.Fuzz(func(t *testing.T, data []byte) {
		rig := newFuzzRig(t)
		rig.run(data)
		rig.check(t)
	})
}

func TestLinuxProbeSeed(t *testing.T) {
	rig := newFuzzRig(t)
	if rig.d1.msix.Capability() != 0x50 {
		t.Fatalf("MSI-X capability at %#x; update linuxProbe", rig.d1.msix.Capability())
	}
	rig.run(linuxProbe())
	rig.check(t)
	if got := rig.d1.cs.BARAddress(2); got != 0xc0100000 {
		t.Errorf("BAR 2 = %#x after the probe sequence", got)
	}
	if !rig.d1.msix.Enabled() {
		t.Error("MSI-X not enabled by the probe sequence")
	}
	if rig.d1.cs.Command()&CommandBusMaster == 0 {
		t.Error("bus master not set")
	}
}

// TestConcurrentAccess runs guest accesses on several goroutines, as vCPUs
// do, while a device goroutine triggers MSI-X vectors (run with -race).
func TestConcurrentAccess(t *testing.T) {
	rig := newFuzzRig(t)
	seeds := [][]byte{linuxProbe(), {0x15, 0x08, 0xff, 0xff, 0xff, 0xff}, {0x98, 0x0c, 0x20, 0x00, 0x00, 0x00, 0x00}}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 200 {
				rig.run(append([]byte(nil), seeds[(g+i)%len(seeds)]...))
			}
		})
	}
	wg.Go(func() {
		for i := range 2000 {
			rig.d1.msix.Trigger(i % 5)
			rig.d1.cs.SetInterruptStatus(i%2 == 0)
		}
	})
	wg.Wait()
	rig.check(t)
}
