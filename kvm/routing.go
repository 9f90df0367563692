package kvm

import "fmt"

// RouteKind is the type of a GSI route (KVM_IRQ_ROUTING_*).
type RouteKind uint32

// Route kinds used on x86.
const (
	RouteIRQChip RouteKind = 1 // KVM_IRQ_ROUTING_IRQCHIP: a pin of the PIC or IOAPIC
	RouteMSI     RouteKind = 2 // KVM_IRQ_ROUTING_MSI: an MSI message
)

// IRQChip names an in-kernel interrupt controller (KVM_IRQCHIP_*).
type IRQChip uint32

// In-kernel interrupt controllers.
const (
	IRQChipPICMaster IRQChip = 0
	IRQChipPICSlave  IRQChip = 1
	IRQChipIOAPIC    IRQChip = 2
)

// NumIOAPICPins is the number of pins of KVM's in-kernel IOAPIC; GSIs from
// 0 to NumIOAPICPins-1 belong to the irqchip and MSI routes use higher ones.
const NumIOAPICPins = 24

// MSI is a message-signalled interrupt: the address and data a device
// writes. For x86 the address is 0xfee00000 | destination APIC ID << 12.
type MSI struct {
	Address uint64
	Data    uint32
}

// RoutingEntry is one GSI route, struct kvm_irq_routing_entry. A GSI may
// have several routes (one per irqchip, as in the default table).
type RoutingEntry struct {
	GSI  uint32
	Kind RouteKind
	Chip IRQChip // RouteIRQChip only
	Pin  uint32  // RouteIRQChip only
	MSI  MSI     // RouteMSI only
}

// IRQChipRoute returns a route from gsi to a pin of an in-kernel irqchip.
func IRQChipRoute(gsi uint32, chip IRQChip, pin uint32) RoutingEntry {
	return RoutingEntry{GSI: gsi, Kind: RouteIRQChip, Chip: chip, Pin: pin}
}

// MSIRoute returns a route from gsi to an MSI message.
func MSIRoute(gsi uint32, msg MSI) RoutingEntry {
	return RoutingEntry{GSI: gsi, Kind: RouteMSI, MSI: msg}
}

// DefaultIRQRouting returns the routing table KVM installs with
// KVM_CREATE_IRQCHIP: GSIs 0-23 to the IOAPIC pin of the same number, and
// GSIs 0-15 also to the PIC (0-7 master, 8-15 slave, pin GSI mod 8). Since
// SetGSIRouting replaces the whole table, a VMM that adds MSI routes starts
// from this table and appends to it.
func DefaultIRQRouting() []RoutingEntry {
	routes := make([]RoutingEntry, 0, NumIOAPICPins+16)
	for gsi := uint32(0); gsi < NumIOAPICPins; gsi++ {
		routes = append(routes, IRQChipRoute(gsi, IRQChipIOAPIC, gsi))
		if gsi < 16 {
			chip := IRQChipPICMaster
			if gsi >= 8 {
				chip = IRQChipPICSlave
			}
			routes = append(routes, IRQChipRoute(gsi, chip, gsi%8))
		}
	}
	return routes
}

// PCIRQRouting returns the routing table of a PC whose ACPI MADT says that
// ISA IRQ 0 is wired to GSI 2 (the interrupt source override every PC
// firmware, QEMU's included, reports): GSI 0, which the in-kernel PIT
// raises, goes to IOAPIC pin 2 and PIC master pin 0; GSI 2, the PIC
// cascade, has no route; every other GSI is routed as in
// DefaultIRQRouting. With DefaultIRQRouting the PIT reaches IOAPIC pin 0,
// where a guest that read the MADT does not look, and Linux reports
// "MP-BIOS bug: 8254 timer not connected to IO-APIC" and falls back to
// delivering the timer through the PIC (ExtINT).
func PCIRQRouting() []RoutingEntry {
	routes := make([]RoutingEntry, 0, NumIOAPICPins+16)
	for _, e := range DefaultIRQRouting() {
		switch {
		case e.GSI == 2:
			continue
		case e.GSI == 0 && e.Chip == IRQChipIOAPIC:
			e.Pin = 2
		}
		routes = append(routes, e)
	}
	return routes
}

// String describes the route on one line.
func (e RoutingEntry) String() string {
	switch e.Kind {
	case RouteIRQChip:
		return fmt.Sprintf("gsi %d -> irqchip %d pin %d", e.GSI, e.Chip, e.Pin)
	case RouteMSI:
		return fmt.Sprintf("gsi %d -> msi addr=%#x data=%#x", e.GSI, e.MSI.Address, e.MSI.Data)
	}
	return fmt.Sprintf("gsi %d -> kind %d", e.GSI, e.Kind)
}
