// Package acpi generates the ACPI tables govmd places in guest memory at
// boot, and emulates the ACPI PM1 registers the guest uses to power off.
//
// Build lays out one blob: RSDP (revision 2), FACS, DSDT, FADT (revision 6,
// not hardware reduced), MADT, an optional MCFG, RSDT and XSDT. All pointers
// inside the blob are computed from the guest physical address the caller
// copies it to. Placed in 0xE0000-0xFFFFF with the RSDP first (16-byte
// aligned), the RSDP is also found by the legacy BIOS-area scan.
//
// The DSDT is deliberately static: names and packages only, no methods and
// no loops. AML interpretation is emulated (slow) on the CI hosts and a
// method-based _PRT times out there. It describes the PCI root bridge
// (\_SB.PCI0 with _CRS and a static _PRT), COM1, an optional motherboard
// resource device reserving the ECAM window, and \_S5.
//
// PM implements the PM1a event and control blocks: writing SLP_TYP with
// SLP_EN reports the sleep type to the VMM, which powers off on
// SleepTypeS5.
package acpi
