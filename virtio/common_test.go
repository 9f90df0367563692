package virtio_test

import (
	"errors"
	"sync/atomic"
	"testing"

	"github.com/govmd/govmd/memory"
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

// fakeTransport is a transport as the device sees it: NeedsReset marks
// Common's status, as the PCI transport does.
type fakeTransport struct {
	c              *virtio.Common
	queue, config  atomic.Int32
	needsResetRuns atomic.Int32
}

func (f *fakeTransport) Notify(int)     { f.queue.Add(1) }
func (f *fakeTransport) ConfigChanged() { f.config.Add(1) }
func (f *fakeTransport) NeedsReset(error) {
	f.needsResetRuns.Add(1)
	if f.c.MarkNeedsReset() {
		f.config.Add(1)
	}
}

func newCommon(t *testing.T, dev virtio.Device) (*virtio.Common, *fakeTransport, *memory.Memory) {
	t.Helper()
	tr := &fakeTransport{}
	mem := newMem(t)
	c, err := virtio.NewCommon(dev, mem, tr, nil)
	if err != nil {
		t.Fatal(err)
	}
	tr.c = c
	t.Cleanup(func() { c.Close() })
	return c, tr, mem
}

func setupModern(t *testing.T, c *virtio.Common, r *virtiotest.Ring, features uint64) {
	t.Helper()
	c.SetStatus(virtio.StatusAcknowledge)
	c.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver)
	c.SetDriverFeatures(0, uint32(features))
	c.SetDriverFeatures(1, uint32(features>>32))
	c.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK)
	c.SetQueue(0, r.Config(), true, "queue")
}

func TestModernLifecycle(t *testing.T) {
	dev := &fakeDev{features: virtio.FRingEventIdx | 1}
	c, tr, mem := newCommon(t, dev)
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
	if dev.last.Transport != virtio.Transport(tr) {
		t.Fatal("the device did not get the transport")
	}
	// Latched: changing the queue size or address after DRIVER_OK is
	// ignored (the CVE-2026-5747 class).
	c.SetQueue(0, virtio.QueueConfig{Size: 2, DescAddr: 0x1234000}, true, "queue size")
	c.SetQueue(0, virtio.QueueConfig{Size: 8}, false, "queue enable")
	if cfg, enabled := c.Queue(0); cfg.Size != 8 || cfg.DescAddr != ringBase || !enabled {
		t.Fatalf("latched config changed: %+v enabled %v", cfg, enabled)
	}
	if c.IgnoredWrites() != 2 {
		t.Fatalf("ignored writes = %d", c.IgnoredWrites())
	}
	// The device reports a fault: once signalled, however often.
	dev.last.Transport.NeedsReset(errors.New("bad request"))
	dev.last.Transport.NeedsReset(errors.New("bad request"))
	if c.Status()&virtio.StatusNeedsReset == 0 || tr.config.Load() != 1 {
		t.Fatal("NEEDS_RESET not set or not signalled once")
	}
	c.SetStatus(0)
	if _, enabled := c.Queue(0); dev.resets.Load() != 1 || c.Status() != 0 || enabled || c.DriverFeatures() != 0 {
		t.Fatal("reset incomplete")
	}
}

func TestFeaturesOKRefused(t *testing.T) {
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
			c, _, mem := newCommon(t, dev)
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

func TestLegacyFeatures(t *testing.T) {
	dev := &fakeDev{features: virtio.FVersion1 | virtio.FRingIndirect | 1<<40}
	c, _, mem := newCommon(t, dev)
	c.SetLegacy(true)
	if got := c.OfferedFeatures(true); got != virtio.FRingIndirect {
		t.Fatalf("legacy features = %#x", got)
	}
	c.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver)
	c.SetDriverFeatures(0, virtio.FRingIndirect)
	c.SetDriverFeatures(1, 1<<8) // no upper word for a legacy driver
	c.SetDriverFeatures(2, 1)    // no such word: a fault
	if c.DriverFeatures() != virtio.FRingIndirect || c.Faults() != 1 {
		t.Fatalf("features %#x, faults %d", c.DriverFeatures(), c.Faults())
	}
	c.SetQueue(5, virtio.QueueConfig{Size: 8}, true, "queue PFN") // out of range: ignored and counted
	if c.Faults() != 2 {
		t.Fatal("out-of-range queue not counted")
	}
	r := virtiotest.NewRing(mem, 8, ringBase)
	c.SetQueue(0, r.Config(), true, "queue PFN")
	c.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusDriverOK)
	if dev.activated.Load() != 1 || dev.last.Features != virtio.FRingIndirect {
		t.Fatalf("legacy device not activated (%d) or features %#x", dev.activated.Load(), dev.last.Features)
	}
}
