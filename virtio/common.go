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

// Interrupter delivers interrupts for a transport. The PCI transport
// implements it with MSI-X vectors or INTx and the ISR register.
type Interrupter interface {
	QueueInterrupt(q int)
	ConfigInterrupt()
}

// NoVector is the MSI-X "no vector" value.
const NoVector = 0xffff

// queueState is the driver-visible configuration of one queue.
type queueState struct {
	max     uint16
	cfg     QueueConfig
	enabled bool
	vector  uint16
}

// Common is the transport-independent control state of one virtio device:
// feature negotiation, the device status state machine and queue
// configuration. A transport maps its registers onto Common's methods. Both
// the legacy and the modern register layouts can drive the same Common
// (a transitional device).
//
// Common is safe for concurrent use. Queue configuration is latched when the
// driver sets DRIVER_OK: later writes to queue size, addresses or enable are
// ignored and counted until the device is reset.
type Common struct {
	dev  Device
	mem  *memory.Memory
	irq  Interrupter
	log  *ratelimit.Logger
	slog *slog.Logger

	kicks   []*eventfd.EventFD // stable for the device's lifetime
	notices []atomic.Uint64    // used-buffer notifications sent, per queue

	// transition serializes status writes (SetStatus, reset) from
	// beginning to end, Device.Activate and Device.Reset included, so
	// that two vCPUs writing the status register at once cannot
	// interleave a reset with an activation. It is taken before mu and
	// never by the device's own goroutines.
	transition sync.Mutex

	mu             sync.Mutex
	status         uint8
	legacy         bool // the driver is using the legacy interface
	devFeatureSel  uint32
	drvFeatureSel  uint32
	driverFeatures uint64
	queueSel       uint16
	queues         []queueState
	active         bool
	activeQueues   []*Queue // the queues given to the device at activation
	configVector   uint16

	generation atomic.Uint32

	needsReset atomic.Bool
	faults     atomic.Uint64
	ignored    atomic.Uint64
}

// NewCommon returns the control state for dev. irq is the transport's
// interrupt delivery.
func NewCommon(dev Device, mem *memory.Memory, irq Interrupter, log *slog.Logger) (*Common, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	sizes := dev.QueueSizes()
	c := &Common{
		dev:          dev,
		mem:          mem,
		irq:          irq,
		slog:         log,
		log:          ratelimit.New(log, 10*time.Second, 10),
		queues:       make([]queueState, len(sizes)),
		notices:      make([]atomic.Uint64, len(sizes)),
		configVector: NoVector,
	}
	for i, s := range sizes {
		if s == 0 || s > MaxQueueSize || s&(s-1) != 0 {
			c.Close()
			return nil, fmt.Errorf("virtio: queue %d max size %d is not a power of two", i, s)
		}
		c.queues[i] = queueState{max: s, cfg: QueueConfig{Size: s}, vector: NoVector}
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
// registration), or nil if q is out of range.
func (c *Common) Kick(q int) *eventfd.EventFD {
	if q < 0 || q >= len(c.kicks) {
		return nil
	}
	return c.kicks[q]
}

// Notify handles a driver notification for queue q that arrived through a
// register write instead of an ioeventfd.
func (c *Common) Notify(q int) {
	if k := c.Kick(q); k != nil {
		_ = k.Write()
		return
	}
	c.guestFault("notify of queue %d out of range", q)
}

// Faults returns how many driver mistakes the transport has seen.
func (c *Common) Faults() uint64 { return c.faults.Load() }

// IgnoredWrites returns how many configuration writes were ignored because
// the queue configuration was latched.
func (c *Common) IgnoredWrites() uint64 { return c.ignored.Load() }

func (c *Common) guestFault(format string, args ...any) {
	c.faults.Add(1)
	c.log.Warn("virtio driver error", "device", c.dev.Type(), "err", fmt.Sprintf(format, args...))
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

// SetLegacy records which interface the driver uses. A transitional
// transport calls it on the first access that identifies the interface.
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

// DeviceFeatureSelect selects which 32 feature bits DeviceFeatures returns.
func (c *Common) DeviceFeatureSelect(sel uint32) {
	c.mu.Lock()
	c.devFeatureSel = sel
	c.mu.Unlock()
}

// DeviceFeatureSel returns the selector last written.
func (c *Common) DeviceFeatureSel() uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.devFeatureSel
}

// DeviceFeatures returns the selected 32 bits of the offered features.
func (c *Common) DeviceFeatures() uint32 {
	c.mu.Lock()
	sel, legacy := c.devFeatureSel, c.legacy
	c.mu.Unlock()
	if sel > 1 {
		return 0
	}
	return uint32(c.OfferedFeatures(legacy) >> (32 * sel))
}

// DriverFeatureSelect selects which 32 bits SetDriverFeatures writes.
func (c *Common) DriverFeatureSelect(sel uint32) {
	c.mu.Lock()
	c.drvFeatureSel = sel
	c.mu.Unlock()
}

// DriverFeatureSel returns the selector last written.
func (c *Common) DriverFeatureSel() uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.drvFeatureSel
}

// DriverFeatures returns the selected 32 bits of the driver's features.
func (c *Common) DriverFeatures() uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.drvFeatureSel > 1 {
		return 0
	}
	return uint32(c.driverFeatures >> (32 * c.drvFeatureSel))
}

// SetDriverFeatures writes the selected 32 bits of the driver's features.
// Writes after FEATURES_OK (or, for a legacy driver, after DRIVER_OK) are
// ignored.
func (c *Common) SetDriverFeatures(v uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.status&(StatusFeaturesOK|StatusDriverOK) != 0 {
		c.ignored.Add(1)
		c.guestFault("driver features written after negotiation")
		return
	}
	switch c.drvFeatureSel {
	case 0:
		c.driverFeatures = c.driverFeatures&^0xffffffff | uint64(v)
	case 1:
		if c.legacy {
			return
		}
		c.driverFeatures = c.driverFeatures&0xffffffff | uint64(v)<<32
	default:
		if v != 0 {
			c.guestFault("driver features select %d", c.drvFeatureSel)
		}
	}
}

// AckedFeatures returns the driver's features.
func (c *Common) AckedFeatures() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.driverFeatures
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

// ConfigGeneration returns the configuration generation counter.
func (c *Common) ConfigGeneration() uint8 { return uint8(c.generation.Load()) }

// SetStatus handles a driver write to the status register: 0 resets the
// device; FEATURES_OK is kept only if the acked features are acceptable;
// DRIVER_OK latches the queue configuration and activates the device.
func (c *Common) SetStatus(v uint8) {
	c.transition.Lock()
	defer c.transition.Unlock()
	if v == 0 {
		c.reset()
		return
	}
	c.mu.Lock()
	failed := c.setStatusLocked(v)
	c.mu.Unlock()
	if failed {
		// Not under c.mu: the transport's interrupt path reads the
		// configuration vector (ConfigVector).
		c.irq.ConfigInterrupt()
	}
}

// setStatusLocked is SetStatus for a non-zero v with c.mu held. It reports
// whether activation failed, in which case the caller sends the
// configuration interrupt for DEVICE_NEEDS_RESET once c.mu is released.
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
		Transport: (*commonTransport)(c),
	}); err != nil {
		return err
	}
	c.active = true
	c.activeQueues = qs
	return nil
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
		// Not under c.mu: the device's goroutines may call NeedsReset
		// (which reads the configuration vector) while they stop.
		c.dev.Reset()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.active = false
	c.activeQueues = nil
	c.status = 0
	c.devFeatureSel, c.drvFeatureSel = 0, 0
	c.driverFeatures = 0
	c.queueSel = 0
	c.configVector = NoVector
	for i := range c.queues {
		c.queues[i] = queueState{max: c.queues[i].max, cfg: QueueConfig{Size: c.queues[i].max}, vector: NoVector}
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

// SelectQueue sets the queue selector.
func (c *Common) SelectQueue(q uint16) {
	c.mu.Lock()
	c.queueSel = q
	c.mu.Unlock()
}

// QueueSelect returns the queue selector.
func (c *Common) QueueSelect() uint16 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.queueSel
}

// selected returns the selected queue, or nil for an out-of-range selector.
// c.mu must be held.
func (c *Common) selected() *queueState {
	if int(c.queueSel) >= len(c.queues) {
		return nil
	}
	return &c.queues[c.queueSel]
}

// latched reports whether queue configuration may no longer change, and
// counts the ignored write. c.mu must be held.
func (c *Common) latched(what string) bool {
	if c.status&StatusDriverOK != 0 || c.active {
		c.ignored.Add(1)
		c.guestFault("%s written after DRIVER_OK (ignored)", what)
		return true
	}
	return false
}

// QueueMaxSize returns the selected queue's maximum size (0 if the selector
// is out of range, which tells the driver the queue does not exist).
func (c *Common) QueueMaxSize() uint16 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if q := c.selected(); q != nil {
		return q.max
	}
	return 0
}

// QueueSize returns the selected queue's configured size.
func (c *Common) QueueSize() uint16 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if q := c.selected(); q != nil {
		return q.cfg.Size
	}
	return 0
}

// SetQueueSize sets the selected queue's size. Sizes that are zero, larger
// than the maximum or not a power of two are refused.
func (c *Common) SetQueueSize(n uint16) {
	c.mu.Lock()
	defer c.mu.Unlock()
	q := c.selected()
	if q == nil {
		c.guestFault("queue size for out-of-range queue %d", c.queueSel)
		return
	}
	if c.latched("queue size") {
		return
	}
	if n == 0 || n > q.max || n&(n-1) != 0 {
		c.guestFault("queue %d size %d invalid (max %d)", c.queueSel, n, q.max)
		return
	}
	q.cfg.Size = n
}

// QueueAddrKind names one of the three ring areas.
type QueueAddrKind int

// Ring areas.
const (
	QueueDesc QueueAddrKind = iota
	QueueAvail
	QueueUsed
)

// QueueAddr returns one of the selected queue's ring addresses.
func (c *Common) QueueAddr(k QueueAddrKind) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	q := c.selected()
	if q == nil {
		return 0
	}
	switch k {
	case QueueDesc:
		return q.cfg.DescAddr
	case QueueAvail:
		return q.cfg.AvailAddr
	default:
		return q.cfg.UsedAddr
	}
}

// SetQueueAddr sets 32 bits (hi selects the upper half) of one of the
// selected queue's ring addresses.
func (c *Common) SetQueueAddr(k QueueAddrKind, hi bool, v uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	q := c.selected()
	if q == nil {
		c.guestFault("queue address for out-of-range queue %d", c.queueSel)
		return
	}
	if c.latched("queue address") {
		return
	}
	p := &q.cfg.UsedAddr
	switch k {
	case QueueDesc:
		p = &q.cfg.DescAddr
	case QueueAvail:
		p = &q.cfg.AvailAddr
	}
	if hi {
		*p = *p&0xffffffff | uint64(v)<<32
	} else {
		*p = *p&^0xffffffff | uint64(v)
	}
}

// QueueEnabled reports whether the selected queue is enabled.
func (c *Common) QueueEnabled() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	q := c.selected()
	return q != nil && q.enabled
}

// SetQueueEnabled enables the selected queue (modern queue_enable). Only
// writing 1 is defined; 0 is ignored.
func (c *Common) SetQueueEnabled(on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	q := c.selected()
	if q == nil {
		c.guestFault("queue enable for out-of-range queue %d", c.queueSel)
		return
	}
	if c.latched("queue enable") {
		return
	}
	if on {
		q.enabled = true
	}
}

// LegacyPageSize is the legacy interface's queue address unit and ring
// alignment.
const LegacyPageSize = 4096

// QueuePFN returns the selected queue's legacy page frame number.
func (c *Common) QueuePFN() uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	q := c.selected()
	if q == nil || !q.enabled {
		return 0
	}
	return uint32(q.cfg.DescAddr / LegacyPageSize)
}

// SetQueuePFN configures the selected queue the legacy way: the rings are
// laid out contiguously from pfn*4096 with the queue at its maximum size. A
// zero pfn disables the queue.
func (c *Common) SetQueuePFN(pfn uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	q := c.selected()
	if q == nil {
		c.guestFault("queue PFN for out-of-range queue %d", c.queueSel)
		return
	}
	if c.latched("queue PFN") {
		return
	}
	if pfn == 0 {
		q.enabled = false
		q.cfg = QueueConfig{Size: q.max}
		return
	}
	n := uint64(q.max)
	desc := uint64(pfn) * LegacyPageSize
	avail := desc + descSize*n
	used := (avail + 6 + 2*n + LegacyPageSize - 1) &^ (LegacyPageSize - 1)
	q.cfg = QueueConfig{Size: q.max, DescAddr: desc, AvailAddr: avail, UsedAddr: used}
	q.enabled = true
}

// QueueVector returns the selected queue's MSI-X vector.
func (c *Common) QueueVector() uint16 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if q := c.selected(); q != nil {
		return q.vector
	}
	return NoVector
}

// SetQueueVector sets the selected queue's MSI-X vector. The transport
// checks the vector against its table first and passes NoVector for one
// out of range.
func (c *Common) SetQueueVector(v uint16) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if q := c.selected(); q != nil {
		q.vector = v
	} else {
		c.guestFault("queue vector for out-of-range queue %d", c.queueSel)
	}
}

// Vector returns queue q's MSI-X vector.
func (c *Common) Vector(q int) uint16 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if q < 0 || q >= len(c.queues) {
		return NoVector
	}
	return c.queues[q].vector
}

// ConfigVector returns the configuration-change MSI-X vector.
func (c *Common) ConfigVector() uint16 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.configVector
}

// SetConfigVector sets the configuration-change MSI-X vector.
func (c *Common) SetConfigVector(v uint16) {
	c.mu.Lock()
	c.configVector = v
	c.mu.Unlock()
}

// commonTransport is Common as the device sees it.
type commonTransport Common

func (t *commonTransport) Notify(q int) {
	if q >= 0 && q < len(t.notices) {
		t.notices[q].Add(1)
	}
	t.irq.QueueInterrupt(q)
}

// Notifications returns how many used-buffer notifications the device sent
// for each queue since it was created.
func (c *Common) Notifications() []uint64 {
	out := make([]uint64, len(c.notices))
	for i := range c.notices {
		out[i] = c.notices[i].Load()
	}
	return out
}

func (t *commonTransport) ConfigChanged() {
	c := (*Common)(t)
	c.generation.Add(1)
	c.irq.ConfigInterrupt()
}

func (t *commonTransport) NeedsReset(reason error) {
	c := (*Common)(t)
	c.faults.Add(1)
	c.log.Warn("virtio device needs reset", "device", c.dev.Type(), "err", reason)
	if !c.needsReset.Swap(true) {
		c.irq.ConfigInterrupt()
	}
}
