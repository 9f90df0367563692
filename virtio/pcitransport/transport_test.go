package pcitransport

import (
	"encoding/binary"
	"sync"
	"testing"
	"time"

	"github.com/govmd/govmd/internal/eventfd"
	"github.com/govmd/govmd/memory"
	"github.com/govmd/govmd/pci"
	"github.com/govmd/govmd/virtio"
)

// fakeDevice is a virtio device with two queues and 8 bytes of
// configuration that records its activation.
type fakeDevice struct {
	mu        sync.Mutex
	cfg       [8]byte
	activated []virtio.Activation
	resets    int
}

func (d *fakeDevice) Type() virtio.DeviceType { return virtio.DeviceNet }
func (d *fakeDevice) Features() uint64 {
	return 1<<5 | virtio.FRingEventIdx | virtio.FVersion1 | 1<<35
}
func (d *fakeDevice) QueueSizes() []uint16 { return []uint16{256, 128} }
func (d *fakeDevice) ConfigSize() int      { return len(d.cfg) }
func (d *fakeDevice) ReadConfig(off uint64, data []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range data {
		if o := off + uint64(i); o < uint64(len(d.cfg)) {
			data[i] = d.cfg[o]
		}
	}
}
func (d *fakeDevice) WriteConfig(off uint64, data []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range data {
		if o := off + uint64(i); o < uint64(len(d.cfg)) {
			d.cfg[o] = data[i]
		}
	}
}
func (d *fakeDevice) Activate(a virtio.Activation) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.activated = append(d.activated, a)
	return nil
}
func (d *fakeDevice) Reset() {
	d.mu.Lock()
	d.resets++
	d.mu.Unlock()
}

type delivery struct {
	vector int
	addr   uint64
	data   uint32
}

type fakeSink struct {
	mu        sync.Mutex
	delivered []delivery
	routes    map[int]delivery
	masked    map[int]bool
}

func (s *fakeSink) Deliver(v int, addr uint64, data uint32) {
	s.mu.Lock()
	s.delivered = append(s.delivered, delivery{v, addr, data})
	s.mu.Unlock()
}
func (s *fakeSink) Route(v int, addr uint64, data uint32, masked bool) {
	s.mu.Lock()
	if s.routes == nil {
		s.routes, s.masked = map[int]delivery{}, map[int]bool{}
	}
	s.routes[v] = delivery{v, addr, data}
	s.masked[v] = masked
	s.mu.Unlock()
}

type fakeLine struct {
	mu     sync.Mutex
	raised int
}

func (l *fakeLine) Raise() { l.mu.Lock(); l.raised++; l.mu.Unlock() }
func (l *fakeLine) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.raised
}

type fakeBells struct {
	added, removed []bell
	fail           bool
}

func (b *fakeBells) AddDoorbell(io bool, addr uint64, size int, dm *uint64, fd *eventfd.EventFD) error {
	if b.fail {
		return errTest
	}
	b.added = append(b.added, bell{io: io, addr: addr, size: size, datamatch: dm, fd: fd})
	return nil
}
func (b *fakeBells) RemoveDoorbell(io bool, addr uint64, size int, dm *uint64, fd *eventfd.EventFD) error {
	b.removed = append(b.removed, bell{io: io, addr: addr, size: size, datamatch: dm, fd: fd})
	return nil
}

type testErr string

func (e testErr) Error() string { return string(e) }

const errTest = testErr("refused")

type rig struct {
	t    *testing.T
	tr   *Transport
	dev  *fakeDevice
	sink *fakeSink
	line *fakeLine
	mem  *memory.Memory
}

func newRig(t *testing.T, mode Mode) *rig {
	t.Helper()
	r := &rig{t: t, dev: &fakeDevice{}, sink: &fakeSink{}, line: &fakeLine{}}
	r.mem = memory.FromBytes(memory.Region{GPA: 0, Host: make([]byte, 1<<20)})
	tr, err := New(Config{Mode: mode, Device: r.dev, Mem: r.mem, MSIX: r.sink, INTx: r.line})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	r.tr = tr
	return r
}

func (r *rig) read(bar int, off uint64, n int) uint64 {
	b := make([]byte, 8)
	r.tr.ReadBAR(bar, off, b[:n])
	return binary.LittleEndian.Uint64(b)
}

func (r *rig) write(bar int, off uint64, n int, v uint64) {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, v)
	r.tr.WriteBAR(bar, off, b[:n])
}

func (r *rig) cfgRead(off, n int) uint64 {
	b := make([]byte, 8)
	r.tr.Config().Read(off, b[:n])
	return binary.LittleEndian.Uint64(b)
}

func (r *rig) cfgWrite(off, n int, v uint64) {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, v)
	r.tr.Config().Write(off, b[:n])
}

// caps walks the capability list and returns the offset of each vendor
// capability by cfg_type, and the MSI-X capability offset.
func (r *rig) caps() (vendor map[byte]int, msix int) {
	vendor = map[byte]int{}
	for off := int(r.cfgRead(pci.RegCapabilities, 1)); off != 0; off = int(r.cfgRead(off+1, 1)) {
		switch r.cfgRead(off, 1) {
		case pci.CapVendor:
			vendor[byte(r.cfgRead(off+3, 1))] = off
		case pci.CapMSIX:
			msix = off
		}
	}
	return vendor, msix
}

func TestIdentity(t *testing.T) {
	tests := []struct {
		mode              Mode
		device            uint16
		revision          uint8
		legacyBAR, modBAR bool
	}{
		{Transitional, 0x1000, 0, true, true},
		{Modern, 0x1041, 1, false, true},
		{Legacy, 0x1000, 0, true, false},
	}
	for _, tc := range tests {
		t.Run(tc.mode.String(), func(t *testing.T) {
			r := newRig(t, tc.mode)
			if v := r.cfgRead(pci.RegVendorID, 2); v != VendorID {
				t.Errorf("vendor %#x", v)
			}
			if v := r.cfgRead(pci.RegDeviceID, 2); v != uint64(tc.device) {
				t.Errorf("device %#x, want %#x", v, tc.device)
			}
			if v := r.cfgRead(pci.RegRevision, 1); v != uint64(tc.revision) {
				t.Errorf("revision %d", v)
			}
			if v := r.cfgRead(pci.RegSubsystemID, 2); v != 1 {
				t.Errorf("subsystem %d, want the device type", v)
			}
			if v := r.cfgRead(pci.RegClass, 1); v != 0x02 {
				t.Errorf("class %#x", v)
			}
			kind, _, _ := r.tr.Config().BAR(BARLegacy)
			if (kind == pci.BARIO) != tc.legacyBAR {
				t.Errorf("legacy BAR kind %v", kind)
			}
			kind, size, _ := r.tr.Config().BAR(BARModern)
			if (kind == pci.BARMem64) != tc.modBAR {
				t.Errorf("modern BAR kind %v", kind)
			}
			vendor, msix := r.caps()
			if msix == 0 {
				t.Error("no MSI-X capability")
			}
			if tc.modBAR {
				for _, typ := range []byte{capCommon, capNotify, capISR, capDevice, capPCI} {
					off, ok := vendor[typ]
					if !ok {
						t.Errorf("no vendor capability of type %d", typ)
						continue
					}
					if typ == capPCI {
						continue
					}
					if b := r.cfgRead(off+4, 1); b != BARModern {
						t.Errorf("cap %d in BAR %d", typ, b)
					}
					o, l := r.cfgRead(off+8, 4), r.cfgRead(off+12, 4)
					if o+l > size {
						t.Errorf("cap %d region %#x+%#x beyond BAR of %#x", typ, o, l, size)
					}
				}
				if m := r.cfgRead(vendor[capNotify]+16, 4); m != NotifyMultiplier {
					t.Errorf("notify_off_multiplier %d", m)
				}
			} else if len(vendor) != 0 {
				t.Errorf("legacy device has vendor capabilities %v", vendor)
			}
			if r.cfgRead(pci.RegInterruptPin, 1) != uint64(pci.PinA) {
				t.Error("no INTx pin")
			}
		})
	}
}

// modernInit runs the 1.x initialization sequence and sets up queue 0 at
// the given ring addresses.
func (r *rig) modernInit(features uint64) {
	b := BARModern
	r.write(b, ccDeviceStatus, 1, 0)
	r.write(b, ccDeviceStatus, 1, virtio.StatusAcknowledge)
	r.write(b, ccDeviceStatus, 1, virtio.StatusAcknowledge|virtio.StatusDriver)
	r.write(b, ccDriverFeatureSelect, 4, 0)
	r.write(b, ccDriverFeature, 4, features&0xffffffff)
	r.write(b, ccDriverFeatureSelect, 4, 1)
	r.write(b, ccDriverFeature, 4, features>>32)
	r.write(b, ccDeviceStatus, 1, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK)
}

func TestModernInitialization(t *testing.T) {
	for _, mode := range []Mode{Modern, Transitional} {
		t.Run(mode.String(), func(t *testing.T) {
			r := newRig(t, mode)
			b := BARModern
			r.write(b, ccDeviceFeatureSelect, 4, 0)
			lo := r.read(b, ccDeviceFeature, 4)
			r.write(b, ccDeviceFeatureSelect, 4, 1)
			hi := r.read(b, ccDeviceFeature, 4)
			if got, want := hi<<32|lo, r.dev.Features(); got != want {
				t.Fatalf("device features %#x, want %#x", got, want)
			}
			if n := r.read(b, ccNumQueues, 2); n != 2 {
				t.Fatalf("num_queues %d", n)
			}
			feat := uint64(1<<5 | virtio.FVersion1)
			r.modernInit(feat)
			if s := r.read(b, ccDeviceStatus, 1); s&virtio.StatusFeaturesOK == 0 {
				t.Fatalf("FEATURES_OK not kept: %#x", s)
			}
			r.write(b, ccQueueSelect, 2, 0)
			if n := r.read(b, ccQueueSize, 2); n != 256 {
				t.Fatalf("queue 0 size %d", n)
			}
			r.write(b, ccQueueSize, 2, 64)
			r.write(b, ccQueueDesc, 8, 0x10000)
			r.write(b, ccQueueDriver, 4, 0x11000)
			r.write(b, ccQueueDriver+4, 4, 0)
			r.write(b, ccQueueDevice, 8, 0x12000)
			r.write(b, ccQueueMSIXVector, 2, 1)
			if v := r.read(b, ccQueueMSIXVector, 2); v != 1 {
				t.Fatalf("queue vector %d", v)
			}
			r.write(b, ccQueueMSIXVector, 2, 99) // beyond the table
			if v := r.read(b, ccQueueMSIXVector, 2); v != NoVector {
				t.Fatalf("out-of-range vector read back %d, want NO_VECTOR", v)
			}
			r.write(b, ccQueueEnable, 2, 1)
			if off := r.read(b, ccQueueNotifyOff, 2); off != 0 {
				t.Fatalf("queue_notify_off %d", off)
			}
			r.write(b, ccDeviceStatus, 1, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK|virtio.StatusDriverOK)
			if len(r.dev.activated) != 1 {
				t.Fatalf("activated %d times", len(r.dev.activated))
			}
			a := r.dev.activated[0]
			if a.Features != feat {
				t.Errorf("activation features %#x", a.Features)
			}
			q := a.Queues[0]
			if q == nil || a.Queues[1] != nil {
				t.Fatalf("queues %v", a.Queues)
			}
			if cfg := q.Config(); cfg.Size != 64 || cfg.DescAddr != 0x10000 || cfg.AvailAddr != 0x11000 || cfg.UsedAddr != 0x12000 {
				t.Errorf("queue config %+v", cfg)
			}
			// Latched: the Firecracker CVE-2026-5747 class.
			ign := r.tr.Common().IgnoredWrites()
			r.write(b, ccQueueSize, 2, 256)
			r.write(b, ccQueueDesc, 8, 0xfff000)
			if r.read(b, ccQueueSize, 2) != 64 || r.read(b, ccQueueDesc, 8) != 0x10000 {
				t.Error("queue configuration changed after DRIVER_OK")
			}
			// One count per register write.
			if r.tr.Common().IgnoredWrites() != ign+2 {
				t.Errorf("ignored writes %d, want %d", r.tr.Common().IgnoredWrites(), ign+2)
			}
			// Reset.
			r.write(b, ccDeviceStatus, 1, 0)
			if s := r.read(b, ccDeviceStatus, 1); s != 0 || r.dev.resets != 1 {
				t.Errorf("after reset: status %#x, resets %d", s, r.dev.resets)
			}
			if r.read(b, ccQueueSize, 2) != 256 {
				t.Error("queue size not reset")
			}
		})
	}
}

func TestModernRefusesUnofferedFeatures(t *testing.T) {
	r := newRig(t, Modern)
	r.modernInit(1<<7 | virtio.FVersion1) // bit 7 is not offered
	if s := r.read(BARModern, ccDeviceStatus, 1); s&virtio.StatusFeaturesOK != 0 {
		t.Fatalf("FEATURES_OK accepted: %#x", s)
	}
	r.modernInit(1 << 5) // no VERSION_1 on the modern interface
	if s := r.read(BARModern, ccDeviceStatus, 1); s&virtio.StatusFeaturesOK != 0 {
		t.Fatalf("FEATURES_OK without VERSION_1: %#x", s)
	}
}

func TestLegacyInitialization(t *testing.T) {
	for _, mode := range []Mode{Legacy, Transitional} {
		t.Run(mode.String(), func(t *testing.T) {
			r := newRig(t, mode)
			b := BARLegacy
			r.write(b, legacyStatus, 1, 0)
			if f := r.read(b, legacyHostFeatures, 4); f != r.dev.Features()&0xffffffff {
				t.Fatalf("host features %#x", f)
			}
			r.write(b, legacyStatus, 1, virtio.StatusAcknowledge|virtio.StatusDriver)
			r.write(b, legacyGuestFeatures, 4, 1<<5)
			r.write(b, legacyQueueSel, 2, 1)
			if n := r.read(b, legacyQueueNum, 2); n != 128 {
				t.Fatalf("queue 1 num %d", n)
			}
			r.write(b, legacyQueuePFN, 4, 0x20)
			r.write(b, legacyQueueSel, 2, 5)
			if n := r.read(b, legacyQueueNum, 2); n != 0 {
				t.Fatalf("absent queue has num %d", n)
			}
			r.write(b, legacyQueuePFN, 4, 0x30) // out of range: fault, ignored
			r.tr.Config().Read(0, make([]byte, 4))
			r.write(b, legacyStatus, 1, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusDriverOK)
			if len(r.dev.activated) != 1 {
				t.Fatalf("activated %d times", len(r.dev.activated))
			}
			a := r.dev.activated[0]
			if a.Features != 1<<5 || a.Queues[0] != nil || a.Queues[1] == nil {
				t.Fatalf("activation %+v", a)
			}
			cfg := a.Queues[1].Config()
			if cfg.DescAddr != 0x20000 || cfg.AvailAddr != 0x20000+16*128 || cfg.UsedAddr != 0x21000 || cfg.Size != 128 {
				t.Errorf("legacy ring layout %+v", cfg)
			}
			if r.tr.Faults() == 0 {
				t.Error("out-of-range queue PFN not counted")
			}
			r.write(b, legacyQueueSel, 2, 1)
			r.write(b, legacyQueuePFN, 4, 0x40)
			if r.read(b, legacyQueuePFN, 4) != 0x20 {
				t.Error("queue PFN changed after DRIVER_OK")
			}
		})
	}
}

func TestLegacyConfigOffsetFollowsMSIX(t *testing.T) {
	r := newRig(t, Legacy)
	copy(r.dev.cfg[:], []byte{1, 2, 3, 4, 5, 6, 7, 8})
	if v := r.read(BARLegacy, legacyConfig, 1); v != 1 {
		t.Fatalf("config byte 0 at 20 = %d", v)
	}
	_, msix := r.caps()
	r.cfgWrite(msix+2, 2, 1<<15) // enable MSI-X
	if v := r.read(BARLegacy, legacyConfigMSIX, 2); v != 0x0201 {
		t.Fatalf("config at 24 with MSI-X = %#x", v)
	}
	r.write(BARLegacy, legacyConfigVector, 2, 0)
	if v := r.read(BARLegacy, legacyConfigVector, 2); v != 0 {
		t.Fatalf("config vector %d", v)
	}
}

func TestTransitionalInterfacesDoNotMix(t *testing.T) {
	r := newRig(t, Transitional)
	r.modernInit(1<<5 | virtio.FVersion1)
	f := r.tr.Faults()
	r.write(BARLegacy, legacyStatus, 1, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusDriverOK)
	if len(r.dev.activated) != 0 {
		t.Fatal("legacy DRIVER_OK activated a device configured through the modern interface")
	}
	if r.tr.Faults() == f {
		t.Error("mixed access not counted")
	}
	// After a reset, a legacy driver may take the device.
	r.write(BARModern, ccDeviceStatus, 1, 0)
	r.write(BARLegacy, legacyStatus, 1, 0)
	if !r.tr.Common().Legacy() {
		t.Fatal("legacy driver did not claim the reset device")
	}
}

func TestINTx(t *testing.T) {
	r := newRig(t, Transitional)
	r.tr.Notify(0)
	if r.line.count() != 1 {
		t.Fatalf("raised %d", r.line.count())
	}
	if r.cfgRead(pci.RegStatus, 2)&pci.StatusInterrupt == 0 {
		t.Error("interrupt status bit not set")
	}
	r.tr.ConfigChanged()
	r.tr.Resample() // ISR still set: raise again
	if r.line.count() != 3 {
		t.Fatalf("raised %d, want 3", r.line.count())
	}
	if v := r.read(BARLegacy, legacyISR, 1); v != isrQueue|isrConfig {
		t.Fatalf("ISR %#x", v)
	}
	if v := r.read(BARModern, modernISR, 1); v != 0 {
		t.Fatalf("ISR not cleared by read: %#x", v)
	}
	r.tr.Resample()
	if r.line.count() != 3 {
		t.Error("raised after ISR was cleared")
	}
	if r.cfgRead(pci.RegStatus, 2)&pci.StatusInterrupt != 0 {
		t.Error("interrupt status bit still set")
	}
	// INTx disable in the command register.
	r.cfgWrite(pci.RegCommand, 2, r.cfgRead(pci.RegCommand, 2)|pci.CommandINTxDisable)
	r.tr.Notify(1)
	if r.line.count() != 3 {
		t.Error("raised with INTx disabled")
	}
}

func TestMSIX(t *testing.T) {
	r := newRig(t, Modern)
	_, msix := r.caps()
	r.modernInit(virtio.FVersion1)
	r.write(BARModern, ccQueueSelect, 2, 1)
	r.write(BARModern, ccQueueMSIXVector, 2, 2)
	r.write(BARModern, ccConfigMSIXVector, 2, 0)
	r.cfgWrite(msix+2, 2, 1<<15)
	// Program and unmask vector 2.
	r.write(BARMSIX, 2*16, 4, 0xfee00000)
	r.write(BARMSIX, 2*16+8, 4, 0x4041)
	r.write(BARMSIX, 2*16+12, 4, 0)
	if r.sink.masked[2] || r.sink.routes[2].addr != 0xfee00000 || r.sink.routes[2].data != 0x4041 {
		t.Fatalf("route not updated: %+v masked=%v", r.sink.routes[2], r.sink.masked[2])
	}
	r.tr.Notify(1)
	r.tr.Notify(0)       // no vector: nothing
	r.tr.ConfigChanged() // vector 0 masked: pending
	if len(r.sink.delivered) != 1 || r.sink.delivered[0] != (delivery{2, 0xfee00000, 0x4041}) {
		t.Fatalf("delivered %+v", r.sink.delivered)
	}
	if r.line.count() != 0 {
		t.Error("INTx raised while MSI-X is enabled")
	}
	if r.read(BARMSIX, 4096/2, 8) == 0 && r.tr.MSIX().Pending(0) == false {
		t.Error("masked config vector not pending")
	}
	r.write(BARMSIX, 12, 4, 0) // unmask vector 0: the pending message goes out
	if len(r.sink.delivered) != 2 || r.sink.delivered[1].vector != 0 {
		t.Fatalf("pending vector not delivered on unmask: %+v", r.sink.delivered)
	}
}

func TestNotify(t *testing.T) {
	r := newRig(t, Transitional)
	r.write(BARModern, modernNotify+NotifyMultiplier, 2, 1)
	if !r.tr.Common().Kick(1).TryRead() {
		t.Error("modern notify did not kick queue 1")
	}
	r.write(BARLegacy, legacyNotify, 2, 0)
	if !r.tr.Common().Kick(0).TryRead() {
		t.Error("legacy notify did not kick queue 0")
	}
	f := r.tr.Faults()
	r.write(BARModern, modernNotify+2*NotifyMultiplier, 2, 2) // no queue 2
	r.write(BARModern, modernNotify+1, 2, 0)                  // misaligned
	r.write(BARLegacy, legacyNotify, 2, 7)                    // no queue 7
	if got := r.tr.Faults() - f; got != 3 {
		t.Errorf("bad notifications counted %d, want 3", got)
	}
}

func TestDoorbells(t *testing.T) {
	dev := &fakeDevice{}
	mem := memory.FromBytes(memory.Region{GPA: 0, Host: make([]byte, 1<<16)})
	bells := &fakeBells{}
	tr, err := New(Config{Mode: Transitional, Device: dev, Mem: mem, MSIX: &fakeSink{}, Doorbells: bells})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	tr.BARMapped(BARLegacy, 0xc000, pci.BARIO, true)
	tr.BARMapped(BARModern, 0xe0000000, pci.BARMem64, true)
	tr.BARMapped(BARMSIX, 0xe1000000, pci.BARMem32, true) // no doorbells
	if len(bells.added) != 4 {
		t.Fatalf("added %d doorbells", len(bells.added))
	}
	want := []struct {
		io   bool
		addr uint64
		dm   int64
	}{{true, 0xc010, 0}, {true, 0xc010, 1}, {false, 0xe0003000, -1}, {false, 0xe0003004, -1}}
	for i, w := range want {
		b := bells.added[i]
		if b.io != w.io || b.addr != w.addr || b.size != 2 {
			t.Errorf("doorbell %d: %+v", i, b)
		}
		if (w.dm < 0) != (b.datamatch == nil) || b.datamatch != nil && *b.datamatch != uint64(w.dm) {
			t.Errorf("doorbell %d datamatch %v, want %d", i, b.datamatch, w.dm)
		}
		if b.fd != tr.Common().Kick(i%2) {
			t.Errorf("doorbell %d has the wrong eventfd", i)
		}
	}
	tr.BARMapped(BARModern, 0xe0000000, pci.BARMem64, false)
	if len(bells.removed) != 2 || bells.removed[0].io {
		t.Fatalf("removed %+v", bells.removed)
	}
	tr.RemoveDoorbells()
	if len(bells.removed) != 4 {
		t.Fatalf("removed %d after RemoveDoorbells", len(bells.removed))
	}
}

func TestPCIConfigAccessCapability(t *testing.T) {
	r := newRig(t, Modern)
	vendor, _ := r.caps()
	off := vendor[capPCI]
	body := off + 3 // cfg_type
	r.cfgWrite(body+1, 1, BARModern)
	r.cfgWrite(body+5, 4, modernCommon+ccNumQueues)
	r.cfgWrite(body+9, 4, 2)
	if v := r.cfgRead(body+13, 4); v&0xffff != 2 {
		t.Fatalf("num_queues through pci_cfg_data = %d", v)
	}
	// A status write through the window.
	r.cfgWrite(body+5, 4, modernCommon+ccDeviceStatus)
	r.cfgWrite(body+9, 4, 1)
	r.cfgWrite(body+13, 1, virtio.StatusAcknowledge)
	if s := r.tr.Common().Status(); s != virtio.StatusAcknowledge {
		t.Fatalf("status %#x after write through the window", s)
	}
	// Bad length: counted, nothing happens.
	f := r.tr.Faults()
	r.cfgWrite(body+9, 4, 3)
	r.cfgRead(body+13, 4)
	if r.tr.Faults() == f {
		t.Error("bad window length not counted")
	}
}

func TestBadAccessesAreCounted(t *testing.T) {
	r := newRig(t, Transitional)
	tests := []struct {
		name  string
		bar   int
		off   uint64
		n     int
		write bool
	}{
		{"legacy features as u16", BARLegacy, legacyHostFeatures, 2, false},
		{"legacy status as u32", BARLegacy, legacyStatus, 4, true},
		{"common status as u16", BARModern, ccDeviceStatus, 2, true},
		{"common unknown", BARModern, 0x80, 4, false},
		{"queue desc as u16", BARModern, ccQueueDesc + 2, 2, true},
		{"ISR as u32", BARModern, modernISR, 4, false},
		{"BAR 2", 2, 0, 4, false},
		{"beyond modern regions", BARModern, 0x4000, 4, true},
	}
	for _, tc := range tests {
		f := r.tr.Faults()
		if tc.write {
			r.write(tc.bar, tc.off, tc.n, 0xffffffff)
		} else {
			r.read(tc.bar, tc.off, tc.n)
		}
		if r.tr.Faults() == f {
			t.Errorf("%s: not counted", tc.name)
		}
	}
	if r.tr.Common().Status() != 0 {
		t.Error("bad accesses changed the status")
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]Mode{"": Transitional, "transitional": Transitional, "modern": Modern, "legacy": Legacy} {
		if m, err := ParseMode(in); err != nil || m != want {
			t.Errorf("ParseMode(%q) = %v, %v", in, m, err)
		}
	}
	if _, err := ParseMode("pci"); err == nil {
		t.Error("ParseMode accepted pci")
	}
}

// TestActivationFailureWithMSIX: a DRIVER_OK the device refuses sets
// DEVICE_NEEDS_RESET and sends the configuration interrupt through its
// MSI-X vector. (virtio.Common used to send it with its lock held, and the
// transport's MSI-X path takes that lock to read the vector: the vCPU
// writing the status deadlocked.)
func TestActivationFailureWithMSIX(t *testing.T) {
	tests := []struct {
		name string
		mode Mode
		// start configures vector 0 as the configuration vector and
		// writes a status sequence the device refuses at DRIVER_OK.
		start func(r *rig)
	}{
		{"legacy, features not offered", Legacy, func(r *rig) {
			r.write(BARLegacy, legacyStatus, 1, 0)
			r.write(BARLegacy, legacyConfigVector, 2, 0)
			r.write(BARLegacy, legacyStatus, 1, virtio.StatusAcknowledge|virtio.StatusDriver)
			r.write(BARLegacy, legacyGuestFeatures, 4, 1<<7) // not offered
			r.write(BARLegacy, legacyStatus, 1, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusDriverOK)
		}},
		{"modern, no FEATURES_OK", Modern, func(r *rig) {
			r.write(BARModern, ccDeviceStatus, 1, 0)
			r.write(BARModern, ccConfigMSIXVector, 2, 0)
			r.write(BARModern, ccDeviceStatus, 1, virtio.StatusAcknowledge|virtio.StatusDriver)
			r.write(BARModern, ccDeviceStatus, 1, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusDriverOK)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Not newRig: its cleanup would hang on a deadlocked Common.
			r := &rig{t: t, dev: &fakeDevice{}, sink: &fakeSink{}, line: &fakeLine{}}
			r.mem = memory.FromBytes(memory.Region{GPA: 0, Host: make([]byte, 1<<20)})
			tr, err := New(Config{Mode: tc.mode, Device: r.dev, Mem: r.mem, MSIX: r.sink, INTx: r.line})
			if err != nil {
				t.Fatal(err)
			}
			r.tr = tr
			_, msix := r.caps()
			r.cfgWrite(msix+2, 2, 1<<15)
			r.write(BARMSIX, 0, 4, 0xfee00000)
			r.write(BARMSIX, 8, 4, 0x31)
			r.write(BARMSIX, 12, 4, 0)
			done := make(chan struct{})
			go func() {
				defer close(done)
				tc.start(r)
			}()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("the status write that failed activation did not return (deadlock)")
			}
			defer tr.Close()
			if s := r.tr.Common().Status(); s&virtio.StatusNeedsReset == 0 {
				t.Errorf("status %s, want DEVICE_NEEDS_RESET", virtio.StatusString(s))
			}
			r.sink.mu.Lock()
			defer r.sink.mu.Unlock()
			if len(r.sink.delivered) != 1 || r.sink.delivered[0] != (delivery{0, 0xfee00000, 0x31}) {
				t.Errorf("delivered %+v, want the configuration vector once", r.sink.delivered)
			}
			if len(r.dev.activated) != 0 {
				t.Error("device activated")
			}
		})
	}
}

func TestLegacyRings(t *testing.T) {
	for _, c := range []struct {
		pfn  uint32
		n    uint16
		want virtio.QueueConfig
	}{
		{0, 256, virtio.QueueConfig{Size: 256}},
		// 256 descriptors (4 KiB), avail 6+512 bytes, used on the next page.
		{0x10, 256, virtio.QueueConfig{Size: 256, DescAddr: 0x10000, AvailAddr: 0x11000, UsedAddr: 0x12000}},
		{1, 8, virtio.QueueConfig{Size: 8, DescAddr: 0x1000, AvailAddr: 0x1080, UsedAddr: 0x2000}},
	} {
		if got := legacyRings(c.pfn, c.n); got != c.want {
			t.Errorf("legacyRings(%#x, %d) = %+v, want %+v", c.pfn, c.n, got, c.want)
		}
	}
}

// fdSink is a fakeSink whose vectors have eventfds (pcitransport.VectorFDs).
type fdSink struct {
	fakeSink
	asked []delivery
}

func (s *fdSink) VectorFD(v int, addr uint64, data uint32) (int, bool) {
	s.asked = append(s.asked, delivery{v, addr, data})
	return 100 + v, true
}

// TestInterruptFD: a queue's interrupt is handed out as its vector's
// eventfd (with the vector's current message) only with MSI-X enabled, a
// vector set and unmasked, and a sink that has eventfds.
func TestInterruptFD(t *testing.T) {
	if _, ok := newRig(t, Modern).tr.InterruptFD(0); ok {
		t.Fatal("a sink without eventfds handed out an interrupt fd")
	}
	dev := &fakeDevice{}
	sink := &fdSink{}
	mem := memory.FromBytes(memory.Region{GPA: 0, Host: make([]byte, 1<<20)})
	tr, err := New(Config{Mode: Modern, Device: dev, Mem: mem, MSIX: sink})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	r := &rig{t: t, tr: tr, dev: dev, mem: mem}
	_, msix := r.caps()
	r.modernInit(virtio.FVersion1)
	r.write(BARModern, ccQueueSelect, 2, 1)
	r.write(BARModern, ccQueueMSIXVector, 2, 2)
	if _, ok := tr.InterruptFD(1); ok {
		t.Fatal("interrupt fd with MSI-X disabled")
	}
	r.cfgWrite(msix+2, 2, 1<<15)
	if _, ok := tr.InterruptFD(1); ok {
		t.Fatal("interrupt fd for a masked vector")
	}
	r.write(BARMSIX, 2*16, 4, 0xfee00000)
	r.write(BARMSIX, 2*16+8, 4, 0x4041)
	r.write(BARMSIX, 2*16+12, 4, 0)
	if fd, ok := tr.InterruptFD(1); !ok || fd != 102 {
		t.Fatalf("InterruptFD(1) = %d, %v", fd, ok)
	}
	if len(sink.asked) != 1 || sink.asked[0] != (delivery{2, 0xfee00000, 0x4041}) {
		t.Fatalf("sink asked %+v", sink.asked)
	}
	for _, q := range []int{0, 2, -1} { // no vector; no such queue
		if _, ok := tr.InterruptFD(q); ok {
			t.Errorf("InterruptFD(%d) handed out", q)
		}
	}
}
