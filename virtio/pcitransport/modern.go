package pcitransport

import (
	"encoding/binary"

	"github.com/govmd/govmd/pci"
	"github.com/govmd/govmd/virtio"
)

// virtio_pci_cap cfg_type values.
const (
	capCommon = 1
	capNotify = 2
	capISR    = 3
	capDevice = 4
	capPCI    = 5
)

// Offsets in the common configuration structure (virtio 1.x 4.1.4.3).
const (
	ccDeviceFeatureSelect = 0  // 32 RW
	ccDeviceFeature       = 4  // 32 R
	ccDriverFeatureSelect = 8  // 32 RW
	ccDriverFeature       = 12 // 32 RW
	ccConfigMSIXVector    = 16 // 16 RW
	ccNumQueues           = 18 // 16 R
	ccDeviceStatus        = 20 // 8 RW
	ccConfigGeneration    = 21 // 8 R
	ccQueueSelect         = 22 // 16 RW
	ccQueueSize           = 24 // 16 RW
	ccQueueMSIXVector     = 26 // 16 RW
	ccQueueEnable         = 28 // 16 RW
	ccQueueNotifyOff      = 30 // 16 R
	ccQueueDesc           = 32 // 64 RW
	ccQueueDriver         = 40 // 64 RW
	ccQueueDevice         = 48 // 64 RW
	ccSize                = 56
)

// addModernCaps adds the four vendor capabilities that locate the modern
// regions, and the PCI configuration access capability.
func (t *Transport) addModernCaps() error {
	le := binary.LittleEndian
	region := func(typ byte, off, length uint32, extra []byte) []byte {
		// cfg_type, bar, id, padding[2], offset, length
		b := make([]byte, 13, 13+len(extra))
		b[0] = typ
		b[1] = BARModern
		le.PutUint32(b[5:], off)
		le.PutUint32(b[9:], length)
		return append(b, extra...)
	}
	mult := make([]byte, 4)
	le.PutUint32(mult, NotifyMultiplier)
	devLen := uint32(t.dev.ConfigSize())
	if devLen == 0 {
		devLen = 4
	}
	caps := [][]byte{
		region(capCommon, modernCommon, ccSize, nil),
		region(capNotify, modernNotify, uint32(t.nq)*NotifyMultiplier, mult),
		region(capISR, modernISR, 1, nil),
		region(capDevice, modernDevice, devLen, nil),
	}
	for _, c := range caps {
		if _, err := t.cs.AddVendorCapability(c, nil); err != nil {
			return err
		}
	}
	// VIRTIO_PCI_CAP_PCI_CFG: the driver writes bar, offset and length,
	// then accesses pci_cfg_data, which reaches the BAR.
	body := make([]byte, 13+4)
	body[0] = capPCI
	mask := make([]byte, len(body))
	mask[1] = 0xff // bar
	for i := 5; i < len(body); i++ {
		mask[i] = 0xff // offset, length, data
	}
	off, err := t.cs.AddVendorCapability(body, mask)
	if err != nil {
		return err
	}
	// Body byte i is at off+3+i.
	p := &pciCfgCap{t: t, base: off + 3}
	return t.cs.AddHook(pci.Hook{Start: p.base + 13, Len: 4, Read: p.read, Write: p.write})
}

// pciCfgCap serves the pci_cfg_data window of VIRTIO_PCI_CAP_PCI_CFG.
type pciCfgCap struct {
	t    *Transport
	base int // offset of the capability body (cfg_type) in config space
}

// target returns the BAR access the capability fields describe.
func (p *pciCfgCap) target() (bar int, off uint64, n int, ok bool) {
	var b [13]byte
	p.t.cs.Get(p.base, b[:])
	le := binary.LittleEndian
	bar = int(b[1])
	off = uint64(le.Uint32(b[5:]))
	n = int(le.Uint32(b[9:]))
	if n != 1 && n != 2 && n != 4 {
		return 0, 0, 0, false
	}
	if off%uint64(n) != 0 {
		return 0, 0, 0, false
	}
	return bar, off, n, true
}

func (p *pciCfgCap) read(off int, data []byte) {
	bar, boff, n, ok := p.target()
	if !ok {
		p.t.fault("PCI configuration access capability: bad length or alignment")
		return
	}
	var buf [4]byte
	p.t.ReadBAR(bar, boff, buf[:n])
	// Place the window's bytes where the access overlaps it.
	for i := range data {
		if w := off + i - (p.base + 13); w >= 0 && w < n {
			data[i] = buf[w]
		}
	}
}

func (p *pciCfgCap) write(off int, data []byte) {
	bar, boff, n, ok := p.target()
	if !ok {
		p.t.fault("PCI configuration access capability: bad length or alignment")
		return
	}
	// Only an access that covers the first n bytes of the window is a
	// BAR write; the stored data bytes are what the driver wrote.
	if off > p.base+13 || off+len(data) < p.base+13+n {
		return
	}
	var buf [4]byte
	p.t.cs.Get(p.base+13, buf[:n])
	p.t.WriteBAR(bar, boff, buf[:n])
}

func (t *Transport) readModern(off uint64, data []byte) {
	switch {
	case off < modernCommon+modernRegion:
		t.readCommon(off-modernCommon, data)
	case off >= modernISR && off < modernISR+modernRegion:
		if off == modernISR && len(data) == 1 {
			data[0] = t.readISR()
			return
		}
		t.fault("ISR read of %d bytes at %#x", len(data), off-modernISR)
	case off >= modernDevice && off < modernDevice+modernRegion:
		t.dev.ReadConfig(off-modernDevice, data)
	case off >= modernNotify && off < modernNotify+modernRegion:
		// Notification registers are write-only; reads return zero.
	default:
		t.fault("modern BAR read at %#x", off)
	}
}

func (t *Transport) writeModern(off uint64, data []byte) {
	switch {
	case off < modernCommon+modernRegion:
		t.writeCommon(off-modernCommon, data)
	case off >= modernDevice && off < modernDevice+modernRegion:
		if t.claim(false) {
			t.dev.WriteConfig(off-modernDevice, data)
		}
	case off >= modernNotify && off < modernNotify+modernRegion:
		rel := off - modernNotify
		q := int(rel / NotifyMultiplier)
		if rel%NotifyMultiplier != 0 || q >= t.nq {
			t.fault("notification at offset %#x", rel)
			return
		}
		_ = t.common.Kick(q).Write()
	default:
		t.fault("modern BAR write at %#x", off)
	}
}

// readCommon serves a read of the common configuration. Registers are read
// at their natural width; 64-bit queue addresses also as two 32-bit halves.
func (t *Transport) readCommon(off uint64, data []byte) {
	le := binary.LittleEndian
	c := t.common
	n := len(data)
	r := &t.regs
	switch {
	case off == ccDeviceFeatureSelect && n == 4:
		r.mu.Lock()
		le.PutUint32(data, r.devFeatureSel)
		r.mu.Unlock()
	case off == ccDeviceFeature && n == 4:
		if c.Status() == 0 && t.mode == Transitional {
			// A modern driver is probing: offer the modern feature set.
			c.SetLegacy(false)
		}
		r.mu.Lock()
		sel := r.devFeatureSel
		r.mu.Unlock()
		if sel <= 1 {
			le.PutUint32(data, uint32(c.OfferedFeatures(c.Legacy())>>(32*sel)))
		}
	case off == ccDriverFeatureSelect && n == 4:
		r.mu.Lock()
		le.PutUint32(data, r.drvFeatureSel)
		r.mu.Unlock()
	case off == ccDriverFeature && n == 4:
		r.mu.Lock()
		sel := r.drvFeatureSel
		r.mu.Unlock()
		if sel <= 1 {
			le.PutUint32(data, uint32(c.DriverFeatures()>>(32*sel)))
		}
	case off == ccConfigMSIXVector && n == 2:
		r.mu.Lock()
		le.PutUint16(data, r.configVector)
		r.mu.Unlock()
	case off == ccNumQueues && n == 2:
		le.PutUint16(data, uint16(t.nq))
	case off == ccDeviceStatus && n == 1:
		data[0] = c.Status()
	case off == ccConfigGeneration && n == 1:
		data[0] = uint8(t.generation.Load())
	case off == ccQueueSelect && n == 2:
		le.PutUint16(data, uint16(t.selectedQueue()))
	case off == ccQueueSize && n == 2:
		cfg, _ := c.Queue(t.selectedQueue())
		le.PutUint16(data, cfg.Size)
	case off == ccQueueMSIXVector && n == 2:
		le.PutUint16(data, t.queueVector())
	case off == ccQueueEnable && n == 2:
		if _, enabled := c.Queue(t.selectedQueue()); enabled {
			le.PutUint16(data, 1)
		}
	case off == ccQueueNotifyOff && n == 2:
		if q := t.selectedQueue(); q < t.nq {
			le.PutUint16(data, uint16(q))
		}
	case off >= ccQueueDesc && off < ccSize:
		area, hi, ok := queueAddr(off, n)
		if !ok {
			t.fault("common configuration read of %d bytes at %#x", n, off)
			return
		}
		cfg, _ := c.Queue(t.selectedQueue())
		v := *ringAddr(&cfg, area)
		switch {
		case n == 8:
			le.PutUint64(data, v)
		case hi:
			le.PutUint32(data, uint32(v>>32))
		default:
			le.PutUint32(data, uint32(v))
		}
	default:
		t.fault("common configuration read of %d bytes at %#x", n, off)
	}
}

// queueAddr decodes an access to one of the three 64-bit queue address
// registers: which one (0 descriptors, 1 driver area, 2 device area), and
// whether a 32-bit access is to its upper half.
func queueAddr(off uint64, n int) (area int, hi, ok bool) {
	rel := off - ccQueueDesc
	area = int(rel / 8)
	switch {
	case n == 8 && rel%8 == 0:
		return area, false, true
	case n == 4 && rel%4 == 0:
		return area, rel%8 == 4, true
	}
	return 0, false, false
}

// ringAddr returns the address field of cfg that queue address register
// area holds.
func ringAddr(cfg *virtio.QueueConfig, area int) *uint64 {
	switch area {
	case 0:
		return &cfg.DescAddr
	case 1:
		return &cfg.AvailAddr
	}
	return &cfg.UsedAddr
}

func (t *Transport) writeCommon(off uint64, data []byte) {
	le := binary.LittleEndian
	c := t.common
	n := len(data)
	r := &t.regs
	// Selectors may be written at any time; everything else decides the
	// interface a transitional device's driver uses.
	switch {
	case off == ccDeviceFeatureSelect && n == 4:
		r.mu.Lock()
		r.devFeatureSel = le.Uint32(data)
		r.mu.Unlock()
		return
	case off == ccDriverFeatureSelect && n == 4:
		r.mu.Lock()
		r.drvFeatureSel = le.Uint32(data)
		r.mu.Unlock()
		return
	case off == ccQueueSelect && n == 2:
		r.mu.Lock()
		r.queueSel = le.Uint16(data)
		r.mu.Unlock()
		return
	}
	if !t.claim(false) {
		return
	}
	switch {
	case off == ccDriverFeature && n == 4:
		r.mu.Lock()
		sel := r.drvFeatureSel
		r.mu.Unlock()
		c.SetDriverFeatures(sel, le.Uint32(data))
	case off == ccConfigMSIXVector && n == 2:
		v := t.vectorOK(le.Uint16(data))
		r.mu.Lock()
		r.configVector = v
		r.mu.Unlock()
	case off == ccDeviceStatus && n == 1:
		t.setStatus(data[0])
	case off == ccQueueSize && n == 2:
		t.setQueue("queue size", func(cfg *virtio.QueueConfig, _ *bool) { cfg.Size = le.Uint16(data) })
	case off == ccQueueMSIXVector && n == 2:
		t.setQueueVector(le.Uint16(data))
	case off == ccQueueEnable && n == 2:
		switch le.Uint16(data) {
		case 1:
			t.setQueue("queue enable", func(_ *virtio.QueueConfig, enabled *bool) { *enabled = true })
		case 0:
			// Writing 0 is not defined for the driver; ignore it.
		default:
			t.fault("queue_enable written with %#x", le.Uint16(data))
		}
	case off >= ccQueueDesc && off < ccSize:
		area, hi, ok := queueAddr(off, n)
		if !ok {
			t.fault("common configuration write of %d bytes at %#x", n, off)
			return
		}
		t.setQueue("queue address", func(cfg *virtio.QueueConfig, _ *bool) {
			p := ringAddr(cfg, area)
			switch {
			case n == 8:
				*p = le.Uint64(data)
			case hi:
				*p = *p&0xffffffff | uint64(le.Uint32(data))<<32
			default:
				*p = *p&^0xffffffff | uint64(le.Uint32(data))
			}
		})
	default:
		t.fault("common configuration write of %d bytes at %#x", n, off)
	}
}
