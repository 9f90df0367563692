package pci

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/govmd/govmd/bus"
	"github.com/govmd/govmd/internal/ratelimit"
)

// Configuration mechanism #1 ports.
const (
	PortConfigAddress = 0xcf8 // 32-bit CONFIG_ADDRESS register
	PortConfigData    = 0xcfc // CONFIG_DATA, 0xCFC-0xCFF
	// PortReset is the reset control register that chipsets place inside
	// the CONFIG_ADDRESS dword; see RootConfig.Reset.
	PortReset = 0xcf9
)

// configAddrEnable is the enable bit of CONFIG_ADDRESS; configAddrMask keeps
// the bits the register stores (enable, bus, device, function, register).
const (
	configAddrEnable = 1 << 31
	configAddrMask   = configAddrEnable | 0x00fffffc
)

// Identity of the host bridge at 00:00.0. Red Hat's "QEMU PCIe host bridge"
// ID is used because no x86 Linux driver binds to it (Intel host bridge IDs
// attract AGP/EDAC drivers that probe chipset registers).
const (
	HostBridgeVendor = 0x1b36
	HostBridgeDevice = 0x0008
)

// ECAMBusSize is the ECAM space of one bus: 32 devices x 8 functions x 4 KiB.
const ECAMBusSize = 1 << 20

// NumSlots is the number of device numbers on bus 0. Slot 0 holds the host
// bridge.
const NumSlots = 32

// INTx routing: pin P (PinA = 1) of the device in slot S is wired to IOAPIC
// GSI INTxGSIBase + (S + P - 1) mod INTxGSICount. With single-function
// devices that all use INTA, slots 1..8 get distinct GSIs (17..23, then 16).
const (
	INTxGSIBase  = 16
	INTxGSICount = 8
)

// INTxRoute returns the IOAPIC GSI that pin (PinA..PinD) of slot routes to.
func INTxRoute(slot int, pin byte) uint32 {
	return INTxGSIBase + uint32((slot+int(pin)-1)&(INTxGSICount-1))
}

// Route is one INTx routing table entry. Pin uses the configuration space
// encoding (PinA = 1); an ACPI _PRT entry uses Pin-1.
type Route struct {
	Slot int
	Pin  byte
	GSI  uint32
}

// Routes returns the static routing table for slots 1..31 and pins A..D,
// the content of the ACPI _PRT.
func Routes() []Route {
	rs := make([]Route, 0, (NumSlots-1)*4)
	for s := 1; s < NumSlots; s++ {
		for p := PinA; p <= PinD; p++ {
			rs = append(rs, Route{Slot: s, Pin: p, GSI: INTxRoute(s, p)})
		}
	}
	return rs
}

// RootConfig is the address space the Root hands out, as firmware would.
type RootConfig struct {
	// IO is the window for I/O BARs, for example 0xc000-0xffff.
	IO Window
	// Mem32 is the window for memory BARs below 4 GiB, inside the PCI
	// hole and clear of the IOAPIC (0xfec00000) and LAPIC (0xfee00000).
	Mem32 Window
	// Mem64 is the window above RAM. 64-bit BARs go to Mem32 while it has
	// room (so 32-bit guests can reach them) and to Mem64 otherwise. Size
	// 0 means none.
	Mem64 Window
	// ECAM, if Size is not 0, is the MMIO configuration window: 1 MiB per
	// bus from bus 0, Base aligned to 1 MiB, at most 256 buses.
	ECAM Window
	// Reset, if not nil, receives byte accesses to port 0xCF9 (offset 0),
	// which lies inside the CONFIG_ADDRESS dword the Root occupies.
	Reset bus.Handler
}

type barMap struct {
	h      *barHandler
	kind   BARKind
	size   uint64
	on     bool   // registered on a bus
	addr   uint64 // where, when on
	failed uint64 // last address that could not be registered (logged once)
}

type slot struct {
	num  int
	dev  Device
	cs   *ConfigSpace
	obs  BARObserver
	bars [NumBARs]barMap
}

// Root is the PCI host bridge of bus 0. It decodes configuration mechanism
// #1 and ECAM, places BARs, and keeps the buses in step with the BARs the
// guest programs.
//
// Devices are added with AddDevice before the vCPUs start. Afterwards every
// method is safe for concurrent use. BAR (re)mapping is serialized; lock
// order is Root, then ConfigSpace, then bus.
type Root struct {
	pio, mmio *bus.Bus
	log       *slog.Logger
	glog      *ratelimit.Logger
	cfg       RootConfig

	addrMu sync.Mutex
	addr   uint32 // latched CONFIG_ADDRESS

	mu    sync.RWMutex // slots, allocators
	slots [NumSlots]*slot
	io    allocator
	mem32 allocator
	mem64 allocator

	mapMu sync.Mutex // serializes BAR (un)registration
}

// NewRoot creates the host bridge at 00:00.0 and registers configuration
// mechanism #1 (ports 0xCF8-0xCFF) on pio and, if cfg.ECAM.Size is not 0,
// the ECAM window on mmio.
func NewRoot(pio, mmio *bus.Bus, log *slog.Logger, cfg RootConfig) (*Root, error) {
	if pio == nil || mmio == nil {
		return nil, errors.New("pci: NewRoot needs both buses")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for _, w := range []struct {
		name string
		w    Window
	}{{"I/O", cfg.IO}, {"32-bit memory", cfg.Mem32}, {"64-bit memory", cfg.Mem64}, {"ECAM", cfg.ECAM}} {
		if w.w.Size != 0 && w.w.Base+w.w.Size < w.w.Base {
			return nil, fmt.Errorf("pci: %s window %#x+%#x wraps", w.name, w.w.Base, w.w.Size)
		}
	}
	if cfg.IO.Size != 0 && cfg.IO.Base+cfg.IO.Size > 1<<16 {
		return nil, fmt.Errorf("pci: I/O window %#x+%#x beyond port 0xffff", cfg.IO.Base, cfg.IO.Size)
	}
	if cfg.Mem32.Size != 0 && cfg.Mem32.Base+cfg.Mem32.Size > 1<<32 {
		return nil, fmt.Errorf("pci: 32-bit memory window %#x+%#x beyond 4 GiB", cfg.Mem32.Base, cfg.Mem32.Size)
	}
	if e := cfg.ECAM; e.Size != 0 && (e.Base%ECAMBusSize != 0 || e.Size%ECAMBusSize != 0 || e.Size > 256*ECAMBusSize) {
		return nil, fmt.Errorf("pci: ECAM window %#x+%#x: want 1 MiB aligned, 1 to 256 buses", e.Base, e.Size)
	}
	if overlap(cfg.ECAM, cfg.Mem32) || overlap(cfg.ECAM, cfg.Mem64) || overlap(cfg.Mem32, cfg.Mem64) {
		return nil, errors.New("pci: ECAM and memory windows overlap")
	}
	r := &Root{
		pio:   pio,
		mmio:  mmio,
		log:   log,
		glog:  ratelimit.New(log, 10*time.Second, 10),
		cfg:   cfg,
		io:    allocator{win: cfg.IO},
		mem32: allocator{win: cfg.Mem32},
		mem64: allocator{win: cfg.Mem64},
	}
	hb := &hostBridge{cs: NewConfigSpace(Identity{
		Vendor: HostBridgeVendor, Device: HostBridgeDevice,
		Class: 0x06, Subclass: 0x00, // bridge, host bridge
	})}
	if _, err := r.AddDevice(0, hb); err != nil {
		return nil, err
	}
	ap, dp := &addrPort{r}, &dataPort{r}
	if err := pio.Register(PortConfigAddress, 4, ap); err != nil {
		return nil, fmt.Errorf("pci: config address port: %w", err)
	}
	if err := pio.Register(PortConfigData, 4, dp); err != nil {
		pio.Unregister(PortConfigAddress, ap)
		return nil, fmt.Errorf("pci: config data port: %w", err)
	}
	if cfg.ECAM.Size != 0 {
		if err := mmio.Register(cfg.ECAM.Base, cfg.ECAM.Size, &ecam{r}); err != nil {
			pio.Unregister(PortConfigAddress, ap)
			pio.Unregister(PortConfigData, dp)
			return nil, fmt.Errorf("pci: ECAM window: %w", err)
		}
	}
	return r, nil
}

func overlap(a, b Window) bool {
	return a.Size != 0 && b.Size != 0 && a.Base < b.end() && b.Base < a.end()
}

// AddDevice puts d in slot (1..31), or in the lowest free slot if slot is
// negative, and returns the slot. Like firmware, it assigns every BAR a
// naturally aligned address from the windows, enables I/O and memory
// decoding for the BAR kinds present, writes the interrupt line register
// with the routed GSI, and maps the BARs on the buses.
func (r *Root) AddDevice(slotNum int, d Device) (int, error) {
	if d == nil || d.Config() == nil {
		return 0, errors.New("pci: AddDevice: nil device or configuration space")
	}
	cs := d.Config()
	s, err := r.insert(slotNum, d, cs)
	if err != nil {
		return 0, err
	}
	for i := range s.bars {
		if b := &s.bars[i]; b.h != nil {
			r.log.Debug("pci BAR assigned", "slot", s.num, "bar", i, "kind", b.kind,
				"addr", fmt.Sprintf("%#x", cs.BARAddress(i)), "size", fmt.Sprintf("%#x", b.size))
		}
	}
	if err := cs.AddHook(Hook{Start: RegCommand, Len: 2, Write: r.decodeChanged}); err != nil {
		return 0, err
	}
	if err := cs.AddHook(Hook{Start: RegBAR0, Len: 4 * NumBARs, Write: r.decodeChanged}); err != nil {
		return 0, err
	}
	r.remap()
	return s.num, nil
}

// insert claims a slot and places the device's BARs.
func (r *Root) insert(slotNum int, d Device, cs *ConfigSpace) (*slot, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if slotNum < 0 {
		for i := 1; i < NumSlots; i++ {
			if r.slots[i] == nil {
				slotNum = i
				break
			}
		}
		if slotNum < 0 {
			return nil, errors.New("pci: no free slot on bus 0")
		}
	}
	if slotNum >= NumSlots {
		return nil, fmt.Errorf("pci: slot %d out of range", slotNum)
	}
	if r.slots[slotNum] != nil {
		return nil, fmt.Errorf("pci: slot %d in use", slotNum)
	}
	cs.mu.Lock()
	owned := cs.owned
	cs.owned = true
	cs.mu.Unlock()
	if owned {
		return nil, errors.New("pci: configuration space already attached to a bus")
	}
	s := &slot{num: slotNum, dev: d, cs: cs}
	s.obs, _ = d.(BARObserver)
	var cmd uint16
	var allocated []func()
	for i := 0; i < NumBARs; i++ {
		kind, size, _ := cs.BAR(i)
		var addr uint64
		ok := false
		switch kind {
		case BARUnused:
			continue
		case BARIO:
			addr, ok = r.io.alloc(size)
			if ok {
				allocated = append(allocated, func() { r.io.free(addr) })
			}
			cmd |= CommandIO
		case BARMem32:
			addr, ok = r.mem32.alloc(size)
			if ok {
				allocated = append(allocated, func() { r.mem32.free(addr) })
			}
			cmd |= CommandMemory
		case BARMem64:
			if addr, ok = r.mem32.alloc(size); ok {
				allocated = append(allocated, func() { r.mem32.free(addr) })
			} else if addr, ok = r.mem64.alloc(size); ok {
				allocated = append(allocated, func() { r.mem64.free(addr) })
			}
			cmd |= CommandMemory
		}
		if !ok {
			for _, f := range allocated {
				f()
			}
			cs.mu.Lock()
			cs.owned = false
			cs.mu.Unlock()
			return nil, fmt.Errorf("pci: slot %d: no room for %v BAR %d of %#x bytes", slotNum, kind, i, size)
		}
		cs.setBARAddress(i, addr)
		s.bars[i] = barMap{h: &barHandler{dev: d, bar: i}, kind: kind, size: size}
	}
	cs.mu.Lock()
	c := binary.LittleEndian.Uint16(cs.data[RegCommand:])
	binary.LittleEndian.PutUint16(cs.data[RegCommand:], c|cmd)
	if pin := cs.data[RegInterruptPin]; pin != PinNone && slotNum != 0 {
		cs.data[RegInterruptLine] = byte(INTxRoute(slotNum, pin))
	}
	cs.mu.Unlock()
	r.slots[slotNum] = s
	return s, nil
}

// INTxGSI returns the interrupt pin of the device in slot and the GSI it
// routes to; pin is PinNone if the slot is empty or the device uses no INTx.
func (r *Root) INTxGSI(slotNum int) (gsi uint32, pin byte) {
	s := r.slot(0, slotNum, 0)
	if s == nil {
		return 0, PinNone
	}
	pin = s.cs.InterruptPin()
	if pin == PinNone {
		return 0, PinNone
	}
	return INTxRoute(slotNum, pin), pin
}

// slot returns the function at bus:dev.fn, or nil if absent.
func (r *Root) slot(busNum, dev, fn int) *slot {
	if busNum != 0 || fn != 0 || dev < 0 || dev >= NumSlots {
		return nil
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.slots[dev]
}

func fillOnes(data []byte) {
	for i := range data {
		data[i] = 0xff
	}
}

// configRead reads the configuration space of bus:dev.fn; absent functions
// read all ones.
func (r *Root) configRead(busNum, dev, fn, off int, data []byte) {
	s := r.slot(busNum, dev, fn)
	if s == nil {
		fillOnes(data)
		return
	}
	s.cs.Read(off, data)
}

// configWrite writes the configuration space of bus:dev.fn; writes to
// absent functions are dropped.
func (r *Root) configWrite(busNum, dev, fn, off int, data []byte) {
	if s := r.slot(busNum, dev, fn); s != nil {
		s.cs.Write(off, data)
	}
}

// decodeChanged runs after a guest write to a command register or BAR.
func (r *Root) decodeChanged(int, []byte) { r.remap() }

// want returns where BAR i of s should be decoded now, if anywhere: decoding
// enabled for its kind, a non-zero address and a range that fits the
// address space (16-bit port space for I/O).
func want(b *barMap, cs *ConfigSpace, i int, cmd uint16) (uint64, bool) {
	addr := cs.BARAddress(i)
	if addr == 0 {
		return 0, false
	}
	switch b.kind {
	case BARIO:
		return addr, cmd&CommandIO != 0 && addr+b.size <= 1<<16
	case BARMem32, BARMem64:
		return addr, cmd&CommandMemory != 0 && addr+b.size > addr
	}
	return 0, false
}

// remap brings the bus registrations of every BAR in line with the
// configuration spaces. It unmaps first and maps second, so two BARs that
// swap addresses both end up mapped. A placement that overlaps another
// range is left unmapped (and logged); it is retried on the next change.
func (r *Root) remap() {
	r.mapMu.Lock()
	defer r.mapMu.Unlock()
	r.mu.RLock()
	slots := r.slots
	r.mu.RUnlock()

	type target struct {
		addr uint64
		ok   bool
	}
	var targets [NumSlots][NumBARs]target
	for n, s := range slots {
		if s == nil {
			continue
		}
		cmd := s.cs.Command()
		for i := range s.bars {
			b := &s.bars[i]
			if b.h == nil {
				continue
			}
			addr, ok := want(b, s.cs, i, cmd)
			targets[n][i] = target{addr, ok}
			if b.on && (!ok || addr != b.addr) {
				r.busFor(b.kind).Unregister(b.addr, b.h)
				b.on = false
				if s.obs != nil {
					s.obs.BARMapped(i, b.addr, b.kind, false)
				}
			}
		}
	}
	for n, s := range slots {
		if s == nil {
			continue
		}
		for i := range s.bars {
			b := &s.bars[i]
			t := targets[n][i]
			if b.h == nil || b.on || !t.ok {
				continue
			}
			if err := r.busFor(b.kind).Register(t.addr, b.size, b.h); err != nil {
				if b.failed != t.addr {
					b.failed = t.addr
					r.glog.Warn("pci: guest placed a BAR where it cannot be decoded; left unmapped",
						"slot", s.num, "bar", i, "addr", fmt.Sprintf("%#x", t.addr), "err", err)
				}
				continue
			}
			b.on, b.addr, b.failed = true, t.addr, 0
			if s.obs != nil {
				s.obs.BARMapped(i, t.addr, b.kind, true)
			}
		}
	}
}

func (r *Root) busFor(k BARKind) *bus.Bus {
	if k == BARIO {
		return r.pio
	}
	return r.mmio
}

// barHandler forwards bus accesses of one BAR to its device.
type barHandler struct {
	dev Device
	bar int
}

func (h *barHandler) Read(off uint64, data []byte)  { h.dev.ReadBAR(h.bar, off, data) }
func (h *barHandler) Write(off uint64, data []byte) { h.dev.WriteBAR(h.bar, off, data) }

// addrPort is CONFIG_ADDRESS at 0xCF8-0xCFB. Only dword accesses at 0xCF8
// reach the register; byte accesses at 0xCF9 go to the reset register;
// anything else reads all ones and is dropped.
type addrPort struct{ r *Root }

func (p *addrPort) Read(off uint64, data []byte) {
	switch {
	case off == 0 && len(data) == 4:
		p.r.addrMu.Lock()
		binary.LittleEndian.PutUint32(data, p.r.addr)
		p.r.addrMu.Unlock()
	case off == PortReset-PortConfigAddress && len(data) == 1 && p.r.cfg.Reset != nil:
		p.r.cfg.Reset.Read(0, data)
	default:
		fillOnes(data)
	}
}

func (p *addrPort) Write(off uint64, data []byte) {
	switch {
	case off == 0 && len(data) == 4:
		p.r.addrMu.Lock()
		p.r.addr = binary.LittleEndian.Uint32(data) & configAddrMask
		p.r.addrMu.Unlock()
	case off == PortReset-PortConfigAddress && len(data) == 1 && p.r.cfg.Reset != nil:
		p.r.cfg.Reset.Write(0, data)
	}
}

// dataPort is CONFIG_DATA at 0xCFC-0xCFF: the access reaches register
// (CONFIG_ADDRESS & 0xfc) + (port - 0xCFC) of the addressed function.
type dataPort struct{ r *Root }

func (p *dataPort) decode(off uint64, n int) (busNum, dev, fn, reg int, ok bool) {
	p.r.addrMu.Lock()
	a := p.r.addr
	p.r.addrMu.Unlock()
	if a&configAddrEnable == 0 || off+uint64(n) > 4 {
		return 0, 0, 0, 0, false
	}
	return int(a>>16) & 0xff, int(a>>11) & 0x1f, int(a>>8) & 0x7, int(a&0xfc) + int(off), true
}

func (p *dataPort) Read(off uint64, data []byte) {
	b, d, f, reg, ok := p.decode(off, len(data))
	if !ok {
		fillOnes(data)
		return
	}
	p.r.configRead(b, d, f, reg, data)
}

func (p *dataPort) Write(off uint64, data []byte) {
	if b, d, f, reg, ok := p.decode(off, len(data)); ok {
		p.r.configWrite(b, d, f, reg, data)
	}
}

// ecam is the memory-mapped configuration window: offset
// bus<<20 | device<<15 | function<<12 | register.
type ecam struct{ r *Root }

func ecamDecode(off uint64, n int) (busNum, dev, fn, reg int, ok bool) {
	reg = int(off & 0xfff)
	if (n != 1 && n != 2 && n != 4) || reg+n > 0x1000 {
		return 0, 0, 0, 0, false
	}
	return int(off>>20) & 0xff, int(off>>15) & 0x1f, int(off>>12) & 0x7, reg, off < 256*ECAMBusSize
}

func (e *ecam) Read(off uint64, data []byte) {
	b, d, f, reg, ok := ecamDecode(off, len(data))
	if !ok {
		fillOnes(data)
		return
	}
	e.r.configRead(b, d, f, reg, data)
}

func (e *ecam) Write(off uint64, data []byte) {
	if b, d, f, reg, ok := ecamDecode(off, len(data)); ok {
		e.r.configWrite(b, d, f, reg, data)
	}
}
