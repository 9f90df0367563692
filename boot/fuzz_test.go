package boot

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/govmd/govmd/memory"
)

// guardedMem is guest memory whose regions sit between guard bytes in
// larger host buffers, so a write outside the regions is detectable.
type guardedMem struct {
	mem  *memory.Memory
	bufs [][]byte
}

const guardSize = 4096

func newGuardedMem(rs ...memory.Range) *guardedMem {
	g := &guardedMem{}
	var regions []memory.Region
	for _, r := range rs {
		buf := make([]byte, guardSize+r.Size+guardSize)
		g.bufs = append(g.bufs, buf)
		regions = append(regions, memory.Region{GPA: r.GPA, Host: buf[guardSize : guardSize+r.Size : guardSize+r.Size]})
	}
	g.mem = memory.FromBytes(regions...)
	return g
}

func (g *guardedMem) guardsIntact() bool {
	for _, b := range g.bufs {
		for _, c := range b[:guardSize] {
			if c != 0 {
				return false
			}
		}
		for _, c := range b[len(b)-guardSize:] {
			if c != 0 {
				return false
			}
		}
	}
	return true
}

// fuzzELF is a small PVH kernel that fits the fuzz memory. Fuzz seeds are
// kept small: the fuzzer's input minimization is slow on large inputs.
func fuzzELF(class32 bool) []byte {
	o := testELF()
	o.class32 = class32
	o.segs = []elfSeg{{paddr: 2 * mib, data: []byte{1, 2, 3, 4, 5, 6, 7, 8}, memsz: 0x1000}, {paddr: 2*mib + 0x1000, data: []byte{9}, memsz: 0x2000}}
	o.notes = pvhNote(2*mib+4, 8)
	if class32 {
		o.notes = pvhNote(2*mib+4, 4)
	}
	return o.build()
}

// fuzzBz is a small bzImage: one setup sector and 256 bytes of code.
func fuzzBz() bzOpts {
	o := testBz()
	o.setupSects = 1
	o.payload = 0x100
	return o
}

func FuzzDetectAndLoad(f *testing.F) {
	bz64 := fuzzBz().build()
	o := fuzzBz()
	o.xlf = 0
	bz32 := o.build()
	o = fuzzBz()
	o.version = 0x0206
	o.jumpLen = 0x3a
	bzOld := o.build()
	f.Add(bz64, uint32(0x3000), "console=ttyS0")
	f.Add(bz32, uint32(0), "")
	f.Add(bzOld, uint32(1), "x")
	f.Add(bz64[:0x240], uint32(0), "")
	f.Add(fuzzELF(false), uint32(0x1000), "console=hvc0")
	f.Add(fuzzELF(true), uint32(5*mib), "")
	f.Add(fuzzELF(false)[:200], uint32(0), "")
	f.Add([]byte("\x7fELF"), uint32(0), "")
	f.Add([]byte("MZ"), uint32(0), "")
	f.Add([]byte{}, uint32(0), "")

	high := memory.Range{GPA: 1 << 32, Size: mib}
	g := newGuardedMem(memory.Range{GPA: 0, Size: 8 * mib}, high)
	initrdBuf := make([]byte, 10*mib)
	for i := range initrdBuf {
		initrdBuf[i] = byte(i)
	}
	f.Fuzz(func(t *testing.T, kernel []byte, initrdLen uint32, cmdline string) {
		initrd := initrdBuf[:int(initrdLen)%(len(initrdBuf)+1)]
		format, derr := Detect(kernel)
		l, err := Load(g.mem, Config{
			Kernel: kernel, Initrd: initrd, Cmdline: cmdline, RSDP: 0xe0000,
			Reserved: []memory.Range{{GPA: 0xe0000000, Size: 0x10000000}},
		})
		if !g.guardsIntact() {
			t.Fatal("Load wrote outside guest memory")
		}
		if derr != nil && err == nil {
			t.Fatalf("Detect failed (%v) but Load succeeded", derr)
		}
		if err != nil {
			if strings.ContainsRune(err.Error(), '\n') {
				t.Errorf("error has several lines: %q", err)
			}
			return
		}
		if l.Format != format {
			t.Errorf("Load format %v, Detect %v", l.Format, format)
		}
		kr, ir := l.KernelRange, l.InitrdRange
		if !g.mem.Contains(kr.GPA, kr.Size) || kr.End() > fourGiB {
			t.Errorf("kernel range %+v outside low RAM", kr)
		}
		if ir.Size != uint64(len(initrd)) || (ir.Size > 0 && !g.mem.Contains(ir.GPA, ir.Size)) {
			t.Errorf("initrd range %+v for %d bytes", ir, len(initrd))
		}
		for _, r := range []memory.Range{LoaderArea, BIOSArea, ir} {
			if overlaps(kr, r) {
				t.Errorf("kernel range %+v overlaps %+v", kr, r)
			}
		}
		if overlaps(ir, LoaderArea) || overlaps(ir, BIOSArea) {
			t.Errorf("initrd range %+v overlaps the loader or BIOS area", ir)
		}
		if rip := l.Entry.RIP; rip < kr.GPA || rip >= kr.End() {
			t.Errorf("entry %#x outside the kernel %+v", rip, kr)
		}
		if len(cmdline) > CmdlineAreaSize-1 {
			t.Errorf("accepted a %d-byte command line", len(cmdline))
		}
	})
}

func FuzzParseBzImage(f *testing.F) {
	f.Add(fuzzBz().build())
	o := fuzzBz()
	o.version = 0x0206
	o.jumpLen = 0x3a
	f.Add(o.build())
	f.Add(fuzzBz().build()[:0x240])
	f.Add(make([]byte, 0x300))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseBzImage(b)
		if err != nil {
			if h != nil {
				t.Error("header returned with an error")
			}
			if strings.ContainsRune(err.Error(), '\n') {
				t.Errorf("error has several lines: %q", err)
			}
			return
		}
		if h.Header != HdrMagic || h.Version < MinVersion || h.LoadFlags&LoadedHigh == 0 || h.Syssize == 0 {
			t.Errorf("accepted header %+v", h)
		}
		sects := uint64(h.SetupSects)
		if sects == 0 {
			sects = 4
		}
		if need := (sects+1)*512 + uint64(h.Syssize)*16; uint64(len(b)) < need {
			t.Errorf("accepted %d bytes, the header describes %d", len(b), need)
		}
		if got := binary.LittleEndian.Uint16(b[0x206:]); got != h.Version {
			t.Errorf("version %#x, file has %#x", h.Version, got)
		}
	})
}
