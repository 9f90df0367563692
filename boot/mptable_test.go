package boot

import (
	"encoding/binary"
	"errors"
	"testing"
)

// mpEntry is one decoded configuration table entry.
type mpEntry struct {
	typ   byte
	b     []byte
	flags uint16
}

// parseMP checks the floating pointer and configuration table of t
// (written at addr) as Linux's mpparse does and returns the entries.
func parseMP(t *testing.T, tab []byte, addr uint64) []mpEntry {
	t.Helper()
	le := binary.LittleEndian
	if string(tab[:4]) != "_MP_" || tab[8] != 1 || tab[9] != 4 {
		t.Fatalf("floating pointer % x", tab[:16])
	}
	if mpChecksum(tab[:16]) != 0 {
		t.Fatal("floating pointer checksum")
	}
	cfgAddr := uint64(le.Uint32(tab[4:]))
	if cfgAddr != addr+16 {
		t.Fatalf("configuration table at %#x, want %#x", cfgAddr, addr+16)
	}
	h := tab[cfgAddr-addr:]
	n := int(le.Uint16(h[4:]))
	if string(h[:4]) != "PCMP" || h[6] != 4 || n > len(h) {
		t.Fatalf("header % x", h[:44])
	}
	if mpChecksum(h[:n]) != 0 {
		t.Fatal("configuration table checksum")
	}
	if got := le.Uint32(h[36:]); got != 0xfee00000 {
		t.Errorf("local APIC at %#x", got)
	}
	var ents []mpEntry
	for off := 44; off < n; {
		size := 8
		if h[off] == mpProcessor {
			size = 20
		}
		e := mpEntry{typ: h[off], b: h[off : off+size]}
		if e.typ == mpIOIntr || e.typ == mpLocalIntr {
			e.flags = le.Uint16(e.b[2:])
		}
		ents = append(ents, e)
		off += size
	}
	if len(ents) != int(le.Uint16(h[34:])) {
		t.Fatalf("%d entries, header says %d", len(ents), le.Uint16(h[34:]))
	}
	return ents
}

func TestMPTable(t *testing.T) {
	cfg := MPConfig{CPUs: 3, LAPICAddr: 0xfee00000, IOAPICAddr: 0xfec00000, SCI: 9,
		PCI: []MPRoute{{Slot: 1, Pin: 1, IOAPICPin: 16}, {Slot: 2, Pin: 4, IOAPICPin: 19}}}
	tab, err := MPTable(cfg, MPTableAddr)
	if err != nil {
		t.Fatal(err)
	}
	if MPTableAddr+len(tab) > 0xe0000 {
		t.Fatalf("%d bytes run into the ACPI tables", len(tab))
	}
	var cpus, boots, ioapics int
	isa := map[byte]mpEntry{} // ISA IRQ -> INT entry
	pciIRQ := map[byte]byte{} // PCI source IRQ -> IOAPIC pin
	var extint, lint0, lint1 bool
	for _, e := range parseMP(t, tab, MPTableAddr) {
		switch e.typ {
		case mpProcessor:
			if e.b[1] != byte(cpus) || e.b[3]&mpCPUEnabled == 0 {
				t.Errorf("processor entry % x", e.b)
			}
			if e.b[3]&mpCPUBoot != 0 {
				boots++
			}
			cpus++
		case mpIOAPIC:
			ioapics++
			if binary.LittleEndian.Uint32(e.b[4:]) != 0xfec00000 || e.b[3] != 1 {
				t.Errorf("IOAPIC entry % x", e.b)
			}
		case mpIOIntr:
			switch {
			case e.b[1] == mpIntExtINT:
				extint = e.b[7] == 0
			case e.b[4] == mpBusISA:
				isa[e.b[5]] = e
			case e.b[4] == mpBusPCI:
				pciIRQ[e.b[5]] = e.b[7]
				if e.flags != mpFlagsLevelLow {
					t.Errorf("PCI entry flags %#x", e.flags)
				}
			}
		case mpLocalIntr:
			lint0 = lint0 || e.b[1] == mpIntExtINT && e.b[7] == 0 && e.b[6] == 0xff
			lint1 = lint1 || e.b[1] == mpIntNMI && e.b[7] == 1 && e.b[6] == 0xff
		}
	}
	if cpus != 3 || boots != 1 || ioapics != 1 {
		t.Errorf("%d CPUs (%d boot), %d IOAPICs", cpus, boots, ioapics)
	}
	if e, ok := isa[0]; !ok || e.b[7] != 2 {
		t.Errorf("ISA IRQ0 not on IOAPIC pin 2 (the MADT's override)")
	}
	if _, ok := isa[2]; ok {
		t.Errorf("ISA IRQ2 (the cascade) routed")
	}
	if e := isa[9]; e.b == nil || e.flags != mpFlagsLevelHigh || e.b[7] != 9 {
		t.Errorf("SCI entry %v", e)
	}
	if e := isa[4]; e.b == nil || e.flags != mpFlagsConform || e.b[7] != 4 {
		t.Errorf("COM1 entry %v", e)
	}
	if pciIRQ[1<<2|0] != 16 || pciIRQ[2<<2|3] != 19 || len(pciIRQ) != 2 {
		t.Errorf("PCI routes %v", pciIRQ)
	}
	if !extint || !lint0 || !lint1 {
		t.Errorf("ExtINT on pin 0 %v, LINT0 ExtINT %v, LINT1 NMI %v", extint, lint0, lint1)
	}
}

func TestMPTableLimits(t *testing.T) {
	tab, err := MPTable(MPConfig{CPUs: 255, IOAPICAddr: 0xfec00000, LAPICAddr: 0xfee00000}, MPTableAddr)
	if err != nil {
		t.Fatalf("255 CPUs: %v", err)
	}
	if len(parseMP(t, tab, MPTableAddr)) < 255 {
		t.Error("entries missing")
	}
	for _, c := range []struct {
		cfg  MPConfig
		addr uint64
	}{
		{MPConfig{CPUs: 0}, MPTableAddr},
		{MPConfig{CPUs: 256}, MPTableAddr},
		{MPConfig{CPUs: 1}, MPTableAddr + 1},
		{MPConfig{CPUs: 1}, 1 << 20},
		{MPConfig{CPUs: 1, SCI: 2}, MPTableAddr},
		{MPConfig{CPUs: 1, PCI: []MPRoute{{Slot: 32, Pin: 1}}}, MPTableAddr},
		{MPConfig{CPUs: 1, PCI: []MPRoute{{Slot: 1, Pin: 0}}}, MPTableAddr},
	} {
		if _, err := MPTable(c.cfg, c.addr); !errors.Is(err, ErrMPConfig) {
			t.Errorf("MPTable(%+v, %#x) = %v, want ErrMPConfig", c.cfg, c.addr, err)
		}
	}
}
