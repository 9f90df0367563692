package pci

import (
	"encoding/binary"
	"fmt"
	"sync"
)

// MSI-X message control bits.
const (
	msixEnable       = 1 << 15
	msixFunctionMask = 1 << 14
)

// MSIXMaxVectors is the largest table the capability can describe.
const MSIXMaxVectors = 2048

// msixEntrySize is the size of one table entry: address low, address high,
// data, vector control.
const msixEntrySize = 16

// msixEntryMask is the guest write mask of each byte of a table entry: the
// two low address bits are zero (dword aligned), vector control has only the
// mask bit.
var msixEntryMask = [msixEntrySize]byte{
	0xfc, 0xff, 0xff, 0xff,
	0xff, 0xff, 0xff, 0xff,
	0xff, 0xff, 0xff, 0xff,
	0x01, 0x00, 0x00, 0x00,
}

// MSIXConfig describes where an MSI-X table lives and how messages leave.
type MSIXConfig struct {
	// Vectors is the number of table entries, 1..MSIXMaxVectors.
	Vectors int
	// TableBAR and TableOffset locate the table; PBABAR and PBAOffset the
	// pending bit array. The BARs must already exist (AddBAR), be memory
	// BARs and be large enough; offsets are 8-byte aligned.
	TableBAR    int
	TableOffset uint32
	PBABAR      int
	PBAOffset   uint32
	// Deliver sends one message. It is called with the MSIX lock held
	// (so a message never leaves after the guest masked or rewrote its
	// entry) and must not call MSIX methods.
	Deliver func(vector int, addr uint64, data uint32)
	// OnChange, if not nil, is told when what a vector would deliver
	// changes: masked is true when MSI-X is disabled or the vector is
	// masked (function or entry mask); addr and data matter only when
	// masked is false. It is called with the MSIX lock held and must not
	// call MSIX methods. The VMM uses it to keep KVM GSI routes in step
	// with the table.
	OnChange func(vector int, addr uint64, data uint32, masked bool)
}

// TriggerResult says what Trigger did.
type TriggerResult int

// Trigger results.
const (
	Delivered     TriggerResult = iota // the message was sent
	Pending                            // the vector is masked; its pending bit is set
	NotEnabled                         // MSI-X is disabled; use INTx
	InvalidVector                      // no such vector
)

func (r TriggerResult) String() string {
	switch r {
	case Delivered:
		return "delivered"
	case Pending:
		return "pending"
	case NotEnabled:
		return "not enabled"
	case InvalidVector:
		return "invalid vector"
	}
	return fmt.Sprintf("TriggerResult(%d)", int(r))
}

type vectorState struct {
	masked bool
	addr   uint64
	data   uint32
}

// MSIX is the MSI-X capability, vector table and pending bit array of one
// function. The enable and function mask bits live in the configuration
// space; the table and PBA are served through the device's BAR handlers
// with ReadBAR/WriteBAR (or the Read/Write Table/PBA methods).
//
// MSIX is safe for concurrent use: device goroutines call Trigger while
// vCPUs write the table. Lock order is MSIX, then ConfigSpace.
type MSIX struct {
	cs  *ConfigSpace
	cap int
	cfg MSIXConfig

	mu       sync.Mutex
	table    []byte
	pba      []uint64
	notified []vectorState // last state reported to OnChange
}

// NewMSIX adds an MSI-X capability to cs and returns the table behind it.
// All entries start masked; MSI-X starts disabled.
func NewMSIX(cs *ConfigSpace, cfg MSIXConfig) (*MSIX, error) {
	n := cfg.Vectors
	if n < 1 || n > MSIXMaxVectors {
		return nil, fmt.Errorf("pci: MSI-X vector count %d not in [1, %d]", n, MSIXMaxVectors)
	}
	if cfg.Deliver == nil {
		return nil, fmt.Errorf("pci: MSI-X needs a Deliver function")
	}
	tableSize := uint64(n) * msixEntrySize
	pbaSize := uint64((n+63)/64) * 8
	if err := checkMSIXRegion(cs, "table", cfg.TableBAR, cfg.TableOffset, tableSize); err != nil {
		return nil, err
	}
	if err := checkMSIXRegion(cs, "PBA", cfg.PBABAR, cfg.PBAOffset, pbaSize); err != nil {
		return nil, err
	}
	if cfg.TableBAR == cfg.PBABAR {
		t0, t1 := uint64(cfg.TableOffset), uint64(cfg.TableOffset)+tableSize
		p0, p1 := uint64(cfg.PBAOffset), uint64(cfg.PBAOffset)+pbaSize
		if t0 < p1 && p0 < t1 {
			return nil, fmt.Errorf("pci: MSI-X table and PBA overlap")
		}
	}
	body := make([]byte, 10)
	le := binary.LittleEndian
	le.PutUint16(body[0:], uint16(n-1))
	le.PutUint32(body[2:], cfg.TableOffset|uint32(cfg.TableBAR))
	le.PutUint32(body[6:], cfg.PBAOffset|uint32(cfg.PBABAR))
	mask := make([]byte, 10)
	le.PutUint16(mask[0:], msixEnable|msixFunctionMask)
	off, err := cs.AddCapability(CapMSIX, body, mask)
	if err != nil {
		return nil, fmt.Errorf("pci: MSI-X capability: %w", err)
	}
	m := &MSIX{
		cs:       cs,
		cap:      off,
		cfg:      cfg,
		table:    make([]byte, tableSize),
		pba:      make([]uint64, (n+63)/64),
		notified: make([]vectorState, n),
	}
	for v := 0; v < n; v++ {
		m.table[v*msixEntrySize+12] = 1
		m.notified[v].masked = true
	}
	if err := cs.AddHook(Hook{Start: off + 2, Len: 2, Write: m.controlWritten}); err != nil {
		return nil, err
	}
	return m, nil
}

func checkMSIXRegion(cs *ConfigSpace, what string, bar int, off uint32, size uint64) error {
	if off&7 != 0 {
		return fmt.Errorf("pci: MSI-X %s offset %#x not 8-byte aligned", what, off)
	}
	kind, barSize, _ := cs.BAR(bar)
	if kind != BARMem32 && kind != BARMem64 {
		return fmt.Errorf("pci: MSI-X %s BAR %d is not a memory BAR", what, bar)
	}
	if uint64(off)+size > barSize {
		return fmt.Errorf("pci: MSI-X %s (%#x+%#x) does not fit BAR %d of %#x bytes", what, off, size, bar, barSize)
	}
	return nil
}

// Capability returns the configuration space offset of the capability.
func (m *MSIX) Capability() int { return m.cap }

// Vectors returns the number of table entries.
func (m *MSIX) Vectors() int { return m.cfg.Vectors }

// TableSize and PBASize return the byte size of the two regions.
func (m *MSIX) TableSize() uint64 { return uint64(len(m.table)) }

// PBASize returns the byte size of the pending bit array.
func (m *MSIX) PBASize() uint64 { return uint64(len(m.pba)) * 8 }

// control reads the message control register. Called with m.mu held.
func (m *MSIX) control() uint16 {
	var b [2]byte
	m.cs.Get(m.cap+2, b[:])
	return binary.LittleEndian.Uint16(b[:])
}

// Enabled reports whether the guest enabled MSI-X.
func (m *MSIX) Enabled() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.control()&msixEnable != 0
}

// Masked reports whether vector is masked, by the function mask or its
// entry's mask bit. An invalid vector is masked.
func (m *MSIX) Masked(vector int) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if vector < 0 || vector >= m.cfg.Vectors {
		return true
	}
	return m.maskedLocked(m.control(), vector)
}

func (m *MSIX) maskedLocked(ctrl uint16, v int) bool {
	return ctrl&msixFunctionMask != 0 || m.table[v*msixEntrySize+12]&1 != 0
}

// Message returns the address and data of vector's entry; ok is false for
// an invalid vector.
func (m *MSIX) Message(vector int) (addr uint64, data uint32, ok bool) {
	if vector < 0 || vector >= m.cfg.Vectors {
		return 0, 0, false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	addr, data = m.messageLocked(vector)
	return addr, data, true
}

func (m *MSIX) messageLocked(v int) (uint64, uint32) {
	e := m.table[v*msixEntrySize:]
	le := binary.LittleEndian
	return le.Uint64(e[0:]), le.Uint32(e[8:])
}

// Pending reports vector's pending bit.
func (m *MSIX) Pending(vector int) bool {
	if vector < 0 || vector >= m.cfg.Vectors {
		return false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.pba[vector/64]&(1<<(vector%64)) != 0
}

// Trigger signals vector: with MSI-X enabled and the vector unmasked the
// message is delivered; if it is masked the pending bit is set and the
// message goes out when the guest unmasks it.
func (m *MSIX) Trigger(vector int) TriggerResult {
	if vector < 0 || vector >= m.cfg.Vectors {
		return InvalidVector
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	ctrl := m.control()
	if ctrl&msixEnable == 0 {
		return NotEnabled
	}
	if m.maskedLocked(ctrl, vector) {
		m.pba[vector/64] |= 1 << (vector % 64)
		return Pending
	}
	addr, data := m.messageLocked(vector)
	m.cfg.Deliver(vector, addr, data)
	return Delivered
}

// ReadTable performs a guest read of the vector table; off is relative to
// the start of the table. Bytes outside the table read as zero.
func (m *MSIX) ReadTable(off uint64, data []byte) {
	clear(data)
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range data {
		if o := off + uint64(i); o >= off && o < uint64(len(m.table)) {
			data[i] = m.table[o]
		}
	}
}

// WriteTable performs a guest write of the vector table, of any size at
// any offset; bytes outside the table are ignored. Unmasking a vector whose
// pending bit is set delivers its message and clears the bit.
func (m *MSIX) WriteTable(off uint64, data []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	first, last := -1, -1
	for i, b := range data {
		o := off + uint64(i)
		if o < off || o >= uint64(len(m.table)) {
			continue
		}
		mask := msixEntryMask[o%msixEntrySize]
		m.table[o] = m.table[o]&^mask | b&mask
		v := int(o / msixEntrySize)
		if first < 0 {
			first = v
		}
		last = v
	}
	if first < 0 {
		return
	}
	ctrl := m.control()
	for v := first; v <= last; v++ {
		m.update(ctrl, v)
	}
}

// update delivers a pending message the guest just unmasked and reports a
// changed vector to OnChange. Called with m.mu held.
func (m *MSIX) update(ctrl uint16, v int) {
	masked := ctrl&msixEnable == 0 || m.maskedLocked(ctrl, v)
	addr, data := m.messageLocked(v)
	if !masked && m.pba[v/64]&(1<<(v%64)) != 0 {
		m.pba[v/64] &^= 1 << (v % 64)
		m.cfg.Deliver(v, addr, data)
	}
	if m.cfg.OnChange == nil {
		return
	}
	prev := m.notified[v]
	if prev.masked == masked && (masked || prev.addr == addr && prev.data == data) {
		return
	}
	m.notified[v] = vectorState{masked: masked, addr: addr, data: data}
	m.cfg.OnChange(v, addr, data, masked)
}

// controlWritten runs after a guest write to the message control register:
// enabling MSI-X or clearing the function mask may unmask vectors.
func (m *MSIX) controlWritten(int, []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ctrl := m.control()
	for v := 0; v < m.cfg.Vectors; v++ {
		m.update(ctrl, v)
	}
}

// ReadPBA performs a guest read of the pending bit array; off is relative
// to its start. Bytes outside the array read as zero.
func (m *MSIX) ReadPBA(off uint64, data []byte) {
	clear(data)
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range data {
		o := off + uint64(i)
		if o < off || o >= uint64(len(m.pba))*8 {
			continue
		}
		data[i] = byte(m.pba[o/8] >> (8 * (o % 8)))
	}
}

// WritePBA ignores a guest write: the pending bit array is read only.
func (m *MSIX) WritePBA(uint64, []byte) {}

// ReadBAR serves a guest read of bar at off if it falls in the table or the
// PBA, and reports whether it did. A device calls it first from its own
// ReadBAR.
func (m *MSIX) ReadBAR(bar int, off uint64, data []byte) bool {
	if r, o, ok := m.region(bar, off); ok {
		if r == regionTable {
			m.ReadTable(o, data)
		} else {
			m.ReadPBA(o, data)
		}
		return true
	}
	return false
}

// WriteBAR serves a guest write like ReadBAR.
func (m *MSIX) WriteBAR(bar int, off uint64, data []byte) bool {
	if r, o, ok := m.region(bar, off); ok {
		if r == regionTable {
			m.WriteTable(o, data)
		}
		return true
	}
	return false
}

const (
	regionTable = iota
	regionPBA
)

// region finds which MSI-X region an access starts in.
func (m *MSIX) region(bar int, off uint64) (int, uint64, bool) {
	if bar == m.cfg.TableBAR {
		if t := uint64(m.cfg.TableOffset); off >= t && off-t < m.TableSize() {
			return regionTable, off - t, true
		}
	}
	if bar == m.cfg.PBABAR {
		if p := uint64(m.cfg.PBAOffset); off >= p && off-p < m.PBASize() {
			return regionPBA, off - p, true
		}
	}
	return 0, 0, false
}
