package vmm

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	vnet "github.com/govmd/govmd/devices/net"
)

// State is where a VM is in its life, as the control API reports it.
type State string

// VM states.
const (
	StateCreated      State = "created"       // New done, Run not yet called
	StateRunning      State = "running"       // the vCPUs run
	StatePaused       State = "paused"        // Pause stopped the vCPUs
	StateShuttingDown State = "shutting down" // the power button was pressed, or the run is ending
	StateStopped      State = "stopped"       // Run returned
)

// Errors of the control methods.
var (
	// ErrNotRunning: the VM has not started or has ended.
	ErrNotRunning = errors.New("the VM is not running")
	// ErrNoSuchNIC: no NIC has that index or name.
	ErrNoSuchNIC = errors.New("no such NIC")
)

// State returns the VM's state.
func (v *VM) State() State {
	select {
	case <-v.runDone:
		return StateStopped
	default:
	}
	if v.stopping.Load() || v.powerPressed.Load() {
		return StateShuttingDown
	}
	if v.runStart.Load() == 0 {
		return StateCreated
	}
	if v.paused.Load() {
		return StatePaused
	}
	return StateRunning
}

// Uptime returns how long the VM has run (paused time included); zero
// before Run.
func (v *VM) Uptime() time.Duration {
	ns := v.runStart.Load()
	if ns == 0 {
		return 0
	}
	end := time.Now()
	if e := v.runEnd.Load(); e != 0 {
		end = time.Unix(0, e)
	}
	return end.Sub(time.Unix(0, ns))
}

// running reports ErrNotRunning unless Run has started the vCPUs and the
// run is not ending.
func (v *VM) running() error {
	if v.runStart.Load() == 0 || v.stopping.Load() {
		return ErrNotRunning
	}
	return nil
}

// Pause stops the vCPUs and returns once none is in the guest (or ctx is
// done). Devices finish the requests the guest already queued: a NIC
// fills at most the receive buffers the guest posted, then leaves frames
// in the tap. Pausing a paused VM does nothing.
func (v *VM) Pause(ctx context.Context) error {
	v.pauseMu.Lock()
	if err := v.running(); err != nil {
		v.pauseMu.Unlock()
		return err
	}
	v.paused.Store(true)
	v.pauseMu.Unlock()
	v.kickAll()

	stop := context.AfterFunc(ctx, func() {
		v.pauseMu.Lock()
		v.pauseCond.Broadcast()
		v.pauseMu.Unlock()
	})
	defer stop()
	v.pauseMu.Lock()
	defer v.pauseMu.Unlock()
	for v.parked < v.cfg.CPUs && v.paused.Load() && !v.stopping.Load() {
		if ctx.Err() != nil {
			return fmt.Errorf("vmm: pausing: %w", ctx.Err())
		}
		v.pauseCond.Wait()
	}
	if v.stopping.Load() {
		return ErrNotRunning
	}
	return nil
}

// Resume lets paused vCPUs run again. Resuming a running VM does nothing.
func (v *VM) Resume() error {
	v.pauseMu.Lock()
	defer v.pauseMu.Unlock()
	if err := v.running(); err != nil {
		return err
	}
	v.paused.Store(false)
	v.pauseCond.Broadcast()
	return nil
}

// park holds a vCPU thread while the VM is paused.
func (v *VM) park() {
	v.pauseMu.Lock()
	defer v.pauseMu.Unlock()
	v.parked++
	v.pauseCond.Broadcast()
	for v.paused.Load() && !v.stopping.Load() {
		v.pauseCond.Wait()
	}
	v.parked--
}

// wakeParked releases parked vCPU threads at the end of the run.
func (v *VM) wakeParked() {
	v.pauseMu.Lock()
	v.pauseCond.Broadcast()
	v.pauseMu.Unlock()
}

// PowerButton presses the ACPI power button: a guest that enabled the
// event (Linux with its button driver, and whatever its user space does
// with KEY_POWER: systemd-logind, acpid) shuts down and powers off.
// Nothing else happens: the guest decides.
func (v *VM) PowerButton() error {
	if err := v.running(); err != nil {
		return err
	}
	v.powerPressed.Store(true)
	v.pm.PressPowerButton()
	return nil
}

// Stop ends the run at once, as if the power were cut: Run returns
// ExitStopped.
func (v *VM) Stop() error {
	if err := v.running(); err != nil {
		return err
	}
	v.end(ExitStopped, nil)
	return nil
}

// SetLink sets the link state of a NIC, given by its index among the NICs
// or its name (the tap or socket), and interrupts the guest with a
// configuration change when the state changed. It reports the change.
func (v *VM) SetLink(nic string, up bool) (changed bool, err error) {
	if err := v.running(); err != nil {
		return false, err
	}
	d := v.findNIC(nic)
	if d == nil {
		return false, fmt.Errorf("%w: %q", ErrNoSuchNIC, nic)
	}
	if d.link == nil {
		return false, fmt.Errorf("NIC %q: %w", nic, vnet.ErrNoLinkStatus)
	}
	if !d.link.SetUp(up) {
		return false, nil
	}
	d.tr.ConfigChanged()
	v.log.Info("NIC link set", "net", d.name, "up", up)
	return true, nil
}

// findNIC returns the NIC with index or name id, or nil.
func (v *VM) findNIC(id string) *pciDevice {
	i, err := strconv.Atoi(id)
	for _, d := range v.devices {
		if d.kind == "nic" && (err == nil && d.index == i || d.name == id) {
			return d
		}
	}
	return nil
}

// NICs describes the VM's NICs, in index order.
func (v *VM) NICs() []NICInfo {
	var out []NICInfo
	for _, d := range v.devices {
		if d.kind == "nic" {
			n := NICInfo{Index: d.index, Name: d.name, LinkState: d.link != nil, LinkUp: true}
			if d.link != nil {
				n.LinkUp = d.link.Up()
			}
			out = append(out, n)
		}
	}
	return out
}

// NICInfo is what the control API says of a NIC.
type NICInfo struct {
	Index int    `json:"index"`
	Name  string `json:"name"`
	// LinkState says whether the link can be set (the device offers
	// VIRTIO_NET_F_STATUS); LinkUp is the link's state.
	LinkState bool `json:"link_state"`
	LinkUp    bool `json:"link_up"`
}
