package virtio_test

import (
	"errors"
	"sync/atomic"
	"testing"

	"github.com/govmd/govmd/virtio"
	"github.com/govmd/govmd/virtio/virtiotest"
)

type fakeDev struct {
	features  uint64
	activated atomic.Int32
	resets    atomic.Int32
	last      virtio.Activation
	validate  func(uint64) error
}

func (d *fakeDev) Type() virtio.DeviceType            { return virtio.DeviceNet }
func (d *fakeDev) Features() uint64                   { return d.features }
func (d *fakeDev) QueueSizes() []uint16               { return []uint16{8, 8} }
func (d *fakeDev) ConfigSize() int                    { return 0 }
func (d *fakeDev) ReadConfig(off uint64, data []byte) {}
func (d *fakeDev) WriteConfig(uint64, []byte)         {}
func (d *fakeDev) Activate(a virtio.Activation) error {
	d.activated.Add(1)
	d.last = a
	return nil
}
func (d *fakeDev) Reset() { d.resets.Add(1) }
func (d *fakeDev) ValidateFeatures(f uint64) error {
	if d.validate != nil {
		return d.validate(f)
	}
	return nil
}

type fakeIRQ struct{ queue, config atomic.Int32 }

func (i *fakeIRQ) QueueInterrupt(int) { i.queue.Add(1) }
func (i *fakeIRQ) ConfigInterrupt()   { i.config.Add(1) }

func setupModern(t *testing.T, c *virtio.Common, r *virtiotest.Ring, features uint64) {
	t.Helper()
	c.SetStatus(virtio.StatusAcknowledge)
	c.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver)
	c.DriverFeatureSelect(0)
	c.SetDriverFeatures(uint32(features))
	c.DriverFeatureSelect(1)
	c.SetDriverFeatures(uint32(features >> 32))
	c.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK)
	c.SelectQueue(0)
	c.SetQueueSize(r.Size)
	cfg := r.Config()
	c.SetQueueAddr(virtio.QueueDesc, false, uint32(cfg.DescAddr))
	c.SetQueueAddr(virtio.QueueAvail, false, uint32(cfg.AvailAddr))
	c.SetQueueAddr(virtio.QueueUsed, false, uint32(cfg.UsedAddr))
	c.SetQueueEnabled(true)
}

func TestModernLifecycle(t *testing.T) {
	mem := newMem(t)
	dev := &fakeDev{features: virtio.FRingEventIdx | 1}
	irq := &fakeIRQ{}
	c, err := virtio.NewCommon(dev, mem, irq, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := virtiotest.NewRing(mem, 8, ringBase)
	setupModern(t, c, r, virtio.FVersion1|virtio.FRingEventIdx|1)
	if c.Status()&virtio.StatusFeaturesOK == 0 {
		t.Fatal("FEATURES_OK refused")
	}
	c.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK | virtio.StatusDriverOK)
	if dev.activated.Load() != 1 {
		t.Fatal("not activated")
	}
	if dev.last.Queues[0] == nil || dev.last.Queues[1] != nil {
		t.Fatalf("queues = %v", dev.last.Queues)
	}
	if dev.last.Features != virtio.FVersion1|virtio.FRingEventIdx|1 {
		t.Fatalf("features = %#x", dev.last.Features)
	}
	// Latched: changing the queue size or address after DRIVER_OK is
	// ignored (the CVE-2026-5747 class).
	c.SelectQueue(0)
	c.SetQueueSize(2)
	c.SetQueueAddr(virtio.QueueDesc, false, 0x1234000)
	if c.QueueSize() != 8 || c.QueueAddr(virtio.QueueDesc) != ringBase {
		t.Fatalf("latched config changed: size %d desc %#x", c.QueueSize(), c.QueueAddr(virtio.QueueDesc))
	}
	if c.IgnoredWrites() != 2 {
		t.Fatalf("ignored writes = %d", c.IgnoredWrites())
	}
	// The device reports a fault.
	dev.last.Transport.NeedsReset(errors.New("bad request"))
	if c.Status()&virtio.StatusNeedsReset == 0 || irq.config.Load() != 1 {
		t.Fatal("NEEDS_RESET not set or not signalled")
	}
	c.SetStatus(0)
	if dev.resets.Load() != 1 || c.Status() != 0 || c.QueueEnabled() || c.AckedFeatures() != 0 {
		t.Fatal("reset incomplete")
	}
}

func TestFeaturesOKRefused(t *testing.T) {
	mem := newMem(t)
	tests := []struct {
		name     string
		offered  uint64
		acked    uint64
		validate func(uint64) error
	}{
		{"not offered", 1, virtio.FVersion1 | 2, nil},
		{"no VERSION_1", 1, 1, nil},
		{"device refuses", 3, virtio.FVersion1 | 2, func(f uint64) error {
			if f&2 != 0 && f&1 == 0 {
				return errors.New("bit 1 needs bit 0")
			}
			return nil
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dev := &fakeDev{features: tc.offered, validate: tc.validate}
			c, err := virtio.NewCommon(dev, mem, &fakeIRQ{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			r := virtiotest.NewRing(mem, 8, ringBase)
			setupModern(t, c, r, tc.acked)
			if c.Status()&virtio.StatusFeaturesOK != 0 {
				t.Fatal("FEATURES_OK accepted")
			}
			c.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK | virtio.StatusDriverOK)
			if dev.activated.Load() != 0 || c.Status()&virtio.StatusNeedsReset == 0 {
				t.Fatal("activated without FEATURES_OK")
			}
		})
	}
}

func TestLegacyPFN(t *testing.T) {
	mem := newMem(t)
	dev := &fakeDev{features: virtio.FVersion1 | virtio.FRingIndirect}
	c, err := virtio.NewCommon(dev, mem, &fakeIRQ{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetLegacy(true)
	if c.DeviceFeatures() != virtio.FRingIndirect {
		t.Fatalf("legacy features = %#x", c.DeviceFeatures())
	}
	r := virtiotest.NewRing(mem, 8, ringBase)
	c.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver)
	c.SetDriverFeatures(virtio.FRingIndirect)
	c.SelectQueue(0)
	c.SetQueuePFN(ringBase / 4096)
	if got := c.QueuePFN(); got != ringBase/4096 {
		t.Fatalf("pfn = %#x", got)
	}
	c.SelectQueue(5) // out of range: ignored and counted
	c.SetQueuePFN(1)
	if c.Faults() == 0 {
		t.Fatal("out-of-range queue select not counted")
	}
	c.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusDriverOK)
	if dev.activated.Load() != 1 {
		t.Fatal("legacy device not activated")
	}
	if got := dev.last.Queues[0].Config(); got != r.Config() {
		t.Fatalf("legacy layout %+v, want %+v", got, r.Config())
	}
}
