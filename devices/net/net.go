// Package net is the virtio-net device model (virtio 1.x section 5.1). Its
// queues pass frames with their virtio_net_hdr straight to and from a
// backend, a Linux tap opened with IFF_VNET_HDR (package tap), and the tap's
// offloads follow what each guest's driver accepted.
//
// Queues: 0 receive, 1 transmit, 2 control (with VIRTIO_NET_F_CTRL_VQ). Each
// runs on its own goroutine, woken by the queue's notification eventfd; the
// receive goroutine waits for the tap through Go's netpoller. Frames move
// with readv/writev directly between the tap and guest buffers; only the
// virtio header and the Ethernet header of transmitted frames are copied,
// so that they can be checked and the checked copy is what the tap sees.
//
// Offloads are negotiated per guest: TapOffloads maps the GUEST_* bits the
// driver acked to TUNSETOFFLOAD flags at DRIVER_OK, the control queue's
// GUEST_OFFLOADS_SET re-applies them and a reset clears them. A driver that
// acked nothing receives complete, checksummed, unsegmented frames with an
// all-zero header, whatever the tap produces: every received header is
// sanitized against the offloads currently enabled.
//
// Everything the guest supplies is untrusted: headers may be split across
// descriptors, offsets and lengths may lie. A bad frame is dropped and
// counted, a broken queue sets DEVICE_NEEDS_RESET; nothing here panics on
// guest input.
package net

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	stdnet "net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/govmd/govmd/devices/net/tap"
	"github.com/govmd/govmd/internal/eventfd"
	"github.com/govmd/govmd/internal/ratelimit"
	"github.com/govmd/govmd/virtio"
)

// Backend is where frames go: a Linux tap (*tap.Tap implements it) or a fake
// in tests. Every frame is preceded by a virtio_net_hdr of the size set with
// SetVnetHdrSize.
//
// The device calls ReadV from its receive goroutine and WriteV from its
// transmit goroutine, possibly concurrently; the other methods from
// Activate, Reset and the control goroutine.
type Backend interface {
	// ReadV reads one frame into iovs and returns its length including
	// the header. Without a frame it returns an error matching
	// unix.EAGAIN if wait is false, and otherwise blocks until a frame
	// arrives or CancelRead is called (error matching
	// os.ErrDeadlineExceeded). A frame longer than iovs is truncated.
	ReadV(iovs [][]byte, wait bool) (int, error)
	// WriteV writes one frame gathered from iovs. It must not block: a
	// frame the backend cannot take now is refused with an error.
	WriteV(iovs [][]byte) (int, error)
	// SetVnetHdrSize sets the header length (10 or 12).
	SetVnetHdrSize(n int) error
	// SetOffload sets which tap.Offload* flags the reader can receive.
	SetOffload(flags uint32) error
	// SupportedOffloads returns the tap.Offload* flags SetOffload accepts.
	SupportedOffloads() uint32
	// CancelRead makes a blocked ReadV, and every later one, return
	// instead of waiting, until ResumeRead.
	CancelRead()
	ResumeRead()
}

var _ Backend = (*tap.Tap)(nil)

// OffloadMode selects which offloads a NIC offers.
type OffloadMode int

const (
	// OffloadOn offers checksum offload and every segmentation offload the
	// tap supports, in both directions.
	OffloadOn OffloadMode = iota
	// OffloadOff offers no offload: every frame is complete and
	// checksummed.
	OffloadOff
	// OffloadCsum offers checksum offload (CSUM, GUEST_CSUM) without
	// segmentation.
	OffloadCsum
)

// ParseOffloadMode parses "on", "off" or "csum".
func ParseOffloadMode(s string) (OffloadMode, error) {
	switch s {
	case "on", "":
		return OffloadOn, nil
	case "off":
		return OffloadOff, nil
	case "csum":
		return OffloadCsum, nil
	}
	return 0, fmt.Errorf("offload mode %q: want on, off or csum", s)
}

// String returns the mode as ParseOffloadMode accepts it.
func (m OffloadMode) String() string {
	switch m {
	case OffloadOn:
		return "on"
	case OffloadOff:
		return "off"
	case OffloadCsum:
		return "csum"
	}
	return fmt.Sprintf("OffloadMode(%d)", int(m))
}

// MarshalText implements encoding.TextMarshaler.
func (m OffloadMode) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (m *OffloadMode) UnmarshalText(b []byte) error {
	v, err := ParseOffloadMode(string(b))
	if err == nil {
		*m = v
	}
	return err
}

// Config configures a NIC.
type Config struct {
	// MAC is the NIC's address; nil means a random locally administered
	// unicast address.
	MAC stdnet.HardwareAddr
	// MTU, if not 0, is offered to the driver (VIRTIO_NET_F_MTU), from 68
	// to 65535. It also sizes receive buffers when no receive
	// segmentation offload is enabled (DefaultMTU otherwise).
	MTU int
	// Offload selects the offered offloads.
	Offload OffloadMode
	// Locked drops transmitted frames whose source address is not MAC
	// and delivers only frames addressed to MAC, broadcast or multicast.
	Locked bool
	// QueueSize is the maximum size of each queue, a power of two from 4
	// to 32768; 0 means DefaultQueueSize.
	QueueSize uint16
	// Log receives the device's messages; nil discards them.
	Log *slog.Logger
}

// Queue indices.
const (
	RxQueue   = 0
	TxQueue   = 1
	CtrlQueue = 2
)

// DefaultQueueSize is the queue size used when Config.QueueSize is 0.
const DefaultQueueSize = 256

// Configuration space layout (struct virtio_net_config), little-endian for
// modern and legacy drivers alike.
const (
	cfgMAC        = 0
	cfgStatus     = 6
	cfgMaxVQPairs = 8
	cfgMTU        = 10
	// ConfigSize is the size of the device configuration (mac, status,
	// max_virtqueue_pairs, mtu).
	ConfigSize = 12
	// CtrlQueueSize is the size of the control queue.
	CtrlQueueSize = 64
	statusLinkUp  = 1
)

// Device is a virtio-net NIC. It implements virtio.Device and
// virtio.FeatureValidator.
//
// Lifecycle: New, then a transport drives Activate and Reset (never
// concurrently with each other), then Close. ReadConfig, WriteConfig,
// Stats and the accessors are safe for concurrent use at any time. The
// Device does not own the Backend: the caller closes it after Close.
type Device struct {
	be       Backend
	mac      [6]byte
	mtu      int
	locked   bool
	qsize    uint16
	features uint64
	log      *slog.Logger
	glog     *ratelimit.Logger // guest mistakes
	hlog     *ratelimit.Logger // backend errors
	// elog carries the driver's events (activation, offload changes):
	// a guest can cause them without limit, so they are rate-limited.
	elog   *ratelimit.Logger
	config [ConfigSize]byte // immutable after New

	stats counters

	// The receive offloads: what the driver enabled (GuestOffloads bits)
	// and what the backend was last told. Written by Activate and Reset
	// while no worker runs and, in between, by the control worker alone
	// (see setGuestOffloads); read by the receive worker and Stats.
	guestOff atomic.Uint64
	tapFlags atomic.Uint32
	acked    atomic.Uint64 // negotiated features while active

	mu      sync.Mutex // guards closed; held by Activate, Reset and Close
	closed  bool
	workers virtio.Workers
}

var (
	_ virtio.Device           = (*Device)(nil)
	_ virtio.FeatureValidator = (*Device)(nil)
)

// ErrClosed is returned by Activate after Close.
var ErrClosed = errors.New("virtio-net: device closed")

// New returns a NIC whose frames go to be. The offered features depend on
// cfg.Offload and on the offloads the backend supports.
func New(be Backend, cfg Config) (*Device, error) {
	if be == nil {
		return nil, errors.New("virtio-net: no backend")
	}
	qsize := cfg.QueueSize
	if qsize == 0 {
		qsize = DefaultQueueSize
	}
	if qsize < 4 || qsize > virtio.MaxQueueSize || qsize&(qsize-1) != 0 {
		return nil, fmt.Errorf("virtio-net: queue size %d is not a power of two from 4 to %d", qsize, virtio.MaxQueueSize)
	}
	if cfg.MTU != 0 && (cfg.MTU < 68 || cfg.MTU > 65535) {
		return nil, fmt.Errorf("virtio-net: MTU %d out of range 68-65535", cfg.MTU)
	}
	switch cfg.Offload {
	case OffloadOn, OffloadOff, OffloadCsum:
	default:
		return nil, fmt.Errorf("virtio-net: unknown offload mode %d", cfg.Offload)
	}
	var mac [6]byte
	switch {
	case cfg.MAC == nil:
		if _, err := rand.Read(mac[:]); err != nil {
			return nil, fmt.Errorf("virtio-net: random MAC: %w", err)
		}
		mac[0] = mac[0]&^1 | 2 // unicast, locally administered
	case len(cfg.MAC) != 6:
		return nil, fmt.Errorf("virtio-net: MAC %v is not a 6-byte Ethernet address", cfg.MAC)
	case cfg.MAC[0]&1 != 0:
		return nil, fmt.Errorf("virtio-net: MAC %v is a multicast address", cfg.MAC)
	case [6]byte(cfg.MAC) == [6]byte{}:
		return nil, fmt.Errorf("virtio-net: MAC %v is all zeros", cfg.MAC)
	default:
		mac = [6]byte(cfg.MAC)
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Device{
		be:     be,
		mac:    mac,
		mtu:    cfg.MTU,
		locked: cfg.Locked,
		qsize:  qsize,
		log:    log,
		glog:   ratelimit.New(log, 10*time.Second, 10),
		hlog:   ratelimit.New(log, 10*time.Second, 10),
		elog:   ratelimit.New(log, 10*time.Second, 10),
	}
	d.features = offeredFeatures(cfg, be.SupportedOffloads())
	copy(d.config[cfgMAC:], mac[:])
	binary.LittleEndian.PutUint16(d.config[cfgStatus:], statusLinkUp)
	binary.LittleEndian.PutUint16(d.config[cfgMaxVQPairs:], 1)
	binary.LittleEndian.PutUint16(d.config[cfgMTU:], uint16(cfg.MTU))
	return d, nil
}

// offeredFeatures computes the feature bits a NIC offers.
func offeredFeatures(cfg Config, supported uint32) uint64 {
	f := FMAC | FStatus | FMrgRxbuf | FCtrlVQ | FCtrlRx |
		virtio.FRingEventIdx | virtio.FRingIndirect | virtio.FAnyLayout | virtio.FVersion1
	if cfg.MTU != 0 {
		f |= FMTU
	}
	if cfg.Offload == OffloadOff || supported&tap.OffloadCSUM == 0 {
		return f
	}
	// Transmit offloads need nothing from the tap beyond IFF_VNET_HDR: the
	// kernel takes partial checksums and GSO frames on write. Receive
	// offloads need the tap to accept the matching TUNSETOFFLOAD flags.
	f |= FCsum | FGuestCsum | FCtrlGuestOffloads
	if cfg.Offload == OffloadCsum {
		return f
	}
	f |= FHostTSO4 | FHostTSO6 | FHostECN
	if supported&tap.OffloadTSO4 != 0 {
		f |= FGuestTSO4
	}
	if supported&tap.OffloadTSO6 != 0 {
		f |= FGuestTSO6
	}
	if supported&tap.OffloadTSOECN != 0 && f&(FGuestTSO4|FGuestTSO6) != 0 {
		f |= FGuestECN
	}
	if supported&tap.OffloadUFO != 0 {
		f |= FHostUFO | FGuestUFO
	}
	if supported&(tap.OffloadUSO4|tap.OffloadUSO6) == tap.OffloadUSO4|tap.OffloadUSO6 {
		f |= FHostUSO | FGuestUSO4 | FGuestUSO6
	}
	return f
}

// MAC returns the NIC's address.
func (d *Device) MAC() stdnet.HardwareAddr { return append(stdnet.HardwareAddr(nil), d.mac[:]...) }

// Type returns virtio.DeviceNet.
func (d *Device) Type() virtio.DeviceType { return virtio.DeviceNet }

// Features returns the offered feature bits.
func (d *Device) Features() uint64 { return d.features }

// QueueSizes returns the maximum sizes of the receive, transmit and
// control queues.
func (d *Device) QueueSizes() []uint16 { return []uint16{d.qsize, d.qsize, CtrlQueueSize} }

// ConfigBytes returns the device configuration of a NIC with address mac,
// its link up, one queue pair and no MTU: what a vhost-user frontend
// presents for a backend that does not provide the configuration.
func ConfigBytes(mac stdnet.HardwareAddr) []byte {
	b := make([]byte, ConfigSize)
	copy(b[cfgMAC:], mac)
	binary.LittleEndian.PutUint16(b[cfgStatus:], statusLinkUp)
	binary.LittleEndian.PutUint16(b[cfgMaxVQPairs:], 1)
	return b
}

// QueuesFor returns how many queues the device uses with the features
// acked: the control queue only with VIRTIO_NET_F_CTRL_VQ (a vhost-user
// frontend that serves it itself, as QEMU does, acks no CTRL_VQ).
func (d *Device) QueuesFor(features uint64) int {
	if features&FCtrlVQ != 0 {
		return 3
	}
	return 2
}

// ConfigSize returns the size of struct virtio_net_config as exposed (up to
// and including mtu).
func (d *Device) ConfigSize() int { return ConfigSize }

// ReadConfig reads the configuration; bytes out of range read as zero.
func (d *Device) ReadConfig(off uint64, data []byte) {
	clear(data)
	if off < ConfigSize {
		copy(data, d.config[off:])
	}
}

// WriteConfig ignores the write: the configuration is read-only. (A legacy
// driver may write the MAC field when the device offers no MAC; this one
// always offers VIRTIO_NET_F_MAC, and changing the address at run time
// would defeat Locked.)
func (d *Device) WriteConfig(off uint64, data []byte) {
	d.glog.Info("virtio-net: write to read-only configuration ignored", "offset", off, "len", len(data))
}

// ValidateFeatures enforces the feature dependencies of virtio 1.x section
// 5.1.3.1.
func (d *Device) ValidateFeatures(acked uint64) error { return ValidateFeatures(acked) }

// hdrLenFor returns the virtio_net_hdr length for a feature set.
func hdrLenFor(features uint64) int {
	if features&(virtio.FVersion1|FMrgRxbuf) != 0 {
		return HdrLen
	}
	return HdrLenLegacy
}

// Activate programs the backend for the negotiated features (header size,
// receive offloads) and starts a goroutine per enabled queue.
func (d *Device) Activate(a virtio.Activation) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	if d.workers.Running() {
		return errors.New("virtio-net: already active")
	}
	nq := d.QueuesFor(a.Features)
	if len(a.Queues) < nq || len(a.Kicks) < nq {
		return fmt.Errorf("virtio-net: activation has %d queues and %d eventfds, want %d", len(a.Queues), len(a.Kicks), nq)
	}
	for i := 0; i < nq; i++ {
		if a.Queues[i] != nil && a.Kicks[i] == nil {
			return fmt.Errorf("virtio-net: queue %d has no notification eventfd", i)
		}
	}
	hdrLen := hdrLenFor(a.Features)
	if err := d.be.SetVnetHdrSize(hdrLen); err != nil {
		return fmt.Errorf("virtio-net: %w", err)
	}
	if err := d.setGuestOffloads(a.Features & GuestOffloads); err != nil {
		return fmt.Errorf("virtio-net: %w", err)
	}
	d.acked.Store(a.Features)
	d.elog.Info("virtio-net: driver ready", "features", FeatureString(a.Features),
		"tap_offloads", OffloadString(d.tapFlags.Load()), "hdr_len", hdrLen)

	// The receive worker's wait for the backend: Reset interrupts it, and
	// so does the control worker when the driver enables offloads with
	// which larger frames can arrive (the buffers must be sized again).
	rx := &rxWait{be: d.be}
	waits := []virtio.Interruptible{rx}
	for i := 0; i < nq; i++ {
		if a.Queues[i] != nil {
			waits = append(waits, a.Kicks[i])
		}
	}
	ctx := d.workers.Start(waits...)
	if a.Queues[RxQueue] != nil {
		d.workers.Go(ctx, newRxWorker(d, a, rx).run)
	}
	if a.Queues[TxQueue] != nil {
		d.workers.Go(ctx, newTxWorker(d, a).run)
	}
	if nq == 3 && a.Queues[CtrlQueue] != nil {
		d.workers.Go(ctx, newCtrlWorker(d, a, rx).run)
	}
	return nil
}

// setGuestOffloads enables the receive offloads in guest (GuestOffloads
// bits) on the backend and in the receive path. Only one goroutine at a
// time calls it: Activate and Reset while no worker runs, the control
// worker in between. When offloads are only added, the receive path learns
// about them first, so it sizes buffers for large frames before the tap can
// produce them; otherwise the tap is told first, so that from the moment the
// receive path stops accepting a kind of frame the tap no longer produces
// new ones (frames already queued in the tap are dropped by the sanitizer).
func (d *Device) setGuestOffloads(guest uint64) error {
	flags := TapOffloads(guest)
	old := d.guestOff.Load()
	if guest&^old != 0 && old&^guest == 0 {
		d.guestOff.Store(guest)
		if err := d.be.SetOffload(flags); err != nil {
			d.guestOff.Store(old)
			return err
		}
	} else {
		if err := d.be.SetOffload(flags); err != nil {
			return err
		}
		d.guestOff.Store(guest)
	}
	d.tapFlags.Store(flags)
	return nil
}

// Reset stops the goroutines (cancelling waits for notifications and for
// the tap), waits for them, clears the tap's offloads and returns the
// device to its initial state. Frames in flight are dropped.
func (d *Device) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.resetLocked()
}

func (d *Device) resetLocked() {
	if !d.workers.Running() {
		return
	}
	d.workers.Stop()
	if err := d.setGuestOffloads(0); err != nil {
		d.hlog.Error("virtio-net: clearing tap offloads failed", "err", err)
	}
	d.acked.Store(0)
}

// Close stops the device. It is idempotent; the transport must not use the
// device afterwards. It does not close the backend.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.resetLocked()
	d.closed = true
	return nil
}

// guestFault counts and logs (rate-limited) a driver mistake that drops a
// request.
func (d *Device) guestFault(queue string, err error) {
	d.stats.guestFaults.Add(1)
	d.glog.Warn("virtio-net driver error", "queue", queue, "err", err)
}

// maxRxFrame returns the largest frame (without the virtio header) the tap
// can deliver under the receive offloads in guest.
func (d *Device) maxRxFrame(guest uint64) int {
	if guest&FGuestCsum != 0 && guest&guestGSO != 0 {
		return MaxFrame
	}
	return max(d.mtu, DefaultMTU) + ethHdrLen + vlanHdrLen
}

// queueLoop is the outer loop of one of the device's queue workers.
func (d *Device) queueLoop(name string, kick *eventfd.EventFD, tr virtio.Transport) virtio.QueueLoop {
	return virtio.QueueLoop{Name: name, Kick: kick, Transport: tr, Faults: &d.stats.guestFaults, Log: d.log}
}
