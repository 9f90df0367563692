package vmm

import (
	"fmt"
	"strings"

	"github.com/govmd/govmd/devices/blk"
	vnet "github.com/govmd/govmd/devices/net"
	"github.com/govmd/govmd/devices/net/tap"
	"github.com/govmd/govmd/internal/eventfd"
	"github.com/govmd/govmd/kvm"
	"github.com/govmd/govmd/pci"
	"github.com/govmd/govmd/virtio"
	"github.com/govmd/govmd/virtio/pcitransport"
)

// nic is one virtio-net PCI function and its tap.
type nic struct {
	cfg  NetConfig
	tap  *tap.Tap
	dev  *vnet.Device
	tr   *pcitransport.Transport
	intx *intxLine
	slot int
}

// disk is one virtio-blk PCI function and its image.
type disk struct {
	cfg  DiskConfig
	dev  *blk.Device
	tr   *pcitransport.Transport
	intx *intxLine
	slot int
}

// openDisks opens every disk image. Its errors are about the user's
// files and wrap ErrConfig.
func openDisks(cfg Config) ([]*disk, error) {
	var out []*disk
	for _, dc := range cfg.Disks {
		d, err := blk.Open(dc.Path, blk.Options{ReadOnly: dc.ReadOnly, Serial: dc.Serial, Queues: dc.Queues, Log: cfg.Log})
		if err != nil {
			for _, o := range out {
				o.dev.Close()
			}
			return nil, configErr("%v", err)
		}
		out = append(out, &disk{cfg: dc, dev: d})
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

// transportFor builds the PCI function for dev in slot: an MSI-X sink with
// a vector per queue plus config, an INTx line on the slot's routed GSI.
func (v *VM) transportFor(dev virtio.Device, mode string, slot int) (*pcitransport.Transport, *intxLine, error) {
	m, err := pcitransport.ParseMode(mode)
	if err != nil {
		return nil, nil, configErr("%v", err)
	}
	sink, err := newMSIXSink(v.kvm, v.router, len(dev.QueueSizes())+1, v.log)
	if err != nil {
		return nil, nil, err
	}
	v.closers = append(v.closers, sink.Close)
	line, err := newINTxLine(v.kvm, pci.INTxRoute(slot, pci.PinA))
	if err != nil {
		return nil, nil, err
	}
	v.closers = append(v.closers, line.Close)
	tr, err := pcitransport.New(pcitransport.Config{
		Mode: m, Device: dev, Mem: v.mem, MSIX: sink, INTx: line,
		Doorbells: doorbells{v.kvm}, Log: v.log,
	})
	if err != nil {
		return nil, nil, err
	}
	v.closers = append(v.closers, tr.Close)
	if _, err := v.root.AddDevice(slot, tr); err != nil {
		return nil, nil, err
	}
	return tr, line, nil
}

// addPCIDevices opens the taps and adds the NICs, then the disks, in
// slots 1, 2, ... in command-line order.
func (v *VM) addPCIDevices(disks []*disk) error {
	slot := 1
	for i, nc := range v.cfg.Nets {
		t, err := tap.Open(nc.Tap)
		if err != nil {
			return fmt.Errorf("--net %s: %w", nc.Tap, err)
		}
		v.closers = append(v.closers, t.Close)
		mode, err := vnet.ParseOffloadMode(nc.Offload)
		if err != nil {
			return configErr("--net %s: %v", nc.Tap, err)
		}
		dev, err := vnet.New(t, vnet.Config{MAC: nc.MAC, Offload: mode, Locked: nc.Locked, Log: v.log.With("nic", i, "tap", t.Name())})
		if err != nil {
			return fmt.Errorf("--net %s: %w", nc.Tap, err)
		}
		v.closers = append(v.closers, dev.Close)
		tr, line, err := v.transportFor(dev, nc.Transport, slot)
		if err != nil {
			return fmt.Errorf("--net %s: %w", nc.Tap, err)
		}
		v.nics = append(v.nics, &nic{cfg: nc, tap: t, dev: dev, tr: tr, intx: line, slot: slot})
		created := "existing"
		if !t.Existed() {
			created = "created"
		}
		v.log.Debug("nic", "slot", slot, "tap", t.Name(), "tap_state", created, "mac", dev.MAC(), "transport", nc.Transport)
		slot++
	}
	for _, d := range disks {
		tr, line, err := v.transportFor(d.dev, d.cfg.Transport, slot)
		if err != nil {
			return fmt.Errorf("--disk %s: %w", d.cfg.Path, err)
		}
		d.tr, d.intx, d.slot = tr, line, slot
		v.disks = append(v.disks, d)
		slot++
	}
	return nil
}

// serveINTx starts the resample loops of every INTx line.
func (v *VM) serveINTx() {
	for _, n := range v.nics {
		go n.intx.serveResample(n.tr.Resample)
	}
	for _, d := range v.disks {
		go d.intx.serveResample(d.tr.Resample)
	}
}

// NICStats returns the counters of every NIC, in command-line order.
func (v *VM) NICStats() []vnet.Stats {
	out := make([]vnet.Stats, len(v.nics))
	for i, n := range v.nics {
		out[i] = n.dev.Stats()
	}
	return out
}

// DiskStats returns the counters of every disk, in command-line order.
func (v *VM) DiskStats() []blk.Stats {
	out := make([]blk.Stats, len(v.disks))
	for i, d := range v.disks {
		out[i] = d.dev.Stats()
	}
	return out
}

// LogStats logs the exit counters and every device's counters.
func (v *VM) LogStats() {
	v.log.Info("vcpu exits", "counts", v.stats.String())
	for i, n := range v.nics {
		v.log.Info("nic stats", "nic", i, "tap", n.tap.Name(), "transport_faults", n.tr.Faults(), "stats", n.dev.Stats().String())
		v.logRings("nic", i, n.tr)
	}
	for i, d := range v.disks {
		v.log.Info("disk stats", "disk", i, "path", d.cfg.Path, "transport_faults", d.tr.Faults(), "stats", d.dev.Stats().String())
		v.logRings("disk", i, d.tr)
	}
	if dropped := v.uart.Dropped(); dropped > 0 {
		v.log.Info("serial input dropped", "bytes", dropped)
	}
}

// logRings logs the ring indices of an active device's queues (debug
// level): a stuck queue shows as avail_idx ahead of used_idx.
func (v *VM) logRings(kind string, i int, tr *pcitransport.Transport) {
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
	v.log.Debug("virtio msi-x", kind, i, "enabled", m.Enabled(), "vectors", strings.Join(vecs, " "))
	notices := tr.Common().Notifications()
	for q, r := range tr.Common().RingStates() {
		if r != nil {
			v.log.Debug("virtio queue", kind, i, "queue", q, "rings", r.String(), "notifications", notices[q])
		}
	}
}
