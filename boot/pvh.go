package boot

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/govmd/govmd/memory"
)

// PVH constants (Xen's public headers: elfnote.h, arch-x86/hvm/start_info.h).
const (
	xenElfnotePhys32Entry = 18
	startInfoMagic        = 0x336ec578
	startInfoVersion      = 1
	startInfoSize         = 0x38
	modlistEntrySize      = 32
	memmapEntrySize       = 24
)

// elfSegment is a validated PT_LOAD program header with p_memsz > 0.
type elfSegment struct {
	index                     int
	paddr, off, filesz, memsz uint64
}

func (s elfSegment) end() uint64 { return s.paddr + s.memsz }

// pvhImage is a parsed and validated ELF kernel with a PVH entry note.
type pvhImage struct {
	raw    []byte
	entry  uint64
	segs   []elfSegment // sorted by paddr, non-overlapping, below 4 GiB
	lo, hi uint64       // lowest start and highest end of the segments
}

// Layout of the ELF headers this file reads itself (see elf.Header32/64,
// elf.Section32/64).
type elfLayout struct {
	hdrSize, phentsize, shentsize            uint64
	machine                                  elf.Machine
	phoff, shoff                             uint64
	phnum, shnum, shstrndx                   uint64
	shTypeOff, shFlagsOff, shOffOff, shSzOff uint64
	wordSize                                 uint64 // 4 or 8: sh_flags, sh_offset, sh_size
}

// checkELFHeaders validates the ELF header, the program header table and the
// section header table (bounds, entry sizes, the section name table) against
// the file, so that debug/elf.NewFile, which trusts these values for its
// allocations and reads, only ever sees a consistent file.
func checkELFHeaders(b []byte) error {
	n := uint64(len(b))
	if n < elf.EI_NIDENT {
		return fmt.Errorf("%w: ELF file of %d bytes, the identification needs %d", ErrTruncated, n, elf.EI_NIDENT)
	}
	var l elfLayout
	switch elf.Class(b[elf.EI_CLASS]) {
	case elf.ELFCLASS32:
		l = elfLayout{hdrSize: 52, phentsize: 32, shentsize: 40, machine: elf.EM_386,
			shTypeOff: 4, shFlagsOff: 8, shOffOff: 16, shSzOff: 20, wordSize: 4}
	case elf.ELFCLASS64:
		l = elfLayout{hdrSize: 64, phentsize: 56, shentsize: 64, machine: elf.EM_X86_64,
			shTypeOff: 4, shFlagsOff: 8, shOffOff: 24, shSzOff: 32, wordSize: 8}
	default:
		return fmt.Errorf("%w: unknown ELF class %d", ErrBadImage, b[elf.EI_CLASS])
	}
	if elf.Data(b[elf.EI_DATA]) != elf.ELFDATA2LSB {
		return fmt.Errorf("%w: ELF data encoding %v, want little endian", ErrUnsupported, elf.Data(b[elf.EI_DATA]))
	}
	if elf.Version(b[elf.EI_VERSION]) != elf.EV_CURRENT {
		return fmt.Errorf("%w: ELF version %d", ErrBadImage, b[elf.EI_VERSION])
	}
	if n < l.hdrSize {
		return fmt.Errorf("%w: ELF file of %d bytes, its header needs %d", ErrTruncated, n, l.hdrSize)
	}
	le := binary.LittleEndian
	if t := elf.Type(le.Uint16(b[16:])); t != elf.ET_EXEC {
		return fmt.Errorf("%w: ELF type %v, want an executable", ErrUnsupported, t)
	}
	if m := elf.Machine(le.Uint16(b[18:])); m != l.machine {
		return fmt.Errorf("%w: %v ELF for machine %v, want %v", ErrUnsupported, elf.Class(b[elf.EI_CLASS]), m, l.machine)
	}
	var phentsize, shentsize uint64
	if l.wordSize == 8 {
		l.phoff, l.shoff = le.Uint64(b[32:]), le.Uint64(b[40:])
		phentsize, l.phnum = uint64(le.Uint16(b[54:])), uint64(le.Uint16(b[56:]))
		shentsize, l.shnum, l.shstrndx = uint64(le.Uint16(b[58:])), uint64(le.Uint16(b[60:])), uint64(le.Uint16(b[62:]))
	} else {
		l.phoff, l.shoff = uint64(le.Uint32(b[28:])), uint64(le.Uint32(b[32:]))
		phentsize, l.phnum = uint64(le.Uint16(b[42:])), uint64(le.Uint16(b[44:]))
		shentsize, l.shnum, l.shstrndx = uint64(le.Uint16(b[46:])), uint64(le.Uint16(b[48:])), uint64(le.Uint16(b[50:]))
	}

	if l.phnum == 0 {
		return fmt.Errorf("%w: ELF file has no program headers", ErrBadImage)
	}
	if phentsize != l.phentsize {
		return fmt.Errorf("%w: ELF program header size %d, want %d", ErrBadImage, phentsize, l.phentsize)
	}
	if l.phoff > n || l.phnum*l.phentsize > n-l.phoff {
		return fmt.Errorf("%w: ELF program headers [%#x, +%#x) end past the file (%d bytes)", ErrTruncated, l.phoff, l.phnum*l.phentsize, n)
	}

	for i := range l.phnum {
		ph := b[l.phoff+i*l.phentsize:][:l.phentsize]
		var off, filesz uint64
		if l.wordSize == 8 {
			off, filesz = le.Uint64(ph[8:]), le.Uint64(ph[32:])
		} else {
			off, filesz = uint64(le.Uint32(ph[4:])), uint64(le.Uint32(ph[16:]))
		}
		if t := elf.ProgType(le.Uint32(ph)); (t == elf.PT_LOAD || t == elf.PT_NOTE) && (off > n || filesz > n-off) {
			return fmt.Errorf("%w: ELF segment %d file bytes [%#x, +%#x) end past the file (%d bytes)", ErrTruncated, i, off, filesz, n)
		}
	}

	switch {
	case l.shoff == 0 && l.shnum != 0:
		return fmt.Errorf("%w: ELF has %d section headers at offset 0", ErrBadImage, l.shnum)
	case l.shoff != 0 && l.shnum == 0:
		return fmt.Errorf("%w: ELF extended section numbering", ErrUnsupported)
	case l.shnum == 0:
		return nil
	}
	if shentsize != l.shentsize {
		return fmt.Errorf("%w: ELF section header size %d, want %d", ErrBadImage, shentsize, l.shentsize)
	}
	if l.shoff > n || l.shnum*l.shentsize > n-l.shoff {
		return fmt.Errorf("%w: ELF section headers [%#x, +%#x) end past the file (%d bytes)", ErrTruncated, l.shoff, l.shnum*l.shentsize, n)
	}
	if l.shstrndx >= l.shnum {
		return fmt.Errorf("%w: ELF section name table index %d, only %d sections", ErrBadImage, l.shstrndx, l.shnum)
	}
	if l.shstrndx == 0 {
		return nil
	}
	sh := b[l.shoff+l.shstrndx*l.shentsize:][:l.shentsize]
	word := func(off uint64) uint64 {
		if l.wordSize == 8 {
			return le.Uint64(sh[off:])
		}
		return uint64(le.Uint32(sh[off:]))
	}
	if t := elf.SectionType(le.Uint32(sh[l.shTypeOff:])); t != elf.SHT_STRTAB {
		return fmt.Errorf("%w: ELF section name table has type %v", ErrBadImage, t)
	}
	if elf.SectionFlag(word(l.shFlagsOff))&elf.SHF_COMPRESSED != 0 {
		return fmt.Errorf("%w: compressed ELF section name table", ErrUnsupported)
	}
	if off, size := word(l.shOffOff), word(l.shSzOff); off > n || size > n-off {
		return fmt.Errorf("%w: ELF section name table [%#x, +%#x) ends past the file (%d bytes)", ErrTruncated, off, size, n)
	}
	return nil
}

// parseELF parses and validates an ELF kernel with a PVH entry note.
func parseELF(b []byte) (*pvhImage, error) {
	if err := checkELFHeaders(b); err != nil {
		return nil, err
	}
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadImage, err)
	}
	n := uint64(len(b))
	img := &pvhImage{raw: b}
	found := false
	for i, p := range f.Progs {
		if p.Type != elf.PT_LOAD && p.Type != elf.PT_NOTE {
			continue
		}
		if p.Off > n || p.Filesz > n-p.Off {
			return nil, fmt.Errorf("%w: ELF segment %d file bytes [%#x, +%#x) end past the file (%d bytes)", ErrTruncated, i, p.Off, p.Filesz, n)
		}
		if p.Type == elf.PT_NOTE {
			if found {
				continue
			}
			entry, ok, err := findPVHEntry(b[p.Off:p.Off+p.Filesz], p.Align)
			if err != nil {
				return nil, fmt.Errorf("ELF segment %d: %w", i, err)
			}
			img.entry, found = entry, ok
			continue
		}
		if p.Filesz > p.Memsz {
			return nil, fmt.Errorf("%w: ELF segment %d has p_filesz %#x > p_memsz %#x", ErrBadImage, i, p.Filesz, p.Memsz)
		}
		if p.Memsz == 0 {
			continue
		}
		if p.Paddr >= fourGiB || p.Memsz > fourGiB-p.Paddr {
			return nil, fmt.Errorf("%w: ELF segment %d [%#x, +%#x) does not end below 4 GiB", ErrBadImage, i, p.Paddr, p.Memsz)
		}
		img.segs = append(img.segs, elfSegment{index: i, paddr: p.Paddr, off: p.Off, filesz: p.Filesz, memsz: p.Memsz})
	}
	if len(img.segs) == 0 {
		return nil, fmt.Errorf("%w: ELF file has no loadable segments", ErrBadImage)
	}
	slices.SortFunc(img.segs, func(a, b elfSegment) int { return cmpUint64(a.paddr, b.paddr) })
	for i := 1; i < len(img.segs); i++ {
		if a, c := img.segs[i-1], img.segs[i]; a.end() > c.paddr {
			return nil, fmt.Errorf("%w: ELF segments %d [%#x, %#x) and %d [%#x, %#x) overlap",
				ErrBadImage, a.index, a.paddr, a.end(), c.index, c.paddr, c.end())
		}
	}
	img.lo, img.hi = img.segs[0].paddr, img.segs[0].end()
	for _, s := range img.segs {
		img.hi = max(img.hi, s.end())
	}
	if !found {
		return nil, ErrNoPVHNote
	}
	inside := false
	for _, s := range img.segs {
		if s.paddr <= img.entry && img.entry < s.paddr+s.filesz {
			inside = true
		}
	}
	if !inside {
		return nil, fmt.Errorf("%w: PVH entry %#x is not inside a loaded segment's file data", ErrBadImage, img.entry)
	}
	return img, nil
}

// findPVHEntry walks the notes in d (a PT_NOTE segment with alignment align)
// and returns the XEN_ELFNOTE_PHYS32_ENTRY address if there is one.
func findPVHEntry(d []byte, align uint64) (uint64, bool, error) {
	a := uint64(4)
	if align == 8 {
		a = 8
	}
	le := binary.LittleEndian
	for len(d) > 0 {
		n := uint64(len(d))
		if n < 12 {
			break // padding too short for another note
		}
		namesz, descsz, typ := uint64(le.Uint32(d)), uint64(le.Uint32(d[4:])), le.Uint32(d[8:])
		descOff := alignUpNoWrap(12+namesz, a) // < 2^33: cannot wrap
		if 12+namesz > n || descOff > n || descsz > n-descOff {
			return 0, false, fmt.Errorf("%w: ELF note (name %d bytes, desc %d bytes) overruns its segment", ErrBadImage, namesz, descsz)
		}
		name := bytes.TrimRight(d[12:12+namesz], "\x00")
		desc := d[descOff : descOff+descsz]
		if string(name) == "Xen" && typ == xenElfnotePhys32Entry {
			var entry uint64
			switch descsz {
			case 4:
				entry = uint64(le.Uint32(desc))
			case 8:
				entry = le.Uint64(desc)
			default:
				return 0, false, fmt.Errorf("%w: PVH entry note has a %d-byte address", ErrBadImage, descsz)
			}
			if entry >= fourGiB {
				return 0, false, fmt.Errorf("%w: PVH entry %#x is not below 4 GiB", ErrBadImage, entry)
			}
			return entry, true, nil
		}
		next := alignUpNoWrap(descOff+descsz, a)
		if next >= n {
			break
		}
		d = d[next:]
	}
	return 0, false, nil
}

// startInfo builds the page at PVHStartInfoAddr: struct hvm_start_info, the
// module list (the initrd, if initrd.Size > 0) and the memory map.
func startInfo(initrd memory.Range, rsdp uint64, e820 []E820Entry) []byte {
	p := make([]byte, pageSize)
	le := binary.LittleEndian
	le.PutUint32(p[0x00:], startInfoMagic)
	le.PutUint32(p[0x04:], startInfoVersion)
	le.PutUint32(p[0x08:], 0) // flags
	if initrd.Size > 0 {
		le.PutUint32(p[0x0c:], 1) // nr_modules
		le.PutUint64(p[0x10:], PVHModlistAddr)
		m := p[PVHModlistAddr-PVHStartInfoAddr:]
		le.PutUint64(m[0:], initrd.GPA)
		le.PutUint64(m[8:], initrd.Size)
	}
	le.PutUint64(p[0x18:], CmdlineAddr)
	le.PutUint64(p[0x20:], rsdp)
	le.PutUint64(p[0x28:], PVHMemmapAddr)
	le.PutUint32(p[0x30:], uint32(len(e820)))
	for i, e := range e820 {
		m := p[PVHMemmapAddr-PVHStartInfoAddr+i*memmapEntrySize:]
		le.PutUint64(m[0:], e.Addr)
		le.PutUint64(m[8:], e.Size)
		le.PutUint32(m[16:], uint32(e.Type))
	}
	return p
}
