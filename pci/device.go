package pci

// Device is one PCI function, implemented by a device transport.
//
// Config is called once, when the device is added to a Root; the returned
// space must not change afterwards. ReadBAR and WriteBAR serve guest
// accesses to the device's BARs: bar is the BAR index, off the offset from
// the BAR's start and len(data) 1, 2, 4 or 8. They are called from vCPU
// goroutines, possibly concurrently, and must treat every access as
// untrusted (ignore what they do not understand; never panic).
type Device interface {
	Config() *ConfigSpace
	ReadBAR(bar int, off uint64, data []byte)
	WriteBAR(bar int, off uint64, data []byte)
}

// BARObserver is implemented by a Device that wants to know where its BARs
// are decoded, for example to move KVM ioeventfds with a notification BAR.
// The Root calls BARMapped with mapped true when a BAR starts being decoded
// at addr and with mapped false (and the old address) when it stops; a move
// is a call with mapped false followed by one with mapped true. Calls are serialized by the Root and made from the
// vCPU goroutine whose configuration write caused them (or from AddDevice);
// BARMapped must not call Root methods.
type BARObserver interface {
	BARMapped(bar int, addr uint64, kind BARKind, mapped bool)
}

// hostBridge is the function at 00:00.0.
type hostBridge struct{ cs *ConfigSpace }

func (h *hostBridge) Config() *ConfigSpace         { return h.cs }
func (h *hostBridge) ReadBAR(int, uint64, []byte)  {}
func (h *hostBridge) WriteBAR(int, uint64, []byte) {}
