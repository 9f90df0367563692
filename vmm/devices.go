package vmm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/govmd/govmd/devices/blk"
	"github.com/govmd/govmd/devices/console"
	"github.com/govmd/govmd/devices/fs"
	vnet "github.com/govmd/govmd/devices/net"
	"github.com/govmd/govmd/devices/net/netdevice"
	"github.com/govmd/govmd/devices/net/tap"
	"github.com/govmd/govmd/devices/rng"
	"github.com/govmd/govmd/internal/eventfd"
	"github.com/govmd/govmd/kvm"
	"github.com/govmd/govmd/pci"
	"github.com/govmd/govmd/virtio"
	"github.com/govmd/govmd/virtio/pcitransport"
	"github.com/govmd/govmd/virtio/vhostuser"
)

// pciDevice is one virtio PCI function of the VM: the device model, its
// transport, its INTx line and slot, and how it names itself in logs. NICs,
// disks and every other virtio device are this one type, created by
// addVirtio and handled by the same loops.
type pciDevice struct {
	kind  string // "nic", "disk", ...: the log key
	index int    // among the devices of its kind, in command-line order
	name  string // what the user named it: the tap, the image path
	dev   virtio.Device
	stats func() any // the device's counters (a Stats value with a String method)
	tr    *pcitransport.Transport
	intx  *intxLine
	link  *vnet.Link // a NIC's link state; nil for other devices and NICs without one
	slot  int
}

// openedDisk is a disk image opened before KVM is touched (its errors are
// about the user's files).
type openedDisk struct {
	cfg DiskConfig
	dev *blk.Device
}

// openDisks opens every disk image. Its errors are about the user's
// files and wrap ErrConfig.
func openDisks(cfg Config) ([]openedDisk, error) {
	var out []openedDisk
	for _, dc := range cfg.Disks {
		d, err := blk.Open(dc.Path, blk.Options{ReadOnly: dc.ReadOnly, Serial: dc.Serial, Queues: dc.Queues, Log: cfg.Log})
		if err != nil {
			for _, o := range out {
				o.dev.Close()
			}
			return nil, fmt.Errorf("%w: %w", ErrConfig, err)
		}
		out = append(out, openedDisk{cfg: dc, dev: d})
	}
	return out, nil
}

// doorbells registers virtio notification addresses as KVM ioeventfds.
type doorbells struct{ vm *kvm.VM }

func (d doorbells) AddDoorbell(io bool, addr uint64, size int, dm *uint64, fd *eventfd.EventFD) error {
	return d.vm.AddIOEventFD(fd.FD(), kvm.IOEvent{Addr: addr, Len: uint32(size), PIO: io, DataMatch: dm})
}

func (d doorbells) RemoveDoorbell(io bool, addr uint64, size int, dm *uint64, fd *eventfd.EventFD) error {
	return d.vm.RemoveIOEventFD(fd.FD(), kvm.IOEvent{Addr: addr, Len: uint32(size), PIO: io, DataMatch: dm})
}

// addVirtio puts dev in the next free PCI slot behind a virtio PCI
// transport in mode: an MSI-X sink with a vector per queue plus config, an
// INTx line on the slot's routed GSI.
func (v *VM) addVirtio(kind, name string, dev virtio.Device, stats func() any, mode pcitransport.Mode) error {
	slot := len(v.devices) + 1
	sink, err := newMSIXSink(v.kvm, v.router, len(dev.QueueSizes())+1, v.log)
	if err != nil {
		return err
	}
	v.closers = append(v.closers, sink.Close)
	line, err := newINTxLine(v.kvm, pci.INTxRoute(slot, pci.PinA))
	if err != nil {
		return err
	}
	v.closers = append(v.closers, line.Close)
	tr, err := pcitransport.New(pcitransport.Config{
		Mode: mode, Device: dev, Mem: v.mem, MSIX: sink, INTx: line,
		Doorbells: doorbells{v.kvm}, Log: v.log,
	})
	if err != nil {
		return err
	}
	v.closers = append(v.closers, tr.Close)
	if _, err := v.root.AddDevice(slot, tr); err != nil {
		return err
	}
	index := 0
	for _, d := range v.devices {
		if d.kind == kind {
			index++
		}
	}
	v.devices = append(v.devices, &pciDevice{kind: kind, index: index, name: name, dev: dev, stats: stats, tr: tr, intx: line, slot: slot})
	v.log.Debug("virtio device", "kind", kind, "name", name, "slot", slot, "transport", mode)
	return nil
}

// openedNIC is a NIC's device, ready before KVM is touched (its errors
// are about the user's taps and sockets).
type openedNIC struct {
	cfg   *NetConfig
	name  string // the tap or socket
	dev   virtio.Device
	stats func() any
}

// openNICs opens every NIC's device: its tap, its net-device process or
// its vhost-user backend. The closers it adds release them.
func (v *VM) openNICs() ([]openedNIC, error) {
	var out []openedNIC
	for i := range v.cfg.Nets {
		nc := &v.cfg.Nets[i]
		var o openedNIC
		var err error
		switch {
		case nc.VhostUser != "":
			o, err = v.openVhostUserNIC(i, nc)
		case nc.Sandbox:
			o, err = v.openSandboxedNIC(i, nc)
		default:
			o, err = v.openLocalNIC(i, nc)
		}
		if err != nil {
			return nil, fmt.Errorf("--net %s: %w", nc.name(), err)
		}
		o.cfg = nc
		out = append(out, o)
	}
	return out, nil
}

// addPCIDevices adds the NICs, then the disks, the shares, the
// virtio-console and the RNG, in slots 1, 2, ... in command-line order.
func (v *VM) addPCIDevices(nics []openedNIC, disks []openedDisk, shares []openedShare) error {
	for _, n := range nics {
		// A link state for the API (PUT /vm/net/{id}/link), where the
		// device offers VIRTIO_NET_F_STATUS (a vhost-user backend may not).
		dev := n.dev
		link, err := vnet.NewLink(n.dev)
		if err == nil {
			dev = link
		} else {
			v.log.Debug("NIC without link state", "net", n.name, "err", err)
		}
		if err := v.addVirtio("nic", n.name, dev, n.stats, n.cfg.Transport); err != nil {
			return fmt.Errorf("--net %s: %w", n.name, err)
		}
		v.devices[len(v.devices)-1].link = link
	}
	for _, d := range disks {
		stats := func() any { return d.dev.Stats() }
		if err := v.addVirtio("disk", d.cfg.Path, d.dev, stats, d.cfg.Transport); err != nil {
			return fmt.Errorf("--disk %s: %w", d.cfg.Path, err)
		}
	}
	for _, sh := range shares {
		if err := v.addVirtio("fs", sh.tag, sh.dev, sh.stats, pcitransport.Modern); err != nil {
			return fmt.Errorf("--share %s: %w", sh.tag, err)
		}
	}
	if len(v.cfg.ConsolePorts) > 0 {
		dev, err := console.New(console.Config{Ports: v.cfg.ConsolePorts, Log: v.log.With("console", 0)})
		if err != nil {
			return fmt.Errorf("%w: %w", ErrConfig, err) // the ports' names
		}
		v.closers = append(v.closers, dev.Close)
		v.console = dev
		if err := v.addVirtio("console", "virtio-console", dev, func() any { return dev.Stats() }, pcitransport.Modern); err != nil {
			return fmt.Errorf("virtio-console: %w", err)
		}
	}
	if v.cfg.RNG {
		dev, err := rng.New(rng.Config{Log: v.log.With("rng", 0)})
		if err != nil {
			return err
		}
		v.closers = append(v.closers, dev.Close)
		if err := v.addVirtio("rng", "getrandom", dev, func() any { return dev.Stats() }, pcitransport.Transitional); err != nil {
			return fmt.Errorf("--rng: %w", err)
		}
	}
	return nil
}

// serveINTx starts the resample loops of every INTx line.
func (v *VM) serveINTx() {
	for _, d := range v.devices {
		go d.intx.serveResample(d.tr.Resample)
	}
}

// FormatBootTimes renders boot milestones (Counters.Boot, ms since the VMM
// started) in the order they were reached: "first_entry=12.3ms init=...".
func FormatBootTimes(bt map[string]float64) string {
	names := make([]string, 0, len(bt))
	for n := range bt {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool { return bt[names[i]] < bt[names[j]] })
	parts := make([]string, 0, len(names))
	for _, n := range names {
		parts = append(parts, fmt.Sprintf("%s=%.1fms", n, bt[n]))
	}
	return strings.Join(parts, " ")
}

// LogStats logs the exit counters and every device's counters.
func (v *VM) LogStats() {
	var kvmExits uint64
	for _, vc := range v.Counters().VCPUs {
		kvmExits += vc.KVM["exits"]
	}
	v.log.Info("vcpu exits", "counts", v.stats.String(), "kvm_exits", kvmExits)
	if bt := v.bootTimes(); len(bt) > 0 {
		v.log.Info("boot timings", "since_vmm_start", FormatBootTimes(bt))
	}
	for _, d := range v.devices {
		v.log.Info(d.kind+" stats", d.kind, d.index, "name", d.name, "transport_faults", d.tr.Faults(), "stats", fmt.Sprint(d.stats()))
		v.logRings(d)
	}
	if dropped := v.uart.Dropped(); dropped > 0 {
		v.log.Info("serial input dropped", "bytes", dropped)
	}
}

// logRings logs the ring indices of an active device's queues (debug
// level): a stuck queue shows as avail_idx ahead of used_idx.
func (v *VM) logRings(d *pciDevice) {
	tr := d.tr
	m := tr.MSIX()
	var vecs []string
	for vec := 0; vec < m.Vectors(); vec++ {
		st := "on"
		if m.Masked(vec) {
			st = "masked"
		}
		if m.Pending(vec) {
			st += "+pending"
		}
		vecs = append(vecs, fmt.Sprintf("%d:%s", vec, st))
	}
	v.log.Debug("virtio msi-x", d.kind, d.index, "enabled", m.Enabled(), "vectors", strings.Join(vecs, " "))
	notices := tr.Notifications()
	for q, r := range tr.Common().RingStates() {
		if r != nil {
			v.log.Debug("virtio queue", d.kind, d.index, "queue", q, "rings", r.String(), "notifications", notices[q])
		}
	}
}

// openTap opens a NIC's tap; its errors are the user's (a missing
// permission, a name in use) and wrap ErrConfig.
func openTap(name string) (*tap.Tap, error) {
	t, err := tap.Open(name)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return t, nil
}

// openLocalNIC opens a NIC whose device runs in this process.
func (v *VM) openLocalNIC(i int, nc *NetConfig) (openedNIC, error) {
	t, err := openTap(nc.Tap)
	if err != nil {
		return openedNIC{}, err
	}
	v.closers = append(v.closers, t.Close)
	dev, err := vnet.New(t, vnet.Config{MAC: nc.MAC, Offload: nc.Offload, Locked: nc.Locked, Log: v.log.With("nic", i, "tap", t.Name())})
	if err != nil {
		return openedNIC{}, err
	}
	v.closers = append(v.closers, dev.Close)
	v.log.Debug("nic", "tap", t.Name(), "tap_created", !t.Existed(), "mac", dev.MAC(), "sandbox", false)
	return openedNIC{name: t.Name(), dev: dev, stats: func() any { return dev.Stats() }}, nil
}

// netQueueSizes are the queues of govmd's net device (receive, transmit,
// control) as a frontend presents them.
var netQueueSizes = []uint16{vnet.DefaultQueueSize, vnet.DefaultQueueSize, vnet.CtrlQueueSize}

// backendTimeout bounds each exchange with a vhost-user backend.
const backendTimeout = 2 * time.Second

// netFrontendConfig is the frontend of a virtio-net NIC whose backend
// talks on conn: govmd's net device's queues and configuration, guest RAM,
// each exchange bounded by backendTimeout.
func (v *VM) netFrontendConfig(conn *vhostuser.Conn, log *slog.Logger) vhostuser.FrontendConfig {
	return vhostuser.FrontendConfig{Conn: conn, Mem: v.mem, Type: virtio.DeviceNet,
		QueueSizes: netQueueSizes, ConfigSize: vnet.ConfigSize, Validate: vnet.ValidateFeatures,
		Timeout: backendTimeout, Log: log}
}

// openSandboxedNIC opens a NIC whose device runs in a net-device process of
// its own: the tap is opened here (so that its errors are reported like
// any other), handed to the process with one end of a socketpair, and
// closed here; the process confines itself and serves the device over
// vhost-user. The process's end is reported (logged; the NIC needs a
// reset, which the guest's driver sees as a failed device), and the VM
// keeps running.
func (v *VM) openSandboxedNIC(i int, nc *NetConfig) (openedNIC, error) {
	t, err := openTap(nc.Tap)
	if err != nil {
		return openedNIC{}, err
	}
	name := t.Name()
	f, err := t.Dup()
	t.Close() // the process's descriptor keeps a tap created here alive
	if err != nil {
		return openedNIC{}, err
	}
	defer f.Close()
	argv := append(append([]string(nil), v.cfg.NetDevice...),
		netdevice.Args(netdevice.Config{MAC: nc.MAC, Offload: nc.Offload, Locked: nc.Locked})...)
	p, err := netdevice.Start(argv, nil, f, os.Stderr)
	if err != nil {
		return openedNIC{}, err
	}
	log := v.log.With("nic", i, "tap", name)
	v.closers = append(v.closers, func() error { p.Stop(2 * backendTimeout); return nil })
	v.reportEnd(p.Done(), log, "net-device process ended; the NIC needs a reset",
		func() []any { return []any{"pid", p.Pid(), "how", p.Describe()} })
	fe, err := vhostuser.NewFrontend(v.netFrontendConfig(p.Conn, log))
	if err != nil {
		return openedNIC{}, fmt.Errorf("net-device process: %w", err)
	}
	v.closers = append(v.closers, fe.Close)
	log.Debug("nic", "mac", nc.MAC, "sandbox", true, "pid", p.Pid())
	return openedNIC{name: name, dev: fe, stats: func() any {
		return remoteStats{process: "net_device", pid: p.Pid(), fe: fe, device: p.Stats}
	}}, nil
}

// openVhostUserNIC opens a NIC served by a vhost-user backend listening on
// nc.VhostUser. A socket nobody answers on, or a backend that does not
// speak vhost-user (or lacks VIRTIO_F_VERSION_1), is the user's mistake.
func (v *VM) openVhostUserNIC(i int, nc *NetConfig) (openedNIC, error) {
	c, err := net.DialTimeout("unix", nc.VhostUser, backendTimeout)
	if err != nil {
		return openedNIC{}, fmt.Errorf("%w: %w", ErrConfig, unwrapPathErr(err))
	}
	log := v.log.With("nic", i, "vhost_user", nc.VhostUser)
	cfg := v.netFrontendConfig(vhostuser.NewConn(c.(*net.UnixConn)), log)
	// A backend that does not provide the configuration (QEMU's
	// vhost-user net backends do not) gets this side's MAC and link
	// status.
	mac := nc.MAC
	if mac == nil {
		mac = defaultMAC(i)
	}
	cfg.Config, cfg.Features = vnet.ConfigBytes(mac), vnet.FMAC|vnet.FStatus
	fe, err := vhostuser.NewFrontend(cfg)
	if err != nil {
		return openedNIC{}, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	v.closers = append(v.closers, fe.Close)
	if nc.MAC != nil && !fe.OwnConfig() {
		var got [6]byte
		fe.ReadConfig(0, got[:])
		if !bytes.Equal(got[:], nc.MAC) {
			return openedNIC{}, fmt.Errorf("%w: the backend's MAC is %s, not %s (set it on the backend: govmd net-device --mac)", ErrConfig, net.HardwareAddr(got[:]), nc.MAC)
		}
	}
	return openedNIC{name: nc.VhostUser, dev: fe, stats: func() any { return remoteStats{fe: fe} }}, nil
}

// reportEnd logs msg with attrs (read then) when done is closed: a device
// process ended, which leaves its device needing a reset. An end while the
// VM stops is expected and not logged.
func (v *VM) reportEnd(done <-chan struct{}, log *slog.Logger, msg string, attrs func() []any) {
	go func() {
		<-done
		if !v.stopping.Load() {
			log.Error(msg, attrs()...)
		}
	}()
}

// remoteStats are the counters this process has of a device served by a
// backend (the device's own are the backend's: a net-device process logs
// them at exit, virtiofsd keeps its own).
type remoteStats struct {
	process string // the backend process govmd started ("net_device", "virtiofsd"), "" for none
	pid     int
	fe      *vhostuser.Frontend
	// device, if not nil, asks the backend process for its device's
	// counters (a net-device process's stats channel).
	device func(timeout time.Duration) (vnet.Stats, error)
}

// remoteStatsTimeout bounds a request for a backend process's counters.
const remoteStatsTimeout = time.Second

// MarshalJSON implements json.Marshaler: the frontend's state and, from a
// net-device process, its device's counters, at the top level as an
// in-process NIC has them.
func (r remoteStats) MarshalJSON() ([]byte, error) {
	m := map[string]any{}
	if r.device != nil {
		st, err := r.device(remoteStatsTimeout)
		if err != nil {
			m["device_error"] = err.Error()
		} else {
			b, err := json.Marshal(st)
			if err != nil {
				return nil, err
			}
			if err := json.Unmarshal(b, &m); err != nil {
				return nil, err
			}
		}
	}
	m["backend_faults"] = r.fe.Faults()
	m["backend_running"] = r.fe.Running()
	if r.process != "" {
		m[r.process+"_pid"] = r.pid
	}
	if err := r.fe.Err(); err != nil {
		m["backend_error"] = err.Error()
	}
	return json.Marshal(m)
}

func (r remoteStats) String() string {
	s := fmt.Sprintf("backend_faults=%d running=%v", r.fe.Faults(), r.fe.Running())
	if r.process != "" {
		s = fmt.Sprintf("%s_pid=%d ", r.process, r.pid) + s
	}
	if err := r.fe.Err(); err != nil {
		s += fmt.Sprintf(" backend_error=%q", err.Error())
	}
	return s
}

// FlushConsole waits until the guest's output on the given ports of the
// virtio-console (Config.ConsolePorts) that was queued when it was called
// has reached their writers, or timeout passes (console.Device.Flush).
func (v *VM) FlushConsole(timeout time.Duration, ports ...int) error {
	if v.console == nil {
		return errors.New("vmm: the VM has no virtio-console")
	}
	return v.console.Flush(timeout, ports...)
}

// openedShare is a share's virtio-fs device: a frontend of its virtiofsd.
type openedShare struct {
	tag   string
	dev   virtio.Device
	stats func() any
}

// shareTimeout bounds each exchange with a virtiofsd: the first one waits
// for it to start and set up its sandbox.
const shareTimeout = 5 * time.Second

// openShares starts a virtiofsd for every share and connects a frontend
// to it. A virtiofsd that ends while the VM runs is logged; the device
// then needs a reset.
func (v *VM) openShares() ([]openedShare, error) {
	var out []openedShare
	for i, sh := range v.cfg.Shares {
		log := v.log.With("share", sh.Tag)
		d, err := fs.Start(fs.Config{Share: sh, Virtiofsd: v.cfg.Virtiofsd, ReadOnlyHelper: v.cfg.ShareHelper, Log: log})
		if err != nil {
			return nil, fmt.Errorf("%w: --share %s: %w", ErrConfig, sh.Path, err)
		}
		v.closers = append(v.closers, func() error { d.Stop(2 * time.Second); return nil })
		v.reportEnd(d.Done(), log, "virtiofsd ended; the share needs a reset",
			func() []any { return []any{"pid", d.Pid(), "err", d.Err()} })
		fe, err := vhostuser.NewFrontend(vhostuser.FrontendConfig{
			Conn: d.Conn, Mem: v.mem, Type: fs.DeviceType, QueueSizes: fs.QueueSizes,
			ConfigSize: fs.ConfigSize, Config: fs.ConfigBytes(sh.Tag), Timeout: shareTimeout, Log: log,
		})
		if err != nil {
			return nil, fmt.Errorf("--share %s: virtiofsd %s: %w", sh.Path, v.cfg.Virtiofsd, err)
		}
		v.closers = append(v.closers, fe.Close)
		pid := d.Pid()
		log.Debug("share", "index", i, "path", sh.Path, "ro", sh.ReadOnly, "virtiofsd", v.cfg.Virtiofsd, "pid", pid)
		out = append(out, openedShare{tag: sh.Tag, dev: fe, stats: func() any { return remoteStats{process: "virtiofsd", pid: pid, fe: fe} }})
	}
	return out, nil
}

// AppendArchive appends a cpio archive to an initrd, padding the initrd
// with zeros to a multiple of 4 bytes first (Linux looks for the next
// archive's header at a 4-byte boundary and skips zeros).
func AppendArchive(initrd, archive []byte) []byte {
	out := make([]byte, 0, len(initrd)+3+len(archive))
	out = append(out, initrd...)
	for len(out)%4 != 0 {
		out = append(out, 0)
	}
	return append(out, archive...)
}
