// Package harness is an in-process virtio-net guest for tests and
// benchmarks, in the spirit of QEMU's qtest/libqos: a Go driver that plays
// the guest against a real device model.
//
// It has three layers:
//
//   - Driver, the control plane (reset, feature negotiation, queue setup,
//     DRIVER_OK, notifications, configuration reads). CommonDriver
//     implements it on virtio.Common's register-level methods; a
//     PCI-register implementation can be added without touching the rest.
//   - NIC, the data plane of a virtio-net driver: it negotiates features
//     the way a given guest driver does, lays out rings in guest memory,
//     posts receive buffers and transmit chains, reassembles mergeable
//     frames and checks every received header against what it negotiated.
//   - NetEnv and Bridge, which give that driver a real Linux network stack:
//     the device's backend is tap A in namespace NA (the host side), and
//     the bridge moves frames between the NIC's queues and tap B in
//     namespace NB (the guest side), whose offloads follow the transmit
//     offloads the driver acked, so NB's stack produces the same headers a
//     Linux guest with those features would.
package harness

import (
	"errors"
	"fmt"
	"sync"

	"github.com/govmd/govmd/virtio"
	"github.com/govmd/govmd/virtio/virtiotest"
)

// Driver is the control plane of one virtio device as a guest driver sees
// it: the register accesses of the initialization sequence (virtio 1.x
// section 3.1) and of a reset, without the data path.
//
// An implementation drives either the modern (1.x) or the legacy (0.9.5)
// interface of the device, as Legacy reports. A new implementation (for
// example over the real PCI transport registers) must:
//   - Reset: write 0 to device_status; return once the device reads 0.
//   - DeviceFeatures: read all 64 (legacy: 32) offered feature bits.
//   - Negotiate: set ACKNOWLEDGE, then DRIVER, write exactly the given
//     driver features, and (modern) set FEATURES_OK and read it back;
//     report false if the device cleared it. Legacy has no FEATURES_OK:
//     return true, the device checks the features at DRIVER_OK.
//   - QueueMax and SetupQueue: select the queue; modern: program size,
//     the three ring addresses and queue_enable; legacy: the queue must
//     have its maximum size and is given as the page frame number of the
//     ring's descriptor table (virtiotest.NewRing lays out both kinds).
//   - DriverOK: set DRIVER_OK and return an error if the device then
//     reports DEVICE_NEEDS_RESET or FAILED.
//   - Notify: notify queue q (queue_notify register or notification
//     area); ReadConfig: read device-specific configuration bytes.
//
// Methods are called from one goroutine at a time, except Notify and
// Status, which the harness calls concurrently from its data-path
// goroutines.
type Driver interface {
	Legacy() bool
	Reset()
	DeviceFeatures() uint64
	Negotiate(features uint64) (accepted bool, err error)
	QueueMax(q int) uint16
	SetupQueue(q int, r *virtiotest.Ring) error
	DriverOK() error
	Notify(q int)
	ReadConfig(off int, p []byte)
	Status() uint8
}

// CommonDriver implements Driver directly on virtio.Common, the way a
// transport maps its registers onto it.
type CommonDriver struct {
	C      *virtio.Common
	legacy bool
}

var _ Driver = (*CommonDriver)(nil)

// NewCommonDriver returns a driver for c using the legacy or the modern
// interface.
func NewCommonDriver(c *virtio.Common, legacy bool) *CommonDriver {
	return &CommonDriver{C: c, legacy: legacy}
}

// Legacy reports whether the driver uses the legacy interface.
func (d *CommonDriver) Legacy() bool { return d.legacy }

// Reset writes 0 to the status register.
func (d *CommonDriver) Reset() {
	d.C.SetStatus(0)
	d.C.SetLegacy(d.legacy)
}

// DeviceFeatures reads the offered features through the feature window.
func (d *CommonDriver) DeviceFeatures() uint64 {
	d.C.SetLegacy(d.legacy)
	d.C.DeviceFeatureSelect(0)
	f := uint64(d.C.DeviceFeatures())
	if !d.legacy {
		d.C.DeviceFeatureSelect(1)
		f |= uint64(d.C.DeviceFeatures()) << 32
	}
	return f
}

// Negotiate runs ACKNOWLEDGE, DRIVER, the feature write and (modern)
// FEATURES_OK.
func (d *CommonDriver) Negotiate(features uint64) (bool, error) {
	c := d.C
	c.SetLegacy(d.legacy)
	c.SetStatus(virtio.StatusAcknowledge)
	c.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver)
	c.DriverFeatureSelect(0)
	c.SetDriverFeatures(uint32(features))
	if d.legacy {
		if features>>32 != 0 {
			return false, fmt.Errorf("legacy driver cannot ack features %#x", features)
		}
		return true, nil
	}
	c.DriverFeatureSelect(1)
	c.SetDriverFeatures(uint32(features >> 32))
	c.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK)
	return c.Status()&virtio.StatusFeaturesOK != 0, nil
}

// QueueMax returns queue q's maximum size.
func (d *CommonDriver) QueueMax(q int) uint16 {
	d.C.SelectQueue(uint16(q))
	return d.C.QueueMaxSize()
}

// SetupQueue programs queue q with ring r and enables it.
func (d *CommonDriver) SetupQueue(q int, r *virtiotest.Ring) error {
	c := d.C
	c.SelectQueue(uint16(q))
	maxSize := c.QueueMaxSize()
	if maxSize == 0 {
		return fmt.Errorf("queue %d does not exist", q)
	}
	if d.legacy {
		if r.Size != maxSize {
			return fmt.Errorf("legacy queue %d must have its maximum size %d, not %d", q, maxSize, r.Size)
		}
		if r.Desc%virtio.LegacyPageSize != 0 {
			return fmt.Errorf("legacy queue %d at %#x is not page aligned", q, r.Desc)
		}
		c.SetQueuePFN(uint32(r.Desc / virtio.LegacyPageSize))
		return nil
	}
	c.SetQueueSize(r.Size)
	cfg := r.Config()
	for _, a := range []struct {
		k virtio.QueueAddrKind
		v uint64
	}{{virtio.QueueDesc, cfg.DescAddr}, {virtio.QueueAvail, cfg.AvailAddr}, {virtio.QueueUsed, cfg.UsedAddr}} {
		c.SetQueueAddr(a.k, false, uint32(a.v))
		c.SetQueueAddr(a.k, true, uint32(a.v>>32))
	}
	c.SetQueueEnabled(true)
	if c.QueueSize() != r.Size {
		return fmt.Errorf("queue %d: device refused size %d", q, r.Size)
	}
	return nil
}

// ErrNeedsReset is returned by DriverOK when the device refused to start.
var ErrNeedsReset = errors.New("device reports DEVICE_NEEDS_RESET or FAILED")

// DriverOK sets DRIVER_OK.
func (d *CommonDriver) DriverOK() error {
	c := d.C
	s := c.Status()
	c.SetStatus(s | virtio.StatusDriverOK)
	if s := c.Status(); s&(virtio.StatusNeedsReset|virtio.StatusFailed) != 0 || s&virtio.StatusDriverOK == 0 {
		return fmt.Errorf("%w (status %s)", ErrNeedsReset, virtio.StatusString(s))
	}
	return nil
}

// Notify notifies queue q through the register path.
func (d *CommonDriver) Notify(q int) { d.C.Notify(q) }

// ReadConfig reads device-specific configuration.
func (d *CommonDriver) ReadConfig(off int, p []byte) { d.C.Device().ReadConfig(uint64(off), p) }

// Status reads the status register.
func (d *CommonDriver) Status() uint8 { return d.C.Status() }

// IRQ is a fake interrupt controller: it implements virtio.Interrupter,
// counts interrupts per queue and wakes waiters.
type IRQ struct {
	mu     sync.Mutex
	counts []uint64
	config uint64
	wake   []chan struct{}
	cfgCh  chan struct{}
}

var _ virtio.Interrupter = (*IRQ)(nil)

// NewIRQ returns an interrupt controller for nq queues.
func NewIRQ(nq int) *IRQ {
	i := &IRQ{counts: make([]uint64, nq), wake: make([]chan struct{}, nq), cfgCh: make(chan struct{}, 1)}
	for q := range i.wake {
		i.wake[q] = make(chan struct{}, 1)
	}
	return i
}

// QueueInterrupt records an interrupt for queue q.
func (i *IRQ) QueueInterrupt(q int) {
	if q < 0 || q >= len(i.wake) {
		return
	}
	i.mu.Lock()
	i.counts[q]++
	i.mu.Unlock()
	select {
	case i.wake[q] <- struct{}{}:
	default:
	}
}

// ConfigInterrupt records a configuration interrupt.
func (i *IRQ) ConfigInterrupt() {
	i.mu.Lock()
	i.config++
	i.mu.Unlock()
	select {
	case i.cfgCh <- struct{}{}:
	default:
	}
}

// Wait returns a channel that receives after an interrupt for queue q
// (interrupts that arrive while nobody waits are remembered, one deep).
func (i *IRQ) Wait(q int) <-chan struct{} { return i.wake[q] }

// WaitConfig is Wait for configuration interrupts.
func (i *IRQ) WaitConfig() <-chan struct{} { return i.cfgCh }

// Count returns how many interrupts queue q received.
func (i *IRQ) Count(q int) uint64 {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.counts[q]
}

// ConfigCount returns how many configuration interrupts were sent.
func (i *IRQ) ConfigCount() uint64 {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.config
}
