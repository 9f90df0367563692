// Package vhostuser speaks the vhost-user protocol (QEMU's
// docs/interop/vhost-user.rst), with which one process (the frontend,
// which owns the guest's memory and the virtio transport) hands the
// virtqueues of a virtio device to another (the backend, which serves
// them). Messages go over a unix socket, file descriptors (guest memory,
// notification eventfds) with them as SCM_RIGHTS.
//
// This package has the wire format (Conn, Msg and the payload types), and
// Backend, which hosts a virtio.Device behind a socket. Both sides treat
// the other as hostile: every size, index, address and count is checked,
// every socket operation has a deadline.
package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Request is a message type (the header's request field).
type Request uint32

// Frontend requests.
const (
	GetFeatures         Request = 1
	SetFeatures         Request = 2
	SetOwner            Request = 3
	ResetOwner          Request = 4
	SetMemTable         Request = 5
	SetLogBase          Request = 6
	SetLogFD            Request = 7
	SetVringNum         Request = 8
	SetVringAddr        Request = 9
	SetVringBase        Request = 10
	GetVringBase        Request = 11
	SetVringKick        Request = 12
	SetVringCall        Request = 13
	SetVringErr         Request = 14
	GetProtocolFeatures Request = 15
	SetProtocolFeatures Request = 16
	GetQueueNum         Request = 17
	SetVringEnable      Request = 18
	SendRARP            Request = 19
	NetSetMTU           Request = 20
	GetConfig           Request = 24
	SetConfig           Request = 25
	ResetDevice         Request = 34
	GetMaxMemSlots      Request = 36
	SetStatus           Request = 39
	GetStatus           Request = 40
)

var requestNames = map[Request]string{
	GetFeatures: "GET_FEATURES", SetFeatures: "SET_FEATURES", SetOwner: "SET_OWNER", ResetOwner: "RESET_OWNER",
	SetMemTable: "SET_MEM_TABLE", SetLogBase: "SET_LOG_BASE", SetLogFD: "SET_LOG_FD", SetVringNum: "SET_VRING_NUM",
	SetVringAddr: "SET_VRING_ADDR", SetVringBase: "SET_VRING_BASE", GetVringBase: "GET_VRING_BASE",
	SetVringKick: "SET_VRING_KICK", SetVringCall: "SET_VRING_CALL", SetVringErr: "SET_VRING_ERR",
	GetProtocolFeatures: "GET_PROTOCOL_FEATURES", SetProtocolFeatures: "SET_PROTOCOL_FEATURES",
	GetQueueNum: "GET_QUEUE_NUM", SetVringEnable: "SET_VRING_ENABLE", SendRARP: "SEND_RARP", NetSetMTU: "NET_SET_MTU",
	GetConfig: "GET_CONFIG", SetConfig: "SET_CONFIG", ResetDevice: "RESET_DEVICE", GetMaxMemSlots: "GET_MAX_MEM_SLOTS",
	SetStatus: "SET_STATUS", GetStatus: "GET_STATUS",
}

func (r Request) String() string {
	if n, ok := requestNames[r]; ok {
		return n
	}
	return fmt.Sprintf("request %d", uint32(r))
}

// alwaysReplies reports whether a request is answered whatever the flags
// (the GET_* requests). Any other request is answered only when REPLY_ACK
// was negotiated and it sets NeedReply.
func (r Request) alwaysReplies() bool {
	switch r {
	case GetFeatures, GetProtocolFeatures, GetVringBase, GetQueueNum, GetConfig, GetMaxMemSlots, GetStatus:
		return true
	}
	return false
}

// Header flags.
const (
	version1  = 0x1
	flagReply = 0x4
	// FlagNeedReply asks for an acknowledgement (REPLY_ACK).
	FlagNeedReply = 0x8
	versionMask   = 0x3
)

// Protocol features (bit numbers in GET/SET_PROTOCOL_FEATURES).
const (
	ProtocolMQ                = 1 << 0
	ProtocolLogShmFD          = 1 << 1
	ProtocolRARP              = 1 << 2
	ProtocolReplyAck          = 1 << 3
	ProtocolMTU               = 1 << 4
	ProtocolBackendReq        = 1 << 5
	ProtocolConfig            = 1 << 9
	ProtocolResetDevice       = 1 << 13
	ProtocolConfigureMemSlots = 1 << 15
	ProtocolStatus            = 1 << 16
)

// FProtocolFeatures (virtio feature bit 30, unused by virtio itself) says a
// backend speaks GET/SET_PROTOCOL_FEATURES; with it acked, rings start
// disabled until SET_VRING_ENABLE.
const FProtocolFeatures = 1 << 30

// FLogAll (bit 26) asks for dirty-page logging (migration); not supported.
const FLogAll = 1 << 26

// Limits.
const (
	headerSize = 12
	// MaxPayload bounds a message's payload (what QEMU and rust-vmm
	// accept at most).
	MaxPayload = 4096
	// MaxRegions bounds SET_MEM_TABLE (without CONFIGURE_MEM_SLOTS).
	MaxRegions = 8
	// MaxFDs bounds the file descriptors one message may carry.
	MaxFDs = MaxRegions
	// VringIndexMask and VringNoFD split the u64 of SET_VRING_KICK/CALL/
	// ERR: the ring index, and "no file descriptor" (poll, or no
	// notification).
	VringIndexMask = 0xff
	VringNoFD      = 0x100
	// MaxConfig bounds GET/SET_CONFIG.
	MaxConfig = 256
)

// ErrProtocol marks a malformed or unexpected message from the peer.
var ErrProtocol = errors.New("vhost-user protocol error")

func protoErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, args...))
}

var le = binary.LittleEndian

// U64 encodes a u64 payload.
func U64(v uint64) []byte { return le.AppendUint64(nil, v) }

// ParseU64 decodes a u64 payload.
func ParseU64(p []byte) (uint64, error) {
	if len(p) != 8 {
		return 0, protoErr("u64 payload of %d bytes", len(p))
	}
	return le.Uint64(p), nil
}

// VringState is the payload of SET_VRING_NUM, SET_VRING_BASE,
// GET_VRING_BASE and SET_VRING_ENABLE.
type VringState struct {
	Index uint32
	Num   uint32
}

// Encode returns the 8-byte payload.
func (s VringState) Encode() []byte {
	b := le.AppendUint32(nil, s.Index)
	return le.AppendUint32(b, s.Num)
}

// ParseVringState decodes a vring state payload.
func ParseVringState(p []byte) (VringState, error) {
	if len(p) != 8 {
		return VringState{}, protoErr("vring state of %d bytes", len(p))
	}
	return VringState{Index: le.Uint32(p), Num: le.Uint32(p[4:])}, nil
}

// VringAddr is the payload of SET_VRING_ADDR. Desc, Used and Avail are
// addresses in the frontend's address space (translated through the
// memory table's UserAddr), Log a guest physical address.
type VringAddr struct {
	Index             uint32
	Flags             uint32 // bit 0: log the used ring (not supported)
	Desc, Used, Avail uint64
	Log               uint64
}

// Encode returns the 40-byte payload.
func (a VringAddr) Encode() []byte {
	b := le.AppendUint32(nil, a.Index)
	b = le.AppendUint32(b, a.Flags)
	for _, v := range []uint64{a.Desc, a.Used, a.Avail, a.Log} {
		b = le.AppendUint64(b, v)
	}
	return b
}

// ParseVringAddr decodes a vring address payload.
func ParseVringAddr(p []byte) (VringAddr, error) {
	if len(p) != 40 {
		return VringAddr{}, protoErr("vring address of %d bytes", len(p))
	}
	return VringAddr{Index: le.Uint32(p), Flags: le.Uint32(p[4:]), Desc: le.Uint64(p[8:]),
		Used: le.Uint64(p[16:]), Avail: le.Uint64(p[24:]), Log: le.Uint64(p[32:])}, nil
}

// Region is one guest memory region of SET_MEM_TABLE: GuestAddr..+Size in
// guest physical addresses, at UserAddr in the frontend's address space,
// and at Offset in the file descriptor sent with it.
type Region struct {
	GuestAddr, Size, UserAddr, Offset uint64
}

// EncodeMemTable returns the payload of SET_MEM_TABLE.
func EncodeMemTable(rs []Region) []byte {
	b := le.AppendUint32(nil, uint32(len(rs)))
	b = le.AppendUint32(b, 0)
	for _, r := range rs {
		for _, v := range []uint64{r.GuestAddr, r.Size, r.UserAddr, r.Offset} {
			b = le.AppendUint64(b, v)
		}
	}
	return b
}

// ParseMemTable decodes SET_MEM_TABLE's payload. It checks the count and
// the size, and that no region is empty, wraps or overlaps another in
// either address space.
func ParseMemTable(p []byte) ([]Region, error) {
	if len(p) < 8 {
		return nil, protoErr("memory table of %d bytes", len(p))
	}
	n := le.Uint32(p)
	if n == 0 || n > MaxRegions || len(p) != 8+32*int(n) {
		return nil, protoErr("memory table of %d bytes with %d regions", len(p), n)
	}
	rs := make([]Region, n)
	for i := range rs {
		q := p[8+32*i:]
		r := Region{GuestAddr: le.Uint64(q), Size: le.Uint64(q[8:]), UserAddr: le.Uint64(q[16:]), Offset: le.Uint64(q[24:])}
		if r.Size == 0 || r.GuestAddr+r.Size < r.GuestAddr || r.UserAddr+r.Size < r.UserAddr || r.Offset+r.Size < r.Offset {
			return nil, protoErr("memory region %d (guest %#x, size %#x, user %#x, offset %#x) is empty or wraps", i, r.GuestAddr, r.Size, r.UserAddr, r.Offset)
		}
		for j := 0; j < i; j++ {
			o := rs[j]
			if r.GuestAddr < o.GuestAddr+o.Size && o.GuestAddr < r.GuestAddr+r.Size ||
				r.UserAddr < o.UserAddr+o.Size && o.UserAddr < r.UserAddr+r.Size {
				return nil, protoErr("memory regions %d and %d overlap", j, i)
			}
		}
		rs[i] = r
	}
	return rs, nil
}

// Config is the payload of GET_CONFIG and SET_CONFIG.
type Config struct {
	Offset, Flags uint32
	Data          []byte
}

// Encode returns the payload.
func (c Config) Encode() []byte {
	b := le.AppendUint32(nil, c.Offset)
	b = le.AppendUint32(b, uint32(len(c.Data)))
	b = le.AppendUint32(b, c.Flags)
	return append(b, c.Data...)
}

// ParseConfig decodes a config payload.
func ParseConfig(p []byte) (Config, error) {
	if len(p) < 12 {
		return Config{}, protoErr("config of %d bytes", len(p))
	}
	size := le.Uint32(p[4:])
	if size > MaxConfig || len(p) != 12+int(size) {
		return Config{}, protoErr("config of %d bytes says %d", len(p), size)
	}
	return Config{Offset: le.Uint32(p), Flags: le.Uint32(p[8:]), Data: p[12:]}, nil
}
