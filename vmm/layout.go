package vmm

import (
	"github.com/govmd/govmd/acpi"
	"github.com/govmd/govmd/memory"
	"github.com/govmd/govmd/pci"
)

// Guest physical address map:
//
//	0x00000000-0xbfffffff  RAM (up to 3 GiB)
//	0x0009fc00-            MP table (boot.MPTableAddr, reserved in the e820 map)
//	0x000e0000-0x000fffff  ACPI tables (inside the reserved BIOS area)
//	0xc0000000-0xfebfffff  PCI 32-bit MMIO window (BARs)
//	0xfec00000             IOAPIC (in-kernel)
//	0xfee00000             local APICs (in-kernel)
//	0xfffbc000-0xfffbffff  KVM identity map page and TSS (VMX only)
//	0x100000000-           RAM above 3 GiB, if any
//
// Port I/O: 0x3f8 COM1, 0x70 CMOS, 0x60/0x64 i8042, 0x600 ACPI PM1a event
// block, 0x604 PM1a control block, 0x608 ACPI PM timer, 0xcf8-0xcff PCI
// configuration with the reset register 0xcf9, 0xc000-0xffff PCI I/O BARs.
const (
	pciHoleStart    = 0xc0000000
	lapicAddr       = 0xfee00000
	fourGiB         = 1 << 32
	mem32Base       = pciHoleStart
	mem32End        = acpi.DefaultIOAPICAddr
	identityMapAddr = 0xfffbc000
	tssAddr         = 0xfffbd000
	acpiBase        = acpi.RSDPScanStart
	acpiMaxSize     = acpi.RSDPScanEnd - acpi.RSDPScanStart

	pioIOBase = 0xc000
	pioIOSize = 0x4000

	portCOM1      = 0x3f8
	portCMOS      = 0x70
	portI8042Data = 0x60
	portI8042Cmd  = 0x64
	portPM1aEvt   = 0x600
	portPM1aCnt   = 0x604
	portPMTimer   = 0x608
	// portPOST is the BIOS POST code port; Linux uses it for I/O delays.
	portPOST = 0x80

	irqCOM1 = 4
	irqSCI  = acpi.DefaultSCI

	// firstMSIGSI is the first GSI handed to MSI-X vectors; 0-23 are the
	// IOAPIC pins.
	firstMSIGSI = 24
	// maxGSI bounds the routing table (KVM's default KVM_MAX_IRQ_ROUTES
	// is 4096).
	maxGSI = 1024
)

// ramRanges splits size bytes of RAM around the PCI hole.
func ramRanges(size uint64) []memory.Range {
	if size <= pciHoleStart {
		return []memory.Range{{GPA: 0, Size: size}}
	}
	return []memory.Range{
		{GPA: 0, Size: pciHoleStart},
		{GPA: fourGiB, Size: size - pciHoleStart},
	}
}

// pciWindows returns the Root configuration: I/O BARs from 0xc000, 32-bit
// BARs in the PCI hole. There is no 64-bit window: the hole has room for
// every BAR govmd creates.
func pciWindows() pci.RootConfig {
	return pci.RootConfig{
		IO:    pci.Window{Base: pioIOBase, Size: pioIOSize},
		Mem32: pci.Window{Base: mem32Base, Size: mem32End - mem32Base},
	}
}
