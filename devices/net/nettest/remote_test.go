package nettest_test

import (
	"testing"

	vnet "github.com/govmd/govmd/devices/net"
	"github.com/govmd/govmd/devices/net/nettest"
)

// TestRemote runs the traffic and run-time offload tests with the device
// behind a vhost-user backend and the driver on govmd's frontend, over
// each transport: the same device, hosted the way govmd net-device hosts
// it, behaves the same.
func TestRemote(t *testing.T) {
	for _, tr := range append(transports[:len(transports):len(transports)], intxTransports...) {
		t.Run("traffic/"+tr.Name, func(t *testing.T) { testTraffic(t, profiles[0], tr, true) })
	}
	for _, tr := range transports {
		t.Run("ctrl-offloads/"+tr.Name, func(t *testing.T) { testCtrlGuestOffloadsAtRunTime(t, tr, true) })
	}
	t.Run("reset-clears-offloads", func(t *testing.T) {
		r := newRig(t, rigConfig{remote: true, noBridge: true, nic: nettest.NICConfig{Features: nettest.LinuxFeatures}})
		checkEthtool(t, r.env, vnet.TapOffloads(r.nic.Acked), "at DRIVER_OK")
		r.nic.Drv.Reset()
		checkEthtool(t, r.env, 0, "after reset")
	})
}
