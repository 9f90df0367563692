package nettest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	vnet "github.com/govmd/govmd/devices/net"
	"github.com/govmd/govmd/devices/net/tap"
	"github.com/govmd/govmd/memory"
	"github.com/govmd/govmd/virtio"
	"github.com/govmd/govmd/virtio/pcitransport"
	"github.com/govmd/govmd/virtio/virtiotest"
	"github.com/govmd/govmd/virtio/virtiotest/pcidriver"
)

// Feature sets of real guest drivers. A NIC acks the intersection of its
// profile with what the device offers, as these drivers do.
const (
	// LinuxFeatures is what Linux's virtio_net acked from QEMU's device
	// (modern transport), as recorded in pvm-guests.md.
	LinuxFeatures = vnet.FCsum | vnet.FGuestCsum | vnet.FCtrlGuestOffloads | vnet.FMAC |
		vnet.FGuestTSO4 | vnet.FGuestTSO6 | vnet.FGuestECN | vnet.FGuestUFO |
		vnet.FHostTSO4 | vnet.FHostTSO6 | vnet.FHostECN | vnet.FHostUFO |
		vnet.FMrgRxbuf | vnet.FStatus | vnet.FCtrlVQ | vnet.FCtrlRx | vnet.FCtrlVLAN |
		vnet.FGuestAnnounce | vnet.FCtrlMACAddr |
		virtio.FRingIndirect | virtio.FRingEventIdx | virtio.FVersion1 | virtio.FRingReset
	// LinuxLegacyFeatures is the same driver on the legacy transport.
	LinuxLegacyFeatures = LinuxFeatures&^(virtio.FVersion1|virtio.FRingReset) | virtio.FAnyLayout | vnet.FGSO
	// VioFeatures is what OpenBSD's vio(4) asks for.
	VioFeatures = vnet.FMAC | vnet.FStatus | vnet.FCtrlVQ | vnet.FCtrlRx | vnet.FMrgRxbuf |
		vnet.FCsum | vnet.FGuestCsum | virtio.FRingEventIdx |
		vnet.FHostTSO4 | vnet.FHostTSO6 | vnet.FGuestTSO4 | vnet.FGuestTSO6 |
		vnet.FCtrlGuestOffloads | virtio.FRingIndirect | virtio.FVersion1
	// CsumFeatures is a driver with checksum offload only.
	CsumFeatures = vnet.FMAC | vnet.FStatus | vnet.FCsum | vnet.FGuestCsum | vnet.FMrgRxbuf |
		vnet.FCtrlVQ | vnet.FCtrlRx | vnet.FCtrlGuestOffloads | virtio.FRingEventIdx | virtio.FVersion1
	// MinimalFeatures is a driver that accepts nothing but the modern
	// interface.
	MinimalFeatures = virtio.FVersion1
)

// NICConfig describes the guest driver a NIC plays.
type NICConfig struct {
	// Features are the driver's features; it acks those the device
	// offers (all of them, offered or not, with Exact).
	Features uint64
	Exact    bool
	// Transport is the PCI function the device is presented as: a
	// transitional device (the default), whose interfaces both drivers
	// can use, a modern-only or a legacy-only one.
	Transport pcitransport.Mode
	// Legacy drives the legacy (0.9.5) interface through the legacy I/O
	// BAR (on a transitional device, what Linux does with
	// virtio_pci.force_legacy=1); otherwise the modern capabilities.
	Legacy bool
	// INTx leaves MSI-X disabled: interrupts arrive on the INTx line and
	// the driver reads the ISR. Otherwise each queue and configuration
	// changes have their own MSI-X vector.
	INTx bool
	// QueueSize is the size of the receive and transmit rings; 0 means
	// the device's maximum (a legacy driver always uses the maximum).
	QueueSize uint16
	// RxBufSize is the size of each mergeable receive buffer (default
	// 2048, header included). Without MRG_RXBUF buffers are sized like
	// Linux's: header plus 65553 bytes with a receive segmentation offload,
	// header plus a 1518-byte frame (or MTU+18) without.
	RxBufSize int
	// RxBufs is the number of receive chains posted (default: as many as
	// fit in the ring, at most 64 of the 64 KiB kind).
	RxBufs int
	// RxLayout and TxLayout are the sizes of the leading descriptors of
	// each receive or transmit chain; the rest of the chain is one more
	// descriptor. Nil means one descriptor for a receive chain, and the
	// header and the frame in two for a transmit chain.
	RxLayout, TxLayout []int
	// TxSlots is the number of transmit buffers (default 64).
	TxSlots int
	// Indirect posts transmit chains through indirect descriptors when
	// RING_INDIRECT_DESC was negotiated.
	Indirect bool
	// MemSize is the guest memory size (default 64 MiB).
	MemSize uint64
	// Mem, if not nil, is the guest memory (of MemSize bytes at 0) to use
	// instead of a new one: a Remote's shared memory. The NIC closes it.
	Mem *memory.Memory
	// Log receives the transport's messages.
	Log *slog.Logger
}

// ErrFeaturesRefused is returned by NewNIC when the device refused the
// driver's features (FEATURES_OK cleared, or for a legacy driver
// DEVICE_NEEDS_RESET at DRIVER_OK).
var ErrFeaturesRefused = errors.New("device refused the features")

// NIC is an in-process virtio-net driver for one device.
//
// The receive side (Recv, and the bridge's receive goroutine) and the
// transmit side (Send, SendChain, ReclaimTx, and the bridge's transmit
// goroutine) may each be used by one goroutine; Ctrl by a third. The
// fields are read-only after NewNIC.
type NIC struct {
	Dev       virtio.Device
	Mem       *memory.Memory
	Transport *pcitransport.Transport
	// Common is the transport's control state, for tests that look
	// behind the registers.
	Common *virtio.Common
	Drv    *pcidriver.Driver
	IRQ    *pcidriver.IRQ
	Cfg    NICConfig
	// Acked are the negotiated features, HdrLen the virtio header length
	// (10 or 12) and MAC the address read from the configuration.
	Acked  uint64
	HdrLen int
	MAC    [6]byte
	MTU    int

	alloc    virtiotest.Alloc
	eventIdx bool

	rx       *virtiotest.Ring
	rxChains [][]virtiotest.Buf // by head
	rxPrev   uint16
	rxHeld   []rxUsed
	rxIov    [][]byte
	rxBufsK  [][]virtiotest.Buf

	tx       *virtiotest.Ring
	txSlots  []txSlot
	txFree   []int
	txSlotOf []int // by head; -1 when none
	txPrev   uint16
	txBufs   []virtiotest.Buf

	// Timers of the receive side's and the transmit side's waits.
	rxTimer, txTimer waitTimer

	ctrl     *virtiotest.Ring
	ctrlBuf  uint64
	ctrlPrev uint16

	vmu        sync.Mutex
	violations []error
	nviol      int
}

type txSlot struct {
	addr  uint64
	size  int
	table uint64 // indirect table
}

type rxUsed struct {
	head uint16
	n    uint32
}

// NewNIC creates guest memory and a virtio PCI function for dev, probes it
// with a PCI driver and runs the driver's initialization through the
// function's registers: negotiation, ring setup with interrupt vectors,
// receive buffers, DRIVER_OK. Close releases it.
func NewNIC(dev virtio.Device, cfg NICConfig) (*NIC, error) {
	if cfg.MemSize == 0 {
		cfg.MemSize = 64 << 20
	}
	if cfg.TxSlots == 0 {
		cfg.TxSlots = 64
	}
	mem := cfg.Mem
	if mem == nil {
		var err error
		if mem, err = memory.New([]memory.Range{{GPA: 0, Size: cfg.MemSize}}); err != nil {
			return nil, err
		}
	}
	irq := pcidriver.NewIRQ(len(dev.QueueSizes()))
	tr, err := pcitransport.New(pcitransport.Config{Mode: cfg.Transport, Device: dev, Mem: mem, MSIX: irq, INTx: irq, Log: cfg.Log})
	if err != nil {
		mem.Close()
		return nil, err
	}
	drv, err := pcidriver.New(tr, irq, pcidriver.Config{Legacy: cfg.Legacy, INTx: cfg.INTx})
	if err != nil {
		tr.Close()
		mem.Close()
		return nil, err
	}
	n := &NIC{Dev: dev, Mem: mem, Transport: tr, Common: tr.Common(), Drv: drv, IRQ: irq, Cfg: cfg}
	n.alloc = virtiotest.Alloc{Next: 0x10000, End: cfg.MemSize}
	if err := n.init(); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

func (n *NIC) init() error {
	d := n.Drv
	d.Reset()
	offered := d.DeviceFeatures()
	ack := n.Cfg.Features & offered
	if n.Cfg.Exact {
		ack = n.Cfg.Features
	}
	if n.Cfg.Legacy {
		ack &= 0xffffffff
	}
	ok, err := d.Negotiate(ack)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: %s", ErrFeaturesRefused, vnet.FeatureString(ack))
	}
	n.Acked = ack
	n.eventIdx = ack&virtio.FRingEventIdx != 0
	n.HdrLen = vnet.HdrLenLegacy
	if ack&(virtio.FVersion1|vnet.FMrgRxbuf) != 0 {
		n.HdrLen = vnet.HdrLen
	}
	var cfgb [12]byte
	d.ReadConfig(0, cfgb[:])
	copy(n.MAC[:], cfgb[0:6])
	if ack&vnet.FMTU != 0 {
		n.MTU = int(binary.LittleEndian.Uint16(cfgb[10:]))
	}

	size := func(q int) uint16 {
		m := d.QueueMax(q)
		if n.Cfg.QueueSize != 0 && !n.Cfg.Legacy && q != vnet.CtrlQueue && n.Cfg.QueueSize < m {
			return n.Cfg.QueueSize
		}
		return m
	}
	// Rings are laid out from a page-aligned base in the legacy layout
	// (available ring right after the descriptors, used ring at the next
	// page), which is what a legacy device computes from the PFN and is
	// as good as any for the modern interface.
	newRing := func(q int) (*virtiotest.Ring, error) {
		s := size(q)
		r := virtiotest.NewRing(n.Mem, s, n.alloc.Get(virtiotest.Bytes(s), 4096))
		return r, d.SetupQueue(q, r)
	}
	if n.rx, err = newRing(vnet.RxQueue); err != nil {
		return err
	}
	if n.tx, err = newRing(vnet.TxQueue); err != nil {
		return err
	}
	if ack&vnet.FCtrlVQ != 0 {
		if n.ctrl, err = newRing(vnet.CtrlQueue); err != nil {
			return err
		}
		n.ctrlBuf = n.alloc.Get(3+16<<10, 64)
	}
	n.setupTx()
	if err := n.setupRx(); err != nil {
		return err
	}
	if err := d.DriverOK(); err != nil {
		if n.Cfg.Legacy {
			return fmt.Errorf("%w: %w", ErrFeaturesRefused, err)
		}
		return err
	}
	n.kickRx()
	return nil
}

// Close resets the device and frees guest memory. The device itself is
// not closed.
func (n *NIC) Close() {
	n.Transport.Close()
	n.Drv.Close()
	n.Mem.Close()
}

// RxGSO reports whether the driver negotiated a receive segmentation
// offload.
func (n *NIC) RxGSO() bool {
	return n.Acked&vnet.FGuestCsum != 0 &&
		n.Acked&(vnet.FGuestTSO4|vnet.FGuestTSO6|vnet.FGuestUFO|vnet.FGuestUSO4|vnet.FGuestUSO6) != 0
}

// split cuts [addr, addr+total) into descriptors: the leading sizes of
// layout, then the rest.
func split(dst []virtiotest.Buf, addr uint64, total int, layout []int, write bool) []virtiotest.Buf {
	for _, l := range layout {
		if total == 0 {
			break
		}
		l = min(l, total)
		dst = append(dst, virtiotest.Buf{Addr: addr, Len: uint32(l), Write: write})
		addr += uint64(l)
		total -= l
	}
	if total > 0 {
		dst = append(dst, virtiotest.Buf{Addr: addr, Len: uint32(total), Write: write})
	}
	return dst
}

func (n *NIC) setupRx() error {
	r := n.rx
	n.rxChains = make([][]virtiotest.Buf, r.Size)
	var bufSize, count int
	layout := n.Cfg.RxLayout
	switch {
	case n.Acked&vnet.FMrgRxbuf != 0:
		bufSize = n.Cfg.RxBufSize
		if bufSize == 0 {
			bufSize = 2048
		}
		count = int(r.Size) / (len(layout) + 1)
	case n.RxGSO():
		// Linux's "big packets": the header in its own descriptor, then
		// room for a 64 KiB frame.
		bufSize = n.HdrLen + vnet.MaxFrame
		if layout == nil {
			layout = []int{n.HdrLen}
		}
		count = min(int(r.Size)/(len(layout)+1), 64)
	default:
		bufSize = n.HdrLen + max(n.MTU, 1500) + 18
		count = int(r.Size) / (len(layout) + 1)
	}
	if n.Cfg.RxBufs != 0 {
		count = min(count, n.Cfg.RxBufs)
	}
	for i := 0; i < count; i++ {
		addr := n.alloc.Get(uint64(bufSize), 64)
		bufs := split(nil, addr, bufSize, layout, true)
		head, ok := r.AddQuiet(bufs...)
		if !ok {
			return fmt.Errorf("receive ring full after %d chains", i)
		}
		n.rxChains[head] = bufs
	}
	return nil
}

func (n *NIC) setupTx() {
	n.txSlotOf = make([]int, n.tx.Size)
	for i := range n.txSlotOf {
		n.txSlotOf[i] = -1
	}
	size := n.HdrLen + vnet.MaxFrame + 64 // room for oversized frames in hostile tests
	for i := 0; i < n.Cfg.TxSlots; i++ {
		s := txSlot{addr: n.alloc.Get(uint64(size), 64), size: size}
		if n.Cfg.Indirect {
			s.table = n.alloc.Get(16*uint64(len(n.Cfg.TxLayout)+2), 16)
		}
		n.txSlots = append(n.txSlots, s)
		n.txFree = append(n.txFree, i)
	}
}

// kickRx publishes reposted receive buffers and notifies the device if it
// asked for it.
func (n *NIC) kickRx() {
	old, now := n.rx.PublishAvail(n.rxPrev)
	n.rxPrev = now
	if n.rx.NeedNotify(old, now, n.eventIdx) {
		n.Drv.Notify(vnet.RxQueue)
	}
}

func (n *NIC) kickTx() {
	old, now := n.tx.PublishAvail(n.txPrev)
	n.txPrev = now
	if n.tx.NeedNotify(old, now, n.eventIdx) {
		n.Drv.Notify(vnet.TxQueue)
	}
}

// violation records a header the driver must not have received.
func (n *NIC) violation(err error) {
	n.vmu.Lock()
	defer n.vmu.Unlock()
	n.nviol++
	if len(n.violations) < 20 {
		n.violations = append(n.violations, err)
	}
}

// Violations returns the received frames that broke the negotiated
// features (a header with NEEDS_CSUM, DATA_VALID or a GSO type the driver
// did not accept, a bad num_buffers) and how many there were in all.
func (n *NIC) Violations() ([]error, int) {
	n.vmu.Lock()
	defer n.vmu.Unlock()
	return append([]error(nil), n.violations...), n.nviol
}

// CheckRxHeader is the driver's check of a received header, written
// independently of the device's sanitizer: without GUEST_CSUM the header
// must say nothing at all; with it, only NEEDS_CSUM and DATA_VALID may be
// set, a partial checksum must lie in the frame, and a GSO type needs the
// matching GUEST_* feature, NEEDS_CSUM and a gso_size.
func CheckRxHeader(h vnet.Header, frameLen int, acked uint64) error {
	if frameLen < 14 {
		return fmt.Errorf("received %d-byte frame", frameLen)
	}
	if acked&vnet.FGuestCsum == 0 {
		if h.Flags != 0 || h.GSOType != 0 {
			return fmt.Errorf("driver without GUEST_CSUM received %v", h)
		}
		return nil
	}
	if h.Flags&^(vnet.HdrFNeedsCsum|vnet.HdrFDataValid) != 0 {
		return fmt.Errorf("received unknown flags: %v", h)
	}
	if h.Flags&vnet.HdrFNeedsCsum != 0 && int(h.CsumStart)+int(h.CsumOffset)+2 > frameLen {
		return fmt.Errorf("partial checksum outside the %d-byte frame: %v", frameLen, h)
	}
	if h.GSOType == vnet.GSONone {
		return nil
	}
	var need uint64
	switch h.GSOType &^ vnet.GSOECN {
	case vnet.GSOTCPv4:
		need = vnet.FGuestTSO4
	case vnet.GSOTCPv6:
		need = vnet.FGuestTSO6
	case vnet.GSOUDP:
		need = vnet.FGuestUFO
	case vnet.GSOUDPL4:
		need = vnet.FGuestUSO4 | vnet.FGuestUSO6
	}
	switch {
	case need == 0:
		return fmt.Errorf("received unknown GSO type: %v", h)
	case acked&need != need:
		return fmt.Errorf("received GSO type %#x without %s: %v", h.GSOType, vnet.FeatureString(need), h)
	case h.GSOType&vnet.GSOECN != 0 && acked&vnet.FGuestECN == 0:
		return fmt.Errorf("received GSO ECN without GUEST_ECN: %v", h)
	case h.Flags&vnet.HdrFNeedsCsum == 0 || h.GSOSize == 0:
		return fmt.Errorf("received GSO frame without NEEDS_CSUM or gso_size: %v", h)
	}
	return nil
}

var errStopped = errors.New("nettest: stopped")

// errNoFrame is returned by nextRx when no frame is waiting.
var errNoFrame = errors.New("no received frame")

// nextRx takes the next received frame off the used ring: it sets n.rxIov
// to the frame's bytes (header first) in guest memory and n.rxHeld to its
// chains, and checks the header. The caller then calls repostRx.
func (n *NIC) nextRx() (vnet.Header, int, error) {
	n.rxHeld = n.rxHeld[:0]
	n.rxIov = n.rxIov[:0]
	head, l, ok := n.rx.PopUsed()
	if !ok {
		return vnet.Header{}, 0, errNoFrame
	}
	n.rxHeld = append(n.rxHeld, rxUsed{head, l})
	n.appendRxIov(head, l)
	var hb [vnet.HdrLen]byte
	if got := virtio.Gather(hb[:n.HdrLen], n.rxIov, 0); got < n.HdrLen {
		return vnet.Header{}, 0, fmt.Errorf("used length %d shorter than the header", l)
	}
	h := vnet.DecodeHeader(hb[:n.HdrLen])
	switch {
	case n.Acked&vnet.FMrgRxbuf != 0:
		if h.NumBuffers == 0 || int(h.NumBuffers) > int(n.rx.Size) {
			return h, 0, fmt.Errorf("num_buffers %d", h.NumBuffers)
		}
		for i := 1; i < int(h.NumBuffers); i++ {
			head, l, ok := n.rx.PopUsed()
			if !ok {
				return h, 0, fmt.Errorf("num_buffers %d but only %d used buffers published", h.NumBuffers, i)
			}
			n.rxHeld = append(n.rxHeld, rxUsed{head, l})
			n.appendRxIov(head, l)
		}
	case n.HdrLen == vnet.HdrLen && h.NumBuffers != 1:
		return h, 0, fmt.Errorf("num_buffers %d without MRG_RXBUF (want 1)", h.NumBuffers)
	}
	total := 0
	for _, u := range n.rxHeld {
		total += int(u.n)
	}
	return h, total - n.HdrLen, CheckRxHeader(h, total-n.HdrLen, n.Acked)
}

func (n *NIC) appendRxIov(head uint16, l uint32) {
	rem := int(l)
	for _, b := range n.rxChains[head] {
		if rem == 0 {
			break
		}
		k := min(rem, int(b.Len))
		s, err := n.Mem.Slice(b.Addr, uint64(k))
		if err != nil {
			panic(err)
		}
		n.rxIov = append(n.rxIov, s)
		rem -= k
	}
}

// repostRx gives the buffers of the chains in n.rxHeld back to the device
// (published by the next kickRx).
func (n *NIC) repostRx() {
	n.rxBufsK = n.rxBufsK[:0]
	for _, u := range n.rxHeld {
		n.rxBufsK = append(n.rxBufsK, n.rxChains[u.head])
		n.rxChains[u.head] = nil
	}
	for _, bufs := range n.rxBufsK {
		head, ok := n.rx.AddQuiet(bufs...)
		if !ok {
			panic("harness: receive ring has no room for reposted buffers")
		}
		n.rxChains[head] = bufs
	}
	n.rxHeld = n.rxHeld[:0]
}

// Frame is a received frame, copied out of guest memory.
type Frame struct {
	Hdr     vnet.Header
	Data    []byte
	Buffers int
}

// Recv waits up to timeout for a received frame, checks its header,
// copies it and gives its buffers back to the device. A header that breaks
// the negotiated features is returned as an error (and recorded as a
// violation).
func (n *NIC) Recv(timeout time.Duration) (Frame, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		h, frameLen, err := n.nextRx()
		if errors.Is(err, errNoFrame) {
			if n.eventIdx && n.rx.ArmUsedEvent() {
				continue
			}
			select {
			case <-n.IRQ.Wait(vnet.RxQueue):
				continue
			case <-deadline.C:
				return Frame{}, fmt.Errorf("no frame received within %v", timeout)
			case <-time.After(5 * time.Millisecond): // in case the interrupt was suppressed
				continue
			}
		}
		f := Frame{Hdr: h, Buffers: len(n.rxHeld)}
		if err == nil {
			all := make([]byte, 0, frameLen+n.HdrLen)
			for _, b := range n.rxIov {
				all = append(all, b...)
			}
			f.Data = all[n.HdrLen:]
		} else {
			n.violation(err)
		}
		n.repostRx()
		n.kickRx()
		return f, err
	}
}

// Send copies a frame with header h into a transmit buffer, posts it split
// per TxLayout and notifies the device. It waits for a free buffer.
func (n *NIC) Send(h vnet.Header, frame []byte) error {
	slot, err := n.freeTxSlot(5*time.Second, nil)
	if err != nil {
		return err
	}
	s := n.txSlots[slot]
	if n.HdrLen+len(frame) > s.size {
		n.txFree = append(n.txFree, slot)
		return fmt.Errorf("frame of %d bytes too large", len(frame))
	}
	var hb [vnet.HdrLen]byte
	h.Encode(hb[:n.HdrLen])
	buf, err := n.Mem.Slice(s.addr, uint64(n.HdrLen+len(frame)))
	if err != nil {
		return err
	}
	copy(buf, hb[:n.HdrLen])
	copy(buf[n.HdrLen:], frame)
	if err := n.postTx(slot, n.HdrLen+len(frame)); err != nil {
		return err
	}
	n.kickTx()
	return nil
}

// postTx posts the first length bytes of transmit slot as a chain (without
// publishing it).
func (n *NIC) postTx(slot, length int) error {
	s := n.txSlots[slot]
	layout := n.Cfg.TxLayout
	if layout == nil {
		layout = []int{n.HdrLen}
	}
	n.txBufs = split(n.txBufs[:0], s.addr, length, layout, false)
	var head uint16
	var ok bool
	if n.Cfg.Indirect && n.Acked&virtio.FRingIndirect != 0 {
		n.tx.SetAvailIdx(n.tx.AvailIdx()) // AddIndirect publishes: keep the index in step
		head, ok = n.tx.AddIndirect(s.table, n.txBufs...)
	} else {
		head, ok = n.tx.AddQuiet(n.txBufs...)
	}
	if !ok {
		n.txFree = append(n.txFree, slot)
		return errors.New("transmit ring full")
	}
	n.txSlotOf[head] = slot
	return nil
}

// ReclaimTx takes completed transmit chains off the used ring and returns
// how many it freed.
func (n *NIC) ReclaimTx() int {
	k := 0
	for {
		head, _, ok := n.tx.PopUsed()
		if !ok {
			return k
		}
		if int(head) < len(n.txSlotOf) && n.txSlotOf[head] >= 0 {
			n.txFree = append(n.txFree, n.txSlotOf[head])
			n.txSlotOf[head] = -1
		}
		k++
	}
}

// freeTxSlot returns a free transmit buffer, reclaiming completed ones
// and waiting for the device if there is none.
func (n *NIC) freeTxSlot(timeout time.Duration, done <-chan struct{}) (int, error) {
	var deadline time.Time
	for {
		need := len(n.Cfg.TxLayout) + 2 // descriptors of the longest chain
		if len(n.txFree) == 0 || n.tx.Free() < need {
			n.ReclaimTx()
		}
		if len(n.txFree) > 0 && n.tx.Free() >= need {
			s := n.txFree[len(n.txFree)-1]
			n.txFree = n.txFree[:len(n.txFree)-1]
			return s, nil
		}
		now := time.Now()
		if deadline.IsZero() {
			deadline = now.Add(timeout)
		} else if now.After(deadline) {
			return 0, fmt.Errorf("no transmit buffer completed within %v", timeout)
		}
		n.kickTx() // chains posted but not yet published must reach the device
		if n.eventIdx && n.tx.ArmUsedEvent() {
			continue
		}
		select {
		case <-n.IRQ.Wait(vnet.TxQueue):
		case <-n.txTimer.after(time.Millisecond):
		case <-done:
			return 0, errStopped
		}
	}
}

// waitTimer is a timer reused for every wait of one goroutine, so that
// waiting allocates nothing.
type waitTimer struct{ t *time.Timer }

// after returns a channel that receives once d has passed. A previous
// wait's timer is re-armed (it never delivers a stale expiry).
func (w *waitTimer) after(d time.Duration) <-chan time.Time {
	if w.t == nil {
		w.t = time.NewTimer(d)
	} else {
		w.t.Reset(d)
	}
	return w.t.C
}

// WaitTxDone waits until every posted transmit chain is completed.
func (n *NIC) WaitTxDone(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		n.ReclaimTx()
		if len(n.txFree) == len(n.txSlots) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d transmit chains not completed within %v", len(n.txSlots)-len(n.txFree), timeout)
		}
		time.Sleep(time.Millisecond)
	}
}

// TxRing and RxRing give hostile tests direct access to the rings.
func (n *NIC) TxRing() *virtiotest.Ring { return n.tx }

// RxRing returns the receive ring.
func (n *NIC) RxRing() *virtiotest.Ring { return n.rx }

// CtrlRing returns the control ring (nil without CTRL_VQ).
func (n *NIC) CtrlRing() *virtiotest.Ring { return n.ctrl }

// Alloc returns guest memory for test buffers.
func (n *NIC) Alloc(size uint64) uint64 { return n.alloc.Get(size, 64) }

// Ctrl sends a control command and waits for its acknowledgement.
func (n *NIC) Ctrl(class, cmd byte, data []byte) (byte, error) {
	if n.ctrl == nil {
		return 0, errors.New("no control queue (CTRL_VQ not negotiated)")
	}
	if len(data) > 16<<10 {
		return 0, errors.New("control data too long")
	}
	buf, err := n.Mem.Slice(n.ctrlBuf, uint64(3+len(data)))
	if err != nil {
		return 0, err
	}
	buf[0], buf[1] = class, cmd
	copy(buf[2:], data)
	buf[2+len(data)] = 0xff
	bufs := []virtiotest.Buf{{Addr: n.ctrlBuf, Len: 2}}
	if len(data) > 0 {
		bufs = append(bufs, virtiotest.Buf{Addr: n.ctrlBuf + 2, Len: uint32(len(data))})
	}
	bufs = append(bufs, virtiotest.Buf{Addr: n.ctrlBuf + 2 + uint64(len(data)), Len: 1, Write: true})
	return n.CtrlChain(bufs, n.ctrlBuf+2+uint64(len(data)))
}

// CtrlChain posts a raw control chain and returns the byte at ackAddr once
// the device completed it.
func (n *NIC) CtrlChain(bufs []virtiotest.Buf, ackAddr uint64) (byte, error) {
	if _, ok := n.ctrl.AddQuiet(bufs...); !ok {
		return 0, errors.New("control ring full")
	}
	old, now := n.ctrl.PublishAvail(n.ctrlPrev)
	n.ctrlPrev = now
	if n.ctrl.NeedNotify(old, now, n.eventIdx) {
		n.Drv.Notify(vnet.CtrlQueue)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, _, ok := n.ctrl.PopUsed(); ok {
			var ack [1]byte
			if err := n.Mem.ReadAt(ack[:], ackAddr); err != nil {
				return 0, err
			}
			return ack[0], nil
		}
		if n.Drv.Status()&virtio.StatusNeedsReset != 0 {
			return 0, fmt.Errorf("device needs reset")
		}
		if time.Now().After(deadline) {
			return 0, errors.New("control command not completed within 5s")
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// SetGuestOffloads sends VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET.
func (n *NIC) SetGuestOffloads(offloads uint64) (byte, error) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], offloads)
	return n.Ctrl(vnet.CtrlClassGuestOffloads, vnet.CtrlGuestOffloadsSet, b[:])
}

// HostTapOffloads returns the TUNSETOFFLOAD flags for tap B, the guest
// side: what a Linux guest whose driver acked these features lets its
// stack hand to the NIC (partial checksums with CSUM, TSO with HOST_TSO4/6,
// and so on).
func HostTapOffloads(acked uint64) uint32 {
	if acked&vnet.FCsum == 0 {
		return 0
	}
	f := tap.OffloadCSUM
	if acked&vnet.FHostTSO4 != 0 {
		f |= tap.OffloadTSO4
	}
	if acked&vnet.FHostTSO6 != 0 {
		f |= tap.OffloadTSO6
	}
	if acked&vnet.FHostECN != 0 && f&(tap.OffloadTSO4|tap.OffloadTSO6) != 0 {
		f |= tap.OffloadTSOECN
	}
	if acked&vnet.FHostUFO != 0 {
		f |= tap.OffloadUFO
	}
	if acked&vnet.FHostUSO != 0 {
		f |= tap.OffloadUSO4 | tap.OffloadUSO6
	}
	return f
}

// FillTx writes a frame with header h into every transmit buffer, for
// PostTx: benchmarks send the same frame again and again without copying.
func (n *NIC) FillTx(h vnet.Header, frame []byte) error {
	var hb [vnet.HdrLen]byte
	h.Encode(hb[:n.HdrLen])
	for _, s := range n.txSlots {
		buf, err := n.Mem.Slice(s.addr, uint64(n.HdrLen+len(frame)))
		if err != nil {
			return err
		}
		copy(buf, hb[:n.HdrLen])
		copy(buf[n.HdrLen:], frame)
	}
	return nil
}

// PostTx posts the first length bytes (header included) of a free transmit
// buffer as prepared by FillTx, waiting for one if needed. The chain is
// published by the next KickTx (or when PostTx has to wait).
func (n *NIC) PostTx(length int, timeout time.Duration) error {
	slot, err := n.freeTxSlot(timeout, nil)
	if err != nil {
		return err
	}
	return n.postTx(slot, length)
}

// KickTx publishes posted transmit chains and notifies the device if it
// asked for it.
func (n *NIC) KickTx() { n.kickTx() }

// rxRefill is how many reposted receive buffers DrainRx publishes at a
// time: like Linux's virtio_net, which refills the ring once more than
// min(NAPI budget, ring size)/2 = 32 descriptors are free, so that the
// device does not wait for the whole ring to be drained.
const rxRefill = 32

// DrainRx takes every received frame off the used ring, checks its header,
// calls fn (which must not keep the header or length beyond the call) and
// gives the buffers back; it publishes them (notifying the device if it
// asked for it) every rxRefill buffers and at the end. It returns how many
// frames it took. It does not wait.
func (n *NIC) DrainRx(fn func(h vnet.Header, frameLen int)) (int, error) {
	k, reposted := 0, 0
	defer n.kickRx()
	for {
		h, l, err := n.nextRx()
		if errors.Is(err, errNoFrame) {
			return k, nil
		}
		if err != nil {
			n.violation(err)
			n.repostRx()
			return k, err
		}
		if fn != nil {
			fn(h, l)
		}
		reposted += len(n.rxHeld)
		n.repostRx()
		k++
		if reposted >= rxRefill {
			n.kickRx()
			reposted = 0
		}
	}
}

// WaitRx waits up to timeout for a receive interrupt, unless frames are
// already waiting.
func (n *NIC) WaitRx(timeout time.Duration) {
	if n.rx.UsedIdx() != n.rx.Consumed() || (n.eventIdx && n.rx.ArmUsedEvent()) {
		return
	}
	select {
	case <-n.IRQ.Wait(vnet.RxQueue):
	case <-n.rxTimer.after(timeout):
	}
}
