package vmm

import (
	"strings"
	"time"

	"github.com/govmd/govmd/kvm"
)

// Counters is a snapshot of a running VM's counters: per vCPU, the exits
// govmd handled (by reason) and KVM's own statistics; per virtio device,
// its counters. Each counter is read atomically, the snapshot as a whole is
// not.
type Counters struct {
	VCPUs   []VCPUCounters   `json:"vcpus"`
	Devices []DeviceCounters `json:"devices"`
	// Boot holds the boot timestamps reached so far, in milliseconds
	// since the VMM started (Config.Start): "built" (New returned),
	// "vcpus_start" (Run let the vCPUs go), "first_entry" (a vCPU first
	// entered the guest), and those a guest init reports (govmd exec:
	// "init", "cmd_start", "cmd_end").
	Boot map[string]float64 `json:"boot_ms,omitempty"`
}

// VCPUCounters are one vCPU's counters.
type VCPUCounters struct {
	ID int `json:"id"`
	// Exits counts the exits to govmd by reason (IO, MMIO, ...).
	Exits map[string]uint64 `json:"exits"`
	// KVM holds KVM's statistics of the vCPU (KVM_GET_STATS_FD: "exits"
	// counts every exit from the guest, those KVM handled itself
	// included; "irq_injections", "halt_exits", ...); absent where the
	// kernel has none.
	KVM map[string]uint64 `json:"kvm,omitempty"`
}

// DeviceCounters are one virtio device's counters.
type DeviceCounters struct {
	Kind  string `json:"kind"`  // nic, disk, rng
	Index int    `json:"index"` // among the devices of its kind
	Name  string `json:"name"`  // the tap, the image path, ...
	Slot  int    `json:"slot"`  // PCI slot on bus 0
	// TransportFaults counts driver mistakes the PCI transport saw.
	TransportFaults uint64 `json:"transport_faults"`
	// Notifications counts the used-buffer notifications sent, per queue.
	Notifications []uint64 `json:"notifications"`
	// Stats is the device's own counters (a net, blk or rng Stats).
	Stats any `json:"stats"`
}

// Counters returns a snapshot of the VM's counters. It may be called at
// any time, from any goroutine, while the VM runs or after.
func (v *VM) Counters() Counters {
	var c Counters
	for id := range v.stats.perCPU {
		vc := VCPUCounters{ID: id, Exits: map[string]uint64{}}
		for r := range v.stats.perCPU[id] {
			if n := v.stats.perCPU[id][r].Load(); n > 0 {
				vc.Exits[strings.TrimPrefix(kvm.ExitReason(r).String(), "KVM_EXIT_")] = n
			}
		}
		if st := v.stats.kvm[id].Load(); st != nil {
			if m, err := st.Read(); err == nil {
				vc.KVM = m
			}
		}
		c.VCPUs = append(c.VCPUs, vc)
	}
	c.Boot = v.bootTimes()
	for _, d := range v.devices {
		c.Devices = append(c.Devices, DeviceCounters{
			Kind: d.kind, Index: d.index, Name: d.name, Slot: d.slot,
			TransportFaults: d.tr.Faults(), Notifications: d.tr.Notifications(), Stats: d.stats(),
		})
	}
	return c
}

// MarkBoot records that the guest reached a boot milestone (name, e.g.
// "init") at t. The first mark of a name is kept.
func (v *VM) MarkBoot(name string, t time.Time) {
	v.bootMu.Lock()
	defer v.bootMu.Unlock()
	if v.boot == nil {
		v.boot = map[string]time.Time{}
	}
	if _, ok := v.boot[name]; !ok {
		v.boot[name] = t
	}
}

// bootTimes returns the boot milestones in milliseconds since the VMM
// started.
func (v *VM) bootTimes() map[string]float64 {
	ms := func(t time.Time) float64 { return float64(t.Sub(v.cfg.Start).Microseconds()) / 1000 }
	out := map[string]float64{}
	if t := v.FirstEntry(); !t.IsZero() {
		out["first_entry"] = ms(t)
	}
	v.bootMu.Lock()
	for name, t := range v.boot {
		out[name] = ms(t)
	}
	v.bootMu.Unlock()
	return out
}
