// Package virtio implements the transport-independent parts of virtio:
// feature bits, the device status state machine, and split virtqueues with a
// defensive descriptor walker. It knows nothing about PCI, MMIO or KVM: a
// transport (package virtio/pcitransport) presents a Device to the guest and
// drives it through Common.
//
// Everything read from a virtqueue is untrusted guest input. Queue methods
// check every index, address, length and flag and return an error wrapping
// ErrGuest for a driver mistake; the caller then drops the request or marks
// the device as needing a reset. Nothing here panics on guest input.
package virtio

import (
	"fmt"
	"strings"
)

// DeviceType is a virtio device ID.
type DeviceType uint16

// Device IDs used by govmd.
const (
	DeviceNet   DeviceType = 1
	DeviceBlock DeviceType = 2
)

// Reserved (device-independent) feature bits.
const (
	FNotifyOnEmpty   = 1 << 24 // legacy only
	FAnyLayout       = 1 << 27 // legacy only; implied by VERSION_1
	FRingIndirect    = 1 << 28
	FRingEventIdx    = 1 << 29
	FVersion1        = 1 << 32
	FAccessPlatform  = 1 << 33
	FRingPacked      = 1 << 34
	FInOrder         = 1 << 35
	FOrderPlatform   = 1 << 36
	FSRIOV           = 1 << 37
	FNotificationDat = 1 << 38
	FRingReset       = 1 << 40
)

// Device status bits (virtio 1.x section 2.1).
const (
	StatusAcknowledge = 1
	StatusDriver      = 2
	StatusDriverOK    = 4
	StatusFeaturesOK  = 8
	StatusNeedsReset  = 0x40
	StatusFailed      = 0x80
)

// StatusString renders a status byte for logs.
func StatusString(s uint8) string {
	if s == 0 {
		return "0"
	}
	var parts []string
	names := []struct {
		bit  uint8
		name string
	}{
		{StatusAcknowledge, "ACKNOWLEDGE"}, {StatusDriver, "DRIVER"}, {StatusFeaturesOK, "FEATURES_OK"},
		{StatusDriverOK, "DRIVER_OK"}, {StatusNeedsReset, "NEEDS_RESET"}, {StatusFailed, "FAILED"},
	}
	for _, n := range names {
		if s&n.bit != 0 {
			parts = append(parts, n.name)
			s &^= n.bit
		}
	}
	if s != 0 {
		parts = append(parts, fmt.Sprintf("%#x", s))
	}
	return strings.Join(parts, "|")
}
