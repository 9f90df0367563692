package pcitransport

import (
	"encoding/binary"
	"testing"

	"github.com/govmd/govmd/memory"
	"github.com/govmd/govmd/virtio"
)

// FuzzRegisters drives a transitional transport with an arbitrary sequence
// of BAR and configuration space accesses, as a hostile driver would. It
// checks that nothing panics and that queue configuration never changes
// while the device is active.
//
// Each operation is 12 bytes: kind (bit 0 write, bits 1-2 target: legacy
// BAR, modern BAR, MSI-X BAR, config space), size selector, 2 bytes of
// offset, 8 bytes of value.
func FuzzRegisters(f *testing.F) {
	seed := func(ops ...[]byte) []byte {
		var b []byte
		for _, o := range ops {
			b = append(b, o...)
		}
		return b
	}
	op := func(kind, size byte, off uint16, v uint64) []byte {
		b := make([]byte, 12)
		b[0], b[1] = kind, size
		binary.LittleEndian.PutUint16(b[2:], off)
		binary.LittleEndian.PutUint64(b[4:], v)
		return b
	}
	const (
		legacyW  = 1
		modernW  = 3
		modernR  = 2
		configW  = 7
		sizeB    = 0
		sizeW    = 1
		sizeD    = 2
		sizeQ    = 3
		statusOK = virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK | virtio.StatusDriverOK
	)
	f.Add(seed(
		op(modernW, sizeB, ccDeviceStatus, 0),
		op(modernW, sizeD, ccDriverFeatureSelect, 1),
		op(modernW, sizeD, ccDriverFeature, 1),
		op(modernW, sizeB, ccDeviceStatus, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK),
		op(modernW, sizeW, ccQueueSize, 16),
		op(modernW, sizeQ, ccQueueDesc, 0x1000),
		op(modernW, sizeQ, ccQueueDriver, 0x2000),
		op(modernW, sizeQ, ccQueueDevice, 0x3000),
		op(modernW, sizeW, ccQueueEnable, 1),
		op(modernW, sizeB, ccDeviceStatus, statusOK),
		op(modernW, sizeW, ccQueueSize, 0),
		op(modernW, sizeW, modernNotify, 0),
		op(modernR, sizeB, modernISR, 0),
	))
	f.Add(seed(
		op(legacyW, sizeB, legacyStatus, 3),
		op(legacyW, sizeD, legacyGuestFeatures, 0xffffffff),
		op(legacyW, sizeD, legacyQueuePFN, 0xfffff),
		op(legacyW, sizeB, legacyStatus, 7),
		op(legacyW, sizeW, legacyQueueSel, 9),
		op(legacyW, sizeW, legacyNotify, 0xffff),
	))
	f.Add(seed(
		op(configW, sizeW, 0x04, 0x7),
		op(configW, sizeD, 0x10, 0xffffffff),
		op(configW, sizeD, 0x60, 0xffffffff),
		op(configW, sizeW, 0x42, 0xc000),
	))
	f.Fuzz(func(t *testing.T, b []byte) {
		dev := &fakeDevice{}
		mem := memory.FromBytes(memory.Region{GPA: 0, Host: make([]byte, 1<<16)})
		tr, err := New(Config{Mode: Transitional, Device: dev, Mem: mem, MSIX: &fakeSink{}, INTx: &fakeLine{}, Doorbells: &fakeBells{}})
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		var latched []virtio.QueueConfig
		for len(b) >= 12 {
			kind, size := b[0], 1<<(b[1]&3)
			off := uint64(binary.LittleEndian.Uint16(b[2:]))
			data := make([]byte, 8)
			copy(data, b[4:12])
			data = data[:size]
			b = b[12:]
			write := kind&1 != 0
			switch (kind >> 1) & 3 {
			case 0, 1, 2:
				bar := []int{BARLegacy, BARModern, BARMSIX}[(kind>>1)&3]
				if write {
					tr.WriteBAR(bar, off, data)
				} else {
					tr.ReadBAR(bar, off, data)
				}
			case 3:
				if write {
					tr.Config().Write(int(off&0xff), data)
				} else {
					tr.Config().Read(int(off&0xff), data)
				}
			}
			if kind&0x80 != 0 {
				tr.Notify(int(kind & 1))
				tr.ConfigChanged()
				tr.Resample()
			}
			active := tr.Common().Active()
			if !active {
				latched = nil
				continue
			}
			a := dev.activated[len(dev.activated)-1]
			var now []virtio.QueueConfig
			for _, q := range a.Queues {
				if q != nil {
					now = append(now, q.Config())
				}
			}
			if latched == nil {
				latched = now
				continue
			}
			for i := range now {
				if now[i] != latched[i] {
					t.Fatalf("active queue %d changed: %+v -> %+v", i, latched[i], now[i])
				}
			}
		}
	})
}
