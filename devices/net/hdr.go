package net

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// virtio_net_hdr (virtio 1.x section 5.1.6).
const (
	// HdrLenLegacy is struct virtio_net_hdr without num_buffers: the
	// header of a legacy driver without MRG_RXBUF.
	HdrLenLegacy = 10
	// HdrLen is struct virtio_net_hdr_mrg_rxbuf (virtio_net_hdr_v1): the
	// header under VERSION_1 or MRG_RXBUF.
	HdrLen = 12

	HdrFNeedsCsum = 1 // csum_start/csum_offset describe a partial checksum
	HdrFDataValid = 2 // the checksum is known to be valid (device to driver only)
	HdrFRscInfo   = 4 // RSC_EXT coalescing information (device to driver only)

	GSONone  = 0
	GSOTCPv4 = 1
	GSOUDP   = 3
	GSOTCPv6 = 4
	GSOUDPL4 = 5
	GSOECN   = 0x80
)

// Frame limits.
const (
	ethHdrLen  = 14
	vlanHdrLen = 4
	// MaxFrame is the largest Ethernet frame (without the virtio header)
	// the device passes in either direction: a 64 KiB IP packet with an
	// Ethernet header and one VLAN tag.
	MaxFrame = 65535 + ethHdrLen + vlanHdrLen
	// DefaultMTU is the MTU assumed when Config.MTU is 0.
	DefaultMTU = 1500
)

// Header is a decoded virtio_net_hdr. NumBuffers is only present in the
// 12-byte form.
type Header struct {
	Flags      uint8
	GSOType    uint8
	HdrLen     uint16
	GSOSize    uint16
	CsumStart  uint16
	CsumOffset uint16
	NumBuffers uint16
}

// DecodeHeader decodes a 10- or 12-byte header; b must hold at least 10
// bytes. NumBuffers is 0 for a 10-byte header.
func DecodeHeader(b []byte) Header {
	le := binary.LittleEndian
	h := Header{
		Flags:      b[0],
		GSOType:    b[1],
		HdrLen:     le.Uint16(b[2:]),
		GSOSize:    le.Uint16(b[4:]),
		CsumStart:  le.Uint16(b[6:]),
		CsumOffset: le.Uint16(b[8:]),
	}
	if len(b) >= HdrLen {
		h.NumBuffers = le.Uint16(b[10:])
	}
	return h
}

// Encode writes the header into b (10 or 12 bytes; num_buffers only if b
// holds 12).
func (h Header) Encode(b []byte) {
	le := binary.LittleEndian
	b[0] = h.Flags
	b[1] = h.GSOType
	le.PutUint16(b[2:], h.HdrLen)
	le.PutUint16(b[4:], h.GSOSize)
	le.PutUint16(b[6:], h.CsumStart)
	le.PutUint16(b[8:], h.CsumOffset)
	if len(b) >= HdrLen {
		le.PutUint16(b[10:], h.NumBuffers)
	}
}

// IsZero reports whether the header says nothing: a complete, checksummed,
// unsegmented frame with no checksum information.
func (h Header) IsZero() bool {
	return h.Flags == 0 && h.GSOType == 0 && h.HdrLen == 0 && h.GSOSize == 0 && h.CsumStart == 0 && h.CsumOffset == 0
}

// String renders the header for logs.
func (h Header) String() string {
	return fmt.Sprintf("flags=%#x gso_type=%#x hdr_len=%d gso_size=%d csum_start=%d csum_offset=%d num_buffers=%d",
		h.Flags, h.GSOType, h.HdrLen, h.GSOSize, h.CsumStart, h.CsumOffset, h.NumBuffers)
}

// Reasons a transmitted header is refused. They are static so that
// dropping a frame allocates nothing.
var (
	errTxShort        = errors.New("frame shorter than an Ethernet header")
	errTxOversized    = errors.New("frame longer than 65553 bytes")
	errTxFlags        = errors.New("unknown header flags")
	errTxCsumNotAcked = errors.New("NEEDS_CSUM without VIRTIO_NET_F_CSUM")
	errTxCsumRange    = errors.New("csum_start/csum_offset outside the frame")
	errTxGSOType      = errors.New("unknown gso_type")
	errTxGSONotAcked  = errors.New("gso_type the driver did not negotiate")
	errTxECN          = errors.New("GSO ECN bit without HOST_ECN or on a non-TCP type")
	errTxGSONoCsum    = errors.New("GSO frame without NEEDS_CSUM")
	errTxGSOSize      = errors.New("GSO frame with gso_size 0")
	errTxHdrLen       = errors.New("hdr_len beyond the frame")
)

// ValidateTxHeader checks a header a driver sent with a frame of frameLen
// bytes (Ethernet header included, virtio header excluded) against the
// negotiated features. It returns nil only for a header the tap may see:
// known flags, a partial checksum inside the frame and only with CSUM, a
// GSO type the driver negotiated (TCPv4: HOST_TSO4, TCPv6: HOST_TSO6, ECN:
// HOST_ECN, UDP: HOST_UFO, UDP_L4: HOST_USO) with NEEDS_CSUM and a non-zero
// gso_size, hdr_len inside the frame.
func ValidateTxHeader(h Header, frameLen int, acked uint64) error {
	switch {
	case frameLen < ethHdrLen:
		return errTxShort
	case frameLen > MaxFrame:
		return errTxOversized
	case h.Flags&^(HdrFNeedsCsum|HdrFDataValid) != 0:
		return errTxFlags
	case int(h.HdrLen) > frameLen:
		return errTxHdrLen
	}
	if h.Flags&HdrFNeedsCsum != 0 {
		if acked&FCsum == 0 {
			return errTxCsumNotAcked
		}
		if h.CsumStart < ethHdrLen || int(h.CsumStart)+int(h.CsumOffset)+2 > frameLen {
			return errTxCsumRange
		}
	}
	gso, ecn := h.GSOType&^GSOECN, h.GSOType&GSOECN != 0
	var need uint64
	switch gso {
	case GSONone:
		if ecn {
			return errTxECN
		}
		return nil
	case GSOTCPv4:
		need = FHostTSO4
	case GSOTCPv6:
		need = FHostTSO6
	case GSOUDP:
		need = FHostUFO
	case GSOUDPL4:
		need = FHostUSO
	default:
		return errTxGSOType
	}
	switch {
	case acked&need == 0:
		return errTxGSONotAcked
	case ecn && (acked&FHostECN == 0 || (gso != GSOTCPv4 && gso != GSOTCPv6)):
		return errTxECN
	case h.Flags&HdrFNeedsCsum == 0:
		return errTxGSONoCsum
	case h.GSOSize == 0:
		return errTxGSOSize
	}
	return nil
}

// txCanonical returns the header passed to the tap for a validated one:
// DATA_VALID (which a driver must not send) is cleared, and the fields that
// mean nothing without GSO are zeroed.
func txCanonical(h Header) Header {
	h.Flags &= HdrFNeedsCsum
	if h.GSOType == GSONone {
		h.HdrLen, h.GSOSize = 0, 0
	}
	if h.Flags&HdrFNeedsCsum == 0 {
		h.CsumStart, h.CsumOffset = 0, 0
	}
	h.NumBuffers = 0
	return h
}

// SanitizeRxHeader checks a header the backend produced for a frame of
// frameLen bytes against the receive offloads the driver has enabled (a
// GuestOffloads mask). It returns the header to deliver, or ok=false if the
// frame must be dropped. Without GUEST_CSUM the delivered header is all
// zeros (the tap sets DATA_VALID even when told no offloads), and a frame
// with NEEDS_CSUM or a GSO type is dropped; with it, a GSO type the driver
// did not enable is dropped, and so is a partial checksum outside the frame.
// NumBuffers is left as it was; the caller fills it in.
func SanitizeRxHeader(h Header, frameLen int, enabled uint64) (Header, bool) {
	if enabled&FGuestCsum == 0 {
		if h.Flags&HdrFNeedsCsum != 0 || h.GSOType != GSONone {
			return h, false
		}
		return Header{NumBuffers: h.NumBuffers}, true
	}
	h.Flags &= HdrFNeedsCsum | HdrFDataValid
	if h.Flags&HdrFNeedsCsum != 0 {
		if h.CsumStart < ethHdrLen || int(h.CsumStart)+int(h.CsumOffset)+2 > frameLen {
			return h, false
		}
	} else {
		h.CsumStart, h.CsumOffset = 0, 0
	}
	gso, ecn := h.GSOType&^GSOECN, h.GSOType&GSOECN != 0
	var need uint64
	switch gso {
	case GSONone:
		if ecn {
			return h, false
		}
		h.HdrLen, h.GSOSize = 0, 0
		return h, true
	case GSOTCPv4:
		need = FGuestTSO4
	case GSOTCPv6:
		need = FGuestTSO6
	case GSOUDP:
		need = FGuestUFO
	case GSOUDPL4:
		need = FGuestUSO4 | FGuestUSO6
	default:
		return h, false
	}
	switch {
	case enabled&need != need:
		return h, false
	case ecn && (enabled&FGuestECN == 0 || (gso != GSOTCPv4 && gso != GSOTCPv6)):
		return h, false
	case h.Flags&HdrFNeedsCsum == 0, h.GSOSize == 0:
		return h, false
	}
	return h, true
}
