package boot

import "github.com/govmd/govmd/memory"

// Fixed guest physical addresses of what the loader writes below 1 MiB. See
// the package documentation for the map.
const (
	GDTAddr          = 0x500
	PVHStartInfoAddr = 0x6000
	PVHModlistAddr   = 0x6040
	PVHMemmapAddr    = 0x6080
	ZeroPageAddr     = 0x7000
	StackTop         = 0x9000
	PML4Addr         = 0x9000
	PDPTAddr         = 0xa000
	PDAddr           = 0xb000 // four consecutive page directories
	SetupDataAddr    = 0xf000 // bzImage setup_data list (the RNG seed)
	CmdlineAddr      = 0x20000
	CmdlineAreaSize  = 0x10000
)

// Selectors of the flat segments in the loader's GDT.
const (
	CodeSelector = 0x10
	DataSelector = 0x18
)

// Limits.
const (
	// E820Max is the largest number of e820 entries boot_params can hold;
	// the PVH memory map area is sized for the same number.
	E820Max = 128
	// PVHCmdlineMax is the longest command line (without its NUL) passed
	// to a PVH kernel.
	PVHCmdlineMax = 2047
	// identityMapSize is how much of the address space the 64-bit entry
	// page tables map 1:1.
	identityMapSize = 4 << 30
)

var (
	// LoaderArea is the part of low memory the loader writes to (GDT,
	// start_info, zero page, stack, page tables, command line). The vmm
	// must not put anything there. It lies inside usable RAM in the e820
	// map: the kernel copies what it needs early and reuses the memory.
	LoaderArea = memory.Range{GPA: GDTAddr, Size: CmdlineAddr + CmdlineAreaSize - GDTAddr}

	// BIOSArea is [0x9fc00, 0x100000): EBDA, VGA memory, option ROMs and
	// the BIOS. It is always reserved in the e820 map and never used by the
	// loader; the vmm places ACPI and MP tables in it.
	BIOSArea = memory.Range{GPA: 0x9fc00, Size: 0x100000 - 0x9fc00}
)

const (
	pageSize = 0x1000
	fourGiB  = 1 << 32
)

const gdtEntries = 4
