package pcitransport

import (
	"encoding/binary"

	"github.com/govmd/govmd/virtio"
)

// Legacy (virtio 0.9.5) register offsets in the I/O BAR.
const (
	legacyHostFeatures  = 0  // 32, R
	legacyGuestFeatures = 4  // 32, RW
	legacyQueuePFN      = 8  // 32, RW
	legacyQueueNum      = 12 // 16, R
	legacyQueueSel      = 14 // 16, RW
	legacyNotify        = 16 // 16, W
	legacyStatus        = 18 // 8, RW
	legacyISR           = 19 // 8, R (read clears)
	legacyConfigVector  = 20 // 16, RW, only while MSI-X is enabled
	legacyQueueVector   = 22 // 16, RW, only while MSI-X is enabled
	// The device configuration starts at 20, or at 24 while MSI-X is
	// enabled.
	legacyConfig     = 20
	legacyConfigMSIX = 24
)

// claim records which interface a transitional device's driver uses. The
// choice is made by a write while the device is reset; a write through the
// other interface after that is a driver mistake and is ignored (false).
func (t *Transport) claim(legacy bool) bool {
	if t.mode != Transitional {
		return true
	}
	if t.common.Status() == 0 {
		if t.common.Legacy() != legacy {
			t.common.SetLegacy(legacy)
		}
		return true
	}
	if t.common.Legacy() != legacy {
		iface := "modern"
		if legacy {
			iface = "legacy"
		}
		t.fault("%s register write while the driver uses the other interface", iface)
		return false
	}
	return true
}

func (t *Transport) legacyConfigBase() uint64 {
	if t.msix.Enabled() {
		return legacyConfigMSIX
	}
	return legacyConfig
}

func (t *Transport) readLegacy(off uint64, data []byte) {
	le := binary.LittleEndian
	n := len(data)
	if base := t.legacyConfigBase(); off >= base {
		t.dev.ReadConfig(off-base, data)
		return
	}
	switch {
	case off == legacyHostFeatures && n == 4:
		le.PutUint32(data, uint32(t.common.OfferedFeatures(true)))
	case off == legacyGuestFeatures && n == 4:
		le.PutUint32(data, uint32(t.common.DriverFeatures()))
	case off == legacyQueuePFN && n == 4:
		if cfg, enabled := t.common.Queue(t.selectedQueue()); enabled {
			le.PutUint32(data, uint32(cfg.DescAddr/legacyPageSize))
		}
	case off == legacyQueueNum && n == 2:
		le.PutUint16(data, t.common.QueueMax(t.selectedQueue()))
	case off == legacyQueueSel && n == 2:
		le.PutUint16(data, uint16(t.selectedQueue()))
	case off == legacyStatus && n == 1:
		data[0] = t.common.Status()
	case off == legacyISR && n == 1:
		data[0] = t.readISR()
	case off == legacyConfigVector && n == 2:
		t.regs.mu.Lock()
		le.PutUint16(data, t.regs.configVector)
		t.regs.mu.Unlock()
	case off == legacyQueueVector && n == 2:
		le.PutUint16(data, t.queueVector())
	default:
		t.fault("legacy read of %d bytes at %#x", n, off)
	}
}

func (t *Transport) writeLegacy(off uint64, data []byte) {
	le := binary.LittleEndian
	n := len(data)
	if base := t.legacyConfigBase(); off >= base {
		if t.claim(true) {
			t.dev.WriteConfig(off-base, data)
		}
		return
	}
	switch {
	case off == legacyNotify && n == 2:
		q := le.Uint16(data)
		if int(q) >= t.nq {
			t.fault("legacy notify of queue %d", q)
			return
		}
		_ = t.common.Kick(int(q)).Write()
		return
	case off == legacyStatus && n == 1:
		if !t.claim(true) {
			return
		}
		t.setStatus(data[0])
		return
	}
	if !t.claim(true) {
		return
	}
	switch {
	case off == legacyGuestFeatures && n == 4:
		t.common.SetDriverFeatures(0, le.Uint32(data))
	case off == legacyQueuePFN && n == 4:
		pfn := le.Uint32(data)
		max := t.common.QueueMax(t.selectedQueue())
		t.setQueue("queue PFN", func(cfg *virtio.QueueConfig, enabled *bool) {
			*cfg, *enabled = legacyRings(pfn, max), pfn != 0
		})
	case off == legacyQueueSel && n == 2:
		t.regs.mu.Lock()
		t.regs.queueSel = le.Uint16(data)
		t.regs.mu.Unlock()
	case off == legacyConfigVector && n == 2:
		v := t.vectorOK(le.Uint16(data))
		t.regs.mu.Lock()
		t.regs.configVector = v
		t.regs.mu.Unlock()
	case off == legacyQueueVector && n == 2:
		t.setQueueVector(le.Uint16(data))
	default:
		t.fault("legacy write of %d bytes at %#x", n, off)
	}
}

// LegacyNotifyOffset is the offset of the legacy queue notify register.
const LegacyNotifyOffset = legacyNotify

// legacyPageSize is the legacy interface's queue address unit and ring
// alignment.
const legacyPageSize = 4096

// legacyRings is the legacy interface's queue layout: the rings laid out
// contiguously from pfn*4096 with the queue at its maximum size n, the used
// ring on the next page boundary (virtio 0.9.5, 2.3). PFN 0 disables the
// queue.
func legacyRings(pfn uint32, n uint16) virtio.QueueConfig {
	if pfn == 0 {
		return virtio.QueueConfig{Size: n}
	}
	desc := uint64(pfn) * legacyPageSize
	avail := desc + 16*uint64(n)
	used := (avail + 6 + 2*uint64(n) + legacyPageSize - 1) &^ (legacyPageSize - 1)
	return virtio.QueueConfig{Size: n, DescAddr: desc, AvailAddr: avail, UsedAddr: used}
}

var _ virtio.Transport = (*Transport)(nil)
