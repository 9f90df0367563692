package boot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/govmd/govmd/memory"
)

// TestSetupHeaderLayout checks that each field decodes from the offset
// Documentation/arch/x86/boot.rst gives for it.
func TestSetupHeaderLayout(t *testing.T) {
	if got, want := binary.Size(SetupHeader{}), hdrKnownEnd-hdrStart; got != want {
		t.Fatalf("binary.Size(SetupHeader) = %#x, want %#x", got, want)
	}
	fields := []struct {
		name string
		off  int
		size int
		get  func(*SetupHeader) uint64
	}{
		{"setup_sects", 0x1f1, 1, func(h *SetupHeader) uint64 { return uint64(h.SetupSects) }},
		{"root_flags", 0x1f2, 2, func(h *SetupHeader) uint64 { return uint64(h.RootFlags) }},
		{"syssize", 0x1f4, 4, func(h *SetupHeader) uint64 { return uint64(h.Syssize) }},
		{"ram_size", 0x1f8, 2, func(h *SetupHeader) uint64 { return uint64(h.RAMSize) }},
		{"vid_mode", 0x1fa, 2, func(h *SetupHeader) uint64 { return uint64(h.VidMode) }},
		{"root_dev", 0x1fc, 2, func(h *SetupHeader) uint64 { return uint64(h.RootDev) }},
		{"boot_flag", 0x1fe, 2, func(h *SetupHeader) uint64 { return uint64(h.BootFlag) }},
		{"jump", 0x200, 2, func(h *SetupHeader) uint64 { return uint64(h.Jump) }},
		{"header", 0x202, 4, func(h *SetupHeader) uint64 { return uint64(h.Header) }},
		{"version", 0x206, 2, func(h *SetupHeader) uint64 { return uint64(h.Version) }},
		{"realmode_swtch", 0x208, 4, func(h *SetupHeader) uint64 { return uint64(h.RealmodeSwtch) }},
		{"start_sys_seg", 0x20c, 2, func(h *SetupHeader) uint64 { return uint64(h.StartSysSeg) }},
		{"kernel_version", 0x20e, 2, func(h *SetupHeader) uint64 { return uint64(h.KernelVersion) }},
		{"type_of_loader", 0x210, 1, func(h *SetupHeader) uint64 { return uint64(h.TypeOfLoader) }},
		{"loadflags", 0x211, 1, func(h *SetupHeader) uint64 { return uint64(h.LoadFlags) }},
		{"setup_move_size", 0x212, 2, func(h *SetupHeader) uint64 { return uint64(h.SetupMoveSize) }},
		{"code32_start", 0x214, 4, func(h *SetupHeader) uint64 { return uint64(h.Code32Start) }},
		{"ramdisk_image", 0x218, 4, func(h *SetupHeader) uint64 { return uint64(h.RamdiskImage) }},
		{"ramdisk_size", 0x21c, 4, func(h *SetupHeader) uint64 { return uint64(h.RamdiskSize) }},
		{"bootsect_kludge", 0x220, 4, func(h *SetupHeader) uint64 { return uint64(h.BootsectKludge) }},
		{"heap_end_ptr", 0x224, 2, func(h *SetupHeader) uint64 { return uint64(h.HeapEndPtr) }},
		{"ext_loader_ver", 0x226, 1, func(h *SetupHeader) uint64 { return uint64(h.ExtLoaderVer) }},
		{"ext_loader_type", 0x227, 1, func(h *SetupHeader) uint64 { return uint64(h.ExtLoaderType) }},
		{"cmd_line_ptr", 0x228, 4, func(h *SetupHeader) uint64 { return uint64(h.CmdLinePtr) }},
		{"initrd_addr_max", 0x22c, 4, func(h *SetupHeader) uint64 { return uint64(h.InitrdAddrMax) }},
		{"kernel_alignment", 0x230, 4, func(h *SetupHeader) uint64 { return uint64(h.KernelAlignment) }},
		{"relocatable_kernel", 0x234, 1, func(h *SetupHeader) uint64 { return uint64(h.RelocatableKernel) }},
		{"min_alignment", 0x235, 1, func(h *SetupHeader) uint64 { return uint64(h.MinAlignment) }},
		{"xloadflags", 0x236, 2, func(h *SetupHeader) uint64 { return uint64(h.XLoadFlags) }},
		{"cmdline_size", 0x238, 4, func(h *SetupHeader) uint64 { return uint64(h.CmdlineSize) }},
		{"hardware_subarch", 0x23c, 4, func(h *SetupHeader) uint64 { return uint64(h.HardwareSubarch) }},
		{"hardware_subarch_data", 0x240, 8, func(h *SetupHeader) uint64 { return h.HardwareSubarchData }},
		{"payload_offset", 0x248, 4, func(h *SetupHeader) uint64 { return uint64(h.PayloadOffset) }},
		{"payload_length", 0x24c, 4, func(h *SetupHeader) uint64 { return uint64(h.PayloadLength) }},
		{"setup_data", 0x250, 8, func(h *SetupHeader) uint64 { return h.SetupData }},
		{"pref_address", 0x258, 8, func(h *SetupHeader) uint64 { return h.PrefAddress }},
		{"init_size", 0x260, 4, func(h *SetupHeader) uint64 { return uint64(h.InitSize) }},
		{"handover_offset", 0x264, 4, func(h *SetupHeader) uint64 { return uint64(h.HandoverOffset) }},
		{"kernel_info_offset", 0x268, 4, func(h *SetupHeader) uint64 { return uint64(h.KernelInfoOffset) }},
	}
	end := hdrStart
	for _, f := range fields {
		if f.off != end {
			t.Errorf("%s at %#x, previous field ends at %#x", f.name, f.off, end)
		}
		end = f.off + f.size
		raw := make([]byte, hdrKnownEnd-hdrStart)
		// A value that uses every byte of the field and differs per field.
		v := uint64(0x8877665544332211) ^ uint64(f.off)
		for i := range f.size {
			raw[f.off-hdrStart+i] = byte(v >> (8 * i))
		}
		var h SetupHeader
		if _, err := binary.Decode(raw, binary.LittleEndian, &h); err != nil {
			t.Fatal(err)
		}
		want := v
		if f.size < 8 {
			want &= 1<<(8*f.size) - 1
		}
		if got := f.get(&h); got != want {
			t.Errorf("%s = %#x, want %#x", f.name, got, want)
		}
	}
	if end != hdrKnownEnd {
		t.Errorf("fields end at %#x, want %#x", end, hdrKnownEnd)
	}
}

func TestParseBzImage(t *testing.T) {
	tests := []struct {
		name    string
		opts    func(o *bzOpts)
		edit    func(b []byte) []byte
		wantErr error
		check   func(t *testing.T, bz *bzImage)
	}{
		{
			name: "valid 64-bit",
			check: func(t *testing.T, bz *bzImage) {
				if bz.hdr.Header != HdrMagic || bz.hdr.Version != 0x020f {
					t.Errorf("header %#x version %#x", bz.hdr.Header, bz.hdr.Version)
				}
				if bz.pmOffset != 5*512 || bz.pmSize != 0x2000 {
					t.Errorf("protected-mode code at %#x+%#x, want 0xa00+0x2000", bz.pmOffset, bz.pmSize)
				}
				if !bz.kernel64 || !bz.above4G || !bz.relocatable {
					t.Errorf("kernel64 %v above4G %v relocatable %v", bz.kernel64, bz.above4G, bz.relocatable)
				}
				if bz.pref != 2*mib || bz.footprint != 4*mib || bz.align != 2*mib {
					t.Errorf("pref %#x footprint %#x align %#x", bz.pref, bz.footprint, bz.align)
				}
				if bz.cmdlineMax != 2047 || bz.initrdEnd != 0x80000000 || bz.hdrEnd != 0x26c {
					t.Errorf("cmdlineMax %d initrdEnd %#x hdrEnd %#x", bz.cmdlineMax, bz.initrdEnd, bz.hdrEnd)
				}
			},
		},
		{
			name: "setup_sects 0 means 4",
			opts: func(o *bzOpts) { o.setupSects = 0 },
			check: func(t *testing.T, bz *bzImage) {
				if bz.pmOffset != 5*512 {
					t.Errorf("pmOffset %#x, want 0xa00", bz.pmOffset)
				}
			},
		},
		{
			name: "setup_sects 30",
			opts: func(o *bzOpts) { o.setupSects = 30 },
			check: func(t *testing.T, bz *bzImage) {
				if bz.pmOffset != 31*512 {
					t.Errorf("pmOffset %#x, want %#x", bz.pmOffset, 31*512)
				}
			},
		},
		{
			name: "init_size smaller than the code",
			opts: func(o *bzOpts) { o.initSize = 0x100; o.payload = 0x1010 },
			check: func(t *testing.T, bz *bzImage) {
				if bz.footprint != 0x2000 {
					t.Errorf("footprint %#x, want the code size rounded to a page, 0x2000", bz.footprint)
				}
			},
		},
		{
			name: "protocol 2.06: no pref_address, init_size, xloadflags",
			opts: func(o *bzOpts) { o.version = 0x0206; o.jumpLen = 0x3a },
			check: func(t *testing.T, bz *bzImage) {
				if bz.pref != 0x100000 || bz.footprint != 0x2000 || bz.kernel64 {
					t.Errorf("pref %#x footprint %#x kernel64 %v", bz.pref, bz.footprint, bz.kernel64)
				}
				if bz.hdr.PrefAddress != 0 || bz.hdr.InitSize != 0 {
					t.Errorf("fields past the header end not zero: pref %#x init_size %#x", bz.hdr.PrefAddress, bz.hdr.InitSize)
				}
			},
		},
		{
			name: "protocol 2.11: 32-bit entry (no xloadflags)",
			opts: func(o *bzOpts) { o.version = 0x020b },
			check: func(t *testing.T, bz *bzImage) {
				if bz.kernel64 {
					t.Error("kernel64 set for protocol 2.11")
				}
			},
		},
		{
			name: "initrd_addr_max 0 uses the old default",
			opts: func(o *bzOpts) { o.initrdMax = 0 },
			check: func(t *testing.T, bz *bzImage) {
				if bz.initrdEnd != 0x38000000 {
					t.Errorf("initrdEnd %#x", bz.initrdEnd)
				}
			},
		},
		{
			name: "huge cmdline_size is capped by the command line area",
			opts: func(o *bzOpts) { o.cmdlineSize = 0xffffffff },
			check: func(t *testing.T, bz *bzImage) {
				if bz.cmdlineMax != CmdlineAreaSize-1 {
					t.Errorf("cmdlineMax %#x", bz.cmdlineMax)
				}
			},
		},
		{name: "no HdrS", edit: func(b []byte) []byte { b[0x202] = 'X'; return b }, wantErr: ErrNotKernel},
		{name: "truncated before magic", edit: func(b []byte) []byte { return b[:0x204] }, wantErr: ErrTruncated},
		{name: "truncated in header", edit: func(b []byte) []byte { return b[:0x230] }, wantErr: ErrTruncated},
		{name: "truncated in setup code", edit: func(b []byte) []byte { return b[:0x800] }, wantErr: ErrTruncated},
		{name: "truncated in kernel", edit: func(b []byte) []byte { return b[:len(b)-1] }, wantErr: ErrTruncated},
		{name: "syssize past EOF", opts: func(o *bzOpts) { o.syssize = 0xffffffff }, wantErr: ErrTruncated},
		{name: "syssize 0", opts: func(o *bzOpts) { o.syssize = 0; o.payload = 0 }, wantErr: ErrBadImage},
		{name: "protocol 2.05", opts: func(o *bzOpts) { o.version = 0x0205 }, wantErr: ErrUnsupported},
		{name: "protocol 1.0", opts: func(o *bzOpts) { o.version = 0x0100 }, wantErr: ErrUnsupported},
		{name: "zImage", opts: func(o *bzOpts) { o.loadFlags = 0 }, wantErr: ErrUnsupported},
		{name: "no jump", edit: func(b []byte) []byte { b[0x200] = 0x90; return b }, wantErr: ErrBadImage},
		{name: "backward jump", opts: func(o *bzOpts) { o.jumpLen = 0xfe }, wantErr: ErrBadImage},
		{name: "header ends before version", opts: func(o *bzOpts) { o.jumpLen = 2 }, wantErr: ErrBadImage},
		{name: "2.06 header too short", opts: func(o *bzOpts) { o.version = 0x0206; o.jumpLen = 0x30 }, wantErr: ErrBadImage},
		{name: "2.10 header without init_size", opts: func(o *bzOpts) { o.version = 0x020a; o.jumpLen = 0x5e }, wantErr: ErrBadImage},
		{name: "alignment 0", opts: func(o *bzOpts) { o.align = 0 }, wantErr: ErrBadImage},
		{name: "alignment not a power of two", opts: func(o *bzOpts) { o.align = 0x300000 }, wantErr: ErrBadImage},
		{
			name: "alignment ignored when not relocatable",
			opts: func(o *bzOpts) { o.align = 3; o.reloc = 0 },
			check: func(t *testing.T, bz *bzImage) {
				if bz.relocatable {
					t.Error("relocatable")
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := testBz()
			if tc.opts != nil {
				tc.opts(&o)
			}
			b := o.build()
			if tc.edit != nil {
				b = tc.edit(b)
			}
			bz, err := parseBzImage(b)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("parseBzImage: %v, want %v", err, tc.wantErr)
			}
			h, perr := ParseBzImage(b)
			if !errors.Is(perr, tc.wantErr) || (perr == nil) != (h != nil) {
				t.Fatalf("ParseBzImage: %v, %v", h, perr)
			}
			if err != nil {
				if bytes.ContainsRune([]byte(err.Error()), '\n') {
					t.Errorf("error has several lines: %q", err)
				}
				return
			}
			if *h != bz.hdr {
				t.Errorf("ParseBzImage header differs from the internal one")
			}
			if tc.check != nil {
				tc.check(t, bz)
			}
		})
	}
}

// bzRAM is the RAM testBz kernels are loaded into: 16 MiB at 0.
var bzRAM = []memory.Range{{GPA: 0, Size: 16 * mib}}

func TestLoadBzImage64(t *testing.T) {
	o := testBz()
	kernel := o.build()
	mem := newMem(t, bzRAM...)
	initrd := bytes.Repeat([]byte{0xa5}, 0x1800)
	cfg := Config{
		Kernel: kernel, Initrd: initrd, Cmdline: "console=ttyS0 root=/dev/vda",
		Reserved: []memory.Range{{GPA: 0xe0000000, Size: 0x10000000}},
		RSDP:     0xe0000,
	}
	l, err := Load(mem, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if l.Format != FormatBzImage {
		t.Errorf("format %v", l.Format)
	}
	if want := (memory.Range{GPA: 2 * mib, Size: 4 * mib}); l.KernelRange != want {
		t.Errorf("kernel range %+v, want %+v", l.KernelRange, want)
	}
	// Top of RAM, page aligned down.
	if want := (memory.Range{GPA: 16*mib - 0x2000, Size: 0x1800}); l.InitrdRange != want {
		t.Errorf("initrd range %+v, want %+v", l.InitrdRange, want)
	}
	if got := readMem(t, mem, 2*mib, 0x2000); !bytes.Equal(got, kernel[0xa00:]) {
		t.Error("protected-mode code not at the load address")
	}
	if got := readMem(t, mem, l.InitrdRange.GPA, 0x1800); !bytes.Equal(got, initrd) {
		t.Error("initrd not loaded")
	}
	if got := readMem(t, mem, CmdlineAddr, uint64(len(cfg.Cmdline)+1)); string(got) != cfg.Cmdline+"\x00" {
		t.Errorf("cmdline %q", got)
	}

	zp := readMem(t, mem, ZeroPageAddr, pageSize)
	le := binary.LittleEndian
	// The setup header is copied, then the loader's fields are set.
	want := append([]byte(nil), kernel[hdrStart:0x26c]...)
	le.PutUint16(want[bpVidMode-hdrStart:], 0xffff)
	want[bpTypeOfLoader-hdrStart] = 0xff
	want[bpLoadFlags-hdrStart] = LoadedHigh | CanUseHeap
	le.PutUint16(want[bpHeapEndPtr-hdrStart:], 0xde00)
	le.PutUint32(want[bpCode32Start-hdrStart:], 2*mib)
	le.PutUint32(want[bpRamdiskImage-hdrStart:], 16*mib-0x2000)
	le.PutUint32(want[bpRamdiskSize-hdrStart:], 0x1800)
	le.PutUint32(want[bpCmdLinePtr-hdrStart:], CmdlineAddr)
	if got := zp[hdrStart:0x26c]; !bytes.Equal(got, want) {
		t.Errorf("zero page header\n got % x\nwant % x", got, want)
	}
	for _, f := range []struct {
		name      string
		off, size int
		want      uint64
	}{
		{"acpi_rsdp_addr", 0x070, 8, 0xe0000},
		{"ext_ramdisk_image", 0x0c0, 4, 0},
		{"ext_ramdisk_size", 0x0c4, 4, 0},
		{"ext_cmd_line_ptr", 0x0c8, 4, 0},
		{"e820_entries", 0x1e8, 1, 4},
		{"sentinel", 0x1ef, 1, 0},
	} {
		var got uint64
		for i := range f.size {
			got |= uint64(zp[f.off+i]) << (8 * i)
		}
		if got != f.want {
			t.Errorf("boot_params.%s = %#x, want %#x", f.name, got, f.want)
		}
	}
	wantE820 := []E820Entry{
		{0, 0x9fc00, E820RAM},
		{0x9fc00, 0x60400, E820Reserved},
		{0x100000, 15 * mib, E820RAM},
		{0xe0000000, 0x10000000, E820Reserved},
	}
	for i, e := range wantE820 {
		p := zp[0x2d0+20*i:]
		got := E820Entry{le.Uint64(p), le.Uint64(p[8:]), E820Type(le.Uint32(p[16:]))}
		if got != e {
			t.Errorf("e820[%d] = %v, want %v", i, got, e)
		}
		if l.E820[i] != e {
			t.Errorf("Loaded.E820[%d] = %v, want %v", i, l.E820[i], e)
		}
	}

	st := l.Entry
	if st.RIP != 2*mib+0x200 || st.RSI != ZeroPageAddr || st.RBX != 0 || st.RFLAGS != 2 || !st.LongMode {
		t.Errorf("RIP %#x RSI %#x RBX %#x RFLAGS %#x long %v", st.RIP, st.RSI, st.RBX, st.RFLAGS, st.LongMode)
	}
	if st.CR0 != 0x80000011 || st.CR3 != PML4Addr || st.CR4 != 0x20 || st.EFER != 0x500 {
		t.Errorf("CR0 %#x CR3 %#x CR4 %#x EFER %#x", st.CR0, st.CR3, st.CR4, st.EFER)
	}
	checkSegments(t, mem, st, true)
	checkPageTables(t, mem)
}

func checkSegments(t *testing.T, mem *memory.Memory, st CPUState, long bool) {
	t.Helper()
	if st.GDTBase != GDTAddr || st.GDTLimit != 0x1f {
		t.Errorf("GDT %#x limit %#x", st.GDTBase, st.GDTLimit)
	}
	wantCode := uint64(0x00cf9b000000ffff)
	if long {
		wantCode = 0x00af9b000000ffff
	}
	g := readMem(t, mem, GDTAddr, 32)
	le := binary.LittleEndian
	if le.Uint64(g) != 0 || le.Uint64(g[8:]) != 0 || le.Uint64(g[0x10:]) != wantCode || le.Uint64(g[0x18:]) != 0x00cf93000000ffff {
		t.Errorf("GDT % x", g)
	}
	if st.CS.Selector != 0x10 || st.CS.L != long || st.CS.DB == long || st.CS.Base != 0 || st.CS.Limit != 0xffffffff ||
		st.CS.Type != 0xb || !st.CS.Present || !st.CS.S || !st.CS.G || st.CS.descriptor() != wantCode {
		t.Errorf("CS %+v", st.CS)
	}
	for i, s := range []Segment{st.DS, st.ES, st.FS, st.GS, st.SS} {
		if s.Selector != 0x18 || s.Type != 0x3 || !s.DB || s.L || s.Limit != 0xffffffff || s.descriptor() != 0x00cf93000000ffff {
			t.Errorf("data segment %d: %+v", i, s)
		}
	}
}

func checkPageTables(t *testing.T, mem *memory.Memory) {
	t.Helper()
	le := binary.LittleEndian
	pml4 := readMem(t, mem, PML4Addr, pageSize)
	if le.Uint64(pml4) != PDPTAddr|3 {
		t.Errorf("PML4[0] = %#x", le.Uint64(pml4))
	}
	for i := 1; i < 512; i++ {
		if le.Uint64(pml4[i*8:]) != 0 {
			t.Errorf("PML4[%d] = %#x", i, le.Uint64(pml4[i*8:]))
		}
	}
	pdpt := readMem(t, mem, PDPTAddr, pageSize)
	for i := range 512 {
		want := uint64(0)
		if i < 4 {
			want = uint64(PDAddr+i*pageSize) | 3
		}
		if got := le.Uint64(pdpt[i*8:]); got != want {
			t.Errorf("PDPT[%d] = %#x, want %#x", i, got, want)
		}
	}
	pd := readMem(t, mem, PDAddr, 4*pageSize)
	for _, i := range []int{0, 1, 8, 511, 512, 1536 + 1, 2047} {
		if got, want := le.Uint64(pd[i*8:]), uint64(i)<<21|0x83; got != want {
			t.Errorf("PD entry %d = %#x, want %#x", i, got, want)
		}
	}
	// 3 GiB + 2 MiB maps to itself.
	if got := le.Uint64(pd[(3*512+1)*8:]) &^ 0xfff; got != 3<<30+2*mib {
		t.Errorf("PD entry for 3 GiB + 2 MiB maps %#x", got)
	}
}

func TestLoadBzImage32(t *testing.T) {
	o := testBz()
	o.xlf = 0
	mem := newMem(t, bzRAM...)
	l, err := Load(mem, Config{Kernel: o.build()})
	if err != nil {
		t.Fatal(err)
	}
	st := l.Entry
	if st.RIP != 2*mib || st.RSI != ZeroPageAddr || st.LongMode || st.CR0 != 0x11 || st.CR3 != 0 || st.CR4 != 0 || st.EFER != 0 {
		t.Errorf("state %+v", st)
	}
	checkSegments(t, mem, st, false)
	if l.InitrdRange.Size != 0 {
		t.Errorf("initrd range %+v without an initrd", l.InitrdRange)
	}
	zp := readMem(t, mem, ZeroPageAddr, pageSize)
	if binary.LittleEndian.Uint32(zp[bpRamdiskImage:]) != 0 || binary.LittleEndian.Uint32(zp[bpRamdiskSize:]) != 0 {
		t.Error("ramdisk fields set without an initrd")
	}
	if binary.LittleEndian.Uint64(zp[bpACPIRSDPAddr:]) != 0 {
		t.Error("acpi_rsdp_addr set without an RSDP")
	}
	// No page tables for the 32-bit entry.
	if !bytes.Equal(readMem(t, mem, PML4Addr, 8), make([]byte, 8)) {
		t.Error("page tables written for a 32-bit entry")
	}
}

func TestBzImagePlacement(t *testing.T) {
	high := memory.Range{GPA: 1 << 32, Size: 4 * mib}
	tests := []struct {
		name       string
		opts       func(o *bzOpts)
		ram        []memory.Range
		reserved   []memory.Range
		initrd     uint64
		cmdline    int
		wantKernel uint64
		wantInitrd uint64
		wantErr    error
	}{
		{name: "at pref_address", initrd: 1, wantKernel: 2 * mib, wantInitrd: 16*mib - pageSize},
		{
			name:       "pref_address blocked by a reserved range: next aligned address",
			reserved:   []memory.Range{{GPA: 5 * mib, Size: 0x1000}},
			wantKernel: 6 * mib,
		},
		{
			name:       "pref_address not aligned",
			opts:       func(o *bzOpts) { o.pref = 3 * mib },
			wantKernel: 4 * mib,
		},
		{
			name:       "alignment below a page rounds to a page",
			opts:       func(o *bzOpts) { o.align = 16; o.pref = 0x100010 },
			wantKernel: 0x101000,
		},
		{
			name:    "RAM too small",
			ram:     []memory.Range{{GPA: 0, Size: 5 * mib}},
			wantErr: ErrKernelTooLarge,
		},
		{
			name:     "non-relocatable at a blocked pref_address",
			opts:     func(o *bzOpts) { o.reloc = 0 },
			reserved: []memory.Range{{GPA: 3 * mib, Size: 0x1000}},
			wantErr:  ErrKernelTooLarge,
		},
		{
			name:       "non-relocatable at a free pref_address",
			opts:       func(o *bzOpts) { o.reloc = 0; o.pref = 3 * mib },
			wantKernel: 3 * mib,
		},
		{
			name:    "init_size larger than RAM",
			opts:    func(o *bzOpts) { o.initSize = 0xffffffff },
			wantErr: ErrKernelTooLarge,
		},
		{
			name:    "pref_address near the top of the address space",
			opts:    func(o *bzOpts) { o.pref = ^uint64(0) - 0x1000 },
			wantErr: ErrKernelTooLarge,
		},
		{
			name:       "initrd below initrd_addr_max",
			opts:       func(o *bzOpts) { o.initrdMax = 10*mib - 1 },
			initrd:     0x3000,
			wantKernel: 2 * mib, wantInitrd: 10*mib - 0x3000,
		},
		{
			name:       "initrd below a reserved range at the top of RAM",
			reserved:   []memory.Range{{GPA: 15 * mib, Size: mib}},
			initrd:     mib,
			wantKernel: 2 * mib, wantInitrd: 14 * mib,
		},
		{
			name:       "initrd below the kernel when above is full",
			opts:       func(o *bzOpts) { o.pref = 8 * mib; o.initrdMax = 12*mib - 1 },
			initrd:     3 * mib,
			wantKernel: 8 * mib, wantInitrd: 5 * mib,
		},
		{name: "initrd too large", initrd: 11 * mib, wantErr: ErrInitrdTooLarge},
		{
			name:    "initrd too large below initrd_addr_max",
			opts:    func(o *bzOpts) { o.initrdMax = 2*mib - 1 },
			initrd:  2 * mib,
			wantErr: ErrInitrdTooLarge,
		},
		{
			name:       "initrd above 4 GiB with XLF_CAN_BE_LOADED_ABOVE_4G",
			ram:        []memory.Range{bzRAM[0], high},
			initrd:     3 * mib,
			opts:       func(o *bzOpts) { o.initrdMax = 8*mib - 1 },
			wantKernel: 2 * mib, wantInitrd: 1<<32 + mib,
		},
		{
			name:    "no initrd above 4 GiB for a 32-bit entry",
			ram:     []memory.Range{bzRAM[0], high},
			initrd:  3 * mib,
			opts:    func(o *bzOpts) { o.initrdMax = 8*mib - 1; o.xlf = XLFCanBeLoadedAbove4G },
			wantErr: ErrInitrdTooLarge,
		},
		{
			name:    "no initrd above 4 GiB without the flag",
			ram:     []memory.Range{bzRAM[0], high},
			initrd:  3 * mib,
			opts:    func(o *bzOpts) { o.initrdMax = 8*mib - 1; o.xlf = XLFKernel64 },
			wantErr: ErrInitrdTooLarge,
		},
		{name: "cmdline at cmdline_size", cmdline: 2047, wantKernel: 2 * mib},
		{name: "cmdline too long", cmdline: 2048, wantErr: ErrCmdlineTooLong},
		{
			name:    "cmdline longer than a small cmdline_size",
			opts:    func(o *bzOpts) { o.cmdlineSize = 255 },
			cmdline: 256, wantErr: ErrCmdlineTooLong,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := testBz()
			if tc.opts != nil {
				tc.opts(&o)
			}
			ram := tc.ram
			if ram == nil {
				ram = bzRAM
			}
			mem := newMem(t, ram...)
			cfg := Config{
				Kernel:   o.build(),
				Initrd:   bytes.Repeat([]byte{1}, int(tc.initrd)),
				Cmdline:  string(bytes.Repeat([]byte{'x'}, tc.cmdline)),
				Reserved: tc.reserved,
			}
			l, err := Load(mem, cfg)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Load: %v, want %v", err, tc.wantErr)
			}
			if err != nil {
				if !allZero(mem) {
					t.Error("failed Load wrote to guest memory")
				}
				return
			}
			if l.KernelRange.GPA != tc.wantKernel {
				t.Errorf("kernel at %#x, want %#x", l.KernelRange.GPA, tc.wantKernel)
			}
			if l.InitrdRange.GPA != tc.wantInitrd || l.InitrdRange.Size != tc.initrd {
				t.Errorf("initrd at %+v, want %#x+%#x", l.InitrdRange, tc.wantInitrd, tc.initrd)
			}
			if overlaps(l.KernelRange, l.InitrdRange) {
				t.Errorf("kernel %+v and initrd %+v overlap", l.KernelRange, l.InitrdRange)
			}
			if tc.initrd > 0 {
				zp := readMem(t, mem, ZeroPageAddr, pageSize)
				le := binary.LittleEndian
				img := uint64(le.Uint32(zp[bpRamdiskImage:])) | uint64(le.Uint32(zp[bpExtRamdiskImage:]))<<32
				size := uint64(le.Uint32(zp[bpRamdiskSize:])) | uint64(le.Uint32(zp[bpExtRamdiskSize:]))<<32
				if img != tc.wantInitrd || size != tc.initrd {
					t.Errorf("boot_params ramdisk %#x+%#x", img, size)
				}
			}
		})
	}
}
