// Package pcidriver is the guest half of the virtio PCI transport, for
// tests: a driver that finds a virtio function's registers the way a guest
// kernel does and drives either its legacy (0.9.5) I/O BAR or its modern
// (1.x) capability regions, with MSI-X or INTx interrupts delivered to an
// in-process interrupt controller (IRQ).
//
// Nothing is taken from the device model's side: the driver sees only
// configuration space and BAR accesses (pci.Device). It sizes the BARs,
// walks the capability list for the virtio vendor capabilities (common,
// notify, ISR and device configuration: BAR, offset, length,
// notify_off_multiplier) and the MSI-X capability (table and PBA location),
// and uses the register offsets of the specifications, not those of the
// transport's source.
//
// Its control-plane methods are those of devices/net/nettest.Driver; the data
// path (rings) is virtio/virtiotest.
package pcidriver

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/govmd/govmd/pci"
	"github.com/govmd/govmd/virtio"
	"github.com/govmd/govmd/virtio/virtiotest"
)

// PCI identity of virtio functions.
const (
	vendorVirtio    = 0x1af4
	deviceTransBase = 0x1000 // 0x1000..0x103f: transitional (and legacy)
	deviceTransLast = 0x103f
	deviceModern    = 0x1040 // 0x1040 + device type
	deviceLast      = 0x107f
)

// Legacy (virtio 0.9.5) I/O BAR registers.
const (
	legHostFeatures  = 0  // u32 R
	legGuestFeatures = 4  // u32 RW
	legQueuePFN      = 8  // u32 RW
	legQueueNum      = 12 // u16 R
	legQueueSel      = 14 // u16 RW
	legQueueNotify   = 16 // u16 W
	legStatus        = 18 // u8 RW
	legISR           = 19 // u8 R, read clears
	legConfigVector  = 20 // u16 RW, with MSI-X enabled
	legQueueVector   = 22 // u16 RW, with MSI-X enabled
	legConfig        = 20 // device configuration without MSI-X
	legConfigMSIX    = 24 // ... and with MSI-X enabled
	legPageShift     = 12
	legAlign         = 4096
)

// virtio_pci_cap cfg_type values and layout (virtio 1.x 4.1.4).
const (
	capCommonCfg = 1
	capNotifyCfg = 2
	capISRCfg    = 3
	capDeviceCfg = 4

	capOffType   = 3
	capOffBAR    = 4
	capOffOffset = 8
	capOffLength = 12
	capOffMult   = 16 // virtio_pci_notify_cap.notify_off_multiplier
)

// struct virtio_pci_common_cfg (virtio 1.x 4.1.4.3).
const (
	ccDeviceFeatureSelect = 0
	ccDeviceFeature       = 4
	ccDriverFeatureSelect = 8
	ccDriverFeature       = 12
	ccConfigMSIXVector    = 16
	ccNumQueues           = 18
	ccDeviceStatus        = 20
	ccConfigGeneration    = 21
	ccQueueSelect         = 22
	ccQueueSize           = 24
	ccQueueMSIXVector     = 26
	ccQueueEnable         = 28
	ccQueueNotifyOff      = 30
	ccQueueDesc           = 32
	ccQueueDriver         = 40
	ccQueueDevice         = 48
	ccMinLength           = 56
)

// MSI-X capability (PCI 3.0 6.8.2).
const (
	msixControl      = 2 // u16: table size - 1 in bits 0-10
	msixTable        = 4 // u32: offset | BIR
	msixPBA          = 8 // u32: offset | BIR
	msixEnable       = 1 << 15
	msixFunctionMask = 1 << 14
	msixEntrySize    = 16
)

// ISR bits.
const (
	isrQueue  = 1
	isrConfig = 2
)

// Config selects the interface and the interrupt mode.
type Config struct {
	// Legacy drives the legacy I/O BAR (a transitional device driven like
	// Linux with virtio_pci.force_legacy=1, or a legacy-only device);
	// otherwise the modern capabilities.
	Legacy bool
	// INTx leaves MSI-X disabled: interrupts arrive on the INTx line and
	// the driver's handler reads the ISR (read-to-clear) to find their
	// cause. Otherwise the driver enables MSI-X when it sets up the first
	// queue and assigns the configuration vector (entry 0) and one vector
	// per queue (entry 1+q).
	INTx bool
}

// Resampler is implemented by functions with a level-triggered INTx line
// (pcitransport.Transport): the handler calls Resample after it
// acknowledged an interrupt, as the VMM does on the guest's EOI.
type Resampler interface {
	Resample()
}

// region is a register block in a BAR.
type region struct {
	bar      int
	off, len uint64
}

// Driver is a virtio PCI driver for one function.
//
// The control-plane methods (Reset, Negotiate, SetupQueue, DriverOK,
// ReadConfig) are called from one goroutine at a time; Notify and Status
// may be called concurrently with each other and with them. Close stops
// the INTx handler.
type Driver struct {
	fn     pci.Device
	irq    *IRQ
	cfg    Config
	typ    virtio.DeviceType
	nq     int // queues the device has (modern: num_queues; legacy: probed)
	barIO  [pci.NumBARs]bool
	barLen [pci.NumBARs]uint64

	// Modern regions.
	common, notify, isr, device region
	notifyMult                  uint32

	// MSI-X capability.
	msixCap      int
	msixVectors  int
	msixTableBAR int
	msixTableOff uint64
	msixOn       bool // enabled by this driver
	cfgVectorSet bool // config vector assigned since the last reset

	notifyOff []atomic.Int64 // by queue: notification offset in the notify BAR, -1 unknown

	stop chan struct{}
	wg   sync.WaitGroup
}

// ErrNeedsReset is returned by DriverOK when the device refused to start.
var ErrNeedsReset = errors.New("device reports DEVICE_NEEDS_RESET or FAILED")

// New probes fn like a guest's virtio-pci driver: it checks the identity,
// sizes the BARs, walks the capability list, enables decoding and bus
// mastering and, in INTx mode, starts the interrupt handler. irq must be
// the MSIXSink and INTxLine the function was built with.
func New(fn pci.Device, irq *IRQ, cfg Config) (*Driver, error) {
	d := &Driver{fn: fn, irq: irq, cfg: cfg, stop: make(chan struct{})}
	if err := d.probe(); err != nil {
		return nil, err
	}
	d.notifyOff = make([]atomic.Int64, d.nq)
	for q := range d.notifyOff {
		d.notifyOff[q].Store(-1)
	}
	cmd := d.cfgRead16(pci.RegCommand) | pci.CommandBusMaster
	if cfg.Legacy {
		cmd |= pci.CommandIO
	} else {
		cmd |= pci.CommandMemory
	}
	if cfg.INTx {
		cmd &^= pci.CommandINTxDisable
	} else {
		// As Linux does when it enables MSI-X.
		cmd |= pci.CommandINTxDisable
	}
	d.cfgWrite16(pci.RegCommand, cmd)
	if cfg.INTx {
		d.wg.Add(1)
		go d.intxHandler()
	}
	return d, nil
}

// Close stops the INTx handler. It does not reset the device.
func (d *Driver) Close() {
	select {
	case <-d.stop:
	default:
		close(d.stop)
	}
	d.wg.Wait()
}

// DeviceType returns the virtio device type from the PCI identity.
func (d *Driver) DeviceType() virtio.DeviceType { return d.typ }

// NumQueues returns the number of queues the device reports (modern:
// num_queues; legacy: the queues with a non-zero size).
func (d *Driver) NumQueues() int { return d.nq }

// MSIXEnabled reports whether the driver enabled MSI-X.
func (d *Driver) MSIXEnabled() bool { return d.msixOn }

func (d *Driver) probe() error {
	if v := d.cfgRead16(pci.RegVendorID); v != vendorVirtio {
		return fmt.Errorf("pcidriver: vendor %#04x is not virtio", v)
	}
	dev := d.cfgRead16(pci.RegDeviceID)
	rev := d.cfgRead8(pci.RegRevision)
	switch {
	case d.cfg.Legacy:
		// virtio_pci_legacy_probe.
		if dev < deviceTransBase || dev > deviceTransLast {
			return fmt.Errorf("pcidriver: device %#04x has no legacy interface", dev)
		}
		if rev != 0 {
			return fmt.Errorf("pcidriver: legacy device with ABI revision %d", rev)
		}
		d.typ = virtio.DeviceType(d.cfgRead16(pci.RegSubsystemID))
	case dev >= deviceTransBase && dev <= deviceTransLast:
		d.typ = virtio.DeviceType(d.cfgRead16(pci.RegSubsystemID))
	case dev >= deviceModern && dev <= deviceLast:
		d.typ = virtio.DeviceType(dev - deviceModern)
	default:
		return fmt.Errorf("pcidriver: device %#04x is not a virtio device", dev)
	}
	for bar := 0; bar < pci.NumBARs; bar++ {
		bar += d.sizeBAR(bar)
	}
	vendor, err := d.walkCaps()
	if err != nil {
		return err
	}
	if d.cfg.Legacy {
		if !d.barIO[0] || d.barLen[0] < legConfig {
			return fmt.Errorf("pcidriver: BAR 0 is not a legacy I/O BAR (%d bytes)", d.barLen[0])
		}
		// The legacy interface has no queue count: probe the sizes.
		for q := 0; q < 0x8000; q++ {
			d.w16(0, legQueueSel, uint16(q))
			if d.r16(0, legQueueNum) == 0 {
				d.nq = q
				break
			}
		}
	} else {
		if err := d.findModern(vendor); err != nil {
			return err
		}
		d.nq = int(d.r16(d.common.bar, d.common.off+ccNumQueues))
	}
	if d.nq == 0 {
		return errors.New("pcidriver: device has no queues")
	}
	if !d.cfg.INTx {
		if d.msixCap == 0 {
			return errors.New("pcidriver: no MSI-X capability")
		}
		if d.msixVectors < d.nq+1 {
			return fmt.Errorf("pcidriver: MSI-X table has %d vectors for %d queues and the configuration", d.msixVectors, d.nq)
		}
	} else if d.cfgRead8(pci.RegInterruptPin) == pci.PinNone {
		return errors.New("pcidriver: INTx mode but the function has no interrupt pin")
	}
	return nil
}

// sizeBAR sizes BAR bar the way firmware does (write all ones, read the
// size mask back, restore) and returns 1 if it is a 64-bit BAR (its upper
// half is the next register).
func (d *Driver) sizeBAR(bar int) int {
	reg := pci.RegBAR0 + 4*bar
	orig := d.cfgRead32(reg)
	d.cfgWrite32(reg, 0xffffffff)
	mask := d.cfgRead32(reg)
	d.cfgWrite32(reg, orig)
	if mask == 0 {
		return 0
	}
	if mask&1 != 0 {
		d.barIO[bar] = true
		d.barLen[bar] = uint64(^(mask &^ 3) + 1)
		return 0
	}
	if (mask>>1)&3 == 2 && bar+1 < pci.NumBARs { // 64-bit
		origHi := d.cfgRead32(reg + 4)
		d.cfgWrite32(reg+4, 0xffffffff)
		hi := d.cfgRead32(reg + 4)
		d.cfgWrite32(reg+4, origHi)
		m := uint64(hi)<<32 | uint64(mask&^0xf)
		d.barLen[bar] = ^m + 1
		return 1
	}
	d.barLen[bar] = uint64(^(mask &^ 0xf) + 1)
	return 0
}

// walkCaps follows the capability list from register 0x34. It records the
// MSI-X capability and returns the offsets of the vendor capabilities.
func (d *Driver) walkCaps() ([]int, error) {
	if d.cfgRead16(pci.RegStatus)&pci.StatusCapList == 0 {
		return nil, nil
	}
	var vendor []int
	seen := map[int]bool{}
	for off := int(d.cfgRead8(pci.RegCapabilities)) &^ 3; off != 0; off = int(d.cfgRead8(off+1)) &^ 3 {
		if off < 0x40 || off > pci.ConfigSize-4 || seen[off] || len(seen) > 48 {
			return nil, fmt.Errorf("pcidriver: broken capability list at %#x", off)
		}
		seen[off] = true
		switch d.cfgRead8(off) {
		case pci.CapVendor:
			vendor = append(vendor, off)
		case pci.CapMSIX:
			if d.msixCap != 0 {
				continue
			}
			d.msixCap = off
			d.msixVectors = int(d.cfgRead16(off+msixControl)&0x7ff) + 1
			t := d.cfgRead32(off + msixTable)
			d.msixTableBAR, d.msixTableOff = int(t&7), uint64(t&^7)
			if d.msixTableBAR >= pci.NumBARs || d.barIO[d.msixTableBAR] ||
				d.msixTableOff+uint64(d.msixVectors)*msixEntrySize > d.barLen[d.msixTableBAR] {
				return nil, fmt.Errorf("pcidriver: MSI-X table in BAR %d at %#x does not fit", d.msixTableBAR, d.msixTableOff)
			}
		}
	}
	return vendor, nil
}

// findModern picks, for each region type, the first vendor capability
// whose BAR is a memory BAR the region fits in (virtio_pci_find_capability).
func (d *Driver) findModern(vendor []int) error {
	found := map[byte]bool{}
	for _, off := range vendor {
		if d.cfgRead8(off+2) < 16 { // cap_len
			continue
		}
		typ := d.cfgRead8(off + capOffType)
		if typ < capCommonCfg || typ > capDeviceCfg || found[typ] {
			continue
		}
		r := region{
			bar: int(d.cfgRead8(off + capOffBAR)),
			off: uint64(d.cfgRead32(off + capOffOffset)),
			len: uint64(d.cfgRead32(off + capOffLength)),
		}
		if r.bar >= pci.NumBARs || d.barIO[r.bar] || d.barLen[r.bar] == 0 || r.off+r.len > d.barLen[r.bar] {
			continue
		}
		switch typ {
		case capCommonCfg:
			if r.len < ccMinLength {
				continue
			}
			d.common = r
		case capNotifyCfg:
			if d.cfgRead8(off+2) < 20 || r.len < 2 {
				continue
			}
			d.notify = r
			d.notifyMult = d.cfgRead32(off + capOffMult)
		case capISRCfg:
			if r.len < 1 {
				continue
			}
			d.isr = r
		case capDeviceCfg:
			d.device = r
		}
		found[typ] = true
	}
	for _, t := range []byte{capCommonCfg, capNotifyCfg, capISRCfg} {
		if !found[t] {
			return fmt.Errorf("pcidriver: no usable virtio capability of type %d (not a modern device?)", t)
		}
	}
	return nil
}

// Legacy reports whether the driver uses the legacy interface.
func (d *Driver) Legacy() bool { return d.cfg.Legacy }

// Reset writes 0 to the device status and waits until it reads 0.
func (d *Driver) Reset() {
	d.setStatus(0)
	for i := 0; d.Status() != 0 && i < 5000; i++ {
		time.Sleep(time.Millisecond)
	}
	d.cfgVectorSet = false
	for q := range d.notifyOff {
		d.notifyOff[q].Store(-1)
	}
}

// Status reads the device status register.
func (d *Driver) Status() uint8 {
	if d.cfg.Legacy {
		return d.r8(0, legStatus)
	}
	return d.r8(d.common.bar, d.common.off+ccDeviceStatus)
}

func (d *Driver) setStatus(s uint8) {
	if d.cfg.Legacy {
		d.w8(0, legStatus, s)
		return
	}
	d.w8(d.common.bar, d.common.off+ccDeviceStatus, s)
}

// addStatus sets bits in the status register (virtio_add_status).
func (d *Driver) addStatus(bits uint8) { d.setStatus(d.Status() | bits) }

// DeviceFeatures reads the offered features: 64 bits through the feature
// select window, or the legacy interface's 32.
func (d *Driver) DeviceFeatures() uint64 {
	if d.cfg.Legacy {
		return uint64(d.r32(0, legHostFeatures))
	}
	c := d.common
	d.w32(c.bar, c.off+ccDeviceFeatureSelect, 0)
	lo := d.r32(c.bar, c.off+ccDeviceFeature)
	d.w32(c.bar, c.off+ccDeviceFeatureSelect, 1)
	hi := d.r32(c.bar, c.off+ccDeviceFeature)
	return uint64(hi)<<32 | uint64(lo)
}

// Negotiate sets ACKNOWLEDGE and DRIVER, writes the driver features and
// (modern) sets FEATURES_OK and reads it back. A legacy driver has no
// FEATURES_OK and always reports true.
func (d *Driver) Negotiate(features uint64) (bool, error) {
	if d.cfg.Legacy && features>>32 != 0 {
		return false, fmt.Errorf("legacy driver cannot ack features %#x", features)
	}
	d.addStatus(virtio.StatusAcknowledge)
	d.addStatus(virtio.StatusDriver)
	if d.cfg.Legacy {
		d.w32(0, legGuestFeatures, uint32(features))
		return true, nil
	}
	c := d.common
	d.w32(c.bar, c.off+ccDriverFeatureSelect, 0)
	d.w32(c.bar, c.off+ccDriverFeature, uint32(features))
	d.w32(c.bar, c.off+ccDriverFeatureSelect, 1)
	d.w32(c.bar, c.off+ccDriverFeature, uint32(features>>32))
	d.addStatus(virtio.StatusFeaturesOK)
	return d.Status()&virtio.StatusFeaturesOK != 0, nil
}

// QueueMax returns queue q's maximum size (0: no such queue).
func (d *Driver) QueueMax(q int) uint16 {
	if d.cfg.Legacy {
		d.w16(0, legQueueSel, uint16(q))
		return d.r16(0, legQueueNum)
	}
	c := d.common
	d.w16(c.bar, c.off+ccQueueSelect, uint16(q))
	return d.r16(c.bar, c.off+ccQueueSize)
}

// legacyLayout reports whether r is laid out as a legacy device computes
// it from the PFN: descriptors at a page boundary, the available ring right
// after them, the used ring at the next page boundary, for size entries.
func legacyLayout(r *virtiotest.Ring, size uint16) error {
	n := uint64(size)
	avail := r.Desc + 16*n
	used := (avail + 6 + 2*n + legAlign - 1) &^ (legAlign - 1)
	switch {
	case r.Size != size:
		return fmt.Errorf("legacy queue must have its maximum size %d, not %d", size, r.Size)
	case r.Desc%legAlign != 0:
		return fmt.Errorf("legacy ring at %#x is not page aligned", r.Desc)
	case r.Avail != avail || r.Used != used:
		return fmt.Errorf("ring (desc %#x avail %#x used %#x) is not in the legacy layout (avail %#x used %#x)",
			r.Desc, r.Avail, r.Used, avail, used)
	case r.Desc>>legPageShift > 0xffffffff:
		return fmt.Errorf("legacy ring at %#x beyond the 44-bit PFN range", r.Desc)
	}
	return nil
}

// SetupQueue programs queue q with ring r and enables it (virtio 1.x
// 4.1.5.1.3; legacy: QueuePFN). With MSI-X the first queue set up after a
// reset also enables MSI-X and assigns the configuration vector, and every
// queue gets its own vector; the device must read each vector back.
func (d *Driver) SetupQueue(q int, r *virtiotest.Ring) error {
	if q < 0 || q >= d.nq {
		return fmt.Errorf("queue %d does not exist (%d queues)", q, d.nq)
	}
	if !d.cfg.INTx {
		if err := d.setupVectors(); err != nil {
			return err
		}
	}
	vec := uint16(1 + q)
	if d.cfg.Legacy {
		d.w16(0, legQueueSel, uint16(q))
		maxSize := d.r16(0, legQueueNum)
		if maxSize == 0 {
			return fmt.Errorf("queue %d does not exist", q)
		}
		if d.r32(0, legQueuePFN) != 0 {
			return fmt.Errorf("legacy queue %d is already active", q)
		}
		if err := legacyLayout(r, maxSize); err != nil {
			return fmt.Errorf("queue %d: %w", q, err)
		}
		pfn := uint32(r.Desc >> legPageShift)
		d.w32(0, legQueuePFN, pfn)
		if got := d.r32(0, legQueuePFN); got != pfn {
			return fmt.Errorf("queue %d: device refused PFN %#x (reads %#x)", q, pfn, got)
		}
		if !d.cfg.INTx {
			d.w16(0, legQueueVector, vec)
			if got := d.r16(0, legQueueVector); got != vec {
				return fmt.Errorf("queue %d: device refused MSI-X vector %d (reads %#x)", q, vec, got)
			}
		}
		d.notifyOff[q].Store(legQueueNotify)
		return nil
	}
	c := d.common
	d.w16(c.bar, c.off+ccQueueSelect, uint16(q))
	maxSize := d.r16(c.bar, c.off+ccQueueSize)
	if maxSize == 0 {
		return fmt.Errorf("queue %d does not exist", q)
	}
	if d.r16(c.bar, c.off+ccQueueEnable) != 0 {
		return fmt.Errorf("queue %d is already enabled", q)
	}
	if r.Size == 0 || r.Size > maxSize || r.Size&(r.Size-1) != 0 {
		return fmt.Errorf("queue %d: size %d invalid (max %d)", q, r.Size, maxSize)
	}
	d.w16(c.bar, c.off+ccQueueSize, r.Size)
	if got := d.r16(c.bar, c.off+ccQueueSize); got != r.Size {
		return fmt.Errorf("queue %d: device refused size %d (reads %d)", q, r.Size, got)
	}
	cfg := r.Config()
	for _, a := range []struct {
		off uint64
		v   uint64
	}{{ccQueueDesc, cfg.DescAddr}, {ccQueueDriver, cfg.AvailAddr}, {ccQueueDevice, cfg.UsedAddr}} {
		// vp_iowrite64_twopart: low half, then high half.
		d.w32(c.bar, c.off+a.off, uint32(a.v))
		d.w32(c.bar, c.off+a.off+4, uint32(a.v>>32))
	}
	if !d.cfg.INTx {
		d.w16(c.bar, c.off+ccQueueMSIXVector, vec)
		if got := d.r16(c.bar, c.off+ccQueueMSIXVector); got != vec {
			return fmt.Errorf("queue %d: device refused MSI-X vector %d (reads %#x)", q, vec, got)
		}
	}
	noff := uint64(d.r16(c.bar, c.off+ccQueueNotifyOff)) * uint64(d.notifyMult)
	if noff+2 > d.notify.len {
		return fmt.Errorf("queue %d: notification offset %#x outside the %d-byte notify region", q, noff, d.notify.len)
	}
	d.notifyOff[q].Store(int64(d.notify.off + noff))
	d.w16(c.bar, c.off+ccQueueEnable, 1)
	if d.r16(c.bar, c.off+ccQueueEnable) != 1 {
		return fmt.Errorf("queue %d: queue_enable does not read back", q)
	}
	return nil
}

// setupVectors enables MSI-X (once) and assigns the configuration vector
// (once per reset), as vp_find_vqs_msix does: MSI-X enabled with the
// function masked, every entry the driver uses programmed with its own
// message and unmasked, the function unmasked.
func (d *Driver) setupVectors() error {
	if !d.msixOn {
		ctrl := d.cfgRead16(d.msixCap + msixControl)
		d.cfgWrite16(d.msixCap+msixControl, ctrl|msixEnable|msixFunctionMask)
		for v := 0; v <= d.nq; v++ {
			data := uint32(msiDataBase + v)
			target := v - 1 // entry 0: configuration
			if v == 0 {
				target = targetConfig
			}
			d.irq.bind(data, target)
			e := d.msixTableOff + uint64(v)*msixEntrySize
			d.w32(d.msixTableBAR, e, msiAddr)
			d.w32(d.msixTableBAR, e+4, 0)
			d.w32(d.msixTableBAR, e+8, data)
			d.w32(d.msixTableBAR, e+12, 0) // unmask
			if got := d.r32(d.msixTableBAR, e+8); got != data {
				return fmt.Errorf("MSI-X entry %d data reads %#x, want %#x", v, got, data)
			}
		}
		d.cfgWrite16(d.msixCap+msixControl, ctrl|msixEnable)
		if d.cfgRead16(d.msixCap+msixControl)&(msixEnable|msixFunctionMask) != msixEnable {
			return errors.New("MSI-X enable does not read back")
		}
		d.msixOn = true
	}
	if d.cfgVectorSet {
		return nil
	}
	if d.cfg.Legacy {
		d.w16(0, legConfigVector, 0)
		if got := d.r16(0, legConfigVector); got != 0 {
			return fmt.Errorf("device refused configuration vector 0 (reads %#x)", got)
		}
	} else {
		c := d.common
		d.w16(c.bar, c.off+ccConfigMSIXVector, 0)
		if got := d.r16(c.bar, c.off+ccConfigMSIXVector); got != 0 {
			return fmt.Errorf("device refused configuration vector 0 (reads %#x)", got)
		}
	}
	d.cfgVectorSet = true
	return nil
}

// DriverOK sets DRIVER_OK and checks the device accepted it.
func (d *Driver) DriverOK() error {
	d.addStatus(virtio.StatusDriverOK)
	if s := d.Status(); s&(virtio.StatusNeedsReset|virtio.StatusFailed) != 0 || s&virtio.StatusDriverOK == 0 {
		return fmt.Errorf("%w (status %s)", ErrNeedsReset, virtio.StatusString(s))
	}
	return nil
}

// Notify notifies queue q: a write of the queue index to the legacy
// QueueNotify register or to the queue's address in the notification
// region. A queue that was not set up is not notified.
func (d *Driver) Notify(q int) {
	if q < 0 || q >= len(d.notifyOff) {
		return
	}
	off := d.notifyOff[q].Load()
	if off < 0 {
		return
	}
	bar := d.notify.bar
	if d.cfg.Legacy {
		bar = 0
	}
	d.w16(bar, uint64(off), uint16(q))
}

// ReadConfig reads device-specific configuration. Modern: in naturally
// aligned accesses of up to 4 bytes, repeated until config_generation is
// the same before and after. Legacy: byte by byte from offset 20, or 24
// while MSI-X is enabled.
func (d *Driver) ReadConfig(off int, p []byte) {
	clear(p)
	if d.cfg.Legacy {
		base := uint64(legConfig)
		if d.msixOn {
			base = legConfigMSIX
		}
		for i := range p {
			o := base + uint64(off+i)
			if o >= d.barLen[0] {
				return
			}
			d.fn.ReadBAR(0, o, p[i:i+1])
		}
		return
	}
	c := d.common
	for try := 0; try < 100; try++ {
		gen := d.r8(c.bar, c.off+ccConfigGeneration)
		for i := 0; i < len(p); {
			o := uint64(off + i)
			n := 1
			switch {
			case o%4 == 0 && len(p)-i >= 4:
				n = 4
			case o%2 == 0 && len(p)-i >= 2:
				n = 2
			}
			if o+uint64(n) > d.device.len {
				clear(p[i:])
				break
			}
			d.fn.ReadBAR(d.device.bar, d.device.off+o, p[i:i+n])
			i += n
		}
		if d.r8(c.bar, c.off+ccConfigGeneration) == gen {
			return
		}
	}
}

// readISR reads (and so clears) the ISR status.
func (d *Driver) readISR() uint8 {
	if d.cfg.Legacy {
		return d.r8(0, legISR)
	}
	return d.r8(d.isr.bar, d.isr.off)
}

// intxHandler is the interrupt handler of INTx mode (vp_interrupt): it
// reads the ISR, which clears it and deasserts the line, runs every
// queue's handler if the queue bit was set and the configuration handler
// if the configuration bit was, and tells the function the interrupt was
// acknowledged.
func (d *Driver) intxHandler() {
	defer d.wg.Done()
	res, _ := d.fn.(Resampler)
	for {
		select {
		case <-d.stop:
			return
		case <-d.irq.line:
		}
		isr := d.readISR()
		if isr == 0 {
			d.irq.spuriousINTx()
		}
		if isr&isrConfig != 0 {
			d.irq.configInterrupt()
		}
		if isr&isrQueue != 0 {
			for q := 0; q < d.nq; q++ {
				d.irq.queueInterrupt(q)
			}
		}
		if res != nil {
			res.Resample()
		}
	}
}

// Register accessors.

func (d *Driver) r8(bar int, off uint64) uint8 {
	var b [1]byte
	d.fn.ReadBAR(bar, off, b[:])
	return b[0]
}

func (d *Driver) r16(bar int, off uint64) uint16 {
	var b [2]byte
	d.fn.ReadBAR(bar, off, b[:])
	return binary.LittleEndian.Uint16(b[:])
}

func (d *Driver) r32(bar int, off uint64) uint32 {
	var b [4]byte
	d.fn.ReadBAR(bar, off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

func (d *Driver) w8(bar int, off uint64, v uint8) { d.fn.WriteBAR(bar, off, []byte{v}) }

func (d *Driver) w16(bar int, off uint64, v uint16) {
	var b [2]byte
	binary.LittleEndian.PutUint16(b[:], v)
	d.fn.WriteBAR(bar, off, b[:])
}

func (d *Driver) w32(bar int, off uint64, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	d.fn.WriteBAR(bar, off, b[:])
}

func (d *Driver) cfgRead8(off int) uint8 {
	var b [1]byte
	d.fn.Config().Read(off, b[:])
	return b[0]
}

func (d *Driver) cfgRead16(off int) uint16 {
	var b [2]byte
	d.fn.Config().Read(off, b[:])
	return binary.LittleEndian.Uint16(b[:])
}

func (d *Driver) cfgRead32(off int) uint32 {
	var b [4]byte
	d.fn.Config().Read(off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

func (d *Driver) cfgWrite16(off int, v uint16) {
	var b [2]byte
	binary.LittleEndian.PutUint16(b[:], v)
	d.fn.Config().Write(off, b[:])
}

func (d *Driver) cfgWrite32(off int, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	d.fn.Config().Write(off, b[:])
}
