package vhostuser

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/govmd/govmd/internal/eventfd"
	"github.com/govmd/govmd/internal/ratelimit"
	"github.com/govmd/govmd/memory"
	"github.com/govmd/govmd/virtio"
)

// QueueCounter is implemented by devices that use fewer queues than they
// have, depending on the features (virtio-net uses the control queue only
// with VIRTIO_NET_F_CTRL_VQ). The backend starts the device once that many
// rings are ready.
type QueueCounter interface {
	QueuesFor(features uint64) int
}

// ReplyTimeout bounds how long the backend waits to send a reply.
const ReplyTimeout = 5 * time.Second

// BackendConfig configures a Backend.
type BackendConfig struct {
	// Device is the device model whose queues the frontend hands over.
	Device virtio.Device
	Log    *slog.Logger
}

// Backend serves one virtio device to the frontend at the other end of a
// Conn: it negotiates features, maps the guest memory the frontend shares,
// builds the queues from the rings' addresses, and activates the device
// once every ring it uses is ready (configured, with a kick, enabled); it
// stops the device at the first GET_VRING_BASE (the frontend stopping or
// resetting it) and reports each ring's position.
//
// Everything the frontend sends is checked; a malformed message ends the
// session with an error (the device is stopped first).
type Backend struct {
	dev  virtio.Device
	log  *slog.Logger
	glog *ratelimit.Logger

	// Session state; only the Serve goroutine uses it.
	features    uint64 // acked (SET_FEATURES)
	featuresSet bool
	protocol    uint64 // acked protocol features
	mem         *memory.Memory
	regions     []Region
	rings       []ring
	active      bool

	faults atomic.Uint64

	// The notifiers, used by the device's goroutines too (Notify,
	// NeedsReset): per ring, -1 for none.
	fdMu  sync.Mutex
	calls []int
	errs  []int
}

// ring is the frontend's configuration of one virtqueue.
type ring struct {
	num     uint32
	base    uint16
	addr    *VringAddr
	kick    *eventfd.EventFD // nil: none yet
	enabled bool
	queue   *virtio.Queue // while the device is active
}

// BackendProtocol is what a Backend offers in GET_PROTOCOL_FEATURES.
const BackendProtocol = ProtocolReplyAck | ProtocolConfig | ProtocolMQ

// NewBackend returns a backend for cfg.Device.
func NewBackend(cfg BackendConfig) *Backend {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &Backend{dev: cfg.Device, log: log, glog: ratelimit.New(log, 10*time.Second, 10)}
	b.resetRings()
	return b
}

func (b *Backend) resetRings() {
	n := len(b.dev.QueueSizes())
	b.rings = make([]ring, n)
	b.fdMu.Lock()
	b.calls, b.errs = make([]int, n), make([]int, n)
	for i := 0; i < n; i++ {
		b.calls[i], b.errs[i] = -1, -1
	}
	b.fdMu.Unlock()
}

// Faults counts the frontend's protocol mistakes and device errors.
func (b *Backend) Faults() uint64 { return b.faults.Load() }

// Serve handles the frontend's messages until it closes the connection
// (nil), ctx is done (conn is closed; nil) or it breaks the protocol (an
// error wrapping ErrProtocol). The device is stopped, the memory
// unmapped and conn closed before it returns.
func (b *Backend) Serve(ctx context.Context, conn *Conn) error {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer func() {
		stop()
		conn.Close()
	}()
	defer b.shutdown()
	for {
		m, err := conn.Recv(time.Time{})
		if err != nil {
			if errors.Is(err, io.EOF) || ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, ErrProtocol) {
				b.faults.Add(1)
			}
			return err
		}
		reply, err := b.handle(&m)
		m.CloseFDs()
		if err != nil {
			b.faults.Add(1)
			b.glog.Warn("vhost-user frontend error", "request", m.Req.String(), "err", err)
			if m.Req.alwaysReplies() || !errors.Is(err, ErrProtocol) {
				return err
			}
			if b.acks() && m.NeedReply() {
				if err := conn.Reply(&m, U64(1), time.Now().Add(ReplyTimeout)); err != nil {
					return err
				}
				continue
			}
			return err
		}
		switch {
		case m.Req.alwaysReplies():
			err = conn.Reply(&m, reply, time.Now().Add(ReplyTimeout))
		case b.acks() && m.NeedReply():
			err = conn.Reply(&m, U64(0), time.Now().Add(ReplyTimeout))
		}
		if err != nil {
			return err
		}
	}
}

// acks reports whether REPLY_ACK was negotiated (SET_PROTOCOL_FEATURES
// is only sent to a backend offering FProtocolFeatures).
func (b *Backend) acks() bool { return b.protocol&ProtocolReplyAck != 0 }

// offered returns the virtio features the backend offers.
func (b *Backend) offered() uint64 { return b.dev.Features() | FProtocolFeatures }

// handle executes one request and returns the reply payload of a request
// that always gets one.
func (b *Backend) handle(m *Msg) ([]byte, error) {
	switch m.Req {
	case GetFeatures:
		return U64(b.offered()), nil
	case SetFeatures:
		f, err := ParseU64(m.Payload)
		if err != nil {
			return nil, err
		}
		if extra := f &^ b.offered(); extra != 0 {
			return nil, protoErr("features %#x were not offered", extra)
		}
		if v, ok := b.dev.(virtio.FeatureValidator); ok {
			if err := v.ValidateFeatures(f &^ FProtocolFeatures); err != nil {
				return nil, protoErr("features %#x: %v", f, err)
			}
		}
		if b.active && f != b.features {
			return nil, protoErr("features changed while the device runs")
		}
		b.features, b.featuresSet = f, true
		if f&FProtocolFeatures == 0 {
			// Without protocol features every ring is enabled.
			for i := range b.rings {
				b.rings[i].enabled = true
			}
		}
		return nil, b.maybeStart()
	case GetProtocolFeatures:
		return U64(BackendProtocol), nil
	case SetProtocolFeatures:
		p, err := ParseU64(m.Payload)
		if err != nil {
			return nil, err
		}
		if extra := p &^ BackendProtocol; extra != 0 {
			return nil, protoErr("protocol features %#x were not offered", extra)
		}
		b.protocol = p
		return nil, nil
	case SetOwner:
		return nil, nil
	case ResetOwner:
		// Deprecated: disable the rings, keep the session.
		b.stopDevice()
		for i := range b.rings {
			b.rings[i].enabled = false
		}
		return nil, nil
	case GetQueueNum:
		return U64(uint64(len(b.rings))), nil
	case SetMemTable:
		return nil, b.setMemTable(m)
	case SetVringNum, SetVringBase, SetVringEnable:
		s, err := ParseVringState(m.Payload)
		if err != nil {
			return nil, err
		}
		r, err := b.ring(s.Index)
		if err != nil {
			return nil, err
		}
		switch m.Req {
		case SetVringNum:
			if max := b.dev.QueueSizes()[s.Index]; s.Num == 0 || s.Num > uint32(max) || s.Num&(s.Num-1) != 0 {
				return nil, protoErr("ring %d size %d (at most %d, a power of two)", s.Index, s.Num, max)
			}
			if b.active {
				return nil, protoErr("ring %d resized while the device runs", s.Index)
			}
			r.num = s.Num
		case SetVringBase:
			if s.Num > 0xffff {
				return nil, protoErr("ring %d base %#x (packed rings are not offered)", s.Index, s.Num)
			}
			if b.active {
				return nil, protoErr("ring %d base set while the device runs", s.Index)
			}
			r.base = uint16(s.Num)
		case SetVringEnable:
			if b.features&FProtocolFeatures == 0 && b.featuresSet {
				return nil, protoErr("SET_VRING_ENABLE without protocol features")
			}
			if s.Num > 1 {
				return nil, protoErr("ring %d enable %d", s.Index, s.Num)
			}
			r.enabled = s.Num == 1
			if !r.enabled {
				b.stopDevice()
			}
			return nil, b.maybeStart()
		}
		return nil, nil
	case SetVringAddr:
		a, err := ParseVringAddr(m.Payload)
		if err != nil {
			return nil, err
		}
		r, err := b.ring(a.Index)
		if err != nil {
			return nil, err
		}
		if a.Flags != 0 {
			return nil, protoErr("ring %d address flags %#x (no dirty logging)", a.Index, a.Flags)
		}
		if b.active {
			return nil, protoErr("ring %d moved while the device runs", a.Index)
		}
		r.addr = &a
		return nil, nil
	case GetVringBase:
		s, err := ParseVringState(m.Payload)
		if err != nil {
			return nil, err
		}
		r, err := b.ring(s.Index)
		if err != nil {
			return nil, err
		}
		// The frontend stops the ring (and so the device): the reply is
		// where the ring's next server continues.
		b.stopDevice()
		if r.kick != nil {
			r.kick.Close()
			r.kick = nil
		}
		b.setNotifier(false, s.Index, -1)
		return VringState{Index: s.Index, Num: uint32(r.base)}.Encode(), nil
	case SetVringKick, SetVringCall, SetVringErr:
		return nil, b.setVringFD(m)
	case GetConfig:
		c, err := ParseConfig(m.Payload)
		if err != nil {
			return nil, err
		}
		if int(c.Offset)+len(c.Data) > b.dev.ConfigSize() {
			return nil, protoErr("config %d+%d beyond %d bytes", c.Offset, len(c.Data), b.dev.ConfigSize())
		}
		out := make([]byte, len(c.Data))
		b.dev.ReadConfig(uint64(c.Offset), out)
		return Config{Offset: c.Offset, Flags: c.Flags, Data: out}.Encode(), nil
	case SetConfig:
		c, err := ParseConfig(m.Payload)
		if err != nil {
			return nil, err
		}
		if int(c.Offset)+len(c.Data) > b.dev.ConfigSize() {
			return nil, protoErr("config %d+%d beyond %d bytes", c.Offset, len(c.Data), b.dev.ConfigSize())
		}
		b.dev.WriteConfig(uint64(c.Offset), c.Data)
		return nil, nil
	case SetLogBase, SetLogFD:
		return nil, protoErr("dirty logging is not offered")
	}
	return nil, protoErr("unsupported %s", m.Req)
}

func (b *Backend) ring(i uint32) (*ring, error) {
	if int(i) >= len(b.rings) {
		return nil, protoErr("ring %d of %d", i, len(b.rings))
	}
	return &b.rings[i], nil
}

// setVringFD handles SET_VRING_KICK, _CALL and _ERR.
func (b *Backend) setVringFD(m *Msg) error {
	v, err := ParseU64(m.Payload)
	if err != nil {
		return err
	}
	idx := uint32(v & VringIndexMask)
	r, err := b.ring(idx)
	if err != nil {
		return err
	}
	if v&^(VringIndexMask|VringNoFD) != 0 {
		return protoErr("%s payload %#x", m.Req, v)
	}
	nofd := v&VringNoFD != 0
	if nofd != (len(m.FDs) == 0) || len(m.FDs) > 1 {
		return protoErr("%s for ring %d with %d fds and NOFD=%v", m.Req, idx, len(m.FDs), nofd)
	}
	switch m.Req {
	case SetVringKick:
		if nofd {
			return protoErr("ring %d without a kick fd (polling is not supported)", idx)
		}
		k, err := eventfd.FromFD(m.TakeFD(0))
		if err != nil {
			return protoErr("ring %d kick: %v", idx, err)
		}
		if b.active {
			k.Close()
			return protoErr("ring %d kick replaced while the device runs", idx)
		}
		if r.kick != nil {
			r.kick.Close()
		}
		r.kick = k
		return b.maybeStart()
	default: // SetVringCall, SetVringErr
		// The call fd may change while the ring runs (QEMU sends a
		// placeholder first): Notify reads it each time.
		fd := -1
		if !nofd {
			fd = m.TakeFD(0)
			if err := eventfd.Check(fd); err != nil {
				unix.Close(fd)
				return protoErr("%s ring %d: %v", m.Req, idx, err)
			}
		}
		if m.Req == SetVringErr {
			b.setNotifier(true, idx, fd)
			return nil
		}
		b.setNotifier(false, idx, fd)
		if fd >= 0 && b.active {
			// Notifications sent before this fd arrived were lost:
			// one spurious interrupt makes the driver look.
			_ = eventfd.Signal(fd)
		}
		return nil
	}
}

// notifiers returns the rings' call (or error) eventfds; fdMu held.
func (b *Backend) notifiers(errs bool) []int {
	if errs {
		return b.errs
	}
	return b.calls
}

// setNotifier replaces ring i's call (or error) notifier by fd, closing
// the old one.
func (b *Backend) setNotifier(errs bool, i uint32, fd int) {
	b.fdMu.Lock()
	fds := b.notifiers(errs)
	old := fds[i]
	fds[i] = fd
	b.fdMu.Unlock()
	if old >= 0 {
		unix.Close(old)
	}
}

// signal writes ring i's call (or error) notifier, if it has one.
func (b *Backend) signal(errs bool, i int) {
	b.fdMu.Lock()
	defer b.fdMu.Unlock()
	fds := b.notifiers(errs)
	if i < 0 || i >= len(fds) || fds[i] < 0 {
		return
	}
	if err := eventfd.Signal(fds[i]); err != nil {
		b.glog.Warn("vhost-user: signalling the frontend failed", "ring", i, "err", err)
	}
}

// setMemTable maps the frontend's memory regions, replacing the previous
// table. A running device is stopped first and restarted on the new
// mappings (the rings' positions are kept), so that no queue ever uses an
// unmapped table.
func (b *Backend) setMemTable(m *Msg) error {
	rs, err := ParseMemTable(m.Payload)
	if err != nil {
		return err
	}
	if len(m.FDs) != len(rs) {
		return protoErr("memory table of %d regions with %d file descriptors", len(rs), len(m.FDs))
	}
	frs := make([]memory.FileRange, len(rs))
	for i, r := range rs {
		frs[i] = memory.FileRange{GPA: r.GuestAddr, Size: r.Size, FD: m.FDs[i], Offset: r.Offset}
	}
	mem, err := memory.MapFiles(frs)
	if err != nil {
		return protoErr("%v", err)
	}
	wasActive := b.active
	b.stopDevice()
	if b.mem != nil {
		b.mem.Close()
	}
	b.mem, b.regions = mem, rs
	if wasActive {
		return b.maybeStart()
	}
	return nil
}

// gpa translates an address in the frontend's address space (a ring
// address) to a guest physical one.
func (b *Backend) gpa(va uint64) (uint64, bool) {
	for _, r := range b.regions {
		if va >= r.UserAddr && va-r.UserAddr < r.Size {
			return r.GuestAddr + (va - r.UserAddr), true
		}
	}
	return 0, false
}

// queuesUsed returns how many rings the device uses with the acked
// features.
func (b *Backend) queuesUsed() int {
	if c, ok := b.dev.(QueueCounter); ok {
		return min(c.QueuesFor(b.features&^FProtocolFeatures), len(b.rings))
	}
	return len(b.rings)
}

// maybeStart activates the device once the features and the memory table
// are set and every ring it uses is configured, has a kick and is enabled.
func (b *Backend) maybeStart() error {
	if b.active || !b.featuresSet || b.mem == nil {
		return nil
	}
	n := b.queuesUsed()
	for i := 0; i < n; i++ {
		r := &b.rings[i]
		if r.num == 0 || r.addr == nil || r.kick == nil || !r.enabled {
			return nil
		}
	}
	features := b.features &^ FProtocolFeatures
	queues := make([]*virtio.Queue, len(b.rings))
	kicks := make([]*eventfd.EventFD, len(b.rings))
	for i := 0; i < n; i++ {
		r := &b.rings[i]
		var cfg virtio.QueueConfig
		cfg.Size = uint16(r.num)
		for _, a := range []struct {
			va  uint64
			gpa *uint64
		}{{r.addr.Desc, &cfg.DescAddr}, {r.addr.Avail, &cfg.AvailAddr}, {r.addr.Used, &cfg.UsedAddr}} {
			g, ok := b.gpa(a.va)
			if !ok {
				return protoErr("ring %d address %#x is in no memory region", i, a.va)
			}
			*a.gpa = g
		}
		q, err := virtio.NewQueue(b.mem, cfg, features)
		if err != nil {
			return protoErr("ring %d: %v", i, err)
		}
		q.SetNextAvail(r.base)
		queues[i], kicks[i] = q, r.kick
	}
	if err := b.dev.Activate(virtio.Activation{Features: features, Mem: b.mem, Queues: queues,
		Kicks: kicks, Transport: backendTransport{b}}); err != nil {
		return fmt.Errorf("vhost-user: starting the device: %w", err)
	}
	for i := 0; i < n; i++ {
		b.rings[i].queue = queues[i]
	}
	b.active = true
	b.log.Debug("vhost-user: device started", "features", fmt.Sprintf("%#x", features), "rings", n)
	return nil
}

// stopDevice stops a running device and records where each ring stopped.
func (b *Backend) stopDevice() {
	if !b.active {
		return
	}
	b.dev.Reset()
	for i := range b.rings {
		r := &b.rings[i]
		if r.queue != nil {
			r.base = r.queue.NextAvail()
			r.queue = nil
		}
	}
	b.active = false
	b.log.Debug("vhost-user: device stopped")
}

// shutdown stops the device and releases everything the session holds.
func (b *Backend) shutdown() {
	b.stopDevice()
	for i := range b.rings {
		if k := b.rings[i].kick; k != nil {
			k.Close()
		}
	}
	b.fdMu.Lock()
	for _, fds := range [][]int{b.calls, b.errs} {
		for i, fd := range fds {
			if fd >= 0 {
				unix.Close(fd)
				fds[i] = -1
			}
		}
	}
	b.fdMu.Unlock()
	if b.mem != nil {
		b.mem.Close()
		b.mem = nil
	}
	b.regions = nil
	b.features, b.featuresSet, b.protocol = 0, false, 0
	b.resetRings()
}

// backendTransport is the device's Transport in a backend: notifications
// go to the rings' call eventfds, errors to their error eventfds.
type backendTransport struct{ b *Backend }

func (t backendTransport) Notify(q int) { t.b.signal(false, q) }

func (t backendTransport) ConfigChanged() {
	// Reporting it needs the backend request channel (not offered).
	t.b.glog.Info("vhost-user: device configuration change not reported to the frontend")
}

func (t backendTransport) NeedsReset(reason error) {
	t.b.faults.Add(1)
	t.b.glog.Warn("vhost-user: device needs a reset", "err", reason)
	t.b.fdMu.Lock()
	n := len(t.b.errs)
	t.b.fdMu.Unlock()
	for i := 0; i < n; i++ {
		t.b.signal(true, i)
	}
}
