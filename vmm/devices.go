package vmm

import (
	"fmt"
	"strings"

	"github.com/govmd/govmd/devices/blk"
	vnet "github.com/govmd/govmd/devices/net"
	"github.com/govmd/govmd/devices/net/tap"
	"github.com/govmd/govmd/devices/rng"
	"github.com/govmd/govmd/internal/eventfd"
	"github.com/govmd/govmd/kvm"
	"github.com/govmd/govmd/pci"
	"github.com/govmd/govmd/virtio"
	"github.com/govmd/govmd/virtio/pcitransport"
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

// addPCIDevices opens the taps and adds the NICs, then the disks, in
// slots 1, 2, ... in command-line order.
func (v *VM) addPCIDevices(disks []openedDisk) error {
	for i, nc := range v.cfg.Nets {
		t, err := tap.Open(nc.Tap)
		if err != nil {
			return fmt.Errorf("--net %s: %w", nc.Tap, err)
		}
		v.closers = append(v.closers, t.Close)
		dev, err := vnet.New(t, vnet.Config{MAC: nc.MAC, Offload: nc.Offload, Locked: nc.Locked, Log: v.log.With("nic", i, "tap", t.Name())})
		if err != nil {
			return fmt.Errorf("--net %s: %w", nc.Tap, err)
		}
		v.closers = append(v.closers, dev.Close)
		stats := func() any { return dev.Stats() }
		if err := v.addVirtio("nic", t.Name(), dev, stats, nc.Transport); err != nil {
			return fmt.Errorf("--net %s: %w", nc.Tap, err)
		}
		created := "existing"
		if !t.Existed() {
			created = "created"
		}
		v.log.Debug("nic", "tap", t.Name(), "tap_state", created, "mac", dev.MAC())
	}
	for _, d := range disks {
		stats := func() any { return d.dev.Stats() }
		if err := v.addVirtio("disk", d.cfg.Path, d.dev, stats, d.cfg.Transport); err != nil {
			return fmt.Errorf("--disk %s: %w", d.cfg.Path, err)
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

// LogStats logs the exit counters and every device's counters.
func (v *VM) LogStats() {
	var kvmExits uint64
	for _, vc := range v.Counters().VCPUs {
		kvmExits += vc.KVM["exits"]
	}
	v.log.Info("vcpu exits", "counts", v.stats.String(), "kvm_exits", kvmExits)
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
