// Package pci emulates a conventional PCI bus 0 for govmd: per-function
// configuration space with guest write masks, BARs, the capability list,
// MSI-X, and the host bridge (Root) that decodes configuration mechanism #1
// (ports 0xCF8 and 0xCFC-0xCFF) and, optionally, an ECAM window.
//
// A device transport (for example virtio over PCI) implements Device: it owns
// a ConfigSpace built with NewConfigSpace, AddBAR and AddCapability, and serves
// its BARs through ReadBAR and WriteBAR. The Root places the BARs the way
// firmware would (govmd has no BIOS), maps them on the port I/O and MMIO
// buses, and follows the guest when it moves a BAR or turns decoding off.
//
// Every configuration, BAR and MSI-X access is untrusted guest input: odd
// sizes, unaligned and out-of-range accesses are ignored (reads return zeros,
// or all ones for an absent function), never a panic.
//
// Interrupt routing for INTx is a fixed swizzle, see INTxRoute.
package pci
