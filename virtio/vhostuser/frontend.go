package vhostuser

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/govmd/govmd/internal/eventfd"
	"github.com/govmd/govmd/internal/ratelimit"
	"github.com/govmd/govmd/memory"
	"github.com/govmd/govmd/virtio"
)

// DefaultTimeout bounds each exchange with a backend.
const DefaultTimeout = 2 * time.Second

// FrontendProtocol is what a Frontend acks of a backend's protocol
// features.
const FrontendProtocol = ProtocolReplyAck | ProtocolConfig | ProtocolMQ

// ErrBackend marks a backend that broke the protocol, stopped answering or
// went away.
var ErrBackend = errors.New("vhost-user backend failed")

// FrontendConfig configures a Frontend.
type FrontendConfig struct {
	// Conn is connected to the backend. The Frontend owns it.
	Conn *Conn
	// Mem is the guest's RAM, from memory.NewShared: its file is sent to
	// the backend.
	Mem  *memory.Memory
	Type virtio.DeviceType
	// QueueSizes are the queues' maximum sizes (the backend's ring count,
	// GET_QUEUE_NUM, must cover them).
	QueueSizes []uint16
	ConfigSize int
	// The device configuration is read from the backend once, at
	// connection (GET_CONFIG), if it offers PROTOCOL_F_CONFIG. A backend
	// that does not (QEMU's vhost-user net backends) gets Config as the
	// configuration the guest reads, and Features, bits the frontend then
	// provides itself (virtio-net's MAC and STATUS), added to its offer;
	// with Config nil such a backend is refused.
	Config   []byte
	Features uint64
	// Validate, if not nil, checks a feature set the driver acks (the
	// device model's dependencies, e.g. devices/net.ValidateFeatures).
	Validate func(acked uint64) error
	// Timeout bounds each exchange with the backend (DefaultTimeout if
	// zero): no caller, a vCPU included, waits longer for one.
	Timeout time.Duration
	Log     *slog.Logger
}

// Frontend is a virtio.Device whose queues a backend process serves over
// vhost-user. The transport (registers, MSI-X, notifications) stays in
// this process; feature negotiation, activation and reset are forwarded
// to the backend. The backend gets the queues' notification eventfds
// (kicks: KVM ioeventfds, so a driver's notification wakes the backend
// directly) and an eventfd per queue for its interrupts, which the
// frontend relays to the transport. A backend that breaks the protocol,
// stops answering or exits makes the device need a reset (the VM keeps
// running); the Frontend then stays broken.
type Frontend struct {
	cfg     FrontendConfig
	conn    *Conn
	log     *slog.Logger
	glog    *ratelimit.Logger
	timeout time.Duration

	ownConfig bool   // config is FrontendConfig.Config
	offered   uint64 // the backend's features, without vhost-user's own
	hasProto  bool   // the backend offered FProtocolFeatures
	protocol  uint64 // negotiated protocol features
	config    []byte
	calls     []*eventfd.EventFD // the backend's interrupts, per queue
	errs      []*eventfd.EventFD // the backend's queue errors, per queue

	// mu serializes exchanges with the backend and guards the state
	// below.
	mu      sync.Mutex
	memSent bool
	started []bool // rings the backend serves

	workers virtio.Workers // the activation and the relays
	trMu    sync.Mutex
	tr      virtio.Transport // while active

	running  atomic.Bool // the backend serves the queues
	dead     atomic.Bool
	deadErr  atomic.Pointer[error]
	faults   atomic.Uint64
	watchEnd *eventfd.EventFD
	watchWG  sync.WaitGroup
}

// NewFrontend connects to the backend at the other end of cfg.Conn: it
// reads its features (VIRTIO_F_VERSION_1 is required) and protocol
// features, claims the session (SET_OWNER), checks the ring count and
// reads the configuration. On error the connection is closed.
func NewFrontend(cfg FrontendConfig) (*Frontend, error) {
	f, err := newFrontend(cfg)
	if err != nil {
		cfg.Conn.Close()
		return nil, err
	}
	return f, nil
}

func newFrontend(cfg FrontendConfig) (*Frontend, error) {
	if cfg.Mem == nil || cfg.Mem.File() == nil {
		return nil, errors.New("vhost-user: guest memory is not shared (memory.NewShared)")
	}
	if cfg.ConfigSize > MaxConfig || cfg.Config != nil && len(cfg.Config) != cfg.ConfigSize {
		return nil, fmt.Errorf("vhost-user: configuration of %d bytes", cfg.ConfigSize)
	}
	f := &Frontend{cfg: cfg, conn: cfg.Conn, log: cfg.Log, timeout: cfg.Timeout}
	if f.log == nil {
		f.log = slog.New(slog.DiscardHandler)
	}
	f.glog = ratelimit.New(f.log, 10*time.Second, 10)
	if f.timeout <= 0 {
		f.timeout = DefaultTimeout
	}
	n := len(cfg.QueueSizes)
	f.started = make([]bool, n)
	f.calls = make([]*eventfd.EventFD, n)
	f.errs = make([]*eventfd.EventFD, n)
	for i := 0; i < n; i++ {
		var err error
		if f.calls[i], err = eventfd.New(); err != nil {
			f.closeFDs()
			return nil, err
		}
		if f.errs[i], err = eventfd.New(); err != nil {
			f.closeFDs()
			return nil, err
		}
	}
	if err := f.handshake(); err != nil {
		f.closeFDs()
		return nil, err
	}
	if err := f.watch(); err != nil {
		f.closeFDs()
		return nil, err
	}
	return f, nil
}

func (f *Frontend) closeFDs() {
	for _, e := range append(append([]*eventfd.EventFD(nil), f.calls...), f.errs...) {
		if e != nil {
			e.Close()
		}
	}
}

// deadline returns the deadline of an exchange starting now.
func (f *Frontend) deadline() time.Time { return time.Now().Add(f.timeout) }

// call sends a request that always gets a reply and returns it.
func (f *Frontend) call(req Request, payload []byte) ([]byte, error) {
	p, err := f.conn.Call(req, 0, payload, true, f.deadline())
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrBackend, req, err)
	}
	return p, nil
}

// set sends a request without a reply of its own; with REPLY_ACK it asks
// for an acknowledgement and checks it.
func (f *Frontend) set(req Request, payload []byte, fds ...int) error {
	if f.protocol&ProtocolReplyAck == 0 {
		if err := f.conn.Send(req, 0, payload, f.deadline(), fds...); err != nil {
			return fmt.Errorf("%w: %s: %w", ErrBackend, req, err)
		}
		return nil
	}
	p, err := f.conn.Call(req, FlagNeedReply, payload, true, f.deadline(), fds...)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrBackend, req, err)
	}
	v, err := ParseU64(p)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrBackend, req, err)
	}
	if v != 0 {
		return fmt.Errorf("%w: %s refused (%d)", ErrBackend, req, v)
	}
	return nil
}

func (f *Frontend) handshake() error {
	p, err := f.call(GetFeatures, nil)
	if err != nil {
		return err
	}
	feat, err := ParseU64(p)
	if err != nil {
		return fmt.Errorf("%w: GET_FEATURES: %w", ErrBackend, err)
	}
	if feat&virtio.FVersion1 == 0 {
		return fmt.Errorf("%w: it offers no VIRTIO_F_VERSION_1 (features %#x)", ErrBackend, feat)
	}
	f.offered = feat &^ (FProtocolFeatures | FLogAll)
	f.hasProto = feat&FProtocolFeatures != 0
	if f.hasProto {
		p, err := f.call(GetProtocolFeatures, nil)
		if err != nil {
			return err
		}
		pf, err := ParseU64(p)
		if err != nil {
			return fmt.Errorf("%w: GET_PROTOCOL_FEATURES: %w", ErrBackend, err)
		}
		// Set before the acknowledgement is asked for: REPLY_ACK
		// applies from the next message on.
		if err := f.set(SetProtocolFeatures, U64(pf&FrontendProtocol)); err != nil {
			return err
		}
		f.protocol = pf & FrontendProtocol
	}
	if err := f.set(SetOwner, nil); err != nil {
		return err
	}
	if f.protocol&ProtocolMQ != 0 {
		p, err := f.call(GetQueueNum, nil)
		if err != nil {
			return err
		}
		n, err := ParseU64(p)
		if err != nil {
			return fmt.Errorf("%w: GET_QUEUE_NUM: %w", ErrBackend, err)
		}
		// QEMU's virtio-net reads it as queue pairs, others as rings:
		// only a count below what the device needs is refused.
		if need := len(f.cfg.QueueSizes); n < uint64(need) && n*2 < uint64(need) {
			return fmt.Errorf("%w: it serves %d queues, the device has %d", ErrBackend, n, need)
		}
	}
	switch {
	case f.cfg.ConfigSize == 0:
	case f.protocol&ProtocolConfig == 0 && f.cfg.Config == nil:
		return fmt.Errorf("%w: it does not provide the device configuration (PROTOCOL_F_CONFIG)", ErrBackend)
	case f.protocol&ProtocolConfig == 0:
		f.config = append([]byte(nil), f.cfg.Config...)
		f.ownConfig = true
	default:
		want := make([]byte, f.cfg.ConfigSize)
		p, err := f.call(GetConfig, Config{Data: want}.Encode())
		if err != nil {
			return err
		}
		c, err := ParseConfig(p)
		if err != nil || c.Offset != 0 || len(c.Data) != len(want) {
			return fmt.Errorf("%w: GET_CONFIG: reply of %d bytes (%v)", ErrBackend, len(p), err)
		}
		f.config = append([]byte(nil), c.Data...)
	}
	return nil
}

// OwnConfig reports whether the configuration the guest reads is the
// frontend's (FrontendConfig.Config) rather than the backend's.
func (f *Frontend) OwnConfig() bool { return f.ownConfig }

// watch starts the goroutine that notices the backend going away (the
// socket hanging up) while nothing is being exchanged.
func (f *Frontend) watch() error {
	rc, err := f.conn.c.SyscallConn()
	if err != nil {
		return err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return err
	}
	if derr != nil {
		return os.NewSyscallError("fcntl", derr)
	}
	end, err := eventfd.New()
	if err != nil {
		unix.Close(fd)
		return err
	}
	f.watchEnd = end
	f.watchWG.Add(1)
	go func() {
		defer f.watchWG.Done()
		defer unix.Close(fd)
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}, {Fd: int32(end.FD()), Events: unix.POLLIN}}
		for {
			_, err := unix.Poll(pfd, -1)
			if err == unix.EINTR {
				continue
			}
			if err != nil || pfd[1].Revents != 0 {
				return
			}
			if pfd[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR) != 0 {
				f.fail(errors.New("the backend closed the connection"))
				return
			}
		}
	}()
	return nil
}

// fail marks the backend broken: the device needs a reset and stays
// broken. Only the first failure is logged.
func (f *Frontend) fail(err error) {
	if !errors.Is(err, ErrBackend) {
		err = fmt.Errorf("%w: %w", ErrBackend, err)
	}
	if f.dead.Swap(true) {
		return
	}
	f.faults.Add(1)
	f.deadErr.Store(&err)
	f.log.Error("vhost-user backend failed; the device needs a reset", "err", err)
	f.trMu.Lock()
	tr := f.tr
	f.trMu.Unlock()
	if tr != nil {
		tr.NeedsReset(err)
	}
}

// Err returns why the backend is broken (nil while it works).
func (f *Frontend) Err() error {
	if p := f.deadErr.Load(); p != nil {
		return *p
	}
	return nil
}

// Faults counts backend failures.
func (f *Frontend) Faults() uint64 { return f.faults.Load() }

// Type implements virtio.Device.
func (f *Frontend) Type() virtio.DeviceType { return f.cfg.Type }

// Features implements virtio.Device.
func (f *Frontend) Features() uint64 {
	if f.ownConfig {
		return f.offered | f.cfg.Features
	}
	return f.offered
}

// QueueSizes implements virtio.Device.
func (f *Frontend) QueueSizes() []uint16 { return f.cfg.QueueSizes }

// ConfigSize implements virtio.Device.
func (f *Frontend) ConfigSize() int { return len(f.config) }

// ReadConfig implements virtio.Device (from the copy read at connection:
// a vCPU never waits for the backend).
func (f *Frontend) ReadConfig(off uint64, data []byte) {
	clear(data)
	if off < uint64(len(f.config)) {
		copy(data, f.config[off:])
	}
}

// WriteConfig implements virtio.Device. No device served over vhost-user
// here has a writable configuration field: writes are ignored.
func (f *Frontend) WriteConfig(off uint64, data []byte) {
	f.glog.Info("vhost-user: configuration write ignored", "offset", off, "len", len(data))
}

// ValidateFeatures implements virtio.FeatureValidator.
func (f *Frontend) ValidateFeatures(acked uint64) error {
	if f.cfg.Validate != nil {
		return f.cfg.Validate(acked)
	}
	return nil
}

// Activate implements virtio.Device: it hands the queues to the backend
// in the background (a vCPU must not wait for it) and relays the
// backend's interrupts and errors. A failure makes the device need a
// reset.
func (f *Frontend) Activate(a virtio.Activation) error {
	if err := f.Err(); err != nil {
		return err
	}
	if len(a.Queues) != len(f.calls) || len(a.Kicks) != len(f.calls) {
		return fmt.Errorf("vhost-user: activation with %d queues, the device has %d", len(a.Queues), len(f.calls))
	}
	f.trMu.Lock()
	f.tr = a.Transport
	f.trMu.Unlock()
	waits := make([]virtio.Interruptible, 0, 2*len(f.calls))
	for i := range f.calls {
		if a.Queues[i] != nil {
			waits = append(waits, f.calls[i], f.errs[i])
		}
	}
	ctx := f.workers.Start(waits...)
	// Each queue's interrupts go straight to KVM when the transport has
	// an irqfd for them, else through a relay here.
	direct := make([]int, len(a.Queues))
	ifds, _ := a.Transport.(virtio.InterruptFDs)
	for i, q := range a.Queues {
		direct[i] = -1
		if q == nil {
			continue
		}
		if ifds != nil {
			if fd, ok := ifds.InterruptFD(i); ok {
				direct[i] = fd
			}
		}
		f.workers.Go(ctx, func(ctx context.Context) { f.relay(ctx, i, a.Transport, direct[i] < 0) })
	}
	f.workers.Go(ctx, func(ctx context.Context) {
		if err := f.start(ctx, a, direct); err != nil && ctx.Err() == nil {
			f.fail(err)
		}
	})
	return nil
}

// relay forwards queue i's errors, and with calls its interrupts, from
// the backend to the transport until ctx is done.
func (f *Frontend) relay(ctx context.Context, i int, tr virtio.Transport, calls bool) {
	errDone := make(chan struct{})
	go func() {
		defer close(errDone)
		if _, err := f.errs[i].Wait(); err == nil && ctx.Err() == nil {
			f.faults.Add(1)
			f.glog.Warn("vhost-user backend reports a queue error", "queue", i)
			tr.NeedsReset(fmt.Errorf("%w: queue %d error", ErrBackend, i))
		}
	}()
	defer func() { <-errDone }()
	if !calls {
		<-ctx.Done()
		return
	}
	for {
		if _, err := f.calls[i].Wait(); err != nil || ctx.Err() != nil {
			return
		}
		tr.Notify(i)
	}
}

// start hands the activated queues to the backend.
func (f *Frontend) start(ctx context.Context, a virtio.Activation, callFDs []int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	// Bits the backend did not offer are the frontend's own.
	features := a.Features & f.offered
	if f.hasProto {
		features |= FProtocolFeatures
	}
	if err := f.set(SetFeatures, U64(features)); err != nil {
		return err
	}
	if !f.memSent {
		if err := f.sendMemTable(); err != nil {
			return err
		}
		f.memSent = true
	}
	for i, q := range a.Queues {
		if q == nil {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		call := callFDs[i]
		if call < 0 {
			call = f.calls[i].FD()
		}
		if err := f.startRing(i, q, a.Kicks[i], call); err != nil {
			return err
		}
	}
	f.running.Store(true)
	return nil
}

// Running reports whether the backend serves the queues: after an
// activation, once it has them all, until the next reset.
func (f *Frontend) Running() bool { return f.running.Load() }

// sendMemTable sends the guest's RAM regions with the memory's file.
func (f *Frontend) sendMemTable() error {
	regions := f.cfg.Mem.Regions()
	if len(regions) > MaxRegions {
		return fmt.Errorf("vhost-user: %d memory regions (at most %d)", len(regions), MaxRegions)
	}
	fd := int(f.cfg.Mem.File().Fd())
	var rs []Region
	var fds []int
	for _, r := range regions {
		rs = append(rs, Region{GuestAddr: r.GPA, Size: uint64(len(r.Host)), UserAddr: r.HostAddr(), Offset: r.Offset})
		fds = append(fds, fd)
	}
	return f.set(SetMemTable, EncodeMemTable(rs), fds...)
}

// hostAddr translates a guest physical address to this process's address
// of it (a ring address as vhost-user sends it).
func (f *Frontend) hostAddr(gpa uint64) (uint64, error) {
	for _, r := range f.cfg.Mem.Regions() {
		if gpa >= r.GPA && gpa-r.GPA < uint64(len(r.Host)) {
			return r.HostAddr() + (gpa - r.GPA), nil
		}
	}
	return 0, fmt.Errorf("vhost-user: ring address %#x is outside guest memory", gpa)
}

// startRing hands queue i to the backend.
func (f *Frontend) startRing(i int, q *virtio.Queue, kick *eventfd.EventFD, call int) error {
	cfg := q.Config()
	idx := uint32(i)
	if err := f.set(SetVringNum, VringState{Index: idx, Num: uint32(cfg.Size)}.Encode()); err != nil {
		return err
	}
	if err := f.set(SetVringBase, VringState{Index: idx, Num: uint32(q.NextAvail())}.Encode()); err != nil {
		return err
	}
	addr := VringAddr{Index: idx}
	for _, p := range []struct {
		gpa uint64
		va  *uint64
	}{{cfg.DescAddr, &addr.Desc}, {cfg.UsedAddr, &addr.Used}, {cfg.AvailAddr, &addr.Avail}} {
		va, err := f.hostAddr(p.gpa)
		if err != nil {
			return err
		}
		*p.va = va
	}
	addr.Log = cfg.UsedAddr
	if err := f.set(SetVringAddr, addr.Encode()); err != nil {
		return err
	}
	if err := f.set(SetVringCall, U64(uint64(idx)), call); err != nil {
		return err
	}
	if err := f.set(SetVringErr, U64(uint64(idx)), f.errs[i].FD()); err != nil {
		return err
	}
	if err := f.set(SetVringKick, U64(uint64(idx)), kick.FD()); err != nil {
		return err
	}
	f.started[i] = true
	if f.hasProto { // rings start disabled
		if err := f.set(SetVringEnable, VringState{Index: idx, Num: 1}.Encode()); err != nil {
			return err
		}
	}
	return nil
}

// Reset implements virtio.Device: it stops the backend's rings
// (GET_VRING_BASE) and the relays. It waits for the backend at most the
// timeout for each ring; a backend that does not answer by then is
// broken.
func (f *Frontend) Reset() {
	f.workers.Stop()
	f.running.Store(false)
	f.trMu.Lock()
	f.tr = nil
	f.trMu.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, s := range f.started {
		if !s {
			continue
		}
		f.started[i] = false
		if f.dead.Load() {
			continue
		}
		p, err := f.call(GetVringBase, VringState{Index: uint32(i)}.Encode())
		if err == nil {
			var s VringState
			if s, err = ParseVringState(p); err == nil && s.Index != uint32(i) {
				err = fmt.Errorf("%w: GET_VRING_BASE for ring %d answered for ring %d", ErrBackend, i, s.Index)
			}
		}
		if err != nil {
			f.fail(err)
			f.conn.Shutdown() // a backend that did not answer must not keep the rings
		}
	}
	// Interrupts the backend sent before it stopped are for the old
	// queues.
	for _, c := range f.calls {
		c.TryRead()
	}
}

// Close ends the session: the backend sees the connection close.
func (f *Frontend) Close() error {
	f.Reset()
	if f.watchEnd != nil {
		f.watchEnd.Write()
		f.watchWG.Wait()
		f.watchEnd.Close()
		f.watchEnd = nil
	}
	f.conn.Shutdown()
	err := f.conn.Close()
	f.closeFDs()
	return err
}
