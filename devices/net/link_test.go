package net_test

import (
	"encoding/binary"
	"errors"
	"log/slog"
	"testing"
	"time"

	vnet "github.com/govmd/govmd/devices/net"
	"github.com/govmd/govmd/devices/net/nettest"
	"github.com/govmd/govmd/virtio"
)

// noStatus is a NIC that offers no VIRTIO_NET_F_STATUS.
type noStatus struct{ virtio.Device }

func (n noStatus) Features() uint64 { return n.Device.Features() &^ vnet.FStatus }

func TestLink(t *testing.T) {
	for _, tc := range []struct {
		name string
		nc   nettest.NICConfig
	}{
		{"modern msix", nettest.NICConfig{Features: nettest.LinuxFeatures}},
		{"legacy intx", nettest.NICConfig{Features: nettest.LinuxLegacyFeatures, Legacy: true, INTx: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			be := nettest.NewFakeBackend(nettest.AllOffloads)
			d, err := vnet.New(be, vnet.Config{MAC: nicMAC[:], Log: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { d.Close() })
			link, err := vnet.NewLink(d)
			if err != nil {
				t.Fatal(err)
			}
			n, err := nettest.NewNIC(link, tc.nc)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(n.Close)
			if n.Acked&vnet.FStatus == 0 {
				t.Fatal("driver did not ack STATUS")
			}
			status := func() uint16 {
				var b [2]byte
				n.Drv.ReadConfig(6, b[:])
				return binary.LittleEndian.Uint16(b[:])
			}
			set := func(up bool, want uint16) {
				t.Helper()
				if !link.SetUp(up) {
					t.Fatalf("SetUp(%v) reported no change", up)
				}
				n.Transport.ConfigChanged()
				select {
				case <-n.IRQ.WaitConfig():
				case <-time.After(5 * time.Second):
					t.Fatal("no configuration interrupt")
				}
				if got := status(); got != want {
					t.Fatalf("link up=%v: status %#x, want %#x", up, got, want)
				}
				if link.Up() != up {
					t.Fatalf("Up() = %v", link.Up())
				}
				// A read around the status field keeps the MAC.
				var c [8]byte
				n.Drv.ReadConfig(0, c[:])
				if [6]byte(c[:6]) != nicMAC || uint16(c[6])|uint16(c[7])<<8 != want {
					t.Fatalf("config % x", c)
				}
			}
			if got := status(); got != 1 {
				t.Fatalf("initial status %#x", got)
			}
			set(false, 0)
			if link.SetUp(false) {
				t.Error("SetUp(false) twice reported a change")
			}
			set(true, 1)
		})
	}
}

func TestLinkNeedsStatus(t *testing.T) {
	be := nettest.NewFakeBackend(nettest.AllOffloads)
	d, err := vnet.New(be, vnet.Config{MAC: nicMAC[:]})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := vnet.NewLink(noStatus{d}); !errors.Is(err, vnet.ErrNoLinkStatus) {
		t.Errorf("NewLink without STATUS: %v", err)
	}
}
