package pci

import (
	"encoding/binary"
	"fmt"
	"sync"
	"testing"
)

// le32 and friends encode access data.
func le16(v uint16) []byte { return binary.LittleEndian.AppendUint16(nil, v) }
func le32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }

// val decodes little-endian access data of any length up to 8.
func val(b []byte) uint64 {
	var v uint64
	for i := len(b) - 1; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
}

// put encodes v in n bytes, little endian.
func put(v uint64, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(v >> (8 * i))
	}
	return b
}

func read(cs *ConfigSpace, off, n int) uint64 {
	b := make([]byte, n)
	cs.Read(off, b)
	return val(b)
}

func write(cs *ConfigSpace, off, n int, v uint64) { cs.Write(off, put(v, n)) }

var testID = Identity{
	Vendor: 0x1af4, Device: 0x1041, Revision: 1,
	Class: 0x02, Subclass: 0x00, ProgIF: 0x00,
	SubsystemVendor: 0x1af4, Subsystem: 0x0001,
}

// testDev is a Device whose BARs are plain memory, with an optional MSI-X
// table, that records BARObserver calls.
type testDev struct {
	cs   *ConfigSpace
	msix *MSIX

	mu     sync.Mutex
	mem    [NumBARs][]byte
	events []string
}

func newTestDev(t testing.TB, bars ...barSpec) *testDev {
	t.Helper()
	d := &testDev{cs: NewConfigSpace(testID)}
	for _, b := range bars {
		if err := d.cs.AddBAR(b.index, b.kind, b.size, b.prefetch); err != nil {
			t.Fatal(err)
		}
		n := b.size
		if n > 1<<16 {
			n = 1 << 16
		}
		d.mem[b.index] = make([]byte, n)
	}
	return d
}

type barSpec struct {
	index    int
	kind     BARKind
	size     uint64
	prefetch bool
}

func (d *testDev) Config() *ConfigSpace { return d.cs }

func (d *testDev) ReadBAR(bar int, off uint64, data []byte) {
	if d.msix != nil && d.msix.ReadBAR(bar, off, data) {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	clear(data)
	if bar < 0 || bar >= NumBARs {
		return
	}
	m := d.mem[bar]
	for i := range data {
		if o := off + uint64(i); o < uint64(len(m)) {
			data[i] = m[o]
		}
	}
}

func (d *testDev) WriteBAR(bar int, off uint64, data []byte) {
	if d.msix != nil && d.msix.WriteBAR(bar, off, data) {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if bar < 0 || bar >= NumBARs {
		return
	}
	m := d.mem[bar]
	for i, b := range data {
		if o := off + uint64(i); o < uint64(len(m)) {
			m[o] = b
		}
	}
}

func (d *testDev) BARMapped(bar int, addr uint64, kind BARKind, mapped bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.events = append(d.events, fmt.Sprintf("%d %v %#x %v", bar, kind, addr, mapped))
}

func (d *testDev) takeEvents() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	e := d.events
	d.events = nil
	return e
}
