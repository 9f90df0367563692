package acpi

import "encoding/binary"

// System description table header (ACPI 6.x, section 5.2.6).
const (
	headerSize     = 36
	offLength      = 4
	offRevision    = 8
	offChecksum    = 9
	oemID          = "GOVMD "
	oemRevision    = 1
	creatorID      = "GVMD"
	creatorVersion = 1
)

// newTable returns a table of n bytes with its header filled in, except the
// checksum (see finish).
func newTable(sig string, revision byte, n int) []byte {
	t := make([]byte, n)
	copy(t[0:4], sig)
	binary.LittleEndian.PutUint32(t[offLength:], uint32(n))
	t[offRevision] = revision
	copy(t[10:16], oemID)
	copy(t[16:24], "GVMD"+sig) // OEM table ID
	binary.LittleEndian.PutUint32(t[24:], oemRevision)
	copy(t[28:32], creatorID)
	binary.LittleEndian.PutUint32(t[32:], creatorVersion)
	return t
}

// checksum returns the byte that makes b sum to zero, given that its
// checksum byte is currently zero.
func checksum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return -s
}

// finish sets the checksum of a table built by newTable.
func finish(t []byte) []byte {
	t[offChecksum] = 0
	t[offChecksum] = checksum(t)
	return t
}

// Generic Address Structure address space IDs and access sizes.
const (
	gasSystemIO = 1
	gasByte     = 1
	gasWord     = 2
	gasDWord    = 3
)

// putGAS writes a 12-byte Generic Address Structure.
func putGAS(b []byte, space, bitWidth, bitOffset, accessSize byte, addr uint64) {
	b[0], b[1], b[2], b[3] = space, bitWidth, bitOffset, accessSize
	binary.LittleEndian.PutUint64(b[4:], addr)
}

// rsdp builds the revision 2 Root System Description Pointer (36 bytes).
func rsdp(rsdtAddr uint32, xsdtAddr uint64) []byte {
	b := make([]byte, 36)
	copy(b, "RSD PTR ")
	copy(b[9:15], oemID)
	b[15] = 2 // revision
	binary.LittleEndian.PutUint32(b[16:], rsdtAddr)
	binary.LittleEndian.PutUint32(b[20:], 36)
	binary.LittleEndian.PutUint64(b[24:], xsdtAddr)
	b[8] = checksum(b[:20])
	b[32] = checksum(b)
	return b
}

// xsdt builds the Extended System Description Table.
func xsdt(entries []uint64) []byte {
	t := newTable("XSDT", 1, headerSize+8*len(entries))
	for i, e := range entries {
		binary.LittleEndian.PutUint64(t[headerSize+8*i:], e)
	}
	return finish(t)
}

// rsdt builds the Root System Description Table (32-bit pointers).
func rsdt(entries []uint32) []byte {
	t := newTable("RSDT", 1, headerSize+4*len(entries))
	for i, e := range entries {
		binary.LittleEndian.PutUint32(t[headerSize+4*i:], e)
	}
	return finish(t)
}

// facsSize is the size of the FACS; it must be 64-byte aligned in memory.
const facsSize = 64

// facs builds the Firmware ACPI Control Structure (no header checksum).
func facs() []byte {
	b := make([]byte, facsSize)
	copy(b, "FACS")
	binary.LittleEndian.PutUint32(b[4:], facsSize)
	b[32] = 2 // version
	return b
}

// FADT fixed feature flags (ACPI 6.x, table 5.10).
const (
	fadtWBINVD      = 1 << 0
	fadtProcC1      = 1 << 2
	fadtPwrButton   = 1 << 4 // no fixed-feature power button
	fadtSlpButton   = 1 << 5 // no fixed-feature sleep button
	fadtFixRTC      = 1 << 6 // no RTC wake status in fixed registers
	fadtTmrValExt   = 1 << 8 // the PM timer counts 32 bits
	fadtResetRegSup = 1 << 10
	fadtHeadless    = 1 << 12
)

// IA-PC boot architecture flags.
const (
	bootLegacyDevices = 1 << 0 // ISA devices (COM1, RTC) exist
	bootVGANotPresent = 1 << 2
	// Bit 1 (8042) stays clear: the VMM answers only the i8042 reset
	// command, and Linux then skips probing a keyboard controller.
)

// fadtSize is the length of a revision 6 FADT.
const fadtSize = 276

// fadt builds the Fixed ACPI Description Table, revision 6.0, not hardware
// reduced. facsAddr and dsdtAddr go in both the 32-bit (when they fit) and
// the X_ fields.
func fadt(cfg *Config, facsAddr, dsdtAddr uint64) []byte {
	t := newTable("FACP", 6, fadtSize)
	le := binary.LittleEndian
	if facsAddr <= 0xffffffff && dsdtAddr <= 0xffffffff {
		le.PutUint32(t[36:], uint32(facsAddr))
		le.PutUint32(t[40:], uint32(dsdtAddr))
	}
	t[45] = 0 // preferred PM profile: unspecified
	le.PutUint16(t[46:], uint16(cfg.SCI))
	// SMI_CMD (48), ACPI_ENABLE/DISABLE stay 0: ACPI is always enabled
	// (SCI_EN reads as 1), there is no mode switch.
	le.PutUint32(t[56:], uint32(cfg.PM1aEvt))
	le.PutUint32(t[64:], uint32(cfg.PM1aCnt))
	le.PutUint32(t[76:], uint32(cfg.PMTimer))
	// No GPE blocks (80, 84).
	t[88] = pm1EvtLen
	t[89] = pm1CntLen
	if cfg.PMTimer != 0 {
		t[91] = pmTmrLen
	}
	le.PutUint16(t[96:], 101)  // P_LVL2_LAT > 100: C2 not supported
	le.PutUint16(t[98:], 1001) // P_LVL3_LAT > 1000: C3 not supported
	le.PutUint16(t[109:], bootLegacyDevices|bootVGANotPresent)
	flags := uint32(fadtWBINVD | fadtProcC1 | fadtSlpButton | fadtFixRTC | fadtResetRegSup | fadtHeadless)
	if !cfg.PowerButton {
		flags |= fadtPwrButton
	}
	if cfg.PMTimer != 0 {
		flags |= fadtTmrValExt
	}
	le.PutUint32(t[112:], flags)
	putGAS(t[116:], gasSystemIO, 8, 0, gasByte, ResetPort)
	t[128] = ResetValue
	t[131] = 0 // FADT minor version: 6.0
	le.PutUint64(t[132:], facsAddr)
	le.PutUint64(t[140:], dsdtAddr)
	putGAS(t[148:], gasSystemIO, 8*pm1EvtLen, 0, gasWord, uint64(cfg.PM1aEvt))
	putGAS(t[172:], gasSystemIO, 8*pm1CntLen, 0, gasWord, uint64(cfg.PM1aCnt))
	if cfg.PMTimer != 0 {
		putGAS(t[208:], gasSystemIO, 8*pmTmrLen, 0, gasDWord, uint64(cfg.PMTimer))
	}
	return finish(t)
}

// MADT entry types.
const (
	madtLocalAPIC    = 0
	madtIOAPIC       = 1
	madtISO          = 2
	madtLocalAPICNMI = 4
)

// MPS INTI flags: polarity in bits 0-1, trigger mode in bits 2-3.
const (
	intiActiveHigh = 1 << 0
	intiEdge       = 1 << 2
	intiLevel      = 3 << 2
)

// madt builds the Multiple APIC Description Table: one enabled local APIC
// per vCPU (processor UID and APIC ID i), one IOAPIC at GSI base 0, ISA
// overrides for the timer (IRQ0 -> GSI2) and the SCI, and LINT1 as NMI on
// every processor.
func madt(cfg *Config) []byte {
	n := headerSize + 8 + 8*cfg.CPUs + 12 + 2*10 + 6
	t := newTable("APIC", 4, n)
	le := binary.LittleEndian
	le.PutUint32(t[36:], LocalAPICAddr)
	le.PutUint32(t[40:], 1) // PCAT_COMPAT: dual 8259s present
	o := 44
	for i := 0; i < cfg.CPUs; i++ {
		t[o], t[o+1], t[o+2], t[o+3] = madtLocalAPIC, 8, byte(i), byte(i)
		le.PutUint32(t[o+4:], 1) // enabled
		o += 8
	}
	t[o], t[o+1], t[o+2] = madtIOAPIC, 12, cfg.IOAPICID
	le.PutUint32(t[o+4:], cfg.IOAPICAddr)
	le.PutUint32(t[o+8:], 0) // GSI base
	o += 12
	iso := func(irq byte, gsi uint32, flags uint16) {
		t[o], t[o+1], t[o+2], t[o+3] = madtISO, 10, 0, irq
		le.PutUint32(t[o+4:], gsi)
		le.PutUint16(t[o+8:], flags)
		o += 10
	}
	iso(0, 2, intiActiveHigh|intiEdge)
	iso(cfg.SCI, uint32(cfg.SCI), intiActiveHigh|intiLevel)
	t[o], t[o+1], t[o+2] = madtLocalAPICNMI, 6, 0xff // all processors
	le.PutUint16(t[o+3:], intiActiveHigh|intiEdge)
	t[o+5] = 1 // LINT1
	return finish(t)
}

// mcfg builds the PCI Express memory mapped configuration table with one
// ECAM window for segment 0.
func mcfg(e ECAM) []byte {
	t := newTable("MCFG", 1, headerSize+8+16)
	le := binary.LittleEndian
	o := headerSize + 8
	le.PutUint64(t[o:], e.Base)
	le.PutUint16(t[o+8:], 0) // segment
	t[o+10] = 0              // start bus
	t[o+11] = byte(e.Buses - 1)
	return finish(t)
}
