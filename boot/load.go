package boot

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"

	"github.com/govmd/govmd/memory"
)

// Config is what Load loads and where guest RAM is. Load does not keep it
// or its slices.
type Config struct {
	// Kernel is the whole kernel file: a bzImage or an ELF vmlinux with a
	// PVH note.
	Kernel []byte
	// Initrd is the whole initrd file; nil or empty for none.
	Initrd []byte
	// Cmdline is the kernel command line, without a NUL.
	Cmdline string
	// RAM lists the guest RAM ranges the kernel may use (usually the low
	// RAM region at 0 and, if present, a region at 4 GiB). Every range
	// must be backed by the memory passed to Load, and one of them must
	// cover LoaderArea. Nil means every region of that memory.
	RAM []memory.Range
	// Reserved lists ranges to mark reserved in the memory map (ACPI
	// tables, ECAM, ...). The loader places nothing in them. They must
	// not overlap LoaderArea.
	Reserved []memory.Range
	// RSDP is the guest physical address of the ACPI RSDP, 0 for none.
	RSDP uint64
	// RNGSeed, if not empty, seeds the guest kernel's random number
	// generator at boot: a SETUP_RNG_SEED setup_data entry (bzImage, boot
	// protocol 2.09 or later; Linux 6.1 and later read it, and with
	// RANDOM_TRUST_BOOTLOADER its CRNG is ready at once). At most
	// MaxRNGSeed bytes. A PVH boot has no place for it.
	RNGSeed []byte
}

// MaxRNGSeed is the largest Config.RNGSeed.
const MaxRNGSeed = 256

// setupRNGSeed is the setup_data type of a random seed (SETUP_RNG_SEED);
// setup_data exists from boot protocol 2.09 on.
const (
	setupRNGSeed     = 9
	setupDataVersion = 0x0209
)

// Format is a kernel image format.
type Format int

// Kernel image formats.
const (
	FormatUnknown Format = iota
	FormatBzImage        // bzImage, boot protocol 2.06+
	FormatPVH            // ELF vmlinux entered through its PVH note
)

func (f Format) String() string {
	switch f {
	case FormatBzImage:
		return "bzImage"
	case FormatPVH:
		return "PVH ELF"
	}
	return "unknown"
}

// Loaded describes a loaded kernel.
type Loaded struct {
	Format Format
	// Entry is the boot vCPU's initial state.
	Entry CPUState
	// KernelRange is the memory the kernel occupies or may use at entry:
	// [load address, +init_size) for a bzImage, from the lowest to the
	// highest loaded byte for PVH.
	KernelRange memory.Range
	// InitrdRange is where the initrd is; Size 0 if there is none.
	InitrdRange memory.Range
	// E820 is the memory map given to the kernel.
	E820 []E820Entry
}

var elfMagic = []byte("\x7fELF")

// Detect returns the format of the kernel image and checks its headers the
// way Load does. It returns an error wrapping ErrNotKernel for a file that
// is neither a bzImage nor an ELF file, and ErrNoPVHNote for an ELF file
// without the PVH entry note.
func Detect(kernel []byte) (Format, error) {
	switch {
	case bytes.HasPrefix(kernel, elfMagic):
		if _, err := parseELF(kernel); err != nil {
			return FormatUnknown, err
		}
		return FormatPVH, nil
	case isBzImage(kernel):
		if _, err := parseBzImage(kernel); err != nil {
			return FormatUnknown, err
		}
		return FormatBzImage, nil
	case len(kernel) < hdrMagicOff+4 && (bytes.HasPrefix(kernel, []byte("MZ")) ||
		len(kernel) >= 0x200 && kernel[0x1fe] == 0x55 && kernel[0x1ff] == 0xaa):
		return FormatUnknown, fmt.Errorf("%w: %d bytes, a bzImage setup header needs at least %d", ErrTruncated, len(kernel), hdrMagicOff+4)
	case len(kernel) == 0:
		return FormatUnknown, fmt.Errorf("%w (empty file)", ErrNotKernel)
	}
	return FormatUnknown, ErrNotKernel
}

// Load writes the kernel, initrd, command line and boot structures into mem
// and returns the state to start the boot vCPU with. It validates the image
// and the configuration completely before writing, so on error guest memory
// is unchanged. It must not run concurrently with anything else that uses
// the guest memory it writes (normally it runs before any vCPU exists).
func Load(mem *memory.Memory, cfg Config) (*Loaded, error) {
	if mem == nil {
		return nil, fmt.Errorf("%w: no guest memory", ErrConfig)
	}
	ram, err := checkRAM(mem, cfg.RAM)
	if err != nil {
		return nil, err
	}
	e820, err := E820(ram, cfg.Reserved)
	if err != nil {
		return nil, err
	}
	avoid := []memory.Range{LoaderArea, BIOSArea}
	for _, r := range cfg.Reserved {
		if overlaps(r, LoaderArea) {
			return nil, fmt.Errorf("%w: reserved range [%#x, %#x) overlaps the loader area [%#x, %#x)",
				ErrConfig, r.GPA, r.End(), LoaderArea.GPA, LoaderArea.End())
		}
		if r.Size > 0 {
			avoid = append(avoid, r)
		}
	}
	if strings.IndexByte(cfg.Cmdline, 0) >= 0 {
		return nil, fmt.Errorf("%w: kernel command line contains a NUL byte", ErrConfig)
	}
	if len(cfg.RNGSeed) > MaxRNGSeed {
		return nil, fmt.Errorf("%w: RNG seed of %d bytes, at most %d", ErrConfig, len(cfg.RNGSeed), MaxRNGSeed)
	}
	p := placer{ram: ram, avoid: avoid}
	switch {
	case bytes.HasPrefix(cfg.Kernel, elfMagic):
		img, err := parseELF(cfg.Kernel)
		if err != nil {
			return nil, err
		}
		return loadPVH(mem, &cfg, img, p, e820)
	case isBzImage(cfg.Kernel):
		bz, err := parseBzImage(cfg.Kernel)
		if err != nil {
			return nil, err
		}
		return loadBzImage(mem, &cfg, bz, p, e820)
	}
	_, err = Detect(cfg.Kernel)
	return nil, err
}

func loadBzImage(mem *memory.Memory, cfg *Config, bz *bzImage, p placer, e820 []E820Entry) (*Loaded, error) {
	if uint64(len(cfg.Cmdline)) > bz.cmdlineMax {
		return nil, fmt.Errorf("%w: %d bytes, the kernel accepts at most %d", ErrCmdlineTooLong, len(cfg.Cmdline), bz.cmdlineMax)
	}
	var load uint64
	var ok bool
	if bz.relocatable {
		load, ok = p.lowest(bz.pref, bz.footprint, bz.align, fourGiB)
		if !ok {
			return nil, fmt.Errorf("%w: it needs %#x bytes (init_size) of free RAM below 4 GiB, at %#x or above, aligned to %#x",
				ErrKernelTooLarge, bz.footprint, bz.pref, bz.align)
		}
	} else {
		load = bz.pref
		if !p.free(memory.Range{GPA: load, Size: bz.footprint}, fourGiB) {
			return nil, fmt.Errorf("%w: the non-relocatable kernel needs [%#x, %#x) (init_size %#x) to be free RAM",
				ErrKernelTooLarge, load, load+bz.footprint, bz.footprint)
		}
	}
	kr := memory.Range{GPA: load, Size: bz.footprint}

	var ir memory.Range
	if n := uint64(len(cfg.Initrd)); n > 0 {
		p.avoid = append(p.avoid, kr)
		limit := min(bz.initrdEnd, fourGiB)
		a, ok := p.highest(n, 0, limit)
		if !ok && bz.kernel64 && bz.above4G {
			a, ok = p.highest(n, fourGiB, ^uint64(0))
		}
		if !ok {
			return nil, fmt.Errorf("%w: %d bytes do not fit in free RAM below %#x", ErrInitrdTooLarge, n, limit)
		}
		ir = memory.Range{GPA: a, Size: n}
	}

	// Everything is checked; write.
	if err := mem.WriteAt(bz.raw[bz.pmOffset:bz.pmOffset+bz.pmSize], load); err != nil {
		return nil, fmt.Errorf("writing the kernel: %w", err)
	}
	if err := writeCommon(mem, cfg, ir, flatCode(bz.kernel64)); err != nil {
		return nil, err
	}
	zp := bz.zeroPage(load, ir, cfg.RSDP, e820)
	if len(cfg.RNGSeed) > 0 && bz.hdr.Version >= setupDataVersion {
		// struct setup_data { u64 next; u32 type; u32 len; u8 data[]; }
		sd := make([]byte, 16+len(cfg.RNGSeed))
		binary.LittleEndian.PutUint32(sd[8:], setupRNGSeed)
		binary.LittleEndian.PutUint32(sd[12:], uint32(len(cfg.RNGSeed)))
		copy(sd[16:], cfg.RNGSeed)
		if err := mem.WriteAt(sd, SetupDataAddr); err != nil {
			return nil, fmt.Errorf("writing setup_data: %w", err)
		}
		binary.LittleEndian.PutUint64(zp[bpSetupData:], SetupDataAddr)
	}
	if err := mem.WriteAt(zp, ZeroPageAddr); err != nil {
		return nil, fmt.Errorf("writing boot_params: %w", err)
	}
	var st CPUState
	if bz.kernel64 {
		if err := writePageTables(mem); err != nil {
			return nil, fmt.Errorf("writing page tables: %w", err)
		}
		st = entryState(load+entry64Offset, true)
	} else {
		st = entryState(load, false)
	}
	st.RSI = ZeroPageAddr
	return &Loaded{Format: FormatBzImage, Entry: st, KernelRange: kr, InitrdRange: ir, E820: e820}, nil
}

func loadPVH(mem *memory.Memory, cfg *Config, img *pvhImage, p placer, e820 []E820Entry) (*Loaded, error) {
	if len(cfg.Cmdline) > PVHCmdlineMax {
		return nil, fmt.Errorf("%w: %d bytes, a PVH kernel accepts at most %d", ErrCmdlineTooLong, len(cfg.Cmdline), PVHCmdlineMax)
	}
	for _, s := range img.segs {
		if !p.free(memory.Range{GPA: s.paddr, Size: s.memsz}, fourGiB) {
			return nil, fmt.Errorf("%w: ELF segment %d [%#x, %#x) is not in free RAM", ErrKernelTooLarge, s.index, s.paddr, s.end())
		}
	}
	kr := memory.Range{GPA: img.lo, Size: img.hi - img.lo}

	var ir memory.Range
	if n := uint64(len(cfg.Initrd)); n > 0 {
		p.avoid = append(p.avoid, kr)
		a, ok := p.highest(n, 0, fourGiB)
		if !ok {
			return nil, fmt.Errorf("%w: %d bytes do not fit in free RAM below 4 GiB", ErrInitrdTooLarge, n)
		}
		ir = memory.Range{GPA: a, Size: n}
	}

	for _, s := range img.segs {
		dst, err := mem.Slice(s.paddr, s.memsz)
		if err != nil {
			return nil, fmt.Errorf("writing ELF segment %d: %w", s.index, err)
		}
		copy(dst, img.raw[s.off:s.off+s.filesz])
		clear(dst[s.filesz:])
	}
	if err := writeCommon(mem, cfg, ir, flatCode(false)); err != nil {
		return nil, err
	}
	if err := mem.WriteAt(startInfo(ir, cfg.RSDP, e820), PVHStartInfoAddr); err != nil {
		return nil, fmt.Errorf("writing hvm_start_info: %w", err)
	}
	st := entryState(img.entry, false)
	st.RBX = PVHStartInfoAddr
	return &Loaded{Format: FormatPVH, Entry: st, KernelRange: kr, InitrdRange: ir, E820: e820}, nil
}

// writeCommon writes the initrd, the command line and the GDT.
func writeCommon(mem *memory.Memory, cfg *Config, ir memory.Range, code Segment) error {
	if ir.Size > 0 {
		if err := mem.WriteAt(cfg.Initrd, ir.GPA); err != nil {
			return fmt.Errorf("writing the initrd: %w", err)
		}
	}
	cl := make([]byte, CmdlineAreaSize) // zero filled: the NUL and the rest
	copy(cl, cfg.Cmdline)
	if err := mem.WriteAt(cl, CmdlineAddr); err != nil {
		return fmt.Errorf("writing the command line: %w", err)
	}
	if err := mem.WriteAt(gdt(code), GDTAddr); err != nil {
		return fmt.Errorf("writing the GDT: %w", err)
	}
	return nil
}

// checkRAM validates the RAM ranges (or derives them from mem) and returns
// them sorted.
func checkRAM(mem *memory.Memory, ram []memory.Range) ([]memory.Range, error) {
	var rs []memory.Range
	if len(ram) == 0 {
		for _, r := range mem.Regions() {
			rs = append(rs, memory.Range{GPA: r.GPA, Size: uint64(len(r.Host))})
		}
	} else {
		rs = slices.Clone(ram)
	}
	slices.SortFunc(rs, func(a, b memory.Range) int { return cmpUint64(a.GPA, b.GPA) })
	covered := false
	for i, r := range rs {
		if r.Size == 0 || r.GPA+r.Size < r.GPA {
			return nil, fmt.Errorf("%w: RAM range %#x+%#x is empty or wraps around", ErrConfig, r.GPA, r.Size)
		}
		if i > 0 && rs[i-1].End() > r.GPA {
			return nil, fmt.Errorf("%w: RAM ranges at %#x and %#x overlap", ErrConfig, rs[i-1].GPA, r.GPA)
		}
		if !mem.Contains(r.GPA, r.Size) {
			return nil, fmt.Errorf("%w: RAM range [%#x, %#x) is not backed by guest memory", ErrConfig, r.GPA, r.End())
		}
		if contains(r, LoaderArea) {
			covered = true
		}
	}
	if !covered {
		return nil, fmt.Errorf("%w: guest RAM does not cover the loader area [%#x, %#x)", ErrConfig, LoaderArea.GPA, LoaderArea.End())
	}
	return rs, nil
}

// placer finds free RAM: inside one of ram (sorted, non-overlapping, not
// wrapping) and overlapping none of avoid (none wraps).
type placer struct {
	ram, avoid []memory.Range
}

// free reports whether r lies in one RAM range, ends at or below limit and
// overlaps nothing to avoid.
func (p placer) free(r memory.Range, limit uint64) bool {
	if r.GPA+r.Size < r.GPA || r.End() > limit {
		return false
	}
	_, hit := p.firstOverlap(r)
	if hit {
		return false
	}
	for _, m := range p.ram {
		if contains(m, r) {
			return true
		}
	}
	return false
}

// lowest returns the lowest address a >= from, aligned to align (a power
// of two), such that [a, a+size) is free and ends at or below limit.
func (p placer) lowest(from, size, align, limit uint64) (uint64, bool) {
	for _, r := range p.ram {
		end := min(r.End(), limit)
		a, ok := alignUp(max(r.GPA, from), align)
		for ok && a < end && size <= end-a {
			o, hit := p.firstOverlap(memory.Range{GPA: a, Size: size})
			if !hit {
				return a, true
			}
			a, ok = alignUp(o.End(), align) // o.End() > a: progress
		}
	}
	return 0, false
}

// highest returns the highest page-aligned address a >= floor such that
// [a, a+size) is free and ends at or below limit.
func (p placer) highest(size, floor, limit uint64) (uint64, bool) {
	for i := len(p.ram) - 1; i >= 0; i-- {
		r := p.ram[i]
		bottom := max(r.GPA, floor)
		top := min(r.End(), limit)
		for top > bottom && top-bottom >= size {
			a := (top - size) &^ (pageSize - 1)
			if a < bottom {
				break
			}
			o, hit := p.firstOverlap(memory.Range{GPA: a, Size: size})
			if !hit {
				return a, true
			}
			top = o.GPA // o.GPA < a+size <= top: progress
		}
	}
	return 0, false
}

func (p placer) firstOverlap(r memory.Range) (memory.Range, bool) {
	for _, o := range p.avoid {
		if overlaps(o, r) {
			return o, true
		}
	}
	return memory.Range{}, false
}

// overlaps reports whether a and b share a byte. Neither may wrap.
func overlaps(a, b memory.Range) bool {
	return a.Size > 0 && b.Size > 0 && a.GPA < b.End() && b.GPA < a.End()
}

// contains reports whether outer holds all of inner. Neither may wrap.
func contains(outer, inner memory.Range) bool {
	return outer.GPA <= inner.GPA && inner.End() <= outer.End()
}

// alignUp rounds x up to a multiple of a (a power of two); false if that
// overflows.
func alignUp(x, a uint64) (uint64, bool) {
	y := (x + a - 1) &^ (a - 1)
	return y, y >= x
}

// alignUpNoWrap is alignUp for values known to be far from overflowing.
func alignUpNoWrap(x, a uint64) uint64 {
	return (x + a - 1) &^ (a - 1)
}
