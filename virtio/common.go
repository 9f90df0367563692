package virtio

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/govmd/govmd/internal/eventfd"
	"github.com/govmd/govmd/internal/ratelimit"
	"github.com/govmd/govmd/memory"
)

// queueState is the driver's configuration of one queue.
type queueState struct {
	max     uint16
	cfg     QueueConfig
	enabled bool
}

// Common is what every virtio transport shares for one device: feature
// negotiation, the device status state machine, the queues' configuration
// and the device's activation and reset. A transport (the PCI transport
// here) keeps its own registers (selectors, interrupt vectors, layouts) and
// calls Common with whole values; nothing in Common calls back up into the
// transport except through the Transport it hands the device at DRIVER_OK.
//
// Common is safe for concurrent use (several vCPUs may write registers at
// once). Status writes are serialized from beginning to end, activation and
// reset included. Queue configuration is latched at DRIVER_OK: later writes
// are ignored and counted until the device is reset.
type Common struct {
	dev  Device
	mem  *memory.Memory
	tr   Transport
	glog *ratelimit.Logger

	kicks []*eventfd.EventFD // stable for the device's lifetime

	// transition serializes status writes (SetStatus, reset) from
	// beginning to end, Device.Activate and Device.Reset included, so
	// that two vCPUs writing the status register at once cannot
	// interleave a reset with an activation. It is taken before mu and
	// never by the device's own goroutines.
	transition sync.Mutex

	mu             sync.Mutex
	status         uint8
	legacy         bool // the driver is using the legacy interface
	driverFeatures uint64
	queues         []queueState
	active         bool
	activeQueues   []*Queue // the queues given to the device at activation

	needsReset atomic.Bool
	faults     atomic.Uint64
	ignored    atomic.Uint64
}

// NewCommon returns the shared state for dev. tr is the transport's side
// that the device gets at activation (interrupts and NeedsReset).
func NewCommon(dev Device, mem *memory.Memory, tr Transport, log *slog.Logger) (*Common, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	sizes := dev.QueueSizes()
	c := &Common{
		dev:    dev,
		mem:    mem,
		tr:     tr,
		glog:   ratelimit.New(log, 10*time.Second, 10),
		queues: make([]queueState, len(sizes)),
	}
	for i, s := range sizes {
		if s == 0 || s > MaxQueueSize || s&(s-1) != 0 {
			c.Close()
			return nil, fmt.Errorf("virtio: queue %d max size %d is not a power of two", i, s)
		}
		c.queues[i] = queueState{max: s, cfg: QueueConfig{Size: s}}
		k, err := eventfd.New()
		if err != nil {
			c.Close()
			return nil, err
		}
		c.kicks = append(c.kicks, k)
	}
	return c, nil
}

// Close resets the device and releases the notification eventfds.
func (c *Common) Close() error {
	c.SetStatus(0)
	var errs []error
	for _, k := range c.kicks {
		errs = append(errs, k.Close())
	}
	c.kicks = nil
	return errors.Join(errs...)
}

// Device returns the device model.
func (c *Common) Device() Device { return c.dev }

// NumQueues returns the number of queues.
func (c *Common) NumQueues() int { return len(c.queues) }

// Kick returns queue q's notification eventfd (for KVM ioeventfd
// registration, or for the transport to write when a notification arrives
// as a register write), or nil if q is out of range.
func (c *Common) Kick(q int) *eventfd.EventFD {
	if q < 0 || q >= len(c.kicks) {
		return nil
	}
	return c.kicks[q]
}

// Faults returns how many driver mistakes Common has seen (and device
// errors reported through MarkNeedsReset).
func (c *Common) Faults() uint64 { return c.faults.Load() }

// IgnoredWrites returns how many configuration writes were ignored because
// the queue configuration was latched.
func (c *Common) IgnoredWrites() uint64 { return c.ignored.Load() }

func (c *Common) guestFault(format string, args ...any) {
	c.faults.Add(1)
	c.glog.Warn("virtio driver error", "device", c.dev.Type(), "err", fmt.Sprintf(format, args...))
}

// OfferedFeatures returns the device's feature bits as seen through the
// legacy or the modern interface. The legacy interface has 32 feature bits
// and never offers VERSION_1.
func (c *Common) OfferedFeatures(legacy bool) uint64 {
	f := c.dev.Features()
	if legacy {
		return f & 0xffffffff
	}
	return f | FVersion1
}

// SetLegacy records which interface the driver uses: the legacy (0.9.5)
// interface negotiates 32 feature bits without FEATURES_OK. A transport
// that offers both decides on the driver's first access.
func (c *Common) SetLegacy(legacy bool) {
	c.mu.Lock()
	c.legacy = legacy
	c.mu.Unlock()
}

// Legacy reports whether the driver uses the legacy interface.
func (c *Common) Legacy() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.legacy
}

// DriverFeatures returns the features the driver has written so far (the
// negotiated ones once FEATURES_OK, or DRIVER_OK for a legacy driver, is
// set).
func (c *Common) DriverFeatures() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.driverFeatures
}

// SetDriverFeatures writes 32 bits of the driver's features: word 0 is bits
// 0-31, word 1 bits 32-63 (ignored for a legacy driver); a non-zero write
// to any other word is a driver mistake. Writes after FEATURES_OK (or, for
// a legacy driver, after DRIVER_OK) are ignored.
func (c *Common) SetDriverFeatures(word uint32, v uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.status&(StatusFeaturesOK|StatusDriverOK) != 0 {
		c.ignored.Add(1)
		c.guestFault("driver features written after negotiation")
		return
	}
	switch word {
	case 0:
		c.driverFeatures = c.driverFeatures&^0xffffffff | uint64(v)
	case 1:
		if c.legacy {
			return
		}
		c.driverFeatures = c.driverFeatures&0xffffffff | uint64(v)<<32
	default:
		if v != 0 {
			c.guestFault("driver features select %d", word)
		}
	}
}

// Status returns the device status register.
func (c *Common) Status() uint8 {
	c.mu.Lock()
	s := c.status
	c.mu.Unlock()
	if c.needsReset.Load() {
		s |= StatusNeedsReset
	}
	return s
}

// SetStatus handles a driver write to the status register: 0 resets the
// device; FEATURES_OK is kept only if the acked features are acceptable;
// DRIVER_OK latches the queue configuration and activates the device. It
// reports whether the device now needs a reset (activation failed): the
// transport then sends a configuration-change interrupt.
func (c *Common) SetStatus(v uint8) (needsReset bool) {
	c.transition.Lock()
	defer c.transition.Unlock()
	if v == 0 {
		c.reset()
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.setStatusLocked(v)
}

// setStatusLocked is SetStatus for a non-zero v with c.mu held. It reports
// whether activation failed.
func (c *Common) setStatusLocked(v uint8) (activationFailed bool) {
	old := c.status
	if old&StatusFailed != 0 {
		return false // the driver gave up; only a reset revives the device
	}
	if v&^old&^(StatusAcknowledge|StatusDriver|StatusFeaturesOK|StatusDriverOK|StatusFailed) != 0 || old&^v != 0 {
		// Drivers only add bits; clearing one or setting NEEDS_RESET is
		// a driver mistake.
		c.guestFault("status %s -> %s", StatusString(old), StatusString(v))
		v = old | v&(StatusAcknowledge|StatusDriver|StatusFeaturesOK|StatusDriverOK|StatusFailed)
	}
	if v&StatusFeaturesOK != 0 && old&StatusFeaturesOK == 0 {
		if err := c.checkFeaturesLocked(); err != nil {
			c.guestFault("features refused: %v", err)
			v &^= StatusFeaturesOK
		}
	}
	if v&StatusDriverOK != 0 && old&StatusDriverOK == 0 {
		if err := c.activateLocked(v); err != nil {
			c.status = v
			c.guestFault("activation failed: %v", err)
			c.needsReset.Store(true)
			return true
		}
	}
	c.status = v
	return false
}

func (c *Common) checkFeaturesLocked() error {
	offered := c.OfferedFeatures(c.legacy)
	if extra := c.driverFeatures &^ offered; extra != 0 {
		return fmt.Errorf("driver acked features %#x the device did not offer", extra)
	}
	if !c.legacy && c.driverFeatures&FVersion1 == 0 {
		return errors.New("modern interface without VIRTIO_F_VERSION_1")
	}
	if v, ok := c.dev.(FeatureValidator); ok {
		return v.ValidateFeatures(c.driverFeatures)
	}
	return nil
}

func (c *Common) activateLocked(v uint8) error {
	if !c.legacy && v&StatusFeaturesOK == 0 {
		return errors.New("DRIVER_OK without FEATURES_OK")
	}
	if c.legacy {
		// Legacy drivers have no FEATURES_OK step.
		if err := c.checkFeaturesLocked(); err != nil {
			return err
		}
	}
	if c.active {
		return nil
	}
	qs := make([]*Queue, len(c.queues))
	for i, s := range c.queues {
		if !s.enabled {
			continue
		}
		q, err := NewQueue(c.mem, s.cfg, c.driverFeatures)
		if err != nil {
			return fmt.Errorf("queue %d: %w", i, err)
		}
		qs[i] = q
	}
	// Drain notifications that arrived before activation: the device
	// looks at every queue when it starts.
	for _, k := range c.kicks {
		k.TryRead()
	}
	if err := c.dev.Activate(Activation{
		Features:  c.driverFeatures,
		Mem:       c.mem,
		Queues:    qs,
		Kicks:     c.kicks,
		Transport: c.tr,
	}); err != nil {
		return err
	}
	c.active = true
	c.activeQueues = qs
	return nil
}

// MarkNeedsReset records a device error (a transport's NeedsReset): the
// status shows DEVICE_NEEDS_RESET until the driver resets the device. It
// reports whether the bit was newly set, in which case the transport sends
// a configuration-change interrupt.
func (c *Common) MarkNeedsReset() (first bool) {
	c.faults.Add(1)
	return !c.needsReset.Swap(true)
}

// RingStates returns, for each queue of an active device, what its rings
// in guest memory say (nil entries for disabled queues); nil when the
// device is not active. For diagnostics: it reads guest memory only.
func (c *Common) RingStates() []*RingState {
	c.mu.Lock()
	qs := c.activeQueues
	c.mu.Unlock()
	if qs == nil {
		return nil
	}
	out := make([]*RingState, len(qs))
	for i, q := range qs {
		if q == nil {
			continue
		}
		if r, err := q.RingState(); err == nil {
			r.LastInterrupt, r.Interrupted = q.LastInterrupt()
			out[i] = &r
		}
	}
	return out
}

// reset returns the device to its initial state; c.transition must be
// held, so that no activation can happen between reading c.active and
// clearing it.
func (c *Common) reset() {
	c.mu.Lock()
	active := c.active
	c.mu.Unlock()
	if active {
		// Not under c.mu: the device's goroutines may call into the
		// transport (NeedsReset, Notify) while they stop.
		c.dev.Reset()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.active = false
	c.activeQueues = nil
	c.status = 0
	c.driverFeatures = 0
	for i := range c.queues {
		c.queues[i] = queueState{max: c.queues[i].max, cfg: QueueConfig{Size: c.queues[i].max}}
	}
	for _, k := range c.kicks {
		k.TryRead()
	}
	c.needsReset.Store(false)
}

// Active reports whether the device has been activated (DRIVER_OK) and not
// reset since.
func (c *Common) Active() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.active
}

// QueueMax returns queue q's maximum size, 0 if there is no such queue.
func (c *Common) QueueMax(q int) uint16 {
	if q < 0 || q >= len(c.queues) {
		return 0
	}
	return c.queues[q].max // immutable
}

// Queue returns queue q's configuration and whether it is enabled (the
// zero values if there is no such queue).
func (c *Common) Queue(q int) (cfg QueueConfig, enabled bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if q < 0 || q >= len(c.queues) {
		return QueueConfig{}, false
	}
	s := c.queues[q]
	return s.cfg, s.enabled
}

// SetQueue configures queue q. what names the register written, for the
// fault log. A write after DRIVER_OK is ignored and counted; a size that is
// zero, larger than the maximum or not a power of two is refused; a queue
// out of range is a driver mistake.
func (c *Common) SetQueue(q int, cfg QueueConfig, enabled bool, what string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if q < 0 || q >= len(c.queues) {
		c.guestFault("%s of queue %d, which does not exist", what, q)
		return
	}
	if c.status&StatusDriverOK != 0 || c.active {
		c.ignored.Add(1)
		c.guestFault("%s written after DRIVER_OK (ignored)", what)
		return
	}
	s := &c.queues[q]
	if n := cfg.Size; n == 0 || n > s.max || n&(n-1) != 0 {
		c.guestFault("queue %d size %d invalid (max %d)", q, n, s.max)
		return
	}
	s.cfg, s.enabled = cfg, enabled
}
