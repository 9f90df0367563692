// Package boot implements the x86 Linux boot protocols govmd uses to start a
// guest kernel without firmware: it copies a kernel, an initrd and a command
// line into guest memory, writes the structures the kernel reads at entry
// (boot_params or hvm_start_info, an e820 map, a GDT and, for 64-bit entry,
// identity page tables) and returns the vCPU state to enter the kernel with.
//
// The package knows nothing about KVM: the vmm translates [CPUState] into
// KVM registers. It only touches guest memory through [memory.Memory], and it
// validates everything about the kernel image (which is untrusted file
// input) and about the configuration before it writes a single byte, so a
// failed Load leaves guest memory untouched. Detect, ParseBzImage and E820
// are pure functions, safe for concurrent use; Load writes guest memory and
// must run before any vCPU does.
//
// # Formats
//
// [Load] detects the format from the file contents ([Detect]):
//
//   - bzImage (the "HdrS" setup header at 0x202). Boot protocol 2.06 or
//     newer is required: that is the first version that has every field this
//     loader relies on for the 32-bit entry (cmdline_size, kernel_alignment,
//     relocatable_kernel, initrd_addr_max). pref_address and init_size are
//     used from 2.10 on; older images are loaded at 1 MiB and assumed to need
//     only their own size. The 64-bit entry needs xloadflags (2.12 or newer)
//     with XLF_KERNEL_64; any other image is entered through the 32-bit
//     protected-mode entry. zImages (loadflags without LOADED_HIGH) are
//     rejected. The real-mode setup code is never run.
//   - ELF vmlinux with the PVH entry note (a "Xen" note of type
//     XEN_ELFNOTE_PHYS32_ENTRY = 18). ELF32 (i386) and ELF64 (x86-64)
//     images are accepted. An ELF image without the note is rejected with
//     [ErrNoPVHNote]; its 64-bit e_entry is not supported.
//
// # Kernel placement
//
// A relocatable bzImage is loaded at pref_address when
// [pref_address, pref_address+init_size) is free RAM below 4 GiB, otherwise at
// the lowest kernel_alignment-aligned address above pref_address where it is.
// Addresses below pref_address are never used: the kernel's own entry code
// decompresses into [max(load address, LOAD_PHYSICAL_ADDR), +init_size), and
// LOAD_PHYSICAL_ADDR is what pref_address reports, so a lower load address
// would not save any memory and would let the decompressor run over memory
// the loader did not check. A non-relocatable bzImage is loaded at
// pref_address or not at all. PVH segments are loaded at their p_paddr.
//
// The initrd goes to the top of free RAM, page aligned, below
// min(initrd_addr_max+1, 4 GiB) for a bzImage and below 4 GiB for PVH. A
// 64-bit bzImage with XLF_CAN_BE_LOADED_ABOVE_4G whose initrd does not fit
// there gets it at the top of RAM above 4 GiB instead.
//
// # Low memory layout
//
// Everything the loader writes besides the kernel and the initrd lives in
// [LoaderArea] = [0x500, 0x30000):
//
//	0x00500-0x0051f  GDT: null, unused, code (selector 0x10), data (0x18)
//	0x06000-0x06037  PVH struct hvm_start_info
//	0x06040-0x0605f  PVH module list (one hvm_modlist_entry: the initrd)
//	0x06080-0x06c7f  PVH memory map (up to 128 hvm_memmap_table_entry)
//	0x07000-0x07fff  bzImage struct boot_params (the "zero page")
//	0x08000-0x08fff  boot stack (RSP starts at 0x9000)
//	0x09000-0x09fff  PML4 (64-bit entry only)
//	0x0a000-0x0afff  PDPT
//	0x0b000-0x0efff  four page directories: 2 MiB pages mapping 0-4 GiB 1:1
//	0x0f000-0x0f0ff  bzImage setup_data: SETUP_RNG_SEED (Config.RNGSeed)
//	0x20000-0x2ffff  kernel command line (NUL terminated)
//
// [BIOSArea] = [0x9fc00, 0x100000) (EBDA, VGA hole, option ROMs, BIOS) is
// always reported reserved in the e820 map and never used by the loader: the
// vmm puts its ACPI tables and MP table there.
//
// # Entry state
//
// The GDT holds flat 4 GiB code (selector 0x10) and data (0x18)
// descriptors. The bzImage protocol asks for exactly these selectors
// (__BOOT_CS and __BOOT_DS); the PVH protocol leaves them open and gets the
// same ones, with a 32-bit code descriptor.
// Interrupts are off (RFLAGS = 0x2). All general registers not named in
// [CPUState] must be zero. The IDT should be empty (base 0, limit 0); TR and
// LDTR can stay as KVM resets them.
//
//   - bzImage, 64-bit: long mode, CR3 = the identity page tables,
//     RIP = load address + 0x200 (startup_64), RSI = boot_params.
//   - bzImage, 32-bit: protected mode, paging off, RIP = load address
//     (startup_32), RSI = boot_params.
//   - PVH: protected mode, paging off, RIP = the note's entry,
//     RBX = hvm_start_info.
//
// # Limits
//
// The command line of a bzImage may be cmdline_size bytes long (without its
// NUL). A PVH kernel has no such field; Linux copies at most
// COMMAND_LINE_SIZE (2048 on x86) bytes including the NUL, so the limit for
// PVH is [PVHCmdlineMax] = 2047 bytes, and a longer line is an error instead
// of being silently cut by the guest.
package boot
