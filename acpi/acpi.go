package acpi

import (
	"errors"
	"fmt"
)

// Fixed platform values.
const (
	// LocalAPICAddr is the local APIC base every vCPU uses.
	LocalAPICAddr = 0xfee00000
	// DefaultIOAPICAddr is the IOAPIC base used when Config.IOAPICAddr is 0.
	DefaultIOAPICAddr = 0xfec00000
	// DefaultSCI is the SCI interrupt used when Config.SCI is 0.
	DefaultSCI = 9
	// ResetPort and ResetValue form the FADT reset register: the guest
	// writes ResetValue to I/O port ResetPort (the 0xCF9 reset control
	// register, served by the VMM's reset device).
	ResetPort  = 0xcf9
	ResetValue = 0x06
	// SleepTypeS5 is the SLP_TYP value the DSDT's \_S5 package gives: a
	// guest powering off writes it with SLP_EN to the PM1a control block.
	SleepTypeS5 = 5

	// RSDPScanStart and RSDPScanEnd bound the BIOS area legacy OSes scan
	// for the RSDP (on 16-byte boundaries).
	RSDPScanStart = 0xe0000
	RSDPScanEnd   = 0x100000

	pm1EvtLen = 4 // PM1 status + enable, 16 bits each
	pm1CntLen = 2
	pmTmrLen  = 4 // PM_TMR: a 32-bit counter
)

// Window is a range of guest physical address space: [Base, Base+Size).
type Window struct {
	Base, Size uint64
}

// IORange is an inclusive range of I/O ports.
type IORange struct {
	Min, Max uint16
}

// ECAM is a PCI Express enhanced configuration window for segment 0,
// starting at bus 0. Buses 0 means none.
type ECAM struct {
	Base  uint64
	Buses int
}

// PRTEntry is one static _PRT entry: INTx pin Pin (0 = INTA .. 3 = INTD,
// the ACPI encoding) of the device in Slot is wired to GSI.
type PRTEntry struct {
	Slot uint8
	Pin  uint8
	GSI  uint32
}

// PCIConfig describes the PCI root bridge \_SB.PCI0 (segment 0, bus 0).
type PCIConfig struct {
	// IO lists the I/O windows forwarded to PCI. nil means 0x0000-0x0CF7
	// and 0x0D00-0xFFFF (everything but the configuration ports).
	IO []IORange
	// Mem32 is the MMIO window below 4 GiB (Size 0: none).
	Mem32 Window
	// Mem64 is the MMIO window above RAM (Size 0: none).
	Mem64 Window
	// ECAM adds an MCFG table, a motherboard resource reserving the
	// window (Linux refuses ECAM that is not reserved), _CID PNP0A08 and
	// a bus range of 0..Buses-1.
	ECAM ECAM
	// PRT is the interrupt routing table, at most 255 entries.
	PRT []PRTEntry
}

// Config describes the platform the tables advertise.
type Config struct {
	// CPUs is the number of vCPUs, 1..255; vCPU i has APIC ID i.
	CPUs int
	// IOAPICAddr is the IOAPIC base (0: DefaultIOAPICAddr) and IOAPICID
	// its ID.
	IOAPICAddr uint32
	IOAPICID   uint8
	// PM1aEvt and PM1aCnt are the I/O ports of the PM1a event block (4
	// bytes) and control block (2 bytes), served by PM.
	PM1aEvt, PM1aCnt uint16
	// PMTimer, if not 0, is the I/O port of the 32-bit ACPI PM timer (4
	// bytes), served by PMTimer.
	PMTimer uint16
	// SCI is the ISA IRQ (and GSI) of the SCI, level triggered, active
	// high (0: DefaultSCI).
	SCI uint8
	// PowerButton advertises the fixed-feature power button in PM1 (see
	// PM.PressPowerButton). Without it the FADT says there is none.
	PowerButton bool
	// PCI, if not nil, adds the PCI root bridge.
	PCI *PCIConfig
	// Serial adds COM1 (PNP0501, ports 0x3F8-0x3FF, IRQ 4).
	Serial bool
	// MaxSize, if not 0, is the most bytes the blob may take.
	MaxSize int
}

// ErrConfig is wrapped by every error Build returns for a bad Config.
var ErrConfig = errors.New("acpi: invalid configuration")

func (c *Config) validate() error {
	if c.IOAPICAddr == 0 {
		c.IOAPICAddr = DefaultIOAPICAddr
	}
	if c.SCI == 0 {
		c.SCI = DefaultSCI
	}
	if c.CPUs < 1 || c.CPUs > 255 {
		return fmt.Errorf("%w: %d CPUs, want 1-255", ErrConfig, c.CPUs)
	}
	if c.SCI > 15 || c.SCI == 2 {
		return fmt.Errorf("%w: SCI %d must be an ISA IRQ other than 0 and 2", ErrConfig, c.SCI)
	}
	// The port blocks as Windows of the 64 KiB port space.
	evt := Window{Base: uint64(c.PM1aEvt), Size: pm1EvtLen}
	cnt := Window{Base: uint64(c.PM1aCnt), Size: pm1CntLen}
	if evt.Base == 0 || cnt.Base == 0 || evt.Base+evt.Size > 1<<16 || cnt.Base+cnt.Size > 1<<16 || overlaps(evt, cnt) {
		return fmt.Errorf("%w: PM1a blocks at %#x/%#x must be non-zero, non-overlapping ports", ErrConfig, evt.Base, cnt.Base)
	}
	if tmr := (Window{Base: uint64(c.PMTimer), Size: pmTmrLen}); tmr.Base != 0 &&
		(tmr.Base+tmr.Size > 1<<16 || overlaps(tmr, evt) || overlaps(tmr, cnt)) {
		return fmt.Errorf("%w: PM timer at %#x must not overlap the PM1a blocks", ErrConfig, tmr.Base)
	}
	if c.PCI != nil {
		if err := c.PCI.validate(); err != nil {
			return err
		}
	}
	return nil
}

func overlaps(a, b Window) bool {
	return a.Size != 0 && b.Size != 0 && a.Base < b.Base+b.Size && b.Base < a.Base+a.Size
}

func (p *PCIConfig) validate() error {
	for _, r := range p.IO {
		if r.Min > r.Max {
			return fmt.Errorf("%w: PCI I/O range %#x-%#x", ErrConfig, r.Min, r.Max)
		}
	}
	if w := p.Mem32; w.Size != 0 && (w.Base+w.Size > 1<<32 || w.Base+w.Size < w.Base) {
		return fmt.Errorf("%w: 32-bit PCI window %#x+%#x beyond 4 GiB", ErrConfig, w.Base, w.Size)
	}
	if w := p.Mem64; w.Size != 0 && w.Base+w.Size-1 < w.Base {
		return fmt.Errorf("%w: 64-bit PCI window %#x+%#x wraps", ErrConfig, w.Base, w.Size)
	}
	if overlaps(p.Mem32, p.Mem64) {
		return fmt.Errorf("%w: PCI windows overlap", ErrConfig)
	}
	if e := p.ECAM; e.Buses != 0 {
		if e.Buses < 0 || e.Buses > 256 || e.Base%(1<<20) != 0 || e.Base+uint64(e.Buses)<<20 < e.Base {
			return fmt.Errorf("%w: ECAM at %#x with %d buses", ErrConfig, e.Base, e.Buses)
		}
		w := Window{e.Base, uint64(e.Buses) << 20}
		if overlaps(w, p.Mem32) || overlaps(w, p.Mem64) {
			return fmt.Errorf("%w: ECAM window overlaps a PCI MMIO window", ErrConfig)
		}
	}
	if len(p.PRT) > amlMaxPkgElement {
		return fmt.Errorf("%w: %d _PRT entries, at most %d", ErrConfig, len(p.PRT), amlMaxPkgElement)
	}
	for _, e := range p.PRT {
		if e.Slot > 31 || e.Pin > 3 {
			return fmt.Errorf("%w: _PRT entry slot %d pin %d", ErrConfig, e.Slot, e.Pin)
		}
	}
	return nil
}

// Build generates the ACPI tables for cfg as one blob to be copied to guest
// physical address base (16-byte aligned), and returns it with the address
// of the RSDP (base itself: the RSDP comes first). If base is below 1 MiB
// the blob must end at or below 1 MiB.
func Build(cfg Config, base uint64) (tables []byte, rsdpAddr uint64, err error) {
	if err := cfg.validate(); err != nil {
		return nil, 0, err
	}
	if base%16 != 0 {
		return nil, 0, fmt.Errorf("%w: base %#x is not 16-byte aligned", ErrConfig, base)
	}
	dsdtTable, err := dsdt(&cfg)
	if err != nil {
		return nil, 0, err
	}
	blob := make([]byte, 36) // the RSDP, filled in last
	place := func(t []byte, align uint64) uint64 {
		for (base+uint64(len(blob)))%align != 0 {
			blob = append(blob, 0)
		}
		addr := base + uint64(len(blob))
		blob = append(blob, t...)
		return addr
	}
	facsAddr := place(facs(), 64)
	dsdtAddr := place(dsdtTable, 16)
	entries := []uint64{
		place(fadt(&cfg, facsAddr, dsdtAddr), 16),
		place(madt(&cfg), 16),
	}
	if cfg.PCI != nil && cfg.PCI.ECAM.Buses != 0 {
		entries = append(entries, place(mcfg(cfg.PCI.ECAM), 16))
	}
	var rsdtAddr uint32
	if end := base + uint64(len(blob)) + headerSize + 4*uint64(len(entries)) + 16; end <= 1<<32 {
		e32 := make([]uint32, len(entries))
		for i, e := range entries {
			e32[i] = uint32(e)
		}
		rsdtAddr = uint32(place(rsdt(e32), 16))
	}
	xsdtAddr := place(xsdt(entries), 16)
	copy(blob, rsdp(rsdtAddr, xsdtAddr))

	end := base + uint64(len(blob))
	if end < base {
		return nil, 0, fmt.Errorf("%w: tables at %#x wrap the address space", ErrConfig, base)
	}
	if base < RSDPScanEnd && end > RSDPScanEnd {
		return nil, 0, fmt.Errorf("%w: %d bytes of tables at %#x cross 1 MiB", ErrConfig, len(blob), base)
	}
	if cfg.MaxSize > 0 && len(blob) > cfg.MaxSize {
		return nil, 0, fmt.Errorf("%w: %d bytes of tables exceed the %d-byte limit", ErrConfig, len(blob), cfg.MaxSize)
	}
	return blob, base, nil
}
