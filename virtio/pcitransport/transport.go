// Package pcitransport presents a virtio.Device to the guest as a PCI
// function: the legacy (0.9.5) register block in an I/O BAR, the modern
// (1.x) vendor capabilities in a memory BAR, or both at once (a transitional
// device, which a legacy or a modern driver can use).
//
// The transport keeps its own registers (feature and queue selectors, the
// MSI-X vectors, the ISR, the configuration generation) and hands
// virtio.Common, which owns feature negotiation, the status state machine
// and queue configuration (latched at DRIVER_OK), whole values. It is the
// device's virtio.Transport: used-buffer notifications and configuration
// changes leave through MSI-X, one vector per queue plus one for
// configuration changes, or through INTx with the ISR register; the VMM
// implements both with KVM irqfds (see MSIXSink and INTxLine). Queue
// notifications arrive through KVM ioeventfds registered at the notification
// addresses (see Doorbells), or through a register write that reaches the
// transport when no ioeventfd is registered.
//
// BAR layout:
//
//	BAR0  I/O, legacy registers (legacy and transitional only)
//	BAR1  32-bit memory, MSI-X table (offset 0) and PBA
//	BAR4  64-bit memory, modern regions (modern and transitional only):
//	      0x0000 common configuration, 0x1000 ISR, 0x2000 device
//	      configuration, 0x3000 notifications (4 bytes per queue)
//
// Every register access is untrusted: unknown offsets, odd sizes and
// out-of-range selectors are counted as driver faults and ignored, never a
// panic.
package pcitransport

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
	"github.com/govmd/govmd/pci"
	"github.com/govmd/govmd/virtio"
)

// NoVector is the MSI-X "no vector" value of the vector registers.
const NoVector = 0xffff

// Mode selects which interfaces the function presents.
type Mode int

// Transport modes.
const (
	// Transitional presents both interfaces with the transitional device
	// ID (0x1000 + type - 1); the driver picks one.
	Transitional Mode = iota
	// Modern presents only the 1.x interface (device ID 0x1040 + type).
	Modern
	// Legacy presents only the 0.9.5 interface.
	Legacy
)

func (m Mode) String() string {
	switch m {
	case Transitional:
		return "transitional"
	case Modern:
		return "modern"
	case Legacy:
		return "legacy"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// ParseMode parses a mode name as used on the command line.
func ParseMode(s string) (Mode, error) {
	switch s {
	case "", "transitional":
		return Transitional, nil
	case "modern":
		return Modern, nil
	case "legacy":
		return Legacy, nil
	}
	return 0, fmt.Errorf("unknown virtio transport %q (want transitional, modern or legacy)", s)
}

// MarshalText implements encoding.TextMarshaler.
func (m Mode) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (m *Mode) UnmarshalText(b []byte) error {
	v, err := ParseMode(string(b))
	if err == nil {
		*m = v
	}
	return err
}

func (m Mode) hasLegacy() bool { return m == Transitional || m == Legacy }
func (m Mode) hasModern() bool { return m == Transitional || m == Modern }

// BAR indices.
const (
	BARLegacy = 0
	BARMSIX   = 1
	BARModern = 4
)

// Offsets of the regions inside the modern BAR.
const (
	modernCommon  = 0x0000
	modernISR     = 0x1000
	modernDevice  = 0x2000
	modernNotify  = 0x3000
	modernRegion  = 0x1000
	modernBARSize = 0x4000
	// NotifyMultiplier is notify_off_multiplier: queue q's doorbell is at
	// modernNotify + q*NotifyMultiplier.
	NotifyMultiplier = 4
)

// PCI identity.
const (
	VendorID = 0x1af4
	// transitionalBase + type - 1 is a transitional (or legacy) device ID;
	// modernBase + type a modern one.
	transitionalBase = 0x1000
	modernBase       = 0x1040
)

// ISR bits.
const (
	isrQueue  = 1
	isrConfig = 2
)

// MSIXSink delivers the function's MSI-X messages. The VMM implements it
// with one KVM irqfd per vector whose GSI route follows the table, so
// Deliver is a single eventfd write. Both methods are called with the MSI-X
// table lock held and must not block or call back into the transport.
type MSIXSink interface {
	// Deliver sends vector's message (addr, data).
	Deliver(vector int, addr uint64, data uint32)
	// Route tells the sink what vector would deliver now; masked is true
	// when MSI-X is disabled or the vector is masked.
	Route(vector int, addr uint64, data uint32, masked bool)
}

// VectorFDs is implemented by MSIX sinks whose vectors are eventfds (KVM
// irqfds): VectorFD installs vector's current message (addr, data) as its
// route and returns its eventfd, for Transport.InterruptFD. While the
// guest masks the vector, the sink must keep writes to that eventfd from
// interrupting (a KVM irqfd deassigned, then assigned again at unmask,
// which delivers what arrived meanwhile).
type VectorFDs interface {
	VectorFD(vector int, addr uint64, data uint32) (fd int, ok bool)
}

// INTxLine is the function's level-triggered INTx pin. Raise asserts it
// until the guest acknowledges the interrupt (for KVM: an irqfd with a
// resample eventfd); the VMM then calls Transport.Resample, which raises it
// again while the ISR still has bits set.
type INTxLine interface {
	Raise()
}

// Doorbells registers notification addresses with the hypervisor so that
// a driver's notification becomes an eventfd signal without a VM exit to
// userspace (KVM ioeventfd). io selects port I/O (else MMIO); size is the
// access width; datamatch, if not nil, restricts the match to that value.
type Doorbells interface {
	AddDoorbell(io bool, addr uint64, size int, datamatch *uint64, fd *eventfd.EventFD) error
	RemoveDoorbell(io bool, addr uint64, size int, datamatch *uint64, fd *eventfd.EventFD) error
}

// Config describes one virtio PCI function.
type Config struct {
	Mode   Mode
	Device virtio.Device
	Mem    *memory.Memory
	// MSIX and INTx are the interrupt paths; INTx may be nil (no INTx pin).
	// MSIX must not be nil.
	MSIX MSIXSink
	INTx INTxLine
	// Doorbells may be nil: notifications then arrive as register writes.
	Doorbells Doorbells
	Log       *slog.Logger
}

// Transport is one virtio PCI function. It implements pci.Device,
// pci.BARObserver and, for its device, virtio.Transport.
type Transport struct {
	mode   Mode
	dev    virtio.Device
	common *virtio.Common
	cs     *pci.ConfigSpace
	msix   *pci.MSIX
	intx   INTxLine
	vecFDs VectorFDs // the MSIX sink, if it has eventfds
	bells  Doorbells
	glog   *ratelimit.Logger // driver mistakes and what a driver can repeat at will
	log    *slog.Logger

	legacySize uint64 // size of the legacy I/O BAR
	nq         int

	regs       regs
	isr        atomic.Uint32
	generation atomic.Uint32   // configuration generation
	notices    []atomic.Uint64 // used-buffer notifications sent, per queue
	faults     atomic.Uint64

	bellMu     sync.Mutex
	registered []bell // registered doorbells
}

// regs holds the transport's own registers: the feature and queue
// selectors and the MSI-X vectors. They reset with the device.
type regs struct {
	mu            sync.Mutex
	devFeatureSel uint32
	drvFeatureSel uint32
	queueSel      uint16
	configVector  uint16
	queueVectors  []uint16
}

func (r *regs) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.devFeatureSel, r.drvFeatureSel, r.queueSel = 0, 0, 0
	r.configVector = NoVector
	for i := range r.queueVectors {
		r.queueVectors[i] = NoVector
	}
}

type bell struct {
	bar       int
	io        bool
	addr      uint64
	size      int
	datamatch *uint64
	fd        *eventfd.EventFD
}

// New builds the PCI function for cfg.Device.
func New(cfg Config) (*Transport, error) {
	if cfg.Device == nil || cfg.Mem == nil || cfg.MSIX == nil {
		return nil, errors.New("pcitransport: Config needs Device, Mem and MSIX")
	}
	if cfg.Mode != Transitional && cfg.Mode != Modern && cfg.Mode != Legacy {
		return nil, fmt.Errorf("pcitransport: unknown mode %d", int(cfg.Mode))
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := &Transport{
		mode:  cfg.Mode,
		dev:   cfg.Device,
		intx:  cfg.INTx,
		bells: cfg.Doorbells,
		log:   log,
		glog:  ratelimit.New(log, 10*time.Second, 10),
		nq:    len(cfg.Device.QueueSizes()),
	}
	if t.nq == 0 || t.nq >= NoVector {
		return nil, fmt.Errorf("pcitransport: device has %d queues", t.nq)
	}
	t.notices = make([]atomic.Uint64, t.nq)
	t.regs.queueVectors = make([]uint16, t.nq)
	t.regs.reset()
	common, err := virtio.NewCommon(cfg.Device, cfg.Mem, t, log)
	if err != nil {
		return nil, err
	}
	t.common = common
	t.vecFDs, _ = cfg.MSIX.(VectorFDs)
	if err := t.buildConfig(cfg.MSIX); err != nil {
		common.Close()
		return nil, err
	}
	if cfg.Mode == Legacy {
		t.common.SetLegacy(true)
	}
	return t, nil
}

func (t *Transport) buildConfig(sink MSIXSink) error {
	typ := uint16(t.dev.Type())
	id := pci.Identity{
		Vendor:          VendorID,
		Device:          transitionalBase + typ - 1,
		SubsystemVendor: VendorID,
		Subsystem:       typ,
	}
	if t.mode == Modern {
		id.Device = modernBase + typ
		id.Revision = 1
	}
	switch t.dev.Type() {
	case virtio.DeviceNet:
		id.Class, id.Subclass = 0x02, 0x00 // network, ethernet
	case virtio.DeviceBlock:
		id.Class, id.Subclass = 0x01, 0x00 // mass storage, SCSI (as QEMU)
	default:
		id.Class, id.Subclass = 0xff, 0x00
	}
	cs := pci.NewConfigSpace(id)
	t.cs = cs

	if t.mode.hasLegacy() {
		n := uint64(legacyConfigMSIX + t.dev.ConfigSize())
		size := uint64(32)
		for size < n {
			size <<= 1
		}
		if size > 256 {
			return fmt.Errorf("pcitransport: device configuration of %d bytes does not fit a legacy I/O BAR", t.dev.ConfigSize())
		}
		t.legacySize = size
		if err := cs.AddBAR(BARLegacy, pci.BARIO, size, false); err != nil {
			return err
		}
	}

	vectors := t.nq + 1
	tableSize := uint64(vectors) * 16
	pbaOff := (tableSize + 7) &^ 7
	msixSize := uint64(4096)
	for msixSize < pbaOff+uint64((vectors+63)/64*8) {
		msixSize <<= 1
	}
	if err := cs.AddBAR(BARMSIX, pci.BARMem32, msixSize, false); err != nil {
		return err
	}
	if t.mode.hasModern() {
		if err := cs.AddBAR(BARModern, pci.BARMem64, modernBARSize, false); err != nil {
			return err
		}
		if err := t.addModernCaps(); err != nil {
			return err
		}
	}
	m, err := pci.NewMSIX(cs, pci.MSIXConfig{
		Vectors:     vectors,
		TableBAR:    BARMSIX,
		TableOffset: 0,
		PBABAR:      BARMSIX,
		PBAOffset:   uint32(pbaOff),
		Deliver:     sink.Deliver,
		OnChange:    sink.Route,
	})
	if err != nil {
		return err
	}
	t.msix = m
	if t.intx != nil {
		if err := cs.SetInterruptPin(pci.PinA); err != nil {
			return err
		}
	}
	return nil
}

// Config implements pci.Device.
func (t *Transport) Config() *pci.ConfigSpace { return t.cs }

// Common returns the virtio control state (for tests and statistics).
func (t *Transport) Common() *virtio.Common { return t.common }

// Mode returns the transport mode.
func (t *Transport) Mode() Mode { return t.mode }

// MSIX returns the function's MSI-X table.
func (t *Transport) MSIX() *pci.MSIX { return t.msix }

// Faults returns the number of driver mistakes seen by the transport and
// by its virtio.Common.
func (t *Transport) Faults() uint64 { return t.faults.Load() + t.common.Faults() }

// Notifications returns how many used-buffer notifications the device
// sent for each queue since it was created.
func (t *Transport) Notifications() []uint64 {
	out := make([]uint64, len(t.notices))
	for i := range t.notices {
		out[i] = t.notices[i].Load()
	}
	return out
}

// Close resets the device and releases its eventfds. Doorbells must have
// been removed by the VMM before (or the VM torn down).
func (t *Transport) Close() error { return t.common.Close() }

func (t *Transport) fault(format string, args ...any) {
	t.faults.Add(1)
	t.glog.Warn("virtio-pci driver error", "device", t.dev.Type(), "err", fmt.Sprintf(format, args...))
}

// ReadBAR implements pci.Device.
func (t *Transport) ReadBAR(bar int, off uint64, data []byte) {
	clear(data)
	switch {
	case bar == BARLegacy && t.mode.hasLegacy():
		t.readLegacy(off, data)
	case bar == BARMSIX:
		if !t.msix.ReadBAR(bar, off, data) {
			t.fault("read of MSI-X BAR offset %#x", off)
		}
	case bar == BARModern && t.mode.hasModern():
		t.readModern(off, data)
	default:
		t.fault("read of BAR %d", bar)
	}
}

// WriteBAR implements pci.Device.
func (t *Transport) WriteBAR(bar int, off uint64, data []byte) {
	switch {
	case bar == BARLegacy && t.mode.hasLegacy():
		t.writeLegacy(off, data)
	case bar == BARMSIX:
		if !t.msix.WriteBAR(bar, off, data) {
			t.fault("write of MSI-X BAR offset %#x", off)
		}
	case bar == BARModern && t.mode.hasModern():
		t.writeModern(off, data)
	default:
		t.fault("write of BAR %d", bar)
	}
}

// Notify implements virtio.Transport: queue q's used-buffer notification,
// through the queue's MSI-X vector (none if the driver set NoVector) or,
// without MSI-X, INTx and the ISR's queue bit.
func (t *Transport) Notify(q int) {
	if q < 0 || q >= t.nq {
		return
	}
	t.notices[q].Add(1)
	if t.msix.Enabled() {
		t.regs.mu.Lock()
		v := t.regs.queueVectors[q]
		t.regs.mu.Unlock()
		if v != NoVector {
			t.msix.Trigger(int(v))
		}
		return
	}
	t.raiseINTx(isrQueue)
}

// InterruptFD implements virtio.InterruptFDs: with MSI-X enabled and
// queue q's vector set and unmasked, the vector's eventfd (if the sink has
// them). Interrupts sent through it are not counted in Notifications.
func (t *Transport) InterruptFD(q int) (int, bool) {
	if t.vecFDs == nil || q < 0 || q >= t.nq || !t.msix.Enabled() {
		return -1, false
	}
	t.regs.mu.Lock()
	v := t.regs.queueVectors[q]
	t.regs.mu.Unlock()
	if v == NoVector || t.msix.Masked(int(v)) {
		return -1, false
	}
	addr, data, ok := t.msix.Message(int(v))
	if !ok {
		return -1, false
	}
	return t.vecFDs.VectorFD(int(v), addr, data)
}

// ConfigChanged implements virtio.Transport: the device configuration
// changed; the generation counter moves and the driver is interrupted.
func (t *Transport) ConfigChanged() {
	t.generation.Add(1)
	t.configInterrupt()
}

// NeedsReset implements virtio.Transport: the device stopped on an error
// (usually a driver mistake); the status shows DEVICE_NEEDS_RESET and the
// driver gets a configuration-change interrupt, once.
func (t *Transport) NeedsReset(reason error) {
	t.glog.Warn("virtio device needs reset", "device", t.dev.Type(), "err", reason)
	if t.common.MarkNeedsReset() {
		t.configInterrupt()
	}
}

// configInterrupt sends the configuration-change interrupt: the config
// vector, or without MSI-X, INTx and the ISR's config bit.
func (t *Transport) configInterrupt() {
	if t.msix.Enabled() {
		t.regs.mu.Lock()
		v := t.regs.configVector
		t.regs.mu.Unlock()
		if v != NoVector {
			t.msix.Trigger(int(v))
		}
		return
	}
	t.raiseINTx(isrConfig)
}

func (t *Transport) raiseINTx(bit uint32) {
	t.isr.Or(bit)
	if t.intx == nil {
		return
	}
	t.cs.SetInterruptStatus(true)
	if !t.cs.INTxDisabled() {
		t.intx.Raise()
	}
}

// Resample is called by the VMM after the guest acknowledged the INTx
// interrupt: the line is raised again while the ISR has bits set (level
// semantics).
func (t *Transport) Resample() {
	if t.isr.Load() != 0 && t.intx != nil && !t.cs.INTxDisabled() {
		t.intx.Raise()
	}
}

// readISR is the ISR register: reading it returns and clears the bits and
// deasserts INTx.
func (t *Transport) readISR() uint8 {
	v := t.isr.Swap(0)
	if v != 0 {
		t.cs.SetInterruptStatus(false)
	}
	return uint8(v)
}

// vectorOK maps a driver-written MSI-X vector to what is stored: a vector
// beyond the table becomes NoVector (which the driver reads back, as the
// specification asks).
func (t *Transport) vectorOK(v uint16) uint16 {
	if v != NoVector && int(v) >= t.msix.Vectors() {
		t.fault("MSI-X vector %d beyond table of %d", v, t.msix.Vectors())
		return NoVector
	}
	return v
}

// setStatus writes the status register; a reset also clears the ISR and
// the transport's registers.
func (t *Transport) setStatus(v uint8) {
	if t.common.SetStatus(v) {
		t.configInterrupt() // activation failed: DEVICE_NEEDS_RESET
	}
	if v == 0 {
		t.regs.reset()
		t.isr.Store(0)
		t.cs.SetInterruptStatus(false)
	}
}

// setQueue changes the selected queue's configuration with f, read and
// written whole under the register lock (what names the register, for the
// fault log).
func (t *Transport) setQueue(what string, f func(cfg *virtio.QueueConfig, enabled *bool)) {
	t.regs.mu.Lock()
	defer t.regs.mu.Unlock()
	q := int(t.regs.queueSel)
	cfg, enabled := t.common.Queue(q)
	f(&cfg, &enabled)
	t.common.SetQueue(q, cfg, enabled, what)
}

// selectedQueue returns the queue selector.
func (t *Transport) selectedQueue() int {
	t.regs.mu.Lock()
	defer t.regs.mu.Unlock()
	return int(t.regs.queueSel)
}

// setQueueVector sets the selected queue's MSI-X vector.
func (t *Transport) setQueueVector(v uint16) {
	t.regs.mu.Lock()
	defer t.regs.mu.Unlock()
	q := int(t.regs.queueSel)
	if q >= t.nq {
		t.fault("queue vector for queue %d", q)
		return
	}
	t.regs.queueVectors[q] = t.vectorOK(v)
}

// queueVector returns the selected queue's MSI-X vector.
func (t *Transport) queueVector() uint16 {
	t.regs.mu.Lock()
	defer t.regs.mu.Unlock()
	if q := int(t.regs.queueSel); q < t.nq {
		return t.regs.queueVectors[q]
	}
	return NoVector
}

// BARMapped implements pci.BARObserver: it moves the doorbells with the
// legacy and modern BARs.
func (t *Transport) BARMapped(bar int, addr uint64, kind pci.BARKind, mapped bool) {
	if t.bells == nil {
		return
	}
	var want []bell
	switch {
	case bar == BARLegacy && t.mode.hasLegacy():
		for q := 0; q < t.nq; q++ {
			dm := uint64(q)
			want = append(want, bell{bar: bar, io: true, addr: addr + legacyNotify, size: 2, datamatch: &dm, fd: t.common.Kick(q)})
		}
	case bar == BARModern && t.mode.hasModern():
		for q := 0; q < t.nq; q++ {
			want = append(want, bell{bar: bar, addr: addr + modernNotify + uint64(q)*NotifyMultiplier, size: 2, fd: t.common.Kick(q)})
		}
	default:
		return
	}
	t.bellMu.Lock()
	defer t.bellMu.Unlock()
	if !mapped {
		kept := t.registered[:0]
		for _, b := range t.registered {
			if b.bar == bar {
				if err := t.bells.RemoveDoorbell(b.io, b.addr, b.size, b.datamatch, b.fd); err != nil {
					t.glog.Warn("removing virtio doorbell", "addr", fmt.Sprintf("%#x", b.addr), "err", err)
				}
				continue
			}
			kept = append(kept, b)
		}
		t.registered = kept
		return
	}
	for _, b := range want {
		if err := t.bells.AddDoorbell(b.io, b.addr, b.size, b.datamatch, b.fd); err != nil {
			// Not fatal: the notification then reaches WriteBAR.
			t.glog.Warn("virtio doorbell not registered; notifications will exit to userspace",
				"addr", fmt.Sprintf("%#x", b.addr), "err", err)
			continue
		}
		t.registered = append(t.registered, b)
	}
}

// RemoveDoorbells unregisters every doorbell (at VM teardown).
func (t *Transport) RemoveDoorbells() {
	if t.bells == nil {
		return
	}
	t.bellMu.Lock()
	defer t.bellMu.Unlock()
	for _, b := range t.registered {
		_ = t.bells.RemoveDoorbell(b.io, b.addr, b.size, b.datamatch, b.fd)
	}
	t.registered = nil
}
