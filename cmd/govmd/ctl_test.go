package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/govmd/govmd/vmm"
)

// TestPrintCounters checks govmd ctl counters' text for what GET
// /vm/counters sends (vmm.Counters as JSON), and that it refuses what is
// not that.
func TestPrintCounters(t *testing.T) {
	b, err := json.Marshal(vmm.Counters{
		VCPUs: []vmm.VCPUCounters{{ID: 0, Exits: map[string]uint64{"MMIO": 3, "IO": 5}, KVM: map[string]uint64{"exits": 9}}},
		Devices: []vmm.DeviceCounters{{Kind: "nic", Index: 0, Name: "tap0", TransportFaults: 1, Notifications: []uint64{2, 4},
			Stats: struct {
				TxPackets uint64 `json:"tx_packets"`
			}{7}}},
		Boot: map[string]float64{"first_entry": 12.5},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, in string
		want     []string // lines in the output, in this order
		err      bool
	}{
		{name: "counters", in: string(b), want: []string{
			"vcpu 0: exits IO=5 MMIO=3; kvm exits=9",
			"nic 0 (tap0): transport_faults=1 notifications=[2 4] tx_packets=7",
			"boot: first_entry=12.5ms",
		}},
		{name: "not JSON", in: "<html>", err: true},
		{name: "wrong type", in: `{"vcpus": 3}`, err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out strings.Builder
			err := printCounters(&out, []byte(tc.in))
			if (err != nil) != tc.err {
				t.Fatalf("error %v, want error %v", err, tc.err)
			}
			if got := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n"); !tc.err && strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("got\n%s\nwant\n%s", out.String(), strings.Join(tc.want, "\n"))
			}
		})
	}
}
