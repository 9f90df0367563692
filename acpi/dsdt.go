package acpi

import "fmt"

// COM1's fixed resources.
const (
	com1Port = 0x3f8
	com1IRQ  = 4
)

// dsdt builds the Differentiated System Description Table (revision 2:
// 64-bit integers). Its content is static: see the package comment.
func dsdt(cfg *Config) ([]byte, error) {
	a := &aml{}
	var sb [][]byte
	if cfg.PCI != nil {
		sb = append(sb, pciRoot(a, cfg.PCI))
		if cfg.PCI.ECAM.Buses != 0 {
			sb = append(sb, ecamReservation(a, cfg.PCI.ECAM))
		}
	}
	if cfg.Serial {
		sb = append(sb, a.device("COM1",
			a.name("_HID", a.eisa("PNP0501")),
			a.name("_UID", a.integer(1)),
			a.name("_CRS", a.resourceTemplate(
				ioPort(com1Port, com1Port, 1, 8),
				irqNoFlags(com1IRQ),
			)),
		))
	}
	var body []byte
	body = append(body, a.scope(`\_SB`, sb...)...)
	// \_S5: {SLP_TYPa, SLP_TYPb, reserved, reserved}; PM reports SLP_TYP.
	body = append(body, a.name(`\_S5`, a.pack(
		a.integer(SleepTypeS5), a.integer(SleepTypeS5), a.integer(0), a.integer(0)))...)
	if a.err != nil {
		return nil, fmt.Errorf("acpi: DSDT: %w", a.err)
	}
	t := newTable("DSDT", 2, headerSize+len(body))
	copy(t[headerSize:], body)
	return finish(t), nil
}

// pciRoot builds Device(\_SB.PCI0): a PCI host bridge for segment 0, bus 0,
// with its windows in _CRS and a static _PRT. There is no _ADR (a device
// has _HID or _ADR, not both) and no _OSC (Linux then keeps native PCIe
// services off, which suits a conventional PCI bus).
func pciRoot(a *aml, p *PCIConfig) []byte {
	terms := [][]byte{a.name("_HID", a.eisa("PNP0A03"))}
	if p.ECAM.Buses != 0 {
		terms = append(terms, a.name("_CID", a.eisa("PNP0A08")))
	}
	terms = append(terms,
		a.name("_UID", a.integer(0)),
		a.name("_SEG", a.integer(0)),
		a.name("_BBN", a.integer(0)),
	)

	lastBus := uint16(0)
	if p.ECAM.Buses != 0 {
		lastBus = uint16(p.ECAM.Buses - 1)
	}
	crs := [][]byte{
		wordBusNumber(0, lastBus),
		ioPort(0xcf8, 0xcf8, 1, 8), // the configuration ports (consumed)
	}
	io := p.IO
	if io == nil {
		io = []IORange{{0x0000, 0x0cf7}, {0x0d00, 0xffff}}
	}
	for _, r := range io {
		crs = append(crs, wordIO(r.Min, r.Max))
	}
	if w := p.Mem32; w.Size != 0 {
		crs = append(crs, dwordMemory(uint32(w.Base), uint32(w.Base+w.Size-1), false))
	}
	if w := p.Mem64; w.Size != 0 {
		crs = append(crs, qwordMemory(w.Base, w.Base+w.Size-1, true, false))
	}
	terms = append(terms, a.name("_CRS", a.resourceTemplate(crs...)))

	prt := make([][]byte, 0, len(p.PRT))
	for _, e := range p.PRT {
		prt = append(prt, a.pack(
			a.dword(uint32(e.Slot)<<16|0xffff), // any function of the slot
			a.integer(uint64(e.Pin)),
			a.integer(0), // source: none, the last element is a GSI
			a.integer(uint64(e.GSI)),
		))
	}
	terms = append(terms, a.name("_PRT", a.pack(prt...)))
	return a.device("PCI0", terms...)
}

// ecamReservation builds a PNP0C02 motherboard resource device that claims
// the ECAM window: Linux uses MCFG only for windows reserved this way (or
// in the e820 map).
func ecamReservation(a *aml, e ECAM) []byte {
	size := uint64(e.Buses) << 20
	var desc []byte
	if e.Base+size <= 1<<32 {
		desc = memory32Fixed(uint32(e.Base), uint32(size))
	} else {
		desc = qwordMemory(e.Base, e.Base+size-1, false, true)
	}
	return a.device("MRES",
		a.name("_HID", a.eisa("PNP0C02")),
		a.name("_UID", a.integer(0)),
		a.name("_CRS", a.resourceTemplate(desc)),
	)
}
