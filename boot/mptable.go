package boot

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The Intel MultiProcessor Specification 1.4 table: a floating pointer
// structure that the kernel finds by scanning fixed areas of low memory,
// and the configuration table it points to (processors, buses, the IOAPIC
// and how interrupts reach it). Linux looks for it on every x86 boot, ACPI
// or not (CONFIG_X86_MPPARSE): without one it scans the whole 64 KiB BIOS
// area 16 bytes at a time, remapping the rest of the area at each step,
// which costs seconds when the guest's instructions are emulated (PVM).
// With ACPI the MADT is used and the table only ends the scan; with
// acpi=off it is the platform description.

// MPTableAddr is where the MP table goes: the start of the last KiB of
// base memory, the second area Linux scans (after the first KiB), inside
// the range the e820 map reserves below 1 MiB.
const MPTableAddr = 0x9fc00

// MPTableMaxSize is the room the table has at MPTableAddr, up to the ACPI
// tables at 0xe0000.
const MPTableMaxSize = 0xe0000 - MPTableAddr

// MPConfig describes the platform for the MP table. It must agree with
// the ACPI MADT.
type MPConfig struct {
	CPUs       int    // vCPU i has local APIC ID i; 1..255
	LAPICAddr  uint32 // local APIC base, usually 0xfee00000
	IOAPICID   uint8  // the IOAPIC's ID
	IOAPICAddr uint32 // IOAPIC base, usually 0xfec00000
	// SCI is the ISA IRQ of the ACPI SCI, level triggered and active
	// high as in the MADT's override (0: none).
	SCI uint8
	// PCI lists the PCI INTx routes: device Slot on bus 0, Pin 1..4
	// (INTA..INTD), wired to IOAPIC input Pin.
	PCI []MPRoute
}

// MPRoute is one PCI INTx route.
type MPRoute struct {
	Slot, Pin int
	IOAPICPin int
}

// MP table constants (MultiProcessor Specification 1.4, chapter 4).
const (
	mpFloatLen     = 16
	mpHeaderLen    = 44
	mpProcessorLen = 20
	mpEntryLen     = 8

	mpProcessor = 0
	mpBus       = 1
	mpIOAPIC    = 2
	mpIOIntr    = 3
	mpLocalIntr = 4

	mpIntINT    = 0
	mpIntNMI    = 1
	mpIntExtINT = 3

	// interrupt flags: polarity bits 0-1, trigger mode bits 2-3
	mpFlagsConform   = 0
	mpFlagsLevelHigh = 1 | 1<<2 // active high, level triggered
	mpFlagsLevelLow  = 3 | 3<<2 // active low, level triggered (PCI)

	mpBusISA = 0
	mpBusPCI = 1

	mpLAPICVersion  = 0x14
	mpIOAPICVersion = 0x11
	mpCPUEnabled    = 1
	mpCPUBoot       = 2
	// mpCPUSignature is family 6 model 15 stepping 0 with FPU and APIC
	// in the feature flags: informational only, Linux uses CPUID.
	mpCPUSignature = 0x6f0
	mpCPUFeatures  = 1<<0 | 1<<9 // FPU, APIC
)

// ErrMPConfig is wrapped by the errors of MPTable.
var ErrMPConfig = errors.New("boot: invalid MP table configuration")

// MPTable returns the MP floating pointer and configuration table for cfg,
// to be written at guest physical address addr (16-byte aligned, below 1
// MiB).
func MPTable(cfg MPConfig, addr uint64) ([]byte, error) {
	if cfg.CPUs < 1 || cfg.CPUs > 255 {
		return nil, fmt.Errorf("%w: %d CPUs", ErrMPConfig, cfg.CPUs)
	}
	if addr%16 != 0 || addr >= 1<<20 {
		return nil, fmt.Errorf("%w: address %#x", ErrMPConfig, addr)
	}
	if cfg.SCI > 15 || cfg.SCI == 2 {
		return nil, fmt.Errorf("%w: SCI %d", ErrMPConfig, cfg.SCI)
	}
	le := binary.LittleEndian
	var ents []byte
	count := 0
	add := func(e []byte) { ents = append(ents, e...); count++ }
	for i := 0; i < cfg.CPUs; i++ {
		e := make([]byte, mpProcessorLen)
		e[0] = mpProcessor
		e[1] = byte(i)
		e[2] = mpLAPICVersion
		e[3] = mpCPUEnabled
		if i == 0 {
			e[3] |= mpCPUBoot
		}
		le.PutUint32(e[4:], mpCPUSignature)
		le.PutUint32(e[8:], mpCPUFeatures)
		add(e)
	}
	bus := func(id byte, name string) {
		e := make([]byte, mpEntryLen)
		e[0], e[1] = mpBus, id
		copy(e[2:], fmt.Sprintf("%-6s", name))
		add(e)
	}
	if len(cfg.PCI) > 0 {
		bus(mpBusPCI, "PCI")
	}
	bus(mpBusISA, "ISA")
	ioapic := make([]byte, mpEntryLen)
	ioapic[0], ioapic[1], ioapic[2], ioapic[3] = mpIOAPIC, cfg.IOAPICID, mpIOAPICVersion, 1
	le.PutUint32(ioapic[4:], cfg.IOAPICAddr)
	add(ioapic)
	intr := func(typ, kind byte, flags uint16, srcBus, srcIRQ, dst, dstPin byte) {
		e := make([]byte, mpEntryLen)
		e[0], e[1] = typ, kind
		le.PutUint16(e[2:], flags)
		e[4], e[5], e[6], e[7] = srcBus, srcIRQ, dst, dstPin
		add(e)
	}
	// ISA IRQs: the 8259A's output on pin 0 (ExtINT), IRQ0 (the PIT) on
	// pin 2 as the MADT's override says, IRQ 2 (the cascade) nowhere,
	// every other IRQ on the pin of its number.
	intr(mpIOIntr, mpIntExtINT, mpFlagsConform, mpBusISA, 0, cfg.IOAPICID, 0)
	for irq := byte(0); irq < 16; irq++ {
		switch irq {
		case 0:
			intr(mpIOIntr, mpIntINT, mpFlagsConform, mpBusISA, 0, cfg.IOAPICID, 2)
		case 2:
		case cfg.SCI:
			intr(mpIOIntr, mpIntINT, mpFlagsLevelHigh, mpBusISA, irq, cfg.IOAPICID, irq)
		default:
			intr(mpIOIntr, mpIntINT, mpFlagsConform, mpBusISA, irq, cfg.IOAPICID, irq)
		}
	}
	for _, r := range cfg.PCI {
		if r.Slot < 0 || r.Slot > 31 || r.Pin < 1 || r.Pin > 4 || r.IOAPICPin < 0 || r.IOAPICPin > 255 {
			return nil, fmt.Errorf("%w: PCI route slot %d pin %d -> %d", ErrMPConfig, r.Slot, r.Pin, r.IOAPICPin)
		}
		// The source IRQ of a PCI bus entry is the device number in
		// bits 2-6 and the pin (0 = INTA) in bits 0-1.
		intr(mpIOIntr, mpIntINT, mpFlagsLevelLow, mpBusPCI, byte(r.Slot<<2|(r.Pin-1)), cfg.IOAPICID, byte(r.IOAPICPin))
	}
	// Local APIC inputs of every CPU (0xff): LINT0 takes the 8259A
	// (ExtINT), LINT1 is NMI.
	intr(mpLocalIntr, mpIntExtINT, mpFlagsConform, mpBusISA, 0, 0xff, 0)
	intr(mpLocalIntr, mpIntNMI, mpFlagsConform, mpBusISA, 0, 0xff, 1)

	total := mpFloatLen + mpHeaderLen + len(ents)
	if total > MPTableMaxSize || count > 0xffff {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrMPConfig, total, MPTableMaxSize)
	}
	t := make([]byte, total)
	fp := t[:mpFloatLen]
	copy(fp, "_MP_")
	le.PutUint32(fp[4:], uint32(addr+mpFloatLen))
	fp[8] = 1 // length in 16-byte units
	fp[9] = 4 // specification revision 1.4
	// feature bytes 1-5 stay 0: a configuration table is present, and
	// virtual wire mode (no IMCR).
	fp[10] = mpChecksum(fp)

	h := t[mpFloatLen : mpFloatLen+mpHeaderLen]
	copy(h, "PCMP")
	le.PutUint16(h[4:], uint16(mpHeaderLen+len(ents)))
	h[6] = 4
	copy(h[8:16], "GOVMD   ")
	copy(h[16:28], "GOVMD       ")
	le.PutUint16(h[34:], uint16(count))
	le.PutUint32(h[36:], cfg.LAPICAddr)
	copy(t[mpFloatLen+mpHeaderLen:], ents)
	h[7] = mpChecksum(t[mpFloatLen:])
	return t, nil
}

// mpChecksum returns the byte that makes the bytes of b sum to zero (the
// checksum byte itself still 0 in b).
func mpChecksum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return -s
}
