package acpi

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

const testBase = 0xe0000

func testConfig() Config {
	return Config{
		CPUs:    2,
		PM1aEvt: 0x600,
		PM1aCnt: 0x604,
		PMTimer: 0x608,
		Serial:  true,
		PCI: &PCIConfig{
			Mem32: Window{Base: 0xc0000000, Size: 0x3ec00000},
			Mem64: Window{Base: 0x100_0000_0000, Size: 1 << 38},
			ECAM:  ECAM{Base: 0xb0000000, Buses: 1},
			PRT:   testPRT(),
		},
	}
}

// testPRT mirrors pci.Routes: slot S pin P (0 = INTA) -> 16 + (S+P)%8.
func testPRT() []PRTEntry {
	var prt []PRTEntry
	for s := uint8(1); s < 32; s++ {
		for p := uint8(0); p < 4; p++ {
			prt = append(prt, PRTEntry{Slot: s, Pin: p, GSI: 16 + uint32(s+p)%8})
		}
	}
	return prt
}

// parsed is a blob taken apart the way an OS does, from the RSDP.
type parsed struct {
	rsdp   []byte
	tables map[string][]byte
	addrs  map[string]uint64
}

func sum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return s
}

// parse follows the pointers in blob (loaded at base) and checks every
// checksum and length on the way.
func parse(t *testing.T, blob []byte, base, rsdpAddr uint64) *parsed {
	t.Helper()
	at := func(addr uint64, n uint64) []byte {
		t.Helper()
		if addr < base || addr+n > base+uint64(len(blob)) {
			t.Fatalf("pointer %#x+%d outside the blob %#x+%d", addr, n, base, len(blob))
		}
		return blob[addr-base : addr-base+n]
	}
	table := func(addr uint64) []byte {
		t.Helper()
		h := at(addr, headerSize)
		n := binary.LittleEndian.Uint32(h[offLength:])
		if n < headerSize {
			t.Fatalf("table %q at %#x has length %d", h[:4], addr, n)
		}
		tb := at(addr, uint64(n))
		if sum(tb) != 0 {
			t.Errorf("table %q checksum: sum %#x", tb[:4], sum(tb))
		}
		if addr%4 != 0 {
			t.Errorf("table %q at %#x not aligned", tb[:4], addr)
		}
		return tb
	}
	p := &parsed{tables: map[string][]byte{}, addrs: map[string]uint64{}}
	if rsdpAddr%16 != 0 {
		t.Errorf("RSDP at %#x not 16-byte aligned", rsdpAddr)
	}
	p.rsdp = at(rsdpAddr, 36)
	if string(p.rsdp[:8]) != "RSD PTR " || p.rsdp[15] != 2 {
		t.Fatalf("RSDP header %q revision %d", p.rsdp[:8], p.rsdp[15])
	}
	if sum(p.rsdp[:20]) != 0 || sum(p.rsdp) != 0 {
		t.Errorf("RSDP checksums: %#x %#x", sum(p.rsdp[:20]), sum(p.rsdp))
	}
	if binary.LittleEndian.Uint32(p.rsdp[20:]) != 36 {
		t.Errorf("RSDP length %d", binary.LittleEndian.Uint32(p.rsdp[20:]))
	}
	add := func(addr uint64) []byte {
		tb := table(addr)
		sig := string(tb[:4])
		if _, dup := p.tables[sig]; dup {
			t.Errorf("table %s twice", sig)
		}
		p.tables[sig], p.addrs[sig] = tb, addr
		return tb
	}
	xsdt := add(binary.LittleEndian.Uint64(p.rsdp[24:]))
	var xentries []uint64
	for o := headerSize; o+8 <= len(xsdt); o += 8 {
		a := binary.LittleEndian.Uint64(xsdt[o:])
		xentries = append(xentries, a)
		add(a)
	}
	if r := binary.LittleEndian.Uint32(p.rsdp[16:]); r != 0 {
		rs := add(uint64(r))
		var rentries []uint64
		for o := headerSize; o+4 <= len(rs); o += 4 {
			rentries = append(rentries, uint64(binary.LittleEndian.Uint32(rs[o:])))
		}
		if !equalU64(rentries, xentries) {
			t.Errorf("RSDT entries %x, XSDT %x", rentries, xentries)
		}
	}
	fadt := p.tables["FACP"]
	if fadt == nil {
		t.Fatal("no FADT")
	}
	dsdtAddr := binary.LittleEndian.Uint64(fadt[140:])
	if d32 := binary.LittleEndian.Uint32(fadt[40:]); d32 != 0 && uint64(d32) != dsdtAddr {
		t.Errorf("DSDT 32/64 mismatch %#x %#x", d32, dsdtAddr)
	}
	add(dsdtAddr)
	facsAddr := binary.LittleEndian.Uint64(fadt[132:])
	if f32 := binary.LittleEndian.Uint32(fadt[36:]); f32 != 0 && uint64(f32) != facsAddr {
		t.Errorf("FACS 32/64 mismatch %#x %#x", f32, facsAddr)
	}
	if facsAddr%64 != 0 {
		t.Errorf("FACS at %#x not 64-byte aligned", facsAddr)
	}
	facs := at(facsAddr, facsSize)
	if string(facs[:4]) != "FACS" || binary.LittleEndian.Uint32(facs[4:]) != facsSize {
		t.Errorf("FACS header %q", facs[:8])
	}
	p.tables["FACS"], p.addrs["FACS"] = facs, facsAddr
	return p
}

func equalU64(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestBuildTables(t *testing.T) {
	noPCI := testConfig()
	noPCI.PCI = nil
	noPCI.Serial = false
	noECAM := testConfig()
	noECAM.PCI.ECAM = ECAM{}
	noECAM.PCI.Mem64 = Window{}
	many := testConfig()
	many.CPUs = 255
	high := testConfig()
	tests := []struct {
		name string
		cfg  Config
		base uint64
		sigs []string
	}{
		{"full", testConfig(), testBase, []string{"FACP", "APIC", "MCFG", "DSDT", "XSDT", "RSDT", "FACS"}},
		{"no PCI", noPCI, testBase, []string{"FACP", "APIC", "DSDT", "XSDT", "RSDT", "FACS"}},
		{"no ECAM", noECAM, 0xf0000, []string{"FACP", "APIC", "DSDT", "XSDT", "RSDT", "FACS"}},
		{"255 CPUs", many, testBase + 0x10, []string{"FACP", "APIC", "MCFG", "DSDT", "XSDT", "RSDT", "FACS"}},
		{"above 4G", high, 0x1_0000_0000, []string{"FACP", "APIC", "MCFG", "DSDT", "XSDT", "FACS"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			blob, rsdpAddr, err := Build(tc.cfg, tc.base)
			if err != nil {
				t.Fatal(err)
			}
			if rsdpAddr != tc.base {
				t.Errorf("RSDP at %#x, want %#x", rsdpAddr, tc.base)
			}
			p := parse(t, blob, tc.base, rsdpAddr)
			if len(p.tables) != len(tc.sigs) {
				t.Errorf("tables %v, want %v", keys(p.tables), tc.sigs)
			}
			for _, s := range tc.sigs {
				if p.tables[s] == nil {
					t.Errorf("missing %s", s)
				}
			}
			checkMADT(t, p.tables["APIC"], tc.cfg.CPUs)
			checkFADT(t, p.tables["FACP"])
		})
	}
}

func keys(m map[string][]byte) []string {
	var k []string
	for s := range m {
		k = append(k, s)
	}
	return k
}

func checkMADT(t *testing.T, m []byte, cpus int) {
	t.Helper()
	le := binary.LittleEndian
	if le.Uint32(m[36:]) != LocalAPICAddr || le.Uint32(m[40:])&1 == 0 {
		t.Errorf("MADT local APIC %#x flags %#x", le.Uint32(m[36:]), le.Uint32(m[40:]))
	}
	counts := map[byte]int{}
	var ids []byte
	for o := 44; o < len(m); {
		typ, n := m[o], int(m[o+1])
		if n < 2 || o+n > len(m) {
			t.Fatalf("MADT entry at %d: type %d length %d", o, typ, n)
		}
		counts[typ]++
		switch typ {
		case madtLocalAPIC:
			if n != 8 || le.Uint32(m[o+4:])&1 == 0 || m[o+2] != m[o+3] {
				t.Errorf("LAPIC entry %x", m[o:o+n])
			}
			ids = append(ids, m[o+3])
		case madtIOAPIC:
			if n != 12 || le.Uint32(m[o+4:]) != DefaultIOAPICAddr || le.Uint32(m[o+8:]) != 0 {
				t.Errorf("IOAPIC entry %x", m[o:o+n])
			}
		case madtISO:
			irq, gsi, flags := m[o+3], le.Uint32(m[o+4:]), le.Uint16(m[o+8:])
			switch irq {
			case 0:
				if gsi != 2 || flags != 0x5 {
					t.Errorf("IRQ0 override: GSI %d flags %#x", gsi, flags)
				}
			case DefaultSCI:
				if gsi != DefaultSCI || flags != 0xd {
					t.Errorf("SCI override: GSI %d flags %#x", gsi, flags)
				}
			default:
				t.Errorf("unexpected override of IRQ %d", irq)
			}
		case madtLocalAPICNMI:
			if n != 6 || m[o+2] != 0xff || m[o+5] != 1 {
				t.Errorf("NMI entry %x", m[o:o+n])
			}
		default:
			t.Errorf("unexpected MADT entry type %d", typ)
		}
		o += n
	}
	if counts[madtLocalAPIC] != cpus || counts[madtIOAPIC] != 1 || counts[madtISO] != 2 || counts[madtLocalAPICNMI] != 1 {
		t.Errorf("MADT entry counts %v for %d CPUs", counts, cpus)
	}
	for i, id := range ids {
		if int(id) != i {
			t.Errorf("LAPIC %d has ID %d", i, id)
		}
	}
}

func checkFADT(t *testing.T, f []byte) {
	t.Helper()
	le := binary.LittleEndian
	if len(f) != fadtSize || f[offRevision] != 6 {
		t.Errorf("FADT length %d revision %d", len(f), f[offRevision])
	}
	if le.Uint16(f[46:]) != DefaultSCI || le.Uint32(f[48:]) != 0 {
		t.Errorf("SCI %d SMI_CMD %#x", le.Uint16(f[46:]), le.Uint32(f[48:]))
	}
	if le.Uint32(f[56:]) != 0x600 || le.Uint32(f[64:]) != 0x604 || f[88] != 4 || f[89] != 2 {
		t.Errorf("PM1 blocks %#x/%#x lengths %d/%d", le.Uint32(f[56:]), le.Uint32(f[64:]), f[88], f[89])
	}
	if le.Uint32(f[76:]) != 0x608 || f[91] != 4 {
		t.Errorf("PM timer block %#x length %d", le.Uint32(f[76:]), f[91])
	}
	if f[208] != 1 || f[209] != 32 || f[211] != 3 || le.Uint64(f[212:]) != 0x608 {
		t.Errorf("X_PM_TMR_BLK %x", f[208:220])
	}
	flags := le.Uint32(f[112:])
	for _, bit := range []uint32{fadtWBINVD, fadtProcC1, fadtResetRegSup, fadtPwrButton, fadtSlpButton, fadtTmrValExt} {
		if flags&bit == 0 {
			t.Errorf("flags %#x lack %#x", flags, bit)
		}
	}
	if flags&(1<<20) != 0 {
		t.Error("hardware reduced")
	}
	if boot := le.Uint16(f[109:]); boot&2 != 0 || boot&4 == 0 {
		t.Errorf("IAPC_BOOT_ARCH %#x: want no 8042, VGA not present", boot)
	}
	if !bytes.Equal(f[116:128], []byte{1, 8, 0, 1, 0xf9, 0x0c, 0, 0, 0, 0, 0, 0}) || f[128] != 6 {
		t.Errorf("reset register %x value %#x", f[116:128], f[128])
	}
	if f[148] != 1 || f[149] != 32 || le.Uint64(f[152:]) != 0x600 {
		t.Errorf("X_PM1a_EVT_BLK %x", f[148:160])
	}
	if f[172] != 1 || f[173] != 16 || le.Uint64(f[176:]) != 0x604 {
		t.Errorf("X_PM1a_CNT_BLK %x", f[172:184])
	}
}

func TestBuildErrors(t *testing.T) {
	mod := func(f func(c *Config)) Config {
		c := testConfig()
		f(&c)
		return c
	}
	tests := []struct {
		name string
		cfg  Config
		base uint64
	}{
		{"no CPUs", mod(func(c *Config) { c.CPUs = 0 }), testBase},
		{"256 CPUs", mod(func(c *Config) { c.CPUs = 256 }), testBase},
		{"unaligned base", testConfig(), testBase + 8},
		{"crosses 1 MiB", testConfig(), RSDPScanEnd - 0x200},
		{"max size", mod(func(c *Config) { c.MaxSize = 512 }), testBase},
		{"PM timer on PM1a", mod(func(c *Config) { c.PMTimer = 0x603 }), testBase},
		{"PM timer past 64K", mod(func(c *Config) { c.PMTimer = 0xfffe }), testBase},
		{"no PM1 event block", mod(func(c *Config) { c.PM1aEvt = 0 }), testBase},
		{"PM1 blocks overlap", mod(func(c *Config) { c.PM1aCnt = 0x602 }), testBase},
		{"PM1 block past 0xffff", mod(func(c *Config) { c.PM1aEvt = 0xfffe }), testBase},
		{"SCI 2", mod(func(c *Config) { c.SCI = 2 }), testBase},
		{"SCI 20", mod(func(c *Config) { c.SCI = 20 }), testBase},
		{"mem32 above 4G", mod(func(c *Config) { c.PCI.Mem32 = Window{0xf0000000, 0x20000000} }), testBase},
		{"mem64 wraps", mod(func(c *Config) { c.PCI.Mem64 = Window{^uint64(0) - 10, 100} }), testBase},
		{"windows overlap", mod(func(c *Config) { c.PCI.Mem64 = Window{0xd0000000, 0x1000} }), testBase},
		{"ECAM in window", mod(func(c *Config) { c.PCI.ECAM.Base = 0xc0000000 }), testBase},
		{"ECAM unaligned", mod(func(c *Config) { c.PCI.ECAM.Base = 0xb0001000 }), testBase},
		{"ECAM 257 buses", mod(func(c *Config) { c.PCI.ECAM.Buses = 257 }), testBase},
		{"bad IO range", mod(func(c *Config) { c.PCI.IO = []IORange{{0x100, 0xff}} }), testBase},
		{"PRT slot 32", mod(func(c *Config) { c.PCI.PRT = []PRTEntry{{Slot: 32}} }), testBase},
		{"PRT pin 4", mod(func(c *Config) { c.PCI.PRT = []PRTEntry{{Slot: 1, Pin: 4}} }), testBase},
		{"PRT too long", mod(func(c *Config) { c.PCI.PRT = make([]PRTEntry, 256) }), testBase},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := Build(tc.cfg, tc.base); !errors.Is(err, ErrConfig) {
				t.Errorf("err = %v, want ErrConfig", err)
			}
		})
	}
}

func TestBuildFitsBIOSArea(t *testing.T) {
	// The largest sensible configuration still fits 0xe0000-0xfffff.
	cfg := testConfig()
	cfg.CPUs = 255
	blob, _, err := Build(cfg, RSDPScanStart)
	if err != nil {
		t.Fatal(err)
	}
	if len(blob) > RSDPScanEnd-RSDPScanStart {
		t.Fatalf("%d bytes", len(blob))
	}
	t.Logf("tables: %d bytes", len(blob))
}

func TestPkgLength(t *testing.T) {
	tests := []struct {
		n    int // bytes following the PkgLength
		want []byte
	}{
		{0, []byte{0x01}},
		{61, []byte{0x3e}},
		{62, []byte{0x3f}},       // total 63: the largest one-byte length
		{63, []byte{0x41, 0x04}}, // total 65 (64 would not fit one byte)
		{64, []byte{0x42, 0x04}},
		{4093, []byte{0x4f, 0xff}},       // total 4095: the largest two-byte length
		{4094, []byte{0x81, 0x00, 0x01}}, // total 4097 (4096 would not fit two bytes)
		{4095, []byte{0x82, 0x00, 0x01}},
		{1<<20 - 4, []byte{0x8f, 0xff, 0xff}},       // total 2^20-1
		{1<<20 - 3, []byte{0xc1, 0x00, 0x00, 0x01}}, // total 2^20+1
		{1 << 20, []byte{0xc4, 0x00, 0x00, 0x01}},
		{1<<28 - 5, []byte{0xcf, 0xff, 0xff, 0xff}},
	}
	for _, tc := range tests {
		got, err := pkgLength(tc.n)
		if err != nil || !bytes.Equal(got, tc.want) {
			t.Errorf("pkgLength(%d) = %x, %v; want %x", tc.n, got, err, tc.want)
			continue
		}
		// Decode it back as AML does: the value counts its own bytes.
		if v := decodePkgLength(got); v != tc.n+len(got) {
			t.Errorf("pkgLength(%d) decodes to %d, want %d", tc.n, v, tc.n+len(got))
		}
	}
	for _, n := range []int{-1, 1<<28 - 4, 1 << 30} {
		if _, err := pkgLength(n); err == nil {
			t.Errorf("pkgLength(%d) accepted", n)
		}
	}
}

func decodePkgLength(b []byte) int {
	extra := int(b[0] >> 6)
	if extra == 0 {
		return int(b[0] & 0x3f)
	}
	v := int(b[0] & 0x0f)
	for i := 1; i <= extra; i++ {
		v |= int(b[i]) << (4 + 8*(i-1))
	}
	return v
}

func TestEISAID(t *testing.T) {
	tests := []struct {
		id   string
		want uint32
		ok   bool
	}{
		{"PNP0A03", 0x030ad041, true},
		{"PNP0A08", 0x080ad041, true},
		{"PNP0501", 0x0105d041, true},
		{"PNP0C02", 0x020cd041, true},
		{"pnp0a03", 0, false},
		{"PNP0A0", 0, false},
		{"PNP0A0G", 0, false},
		{"P1P0A03", 0, false},
	}
	for _, tc := range tests {
		got, err := eisaID(tc.id)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("eisaID(%q) = %#x, %v; want %#x ok=%v", tc.id, got, err, tc.want, tc.ok)
		}
	}
}

func TestNameString(t *testing.T) {
	tests := []struct {
		path string
		want string
		ok   bool
	}{
		{"_HID", "_HID", true},
		{"_S5", "_S5_", true},
		{`\_SB`, `\_SB_`, true},
		{`\_SB.PCI0`, "\\\x2e_SB_PCI0", true},
		{`\_SB.PCI0.COM1`, "\\\x2f\x03_SB_PCI0COM1", true},
		{"^^COM1", "^^COM1", true},
		{`\`, "\\\x00", true},
		{"PCI0.", "", false},
		{"TOOLONG", "", false},
		{"1ABC", "", false},
		{"ab", "", false},
	}
	for _, tc := range tests {
		got, err := nameString(tc.path)
		if (err == nil) != tc.ok || tc.ok && string(got) != tc.want {
			t.Errorf("nameString(%q) = %q, %v; want %q", tc.path, got, err, tc.want)
		}
	}
}

func TestIntegerEncoding(t *testing.T) {
	a := &aml{}
	tests := []struct {
		v    uint64
		want []byte
	}{
		{0, []byte{0x00}},
		{1, []byte{0x01}},
		{2, []byte{0x0a, 0x02}},
		{0xff, []byte{0x0a, 0xff}},
		{0x100, []byte{0x0b, 0x00, 0x01}},
		{0x10000, []byte{0x0c, 0x00, 0x00, 0x01, 0x00}},
		{1 << 32, []byte{0x0e, 0, 0, 0, 0, 1, 0, 0, 0}},
	}
	for _, tc := range tests {
		if got := a.integer(tc.v); !bytes.Equal(got, tc.want) {
			t.Errorf("integer(%#x) = %x, want %x", tc.v, got, tc.want)
		}
	}
	if got := a.str("AB"); !bytes.Equal(got, []byte{0x0d, 'A', 'B', 0}) {
		t.Errorf("str = %x", got)
	}
	a.str("A\x00B")
	if a.err == nil {
		t.Error("NUL in string accepted")
	}
	b := &aml{}
	b.pack(make([][]byte, 256)...)
	if b.err == nil {
		t.Error("256-element package accepted")
	}
}

func TestResourceTemplate(t *testing.T) {
	a := &aml{}
	descs := [][]byte{
		wordBusNumber(0, 0),
		ioPort(0xcf8, 0xcf8, 1, 8),
		wordIO(0x0d00, 0xffff),
		dwordMemory(0xc0000000, 0xfebfffff, false),
		qwordMemory(0x100_0000_0000, 0x1ff_ffff_ffff, true, false),
		memory32Fixed(0xb0000000, 0x100000),
		irqNoFlags(4, 20),
	}
	wantLens := []int{16, 8, 16, 26, 46, 12, 3}
	for i, d := range descs {
		if len(d) != wantLens[i] {
			t.Errorf("descriptor %d: %d bytes, want %d", i, len(d), wantLens[i])
		}
		if d[0]&0x80 != 0 {
			if n := int(binary.LittleEndian.Uint16(d[1:])) + 3; n != len(d) {
				t.Errorf("descriptor %d: length field says %d bytes, have %d", i, n, len(d))
			}
		} else if n := int(d[0]&7) + 1; n != len(d) {
			t.Errorf("small descriptor %d: length field says %d bytes, have %d", i, n, len(d))
		}
	}
	if l := binary.LittleEndian.Uint32(descs[3][22:]); l != 0x3ec00000 {
		t.Errorf("DWordMemory length %#x", l)
	}
	if descs[6][1] != 0x10 || descs[6][2] != 0 {
		t.Errorf("IRQ mask %x", descs[6][1:])
	}
	buf := a.resourceTemplate(descs...)
	if a.err != nil {
		t.Fatal(a.err)
	}
	if buf[0] != amlBuffer {
		t.Fatalf("not a buffer: %x", buf[:4])
	}
	if !bytes.Equal(buf[len(buf)-2:], []byte{0x79, 0x00}) {
		t.Errorf("end tag %x", buf[len(buf)-2:])
	}
	// The BufferSize matches the bytes that follow it.
	var total int
	for _, d := range descs {
		total += len(d)
	}
	total += 2
	pl := decodePkgLength(buf[1:])
	plLen := 1 + int(buf[1]>>6)
	size := buf[1+plLen:]
	if size[0] != amlBytePrefix || int(size[1]) != total {
		t.Errorf("BufferSize %x, want %d", size[:2], total)
	}
	if pl != len(buf)-1 {
		t.Errorf("PkgLength %d, buffer op body %d", pl, len(buf)-1)
	}
}

func TestDSDTContent(t *testing.T) {
	blob, rsdpAddr, err := Build(testConfig(), testBase)
	if err != nil {
		t.Fatal(err)
	}
	d := parse(t, blob, testBase, rsdpAddr).tables["DSDT"]
	for _, want := range [][]byte{
		[]byte("_PRT"), []byte("_S5_"), []byte("PCI0"), []byte("COM1"), []byte("MRES"),
		{0x0c, 0x41, 0xd0, 0x0a, 0x03}, // EisaId("PNP0A03")
		{0x0c, 0x41, 0xd0, 0x0a, 0x08}, // EisaId("PNP0A08")
		{0x12, 0x0c, 0x04, 0x0c, 0xff, 0xff, 0x1f, 0x00, 0x0a, 0x03, 0x00, 0x0a, 0x12}, // Package {0x001FFFFF, 3, Zero, 18}
	} {
		if !bytes.Contains(d, want) {
			t.Errorf("DSDT lacks %q", want)
		}
	}
}
