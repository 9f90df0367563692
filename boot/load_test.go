package boot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/govmd/govmd/memory"
)

func TestLayout(t *testing.T) {
	areas := []struct {
		name string
		r    memory.Range
	}{
		{"GDT", memory.Range{GPA: GDTAddr, Size: gdtEntries * 8}},
		{"start_info", memory.Range{GPA: PVHStartInfoAddr, Size: startInfoSize}},
		{"modlist", memory.Range{GPA: PVHModlistAddr, Size: modlistEntrySize}},
		{"memmap", memory.Range{GPA: PVHMemmapAddr, Size: E820Max * memmapEntrySize}},
		{"zero page", memory.Range{GPA: ZeroPageAddr, Size: pageSize}},
		{"stack", memory.Range{GPA: StackTop - pageSize, Size: pageSize}},
		{"PML4", memory.Range{GPA: PML4Addr, Size: pageSize}},
		{"PDPT", memory.Range{GPA: PDPTAddr, Size: pageSize}},
		{"PDs", memory.Range{GPA: PDAddr, Size: 4 * pageSize}},
		{"cmdline", memory.Range{GPA: CmdlineAddr, Size: CmdlineAreaSize}},
	}
	for i, a := range areas {
		if !contains(LoaderArea, a.r) {
			t.Errorf("%s [%#x, %#x) is outside LoaderArea", a.name, a.r.GPA, a.r.End())
		}
		if overlaps(a.r, BIOSArea) {
			t.Errorf("%s overlaps the BIOS area", a.name)
		}
		for _, b := range areas[i+1:] {
			if overlaps(a.r, b.r) {
				t.Errorf("%s and %s overlap", a.name, b.name)
			}
		}
	}
	// The zero page's e820 table must fit in the page.
	if bpE820Table+E820Max*bpE820EntrySize > pageSize {
		t.Error("e820 table overflows the zero page")
	}
	if LoaderArea.End() > BIOSArea.GPA || LoaderArea.End() > 0xe0000 {
		t.Error("loader area reaches the BIOS/ACPI area")
	}
}

func TestDetect(t *testing.T) {
	bz := testBz().build()
	tests := []struct {
		name    string
		b       []byte
		want    Format
		wantErr error
		msg     string
	}{
		{name: "bzImage", b: bz, want: FormatBzImage},
		{name: "PVH ELF64", b: testELF().build(), want: FormatPVH},
		{name: "empty", b: nil, wantErr: ErrNotKernel, msg: "kernel image is neither a bzImage nor an ELF vmlinux (empty file)"},
		{name: "text", b: []byte(strings.Repeat("hello world\n", 100)), wantErr: ErrNotKernel, msg: "kernel image is neither a bzImage nor an ELF vmlinux"},
		{name: "short garbage", b: []byte{1, 2, 3}, wantErr: ErrNotKernel},
		{name: "truncated MZ bzImage", b: bz[:0x100], wantErr: ErrTruncated},
		{name: "truncated boot sector", b: func() []byte { b := make([]byte, 0x203); b[0x1fe], b[0x1ff] = 0x55, 0xaa; return b }(), wantErr: ErrTruncated},
		{name: "truncated ELF", b: []byte("\x7fELF\x02\x01\x01"), wantErr: ErrTruncated},
		{name: "ELF without PVH note", b: func() []byte { o := testELF(); o.notes = nil; return o.build() }(), wantErr: ErrNoPVHNote,
			msg: "ELF kernel has no PVH entry note; use the bzImage"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Detect(tc.b)
			if got != tc.want || !errors.Is(err, tc.wantErr) {
				t.Fatalf("Detect = %v, %v; want %v, %v", got, err, tc.want, tc.wantErr)
			}
			if tc.msg != "" && err.Error() != tc.msg {
				t.Errorf("error %q, want %q", err, tc.msg)
			}
			mem := newMem(t, bzRAM...)
			_, lerr := Load(mem, Config{Kernel: tc.b})
			if tc.wantErr != nil && !errors.Is(lerr, tc.wantErr) {
				t.Errorf("Load: %v, want %v", lerr, tc.wantErr)
			}
		})
	}
	for f, want := range map[Format]string{FormatBzImage: "bzImage", FormatPVH: "PVH ELF", FormatUnknown: "unknown"} {
		if f.String() != want {
			t.Errorf("%d.String() = %q", int(f), f.String())
		}
	}
}

func TestLoadConfigErrors(t *testing.T) {
	kernel := testBz().build()
	tests := []struct {
		name     string
		nilMem   bool
		mem      []memory.Range
		ram      []memory.Range
		reserved []memory.Range
		cmdline  string
		wantErr  error
	}{
		{name: "no memory", nilMem: true, wantErr: ErrConfig},
		{name: "RAM not backed", ram: []memory.Range{{GPA: 0, Size: 32 * mib}}, wantErr: ErrConfig},
		{name: "RAM range empty", ram: []memory.Range{bzRAM[0], {GPA: 1 << 32}}, wantErr: ErrConfig},
		{name: "RAM ranges overlap", ram: []memory.Range{bzRAM[0], {GPA: 8 * mib, Size: mib}}, wantErr: ErrConfig},
		{name: "RAM wraps", ram: []memory.Range{bzRAM[0], {GPA: ^uint64(0) - 0xfff, Size: 0x2000}}, wantErr: ErrConfig},
		{name: "RAM misses the loader area", mem: []memory.Range{{GPA: mib, Size: 15 * mib}}, wantErr: ErrConfig},
		{name: "reserved in the loader area", reserved: []memory.Range{{GPA: 0x7000, Size: 1}}, wantErr: ErrConfig},
		{name: "reserved wraps", reserved: []memory.Range{{GPA: 0x100000000, Size: ^uint64(0)}}, wantErr: ErrConfig},
		{name: "NUL in cmdline", cmdline: "a\x00b", wantErr: ErrConfig},
		{name: "explicit RAM subset", ram: []memory.Range{{GPA: 0, Size: 8 * mib}}},
		{name: "empty reserved range", reserved: []memory.Range{{GPA: 0x7000}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var mem *memory.Memory
			if !tc.nilMem {
				ms := tc.mem
				if ms == nil {
					ms = bzRAM
				}
				mem = newMem(t, ms...)
			}
			_, err := Load(mem, Config{Kernel: kernel, RAM: tc.ram, Reserved: tc.reserved, Cmdline: tc.cmdline})
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Load: %v, want %v", err, tc.wantErr)
			}
			if err != nil && mem != nil && !allZero(mem) {
				t.Error("failed Load wrote to guest memory")
			}
		})
	}
}

// TestLoadRespectsExplicitRAM checks that the initrd goes to the top of the
// RAM the caller lists, not of the memory backing it.
func TestLoadRespectsExplicitRAM(t *testing.T) {
	mem := newMem(t, bzRAM...)
	l, err := Load(mem, Config{Kernel: testBz().build(), Initrd: []byte{1}, RAM: []memory.Range{{GPA: 0, Size: 8 * mib}}})
	if err != nil {
		t.Fatal(err)
	}
	if l.InitrdRange.GPA != 8*mib-pageSize {
		t.Errorf("initrd at %#x", l.InitrdRange.GPA)
	}
}

// TestRNGSeed: a bzImage with boot protocol 2.09+ gets the seed as a
// SETUP_RNG_SEED setup_data entry that boot_params points to; an older one
// and a PVH kernel get none; a seed over MaxRNGSeed is refused.
func TestRNGSeed(t *testing.T) {
	seed := []byte("0123456789abcdef0123456789abcdef")
	mem := newMem(t, bzRAM...)
	if _, err := Load(mem, Config{Kernel: testBz().build(), RNGSeed: seed}); err != nil {
		t.Fatal(err)
	}
	zp := readMem(t, mem, ZeroPageAddr, pageSize)
	if got := binary.LittleEndian.Uint64(zp[bpSetupData:]); got != SetupDataAddr {
		t.Fatalf("boot_params.hdr.setup_data = %#x", got)
	}
	sd := readMem(t, mem, SetupDataAddr, 16+uint64(len(seed)))
	if next, typ, n := binary.LittleEndian.Uint64(sd), binary.LittleEndian.Uint32(sd[8:]), binary.LittleEndian.Uint32(sd[12:]); next != 0 || typ != 9 || n != uint32(len(seed)) || !bytes.Equal(sd[16:], seed) {
		t.Fatalf("setup_data next %#x type %d len %d data %q", next, typ, n, sd[16:])
	}

	old := testBz()
	old.version = 0x0208
	mem = newMem(t, bzRAM...)
	if _, err := Load(mem, Config{Kernel: old.build(), RNGSeed: seed}); err != nil {
		t.Fatal(err)
	}
	if got := binary.LittleEndian.Uint64(readMem(t, mem, ZeroPageAddr, pageSize)[bpSetupData:]); got != 0 {
		t.Errorf("protocol 2.08: setup_data = %#x", got)
	}
	if _, err := Load(newMem(t, bzRAM...), Config{Kernel: testBz().build(), RNGSeed: make([]byte, MaxRNGSeed+1)}); !errors.Is(err, ErrConfig) {
		t.Errorf("oversized seed: %v", err)
	}
}
