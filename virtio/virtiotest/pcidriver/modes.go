package pcidriver

import "github.com/govmd/govmd/virtio/pcitransport"

// Mode is one way a guest meets a virtio PCI function: how the function is
// presented (its transport mode) and which of its interfaces the driver
// uses, with which interrupts. It is the transport matrix every device's
// tests run through.
type Mode struct {
	Name      string
	Transport pcitransport.Mode
	Config    // the driver's side: Legacy, INTx
}

// MSIXModes are the ways with MSI-X: a modern driver on a modern-only and
// on a transitional device, and a legacy driver on a transitional device
// (Linux with virtio_pci.force_legacy=1) and on a legacy-only device.
var MSIXModes = []Mode{
	{Name: "modern", Transport: pcitransport.Modern},
	{Name: "transitional", Transport: pcitransport.Transitional},
	{Name: "transitional-legacy", Transport: pcitransport.Transitional, Config: Config{Legacy: true}},
	{Name: "legacy", Transport: pcitransport.Legacy, Config: Config{Legacy: true}},
}

// INTxModes are a modern and a legacy driver with MSI-X disabled.
var INTxModes = []Mode{
	{Name: "modern-intx", Transport: pcitransport.Modern, Config: Config{INTx: true}},
	{Name: "legacy-intx", Transport: pcitransport.Legacy, Config: Config{Legacy: true, INTx: true}},
}

// AllModes returns MSIXModes followed by INTxModes.
func AllModes() []Mode {
	return append(append([]Mode(nil), MSIXModes...), INTxModes...)
}
