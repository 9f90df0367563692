package boot

import (
	"encoding/binary"

	"github.com/govmd/govmd/memory"
)

// Segment is a segment register as KVM's struct kvm_segment describes it:
// Limit is in bytes (0xffffffff for a flat segment with G set), Type is the
// 4-bit descriptor type.
type Segment struct {
	Base     uint64
	Limit    uint32
	Selector uint16
	Type     uint8
	Present  bool
	DPL      uint8
	DB       bool // default operation size 32 bit
	S        bool // code or data (not system) segment
	L        bool // 64-bit code
	G        bool // 4 KiB granularity
	AVL      bool
	Unusable bool
}

// descriptor encodes s as an 8-byte GDT entry.
func (s Segment) descriptor() uint64 {
	limit := s.Limit
	if s.G {
		limit >>= 12
	}
	bit := func(b bool, n uint) uint64 {
		if b {
			return 1 << n
		}
		return 0
	}
	return uint64(limit&0xffff) |
		(s.Base&0xffffff)<<16 |
		uint64(s.Type&0xf)<<40 |
		bit(s.S, 44) |
		uint64(s.DPL&3)<<45 |
		bit(s.Present, 47) |
		uint64(limit>>16&0xf)<<48 |
		bit(s.AVL, 52) |
		bit(s.L, 53) |
		bit(s.DB, 54) |
		bit(s.G, 55) |
		(s.Base>>24&0xff)<<56
}

// Control register and EFER bits the loader sets.
const (
	CR0PE    = 1 << 0
	CR0ET    = 1 << 4
	CR0PG    = 1 << 31
	CR4PAE   = 1 << 5
	EFERLME  = 1 << 8
	EFERLMA  = 1 << 10
	rflagsR1 = 1 << 1 // reserved, always 1; IF clear
)

// CPUState is the boot vCPU's state at kernel entry. General registers not
// listed are zero; so are the IDT base and limit. The loader's GDT lives in
// guest memory at GDTBase, and the segment registers hold what loading its
// descriptors would give.
type CPUState struct {
	RIP, RSP, RSI, RBX, RFLAGS uint64
	CR0, CR3, CR4, EFER        uint64
	CS, DS, ES, FS, GS, SS     Segment
	GDTBase                    uint64
	GDTLimit                   uint16
	LongMode                   bool
}

func flatCode(long bool) Segment {
	return Segment{
		Limit: 0xffffffff, Selector: CodeSelector, Type: 0xb, // execute/read, accessed
		Present: true, S: true, G: true, L: long, DB: !long,
	}
}

func flatData() Segment {
	return Segment{
		Limit: 0xffffffff, Selector: DataSelector, Type: 0x3, // read/write, accessed
		Present: true, S: true, G: true, DB: true,
	}
}

// gdt returns the loader's GDT with code as the code descriptor.
func gdt(code Segment) []byte {
	b := make([]byte, gdtEntries*8)
	binary.LittleEndian.PutUint64(b[CodeSelector:], code.descriptor())
	binary.LittleEndian.PutUint64(b[DataSelector:], flatData().descriptor())
	return b
}

// entryState returns the state for a flat-segment entry at rip. long selects
// 64-bit long mode with the identity page tables at PML4Addr; otherwise the
// CPU is in 32-bit protected mode with paging off.
func entryState(rip uint64, long bool) CPUState {
	code, data := flatCode(long), flatData()
	s := CPUState{
		RIP: rip, RSP: StackTop, RFLAGS: rflagsR1,
		CR0: CR0PE | CR0ET,
		CS:  code, DS: data, ES: data, FS: data, GS: data, SS: data,
		GDTBase: GDTAddr, GDTLimit: gdtEntries*8 - 1,
		LongMode: long,
	}
	if long {
		s.CR0 |= CR0PG
		s.CR3 = PML4Addr
		s.CR4 = CR4PAE
		s.EFER = EFERLME | EFERLMA
	}
	return s
}

// Page table entry bits.
const (
	ptePresent = 1 << 0
	pteWrite   = 1 << 1
	ptePS      = 1 << 7 // 2 MiB page in a page directory entry
)

// writePageTables writes a PML4, a PDPT and four page directories that map
// [0, 4 GiB) 1:1 with 2 MiB pages.
func writePageTables(mem *memory.Memory) error {
	tables := make([]byte, PDAddr+4*pageSize-PML4Addr)
	pml4 := tables[:pageSize]
	pdpt := tables[PDPTAddr-PML4Addr:][:pageSize]
	pds := tables[PDAddr-PML4Addr:]
	binary.LittleEndian.PutUint64(pml4, PDPTAddr|ptePresent|pteWrite)
	for i := range 4 {
		binary.LittleEndian.PutUint64(pdpt[i*8:], uint64(PDAddr+i*pageSize)|ptePresent|pteWrite)
	}
	for i := range 4 * 512 {
		binary.LittleEndian.PutUint64(pds[i*8:], uint64(i)<<21|ptePresent|pteWrite|ptePS)
	}
	return mem.WriteAt(tables, PML4Addr)
}
