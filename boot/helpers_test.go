package boot

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/govmd/govmd/memory"
)

const mib = 1 << 20

// newMem returns guest memory backed by Go slices, one region per range.
func newMem(tb testing.TB, rs ...memory.Range) *memory.Memory {
	tb.Helper()
	var regions []memory.Region
	for _, r := range rs {
		regions = append(regions, memory.Region{GPA: r.GPA, Host: make([]byte, r.Size)})
	}
	return memory.FromBytes(regions...)
}

// allZero reports whether every byte of mem is zero.
func allZero(mem *memory.Memory) bool {
	zero := make([]byte, 64<<10)
	for _, r := range mem.Regions() {
		for b := r.Host; len(b) > 0; {
			n := min(len(b), len(zero))
			if !bytes.Equal(b[:n], zero[:n]) {
				return false
			}
			b = b[n:]
		}
	}
	return true
}

func readMem(tb testing.TB, mem *memory.Memory, gpa, n uint64) []byte {
	tb.Helper()
	b, err := mem.Slice(gpa, n)
	if err != nil {
		tb.Fatalf("reading guest memory %#x+%#x: %v", gpa, n, err)
	}
	return b
}

// bzOpts describes a synthetic bzImage.
type bzOpts struct {
	setupSects  uint8
	jumpLen     byte // the byte at 0x201; header end = 0x202 + jumpLen
	version     uint16
	loadFlags   uint8
	syssize     uint32 // 0: derived from payload
	pref        uint64
	initSize    uint32
	align       uint32
	reloc       uint8
	xlf         uint16
	cmdlineSize uint32
	initrdMax   uint32
	payload     int // bytes of protected-mode code (multiple of 16)
}

// testBz is a small relocatable 64-bit kernel that wants to live at 2 MiB
// and needs 4 MiB.
func testBz() bzOpts {
	return bzOpts{
		setupSects: 4, jumpLen: 0x6a, version: 0x020f, loadFlags: LoadedHigh,
		pref: 2 * mib, initSize: 4 * mib, align: 2 * mib, reloc: 1,
		xlf: XLFKernel64 | XLFCanBeLoadedAbove4G, cmdlineSize: 2047,
		initrdMax: 0x7fffffff, payload: 0x2000,
	}
}

func (o bzOpts) build() []byte {
	sects := int(o.setupSects)
	if sects == 0 {
		sects = 4
	}
	setup := (sects + 1) * 512
	b := make([]byte, setup+o.payload)
	le := binary.LittleEndian
	b[0] = 'M'
	b[1] = 'Z'
	b[0x1f1] = o.setupSects
	syssize := o.syssize
	if syssize == 0 {
		syssize = uint32(o.payload / 16)
	}
	le.PutUint32(b[0x1f4:], syssize)
	le.PutUint16(b[0x1fe:], 0xaa55)
	b[0x200] = 0xeb
	b[0x201] = o.jumpLen
	copy(b[0x202:], "HdrS")
	le.PutUint16(b[0x206:], o.version)
	b[0x211] = o.loadFlags
	le.PutUint32(b[0x22c:], o.initrdMax)
	le.PutUint32(b[0x230:], o.align)
	b[0x234] = o.reloc
	b[0x235] = 21
	le.PutUint16(b[0x236:], o.xlf)
	le.PutUint32(b[0x238:], o.cmdlineSize)
	le.PutUint64(b[0x258:], o.pref)
	le.PutUint32(b[0x260:], o.initSize)
	for i := setup; i < len(b); i++ {
		b[i] = byte(i*7 + 1)
	}
	return b
}

// elfSeg is a PT_LOAD segment of a synthetic ELF file.
type elfSeg struct {
	paddr uint64
	data  []byte
	memsz uint64
}

// elfOpts describes a synthetic ELF kernel.
type elfOpts struct {
	class32  bool
	segs     []elfSeg
	notes    []byte // contents of one PT_NOTE segment; nil for none
	sections bool   // add a null section and a .shstrtab
}

// pvhNote returns a Xen PHYS32_ENTRY note with an n-byte descriptor.
func pvhNote(entry uint64, n int) []byte {
	return note("Xen", xenElfnotePhys32Entry, le64(entry)[:n])
}

func note(name string, typ uint32, desc []byte) []byte {
	pad := func(b []byte) []byte {
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		return b
	}
	var b []byte
	b = binary.LittleEndian.AppendUint32(b, uint32(len(name)+1))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(desc)))
	b = binary.LittleEndian.AppendUint32(b, typ)
	b = pad(append(append(b, name...), 0))
	return pad(append(b, desc...))
}

func le64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

// testELF is a 64-bit PVH kernel with text at 16 MiB (entry 16 MiB + 0x10)
// and 4 KiB of bss after 8 KiB of data.
func testELF() elfOpts {
	text := make([]byte, 0x3000)
	for i := range text {
		text[i] = byte(i*3 + 5)
	}
	return elfOpts{
		segs:     []elfSeg{{paddr: 16 * mib, data: text[:0x1000], memsz: 0x1000}, {paddr: 16*mib + 0x1000, data: text[0x1000:], memsz: 0x3000}},
		notes:    append(note("GNU", 3, []byte{1, 2, 3, 4}), pvhNote(16*mib+0x10, 8)...),
		sections: true,
	}
}

// build lays out: ELF header, program headers, notes, segment data,
// .shstrtab, section headers.
func (o elfOpts) build() []byte {
	le := binary.LittleEndian
	ehsize, phentsize, shentsize := 64, 56, 64
	if o.class32 {
		ehsize, phentsize, shentsize = 52, 32, 40
	}
	nph := len(o.segs)
	if o.notes != nil {
		nph++
	}
	off := ehsize + nph*phentsize
	type ph struct {
		typ                       uint32
		off, paddr, filesz, memsz uint64
	}
	var phs []ph
	var body []byte
	if o.notes != nil {
		phs = append(phs, ph{typ: 4, off: uint64(off), filesz: uint64(len(o.notes))})
		body = append(body, o.notes...)
	}
	for _, s := range o.segs {
		phs = append(phs, ph{typ: 1, off: uint64(off + len(body)), paddr: s.paddr, filesz: uint64(len(s.data)), memsz: s.memsz})
		body = append(body, s.data...)
	}
	shstr := []byte("\x00.shstrtab\x00")
	shstrOff := off + len(body)
	shoff := 0
	if o.sections {
		body = append(body, shstr...)
		for (off+len(body))%8 != 0 {
			body = append(body, 0)
		}
		shoff = off + len(body)
	}

	b := make([]byte, ehsize)
	copy(b, "\x7fELF")
	b[4] = 2
	if o.class32 {
		b[4] = 1
	}
	b[5], b[6] = 1, 1
	le.PutUint16(b[16:], 2) // ET_EXEC
	if o.class32 {
		le.PutUint16(b[18:], 3) // EM_386
		le.PutUint32(b[20:], 1)
		le.PutUint32(b[28:], uint32(ehsize))
		le.PutUint32(b[32:], uint32(shoff))
		le.PutUint16(b[40:], uint16(ehsize))
		le.PutUint16(b[42:], uint16(phentsize))
		le.PutUint16(b[44:], uint16(nph))
		le.PutUint16(b[46:], uint16(shentsize))
	} else {
		le.PutUint16(b[18:], 62) // EM_X86_64
		le.PutUint32(b[20:], 1)
		le.PutUint64(b[32:], uint64(ehsize))
		le.PutUint64(b[40:], uint64(shoff))
		le.PutUint16(b[52:], uint16(ehsize))
		le.PutUint16(b[54:], uint16(phentsize))
		le.PutUint16(b[56:], uint16(nph))
		le.PutUint16(b[58:], uint16(shentsize))
	}
	if o.sections {
		if o.class32 {
			le.PutUint16(b[48:], 2)
			le.PutUint16(b[50:], 1)
		} else {
			le.PutUint16(b[60:], 2)
			le.PutUint16(b[62:], 1)
		}
	}
	for _, p := range phs {
		e := make([]byte, phentsize)
		le.PutUint32(e, p.typ)
		if o.class32 {
			le.PutUint32(e[4:], uint32(p.off))
			le.PutUint32(e[8:], uint32(p.paddr))
			le.PutUint32(e[12:], uint32(p.paddr))
			le.PutUint32(e[16:], uint32(p.filesz))
			le.PutUint32(e[20:], uint32(p.memsz))
			le.PutUint32(e[28:], 4)
		} else {
			le.PutUint64(e[8:], p.off)
			le.PutUint64(e[16:], p.paddr+0xffffffff80000000)
			le.PutUint64(e[24:], p.paddr)
			le.PutUint64(e[32:], p.filesz)
			le.PutUint64(e[40:], p.memsz)
			le.PutUint64(e[48:], 4)
		}
		b = append(b, e...)
	}
	b = append(b, body...)
	if o.sections {
		b = append(b, make([]byte, shentsize)...) // null section
		e := make([]byte, shentsize)
		le.PutUint32(e, 1) // name ".shstrtab"
		le.PutUint32(e[4:], 3)
		if o.class32 {
			le.PutUint32(e[16:], uint32(shstrOff))
			le.PutUint32(e[20:], uint32(len(shstr)))
		} else {
			le.PutUint64(e[24:], uint64(shstrOff))
			le.PutUint64(e[32:], uint64(len(shstr)))
		}
		b = append(b, e...)
	}
	return b
}

// phdr returns the file offset of program header i of an image built by
// elfOpts.build.
func phdr(b []byte, i int) int {
	if b[4] == 1 {
		return 52 + i*32
	}
	return 64 + i*56
}
