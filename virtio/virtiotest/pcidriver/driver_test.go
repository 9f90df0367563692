package pcidriver_test

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/govmd/govmd/memory"
	"github.com/govmd/govmd/pci"
	"github.com/govmd/govmd/virtio"
	"github.com/govmd/govmd/virtio/pcitransport"
	"github.com/govmd/govmd/virtio/virtiotest"
	"github.com/govmd/govmd/virtio/virtiotest/pcidriver"
)

// fakeDevice is a block-type virtio device with three queues and 16 bytes
// of configuration; it keeps its activation so a test can interrupt the
// driver through it.
type fakeDevice struct {
	mu  sync.Mutex
	cfg [16]byte
	act *virtio.Activation
}

const fakeFeatures = 1<<1 | 1<<5 | virtio.FRingEventIdx | virtio.FVersion1 | 1<<35

func (d *fakeDevice) Type() virtio.DeviceType { return virtio.DeviceBlock }
func (d *fakeDevice) Features() uint64        { return fakeFeatures }
func (d *fakeDevice) QueueSizes() []uint16    { return []uint16{64, 32, 16} }
func (d *fakeDevice) ConfigSize() int         { return len(d.cfg) }
func (d *fakeDevice) ReadConfig(off uint64, data []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range data {
		if o := off + uint64(i); o < uint64(len(d.cfg)) {
			data[i] = d.cfg[o]
		}
	}
}
func (d *fakeDevice) WriteConfig(uint64, []byte) {}
func (d *fakeDevice) Activate(a virtio.Activation) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.act = &a
	return nil
}
func (d *fakeDevice) Reset() {
	d.mu.Lock()
	d.act = nil
	d.mu.Unlock()
}
func (d *fakeDevice) activation() *virtio.Activation {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.act
}

type setup struct {
	name   string
	mode   pcitransport.Mode
	legacy bool
	intx   bool
}

var setups = []setup{
	{"modern", pcitransport.Modern, false, false},
	{"transitional", pcitransport.Transitional, false, false},
	{"transitional-legacy", pcitransport.Transitional, true, false},
	{"legacy", pcitransport.Legacy, true, false},
	{"modern-intx", pcitransport.Modern, false, true},
	{"transitional-legacy-intx", pcitransport.Transitional, true, true},
	{"legacy-intx", pcitransport.Legacy, true, true},
}

type rig struct {
	dev *fakeDevice
	mem *memory.Memory
	tr  *pcitransport.Transport
	irq *pcidriver.IRQ
	drv *pcidriver.Driver
}

func newRig(t *testing.T, s setup) (*rig, error) {
	t.Helper()
	r := &rig{dev: &fakeDevice{}}
	for i := range r.dev.cfg {
		r.dev.cfg[i] = byte(0xa0 + i)
	}
	r.mem = memory.FromBytes(memory.Region{GPA: 0, Host: make([]byte, 1<<20)})
	r.irq = pcidriver.NewIRQ(3)
	tr, err := pcitransport.New(pcitransport.Config{Mode: s.mode, Device: r.dev, Mem: r.mem, MSIX: r.irq, INTx: r.irq})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	r.tr = tr
	r.drv, err = pcidriver.New(tr, r.irq, pcidriver.Config{Legacy: s.legacy, INTx: s.intx})
	if err != nil {
		return nil, err
	}
	t.Cleanup(r.drv.Close)
	return r, nil
}

func waitFor(t *testing.T, what string, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatalf("no %s", what)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s", what)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

func TestProbe(t *testing.T) {
	tests := []struct {
		mode   pcitransport.Mode
		legacy bool
		err    string
	}{
		{pcitransport.Modern, true, "no legacy interface"},
		{pcitransport.Legacy, false, "not a modern device"},
		{pcitransport.Modern, false, ""},
		{pcitransport.Transitional, false, ""},
		{pcitransport.Transitional, true, ""},
		{pcitransport.Legacy, true, ""},
	}
	for _, tc := range tests {
		r, err := newRig(t, setup{mode: tc.mode, legacy: tc.legacy})
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%v device, legacy driver %v: %v, want %q", tc.mode, tc.legacy, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%v device, legacy driver %v: %v", tc.mode, tc.legacy, err)
		}
		if r.drv.DeviceType() != virtio.DeviceBlock || r.drv.NumQueues() != 3 {
			t.Errorf("%v: type %v, %d queues", tc.mode, r.drv.DeviceType(), r.drv.NumQueues())
		}
	}
}

// TestDriver runs the initialization sequence through the registers,
// checks what the device was given, and sends queue and configuration
// interrupts and notifications both ways.
func TestDriver(t *testing.T) {
	for _, s := range setups {
		t.Run(s.name, func(t *testing.T) {
			r, err := newRig(t, s)
			if err != nil {
				t.Fatal(err)
			}
			d := r.drv
			d.Reset()
			offered := d.DeviceFeatures()
			want := uint64(fakeFeatures)
			if s.legacy {
				want &= 0xffffffff
			}
			if offered != want {
				t.Fatalf("offered %#x, want %#x", offered, want)
			}
			var cfg [6]byte
			d.ReadConfig(2, cfg[:]) // before MSI-X is enabled (legacy: offset 20)
			if cfg != [6]byte{0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7} {
				t.Fatalf("config before queue setup %x", cfg)
			}
			ack := offered &^ (1 << 1)
			if ok, err := d.Negotiate(ack); err != nil || !ok {
				t.Fatalf("negotiate: %v %v", ok, err)
			}
			if q := d.QueueMax(0); q != 64 {
				t.Fatalf("queue 0 max %d", q)
			}
			alloc := virtiotest.Alloc{Next: 0x10000, End: 1 << 20}
			var rings []*virtiotest.Ring
			for q := 0; q < 2; q++ { // queue 2 stays disabled
				size := d.QueueMax(q)
				if !s.legacy {
					size /= 2
				}
				ring := virtiotest.NewRing(r.mem, size, alloc.Get(virtiotest.Bytes(size), 4096))
				if err := d.SetupQueue(q, ring); err != nil {
					t.Fatal(err)
				}
				rings = append(rings, ring)
			}
			if d.MSIXEnabled() == s.intx {
				t.Fatalf("MSI-X enabled %v in INTx mode %v", d.MSIXEnabled(), s.intx)
			}
			d.ReadConfig(2, cfg[:]) // legacy: offset 24 with MSI-X
			if cfg != [6]byte{0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7} {
				t.Fatalf("config after queue setup %x", cfg)
			}
			if err := d.DriverOK(); err != nil {
				t.Fatal(err)
			}
			a := r.dev.activation()
			if a == nil {
				t.Fatal("not activated")
			}
			if a.Features != ack {
				t.Errorf("activated with %#x, want %#x", a.Features, ack)
			}
			if a.Queues[2] != nil {
				t.Error("queue 2 enabled")
			}
			for q, ring := range rings {
				if got := a.Queues[q].Config(); got != ring.Config() {
					t.Errorf("queue %d: device has %+v, driver %+v", q, got, ring.Config())
				}
				a.Kicks[q].TryRead()
				d.Notify(q)
				if !a.Kicks[q].TryRead() {
					t.Errorf("notify of queue %d did not reach its eventfd", q)
				}
			}
			// Interrupts, device to driver.
			// (With INTx every queue's handler runs for any queue
			// interrupt, so each step waits for its own count.)
			for q := 0; q < 2; q++ {
				before := r.irq.Count(q)
				a.Transport.Notify(q)
				waitUntil(t, "queue interrupt", func() bool { return r.irq.Count(q) > before })
				select {
				case <-r.irq.Wait(q):
				default:
					t.Errorf("queue %d interrupt did not wake its waiter", q)
				}
			}
			a.Transport.ConfigChanged()
			waitFor(t, "configuration interrupt", r.irq.WaitConfig())
			if r.irq.ConfigCount() != 1 {
				t.Errorf("%d configuration interrupts", r.irq.ConfigCount())
			}
			raised, spurious := r.irq.INTx()
			if s.intx {
				// A raise while the handler runs may find the ISR
				// already read: spurious, as on real hardware.
				if raised < 3 || spurious >= raised {
					t.Errorf("INTx raised %d, spurious %d", raised, spurious)
				}
				// The handler read the ISR: it is clear and the line
				// is deasserted.
				deadline := time.Now().Add(5 * time.Second)
				for r.tr.Config().Status()&pci.StatusInterrupt != 0 && time.Now().Before(deadline) {
					time.Sleep(time.Millisecond)
				}
				if r.tr.Config().Status()&pci.StatusInterrupt != 0 {
					t.Error("interrupt status still set after the handler read the ISR")
				}
			} else {
				if raised != 0 {
					t.Errorf("INTx raised %d times with MSI-X", raised)
				}
				for v, want := range []uint64{1, 1, 1, 0} { // config, queue 0, queue 1, queue 2
					if got := r.irq.Deliveries(v); got != want {
						t.Errorf("vector %d: %d deliveries, want %d", v, got, want)
					}
					if rt, ok := r.irq.LastRoute(v); !ok || rt.Masked {
						t.Errorf("vector %d route %+v (reported %v)", v, rt, ok)
					}
				}
				if r.irq.Stray() != 0 {
					t.Errorf("%d stray messages", r.irq.Stray())
				}
			}
			if f := r.tr.Faults(); f != 0 {
				t.Errorf("transport counted %d driver faults", f)
			}
			d.Reset()
			if d.Status() != 0 || r.dev.activation() != nil {
				t.Error("reset did not reset")
			}
		})
	}
}

// TestRefusals: features the device refuses, and a legacy ring not in the
// legacy layout.
func TestRefusals(t *testing.T) {
	r, err := newRig(t, setup{mode: pcitransport.Modern})
	if err != nil {
		t.Fatal(err)
	}
	r.drv.Reset()
	if ok, err := r.drv.Negotiate(1 << 7); err != nil || ok {
		t.Errorf("features not offered: ok %v, %v", ok, err)
	}
	r, err = newRig(t, setup{mode: pcitransport.Legacy, legacy: true})
	if err != nil {
		t.Fatal(err)
	}
	d := r.drv
	d.Reset()
	if _, err := d.Negotiate(virtio.FVersion1); err == nil {
		t.Error("legacy driver acked VERSION_1")
	}
	if ok, err := d.Negotiate(1 << 5); !ok || err != nil {
		t.Fatal(ok, err)
	}
	for _, ring := range []*virtiotest.Ring{
		virtiotest.NewRing(r.mem, 32, 0x10000),                   // not the maximum size
		virtiotest.NewRing(r.mem, 64, 0x10100),                   // not page aligned
		{Size: 64, Desc: 0x10000, Avail: 0x10400, Used: 0x12000}, // not the legacy layout
	} {
		if err := d.SetupQueue(0, ring); err == nil {
			t.Errorf("ring %+v accepted", ring.Config())
		}
	}
	// Legacy features are checked at DRIVER_OK; with MSI-X on the
	// configuration vector reports the failure.
	if err := d.SetupQueue(0, virtiotest.NewRing(r.mem, 64, 0x10000)); err != nil {
		t.Fatal(err)
	}
	d.Reset()
	d.Negotiate(1 << 7)
	if err := d.SetupQueue(0, virtiotest.NewRing(r.mem, 64, 0x10000)); err != nil {
		t.Fatal(err)
	}
	if err := d.DriverOK(); !errors.Is(err, pcidriver.ErrNeedsReset) {
		t.Fatalf("DRIVER_OK with features not offered: %v", err)
	}
	waitFor(t, "configuration interrupt", r.irq.WaitConfig())
}
