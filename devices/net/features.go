package net

import (
	"fmt"
	"math/bits"
	"strings"

	"github.com/govmd/govmd/devices/net/tap"
	"github.com/govmd/govmd/virtio"
)

// Feature bits (virtio 1.x section 5.1.3).
const (
	FCsum              uint64 = 1 << 0  // device handles packets with partial checksum (guest TX)
	FGuestCsum         uint64 = 1 << 1  // driver handles packets with partial checksum (guest RX)
	FCtrlGuestOffloads uint64 = 1 << 2  // control channel offloads reconfiguration
	FMTU               uint64 = 1 << 3  // device reports its maximum MTU
	FMAC               uint64 = 1 << 5  // device has a MAC address
	FGSO               uint64 = 1 << 6  // legacy: device handles packets with any GSO type
	FGuestTSO4         uint64 = 1 << 7  // driver can receive TSOv4
	FGuestTSO6         uint64 = 1 << 8  // driver can receive TSOv6
	FGuestECN          uint64 = 1 << 9  // driver can receive TSO with ECN
	FGuestUFO          uint64 = 1 << 10 // driver can receive UFO
	FHostTSO4          uint64 = 1 << 11 // device can receive TSOv4
	FHostTSO6          uint64 = 1 << 12 // device can receive TSOv6
	FHostECN           uint64 = 1 << 13 // device can receive TSO with ECN
	FHostUFO           uint64 = 1 << 14 // device can receive UFO
	FMrgRxbuf          uint64 = 1 << 15 // driver can merge receive buffers
	FStatus            uint64 = 1 << 16 // configuration status field is available
	FCtrlVQ            uint64 = 1 << 17 // control channel is available
	FCtrlRx            uint64 = 1 << 18 // control channel RX mode support
	FCtrlVLAN          uint64 = 1 << 19 // control channel VLAN filtering
	FCtrlRxExtra       uint64 = 1 << 20 // extra RX mode control support
	FGuestAnnounce     uint64 = 1 << 21 // driver can send gratuitous packets
	FMQ                uint64 = 1 << 22 // multiqueue with automatic steering
	FCtrlMACAddr       uint64 = 1 << 23 // set MAC address through the control channel
	FGuestUSO4         uint64 = 1 << 54 // driver can receive USOv4
	FGuestUSO6         uint64 = 1 << 55 // driver can receive USOv6
	FHostUSO           uint64 = 1 << 56 // device can receive USO
	FHashReport        uint64 = 1 << 57
	FGuestHdrLen       uint64 = 1 << 59
	FRSS               uint64 = 1 << 60
	FRSCExt            uint64 = 1 << 61
	FStandby           uint64 = 1 << 62
	FSpeedDuplex       uint64 = 1 << 63
)

// GuestOffloads are the feature bits that describe what the driver can
// receive. They are also the bits of a VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET
// request.
const GuestOffloads = FGuestCsum | FGuestTSO4 | FGuestTSO6 | FGuestECN | FGuestUFO | FGuestUSO4 | FGuestUSO6

// guestGSO are the receive segmentation offloads: with any of them enabled
// the tap may deliver 64 KiB frames.
const guestGSO = FGuestTSO4 | FGuestTSO6 | FGuestUFO | FGuestUSO4 | FGuestUSO6

var featureNames = map[uint64]string{
	FCsum: "CSUM", FGuestCsum: "GUEST_CSUM", FCtrlGuestOffloads: "CTRL_GUEST_OFFLOADS", FMTU: "MTU",
	FMAC: "MAC", FGSO: "GSO", FGuestTSO4: "GUEST_TSO4", FGuestTSO6: "GUEST_TSO6",
	FGuestECN: "GUEST_ECN", FGuestUFO: "GUEST_UFO", FHostTSO4: "HOST_TSO4", FHostTSO6: "HOST_TSO6",
	FHostECN: "HOST_ECN", FHostUFO: "HOST_UFO", FMrgRxbuf: "MRG_RXBUF", FStatus: "STATUS",
	FCtrlVQ: "CTRL_VQ", FCtrlRx: "CTRL_RX", FCtrlVLAN: "CTRL_VLAN", FCtrlRxExtra: "CTRL_RX_EXTRA",
	FGuestAnnounce: "GUEST_ANNOUNCE", FMQ: "MQ", FCtrlMACAddr: "CTRL_MAC_ADDR",
	FGuestUSO4: "GUEST_USO4", FGuestUSO6: "GUEST_USO6", FHostUSO: "HOST_USO",
	FHashReport: "HASH_REPORT", FGuestHdrLen: "GUEST_HDRLEN", FRSS: "RSS", FRSCExt: "RSC_EXT",
	FStandby: "STANDBY", FSpeedDuplex: "SPEED_DUPLEX",
	virtio.FNotifyOnEmpty: "NOTIFY_ON_EMPTY", virtio.FAnyLayout: "ANY_LAYOUT",
	virtio.FRingIndirect: "RING_INDIRECT_DESC", virtio.FRingEventIdx: "RING_EVENT_IDX",
	virtio.FVersion1: "VERSION_1", virtio.FAccessPlatform: "ACCESS_PLATFORM",
	virtio.FRingPacked: "RING_PACKED", virtio.FInOrder: "IN_ORDER", virtio.FRingReset: "RING_RESET",
}

// FeatureString names the bits of a virtio-net feature set, for logs.
func FeatureString(f uint64) string {
	if f == 0 {
		return "none"
	}
	var parts []string
	for f != 0 {
		b := uint64(1) << bits.TrailingZeros64(f)
		f &^= b
		if n, ok := featureNames[b]; ok {
			parts = append(parts, n)
		} else {
			parts = append(parts, fmt.Sprintf("bit%d", bits.TrailingZeros64(b)))
		}
	}
	return strings.Join(parts, "|")
}

// OffloadString names TUN_F_* flags, for logs.
func OffloadString(f uint32) string {
	if f == 0 {
		return "none"
	}
	names := []struct {
		bit  uint32
		name string
	}{
		{tap.OffloadCSUM, "CSUM"}, {tap.OffloadTSO4, "TSO4"}, {tap.OffloadTSO6, "TSO6"},
		{tap.OffloadTSOECN, "TSO_ECN"}, {tap.OffloadUFO, "UFO"}, {tap.OffloadUSO4, "USO4"},
		{tap.OffloadUSO6, "USO6"},
	}
	var parts []string
	for _, n := range names {
		if f&n.bit != 0 {
			parts = append(parts, n.name)
			f &^= n.bit
		}
	}
	if f != 0 {
		parts = append(parts, fmt.Sprintf("%#x", f))
	}
	return strings.Join(parts, "|")
}

// TapOffloads maps the receive offloads a driver accepted (the GUEST_* bits
// of acked; other bits are ignored) to the tap's TUNSETOFFLOAD flags. The
// mapping follows the kernel's nesting: nothing without GUEST_CSUM, ECN only
// with TSO4 or TSO6, USO only when both USO4 and USO6 were accepted.
func TapOffloads(acked uint64) uint32 {
	if acked&FGuestCsum == 0 {
		return 0
	}
	f := tap.OffloadCSUM
	if acked&FGuestTSO4 != 0 {
		f |= tap.OffloadTSO4
	}
	if acked&FGuestTSO6 != 0 {
		f |= tap.OffloadTSO6
	}
	if acked&FGuestECN != 0 && f&(tap.OffloadTSO4|tap.OffloadTSO6) != 0 {
		f |= tap.OffloadTSOECN
	}
	if acked&FGuestUFO != 0 {
		f |= tap.OffloadUFO
	}
	if acked&(FGuestUSO4|FGuestUSO6) == FGuestUSO4|FGuestUSO6 {
		f |= tap.OffloadUSO4 | tap.OffloadUSO6
	}
	return f
}

// featureDeps are the dependencies of virtio 1.x section 5.1.3.1: a feature
// in the first column requires at least one of the second.
var featureDeps = []struct{ feature, needs uint64 }{
	{FGuestTSO4, FGuestCsum},
	{FGuestTSO6, FGuestCsum},
	{FGuestECN, FGuestTSO4 | FGuestTSO6},
	{FGuestUFO, FGuestCsum},
	{FGuestUSO4, FGuestCsum},
	{FGuestUSO6, FGuestCsum},
	{FHostTSO4, FCsum},
	{FHostTSO6, FCsum},
	{FHostECN, FHostTSO4 | FHostTSO6},
	{FHostUFO, FCsum},
	{FHostUSO, FCsum},
	{FCtrlRx, FCtrlVQ},
	{FCtrlVLAN, FCtrlVQ},
	{FGuestAnnounce, FCtrlVQ},
	{FMQ, FCtrlVQ},
	{FCtrlMACAddr, FCtrlVQ},
	{FCtrlGuestOffloads, FCtrlVQ},
	{FCtrlRxExtra, FCtrlRx},
	{FRSS, FCtrlVQ},
	{FRSCExt, FHostTSO4 | FHostTSO6},
}

// ValidateFeatures reports the first dependency the acked feature set
// breaks (for example GUEST_TSO4 without GUEST_CSUM). The transport then
// refuses FEATURES_OK.
func ValidateFeatures(acked uint64) error {
	for _, d := range featureDeps {
		if acked&d.feature != 0 && acked&d.needs == 0 {
			return fmt.Errorf("virtio-net: %s requires %s", FeatureString(d.feature), strings.ReplaceAll(FeatureString(d.needs), "|", " or "))
		}
	}
	return nil
}
