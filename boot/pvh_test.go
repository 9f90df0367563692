package boot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/govmd/govmd/memory"
)

// pvhRAM is the RAM PVH test kernels are loaded into: 20 MiB at 0.
var pvhRAM = []memory.Range{{GPA: 0, Size: 20 * mib}}

func TestLoadPVH(t *testing.T) {
	for _, class32 := range []bool{false, true} {
		name := "ELF64"
		if class32 {
			name = "ELF32"
		}
		t.Run(name, func(t *testing.T) {
			o := testELF()
			o.class32 = class32
			if class32 {
				o.notes = pvhNote(16*mib+0x10, 4)
			}
			kernel := o.build()
			mem := newMem(t, pvhRAM...)
			// The bss must be cleared even if memory is not zero.
			bss := readMem(t, mem, 16*mib+0x1000, 0x3000)
			for i := range bss {
				bss[i] = 0xff
			}
			initrd := bytes.Repeat([]byte{0x5a}, 0x2345)
			cfg := Config{
				Kernel: kernel, Initrd: initrd, Cmdline: "console=hvc0",
				Reserved: []memory.Range{{GPA: 0xb0000000, Size: 0x10000000}},
				RSDP:     0xf0000,
			}
			l, err := Load(mem, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if l.Format != FormatPVH {
				t.Errorf("format %v", l.Format)
			}
			if want := (memory.Range{GPA: 16 * mib, Size: 0x4000}); l.KernelRange != want {
				t.Errorf("kernel range %+v, want %+v", l.KernelRange, want)
			}
			wantInitrd := memory.Range{GPA: (20*mib - 0x2345) &^ 0xfff, Size: 0x2345}
			if l.InitrdRange != wantInitrd {
				t.Errorf("initrd range %+v, want %+v", l.InitrdRange, wantInitrd)
			}
			seg0, seg1 := o.segs[0], o.segs[1]
			if got := readMem(t, mem, seg0.paddr, 0x1000); !bytes.Equal(got, seg0.data) {
				t.Error("segment 0 not loaded")
			}
			got := readMem(t, mem, seg1.paddr, 0x3000)
			if !bytes.Equal(got[:0x2000], seg1.data) || !bytes.Equal(got[0x2000:], make([]byte, 0x1000)) {
				t.Error("segment 1 not loaded or its bss not cleared")
			}
			if got := readMem(t, mem, wantInitrd.GPA, wantInitrd.Size); !bytes.Equal(got, initrd) {
				t.Error("initrd not loaded")
			}

			// struct hvm_start_info and what it points to, at exact offsets.
			si := readMem(t, mem, PVHStartInfoAddr, pageSize)
			le := binary.LittleEndian
			for _, f := range []struct {
				name      string
				off, size int
				want      uint64
			}{
				{"magic", 0x00, 4, 0x336ec578},
				{"version", 0x04, 4, 1},
				{"flags", 0x08, 4, 0},
				{"nr_modules", 0x0c, 4, 1},
				{"modlist_paddr", 0x10, 8, PVHModlistAddr},
				{"cmdline_paddr", 0x18, 8, CmdlineAddr},
				{"rsdp_paddr", 0x20, 8, 0xf0000},
				{"memmap_paddr", 0x28, 8, PVHMemmapAddr},
				{"memmap_entries", 0x30, 4, 4},
				{"reserved", 0x34, 4, 0},
				{"modlist[0].paddr", 0x40, 8, wantInitrd.GPA},
				{"modlist[0].size", 0x48, 8, 0x2345},
				{"modlist[0].cmdline_paddr", 0x50, 8, 0},
				{"modlist[0].reserved", 0x58, 8, 0},
			} {
				var got uint64
				if f.size == 4 {
					got = uint64(le.Uint32(si[f.off:]))
				} else {
					got = le.Uint64(si[f.off:])
				}
				if got != f.want {
					t.Errorf("start_info %s = %#x, want %#x", f.name, got, f.want)
				}
			}
			wantMap := []E820Entry{
				{0, 0x9fc00, E820RAM},
				{0x9fc00, 0x60400, E820Reserved},
				{0x100000, 19 * mib, E820RAM},
				{0xb0000000, 0x10000000, E820Reserved},
			}
			for i, e := range wantMap {
				p := si[PVHMemmapAddr-PVHStartInfoAddr+24*i:]
				got := E820Entry{le.Uint64(p), le.Uint64(p[8:]), E820Type(le.Uint32(p[16:]))}
				if got != e || le.Uint32(p[20:]) != 0 {
					t.Errorf("memmap[%d] = %v (reserved %#x), want %v", i, got, le.Uint32(p[20:]), e)
				}
			}
			if got := readMem(t, mem, CmdlineAddr, 13); string(got) != "console=hvc0\x00" {
				t.Errorf("cmdline %q", got)
			}

			st := l.Entry
			if st.RIP != 16*mib+0x10 || st.RBX != PVHStartInfoAddr || st.RSI != 0 || st.RFLAGS != 2 || st.LongMode {
				t.Errorf("RIP %#x RBX %#x RSI %#x RFLAGS %#x long %v", st.RIP, st.RBX, st.RSI, st.RFLAGS, st.LongMode)
			}
			if st.CR0 != 0x11 || st.CR3 != 0 || st.CR4 != 0 || st.EFER != 0 {
				t.Errorf("CR0 %#x CR3 %#x CR4 %#x EFER %#x", st.CR0, st.CR3, st.CR4, st.EFER)
			}
			checkSegments(t, mem, st, false)
		})
	}
}

func TestLoadPVHNoInitrd(t *testing.T) {
	mem := newMem(t, pvhRAM...)
	l, err := Load(mem, Config{Kernel: testELF().build()})
	if err != nil {
		t.Fatal(err)
	}
	si := readMem(t, mem, PVHStartInfoAddr, 0x60)
	le := binary.LittleEndian
	if le.Uint32(si[0x0c:]) != 0 || le.Uint64(si[0x10:]) != 0 || le.Uint64(si[0x20:]) != 0 {
		t.Errorf("nr_modules %d modlist %#x rsdp %#x", le.Uint32(si[0x0c:]), le.Uint64(si[0x10:]), le.Uint64(si[0x20:]))
	}
	if l.InitrdRange.Size != 0 {
		t.Errorf("initrd range %+v", l.InitrdRange)
	}
}

func TestELFHostile(t *testing.T) {
	le := binary.LittleEndian
	// Offsets inside an ELF64 program header.
	const (
		pOff    = 8
		pPaddr  = 24
		pFilesz = 32
		pMemsz  = 40
	)
	// Program header 0 is the note; 1 and 2 are the loads.
	tests := []struct {
		name    string
		opts    func(o *elfOpts)
		edit    func(b []byte) []byte
		wantErr error
	}{
		{name: "valid"},
		{name: "no sections", opts: func(o *elfOpts) { o.sections = false }},
		{name: "p_offset past EOF", edit: func(b []byte) []byte { le.PutUint64(b[phdr(b, 1)+pOff:], 1<<40); return b }, wantErr: ErrTruncated},
		{name: "p_offset+p_filesz wraps", edit: func(b []byte) []byte {
			le.PutUint64(b[phdr(b, 1)+pOff:], 0x100)
			le.PutUint64(b[phdr(b, 1)+pFilesz:], ^uint64(0)-0x80)
			le.PutUint64(b[phdr(b, 1)+pMemsz:], ^uint64(0))
			return b
		}, wantErr: ErrTruncated},
		{name: "p_filesz past EOF", edit: func(b []byte) []byte { le.PutUint64(b[phdr(b, 2)+pFilesz:], 0x10000); return b }, wantErr: ErrTruncated},
		{name: "p_filesz > p_memsz", edit: func(b []byte) []byte { le.PutUint64(b[phdr(b, 2)+pMemsz:], 0x100); return b }, wantErr: ErrBadImage},
		{name: "p_paddr outside RAM", edit: func(b []byte) []byte { le.PutUint64(b[phdr(b, 2)+pPaddr:], 0x80000000); return b }, wantErr: ErrKernelTooLarge},
		{name: "p_paddr+p_memsz past 4 GiB", edit: func(b []byte) []byte { le.PutUint64(b[phdr(b, 2)+pPaddr:], 0xfffff000); return b }, wantErr: ErrBadImage},
		{name: "p_paddr+p_memsz wraps", edit: func(b []byte) []byte {
			le.PutUint64(b[phdr(b, 2)+pPaddr:], ^uint64(0)-0x1000)
			return b
		}, wantErr: ErrBadImage},
		{name: "huge p_memsz", edit: func(b []byte) []byte { le.PutUint64(b[phdr(b, 2)+pMemsz:], 1<<62); return b }, wantErr: ErrBadImage},
		{name: "segment in the loader area", edit: func(b []byte) []byte { le.PutUint64(b[phdr(b, 2)+pPaddr:], 0x7000); return b }, wantErr: ErrKernelTooLarge},
		{name: "segment in the BIOS area", edit: func(b []byte) []byte { le.PutUint64(b[phdr(b, 2)+pPaddr:], 0xf0000); return b }, wantErr: ErrKernelTooLarge},
		{name: "segments overlap", edit: func(b []byte) []byte { le.PutUint64(b[phdr(b, 2)+pPaddr:], 16*mib+0x800); return b }, wantErr: ErrBadImage},
		{name: "phoff past EOF", edit: func(b []byte) []byte { le.PutUint64(b[32:], uint64(len(b))); return b }, wantErr: ErrTruncated},
		{name: "phoff huge", edit: func(b []byte) []byte { le.PutUint64(b[32:], ^uint64(0)); return b }, wantErr: ErrTruncated},
		{name: "phnum 0xffff", edit: func(b []byte) []byte { le.PutUint16(b[56:], 0xffff); return b }, wantErr: ErrTruncated},
		{name: "phnum 0", edit: func(b []byte) []byte { le.PutUint16(b[56:], 0); return b }, wantErr: ErrBadImage},
		{name: "phentsize wrong", edit: func(b []byte) []byte { le.PutUint16(b[54:], 32); return b }, wantErr: ErrBadImage},
		{name: "shoff past EOF", edit: func(b []byte) []byte { le.PutUint64(b[40:], uint64(len(b))-8); return b }, wantErr: ErrTruncated},
		{name: "shnum 0xffff", edit: func(b []byte) []byte { le.PutUint16(b[60:], 0xffff); return b }, wantErr: ErrTruncated},
		{name: "shnum without shoff", edit: func(b []byte) []byte { le.PutUint64(b[40:], 0); return b }, wantErr: ErrBadImage},
		{name: "extended section numbering", edit: func(b []byte) []byte { le.PutUint16(b[60:], 0); return b }, wantErr: ErrUnsupported},
		{name: "shentsize wrong", edit: func(b []byte) []byte { le.PutUint16(b[58:], 40); return b }, wantErr: ErrBadImage},
		{name: "shstrndx out of range", edit: func(b []byte) []byte { le.PutUint16(b[62:], 2); return b }, wantErr: ErrBadImage},
		{name: "shstrtab past EOF", edit: func(b []byte) []byte {
			sh := le.Uint64(b[40:]) + 64
			le.PutUint64(b[sh+32:], 1<<40)
			return b
		}, wantErr: ErrTruncated},
		{name: "shstrtab wrong type", edit: func(b []byte) []byte {
			sh := le.Uint64(b[40:]) + 64
			le.PutUint32(b[sh+4:], 1)
			return b
		}, wantErr: ErrBadImage},
		{name: "shstrtab compressed", edit: func(b []byte) []byte {
			sh := le.Uint64(b[40:]) + 64
			le.PutUint64(b[sh+8:], 0x800)
			return b
		}, wantErr: ErrUnsupported},
		{name: "bad section name", edit: func(b []byte) []byte {
			sh := le.Uint64(b[40:]) + 64
			le.PutUint32(b[sh:], 0xffffff)
			return b
		}, wantErr: ErrBadImage},
		{name: "big endian", edit: func(b []byte) []byte { b[5] = 2; return b }, wantErr: ErrUnsupported},
		{name: "bad class", edit: func(b []byte) []byte { b[4] = 3; return b }, wantErr: ErrBadImage},
		{name: "bad version", edit: func(b []byte) []byte { b[6] = 2; return b }, wantErr: ErrBadImage},
		{name: "wrong machine", edit: func(b []byte) []byte { le.PutUint16(b[18:], 183); return b }, wantErr: ErrUnsupported},
		{name: "not an executable", edit: func(b []byte) []byte { le.PutUint16(b[16:], 1); return b }, wantErr: ErrUnsupported},
		{name: "truncated header", edit: func(b []byte) []byte { return b[:40] }, wantErr: ErrTruncated},
		{name: "truncated ident", edit: func(b []byte) []byte { return b[:8] }, wantErr: ErrTruncated},
		{name: "no PVH note", opts: func(o *elfOpts) { o.notes = note("GNU", 3, []byte{1, 2, 3, 4}) }, wantErr: ErrNoPVHNote},
		{name: "no note segment", opts: func(o *elfOpts) { o.notes = nil }, wantErr: ErrNoPVHNote},
		{name: "Xen note of another type", opts: func(o *elfOpts) { o.notes = note("Xen", 17, le64(16*mib)) }, wantErr: ErrNoPVHNote},
		{name: "PVH note with 4-byte address", opts: func(o *elfOpts) { o.notes = pvhNote(16*mib+4, 4) }},
		{name: "PVH note with 2-byte address", opts: func(o *elfOpts) { o.notes = pvhNote(16*mib, 2) }, wantErr: ErrBadImage},
		{name: "PVH entry above 4 GiB", opts: func(o *elfOpts) { o.notes = pvhNote(1<<32+16*mib, 8) }, wantErr: ErrBadImage},
		{name: "PVH entry outside the segments", opts: func(o *elfOpts) { o.notes = pvhNote(8*mib, 8) }, wantErr: ErrBadImage},
		{name: "PVH entry in the bss", opts: func(o *elfOpts) { o.notes = pvhNote(16*mib+0x3800, 8) }, wantErr: ErrBadImage},
		{name: "note descsz overruns", opts: func(o *elfOpts) {
			n := pvhNote(16*mib, 8)
			binary.LittleEndian.PutUint32(n[4:], 0xfffffff0)
			o.notes = n
		}, wantErr: ErrBadImage},
		{name: "note namesz overruns", opts: func(o *elfOpts) {
			n := pvhNote(16*mib, 8)
			binary.LittleEndian.PutUint32(n[0:], 0xffffffff)
			o.notes = n
		}, wantErr: ErrBadImage},
		{name: "note cut short", opts: func(o *elfOpts) { o.notes = pvhNote(16*mib, 8)[:18] }, wantErr: ErrBadImage},
		{name: "no loadable segments", opts: func(o *elfOpts) { o.segs = nil }, wantErr: ErrBadImage},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := testELF()
			if tc.opts != nil {
				tc.opts(&o)
			}
			b := o.build()
			if tc.edit != nil {
				b = tc.edit(b)
			}
			// Sparse RAM keeps this table fast.
			mem := newMem(t, memory.Range{GPA: 0, Size: mib}, memory.Range{GPA: 16 * mib, Size: mib})
			_, err := Load(mem, Config{Kernel: b, Initrd: []byte{1}})
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Load: %v, want %v", err, tc.wantErr)
			}
			if err != nil {
				if bytes.ContainsRune([]byte(err.Error()), '\n') {
					t.Errorf("error has several lines: %q", err)
				}
				if !allZero(mem) {
					t.Error("failed Load wrote to guest memory")
				}
			}
			f, derr := Detect(b)
			if tc.wantErr == ErrKernelTooLarge {
				// Placement errors need the RAM layout; Detect only parses.
				if derr != nil || f != FormatPVH {
					t.Errorf("Detect: %v, %v", f, derr)
				}
			} else if !errors.Is(derr, tc.wantErr) {
				t.Errorf("Detect: %v, want %v", derr, tc.wantErr)
			}
		})
	}
}

func TestPVHCmdline(t *testing.T) {
	for _, n := range []int{0, PVHCmdlineMax, PVHCmdlineMax + 1} {
		mem := newMem(t, pvhRAM...)
		_, err := Load(mem, Config{Kernel: testELF().build(), Cmdline: string(bytes.Repeat([]byte{'a'}, n))})
		if n > PVHCmdlineMax {
			if !errors.Is(err, ErrCmdlineTooLong) {
				t.Errorf("%d bytes: %v, want ErrCmdlineTooLong", n, err)
			}
		} else if err != nil {
			t.Errorf("%d bytes: %v", n, err)
		}
	}
}

func TestPVHInitrdTooLarge(t *testing.T) {
	mem := newMem(t, pvhRAM...)
	_, err := Load(mem, Config{Kernel: testELF().build(), Initrd: make([]byte, 15*mib+1)})
	if !errors.Is(err, ErrInitrdTooLarge) {
		t.Fatalf("Load: %v, want ErrInitrdTooLarge", err)
	}
	// Below the kernel there is [1 MiB, 16 MiB): 15 MiB fits there, just.
	_, err = Load(mem, Config{Kernel: testELF().build(), Initrd: make([]byte, 15*mib)})
	if err != nil {
		t.Fatal(err)
	}
}
