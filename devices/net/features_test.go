package net

import (
	"math/bits"
	"strings"
	"testing"

	"github.com/govmd/govmd/devices/net/tap"
	"github.com/govmd/govmd/virtio"
)

func TestTapOffloads(t *testing.T) {
	const all = tap.OffloadCSUM | tap.OffloadTSO4 | tap.OffloadTSO6 | tap.OffloadTSOECN | tap.OffloadUFO | tap.OffloadUSO4 | tap.OffloadUSO6
	tests := []struct {
		name  string
		acked uint64
		want  uint32
	}{
		{"nothing", 0, 0},
		{"non-offload bits", FMAC | FMrgRxbuf | FCtrlVQ | virtio.FVersion1, 0},
		{"host bits only", FCsum | FHostTSO4 | FHostTSO6 | FHostECN | FHostUFO | FHostUSO, 0},
		{"csum", FGuestCsum, tap.OffloadCSUM},
		{"tso without csum", FGuestTSO4 | FGuestTSO6 | FGuestECN | FGuestUFO | FGuestUSO4 | FGuestUSO6, 0},
		{"tso4", FGuestCsum | FGuestTSO4, tap.OffloadCSUM | tap.OffloadTSO4},
		{"tso6", FGuestCsum | FGuestTSO6, tap.OffloadCSUM | tap.OffloadTSO6},
		{"ecn without tso", FGuestCsum | FGuestECN, tap.OffloadCSUM},
		{"ecn with tso6", FGuestCsum | FGuestTSO6 | FGuestECN, tap.OffloadCSUM | tap.OffloadTSO6 | tap.OffloadTSOECN},
		{"ufo", FGuestCsum | FGuestUFO, tap.OffloadCSUM | tap.OffloadUFO},
		{"uso4 alone", FGuestCsum | FGuestUSO4, tap.OffloadCSUM},
		{"uso6 alone", FGuestCsum | FGuestUSO6, tap.OffloadCSUM},
		{"uso pair", FGuestCsum | FGuestUSO4 | FGuestUSO6, tap.OffloadCSUM | tap.OffloadUSO4 | tap.OffloadUSO6},
		{"everything", ^uint64(0), all},
		{"linux", FCsum | FGuestCsum | FCtrlGuestOffloads | FMAC | FGuestTSO4 | FGuestTSO6 | FGuestECN | FGuestUFO |
			FHostTSO4 | FHostTSO6 | FHostECN | FHostUFO | FMrgRxbuf, tap.OffloadCSUM | tap.OffloadTSO4 | tap.OffloadTSO6 | tap.OffloadTSOECN | tap.OffloadUFO},
		{"vio", FCsum | FGuestCsum | FGuestTSO4 | FGuestTSO6 | FHostTSO4 | FHostTSO6, tap.OffloadCSUM | tap.OffloadTSO4 | tap.OffloadTSO6},
	}
	for _, tt := range tests {
		if got := TapOffloads(tt.acked); got != tt.want {
			t.Errorf("%s: TapOffloads(%s) = %s, want %s", tt.name, FeatureString(tt.acked), OffloadString(got), OffloadString(tt.want))
		}
	}
}

// TestTapOffloadsProperties checks the nesting rules on every combination of
// the receive offload bits.
func TestTapOffloadsProperties(t *testing.T) {
	guestBits := []uint64{FGuestCsum, FGuestTSO4, FGuestTSO6, FGuestECN, FGuestUFO, FGuestUSO4, FGuestUSO6}
	for m := 0; m < 1<<len(guestBits); m++ {
		var acked uint64
		for i, b := range guestBits {
			if m&(1<<i) != 0 {
				acked |= b
			}
		}
		f := TapOffloads(acked)
		switch {
		case acked&FGuestCsum == 0 && f != 0:
			t.Errorf("%s: %s without GUEST_CSUM", FeatureString(acked), OffloadString(f))
		case f&tap.OffloadTSOECN != 0 && f&(tap.OffloadTSO4|tap.OffloadTSO6) == 0:
			t.Errorf("%s: ECN without TSO", FeatureString(acked))
		case f&(tap.OffloadUSO4|tap.OffloadUSO6) != 0 && f&(tap.OffloadUSO4|tap.OffloadUSO6) != tap.OffloadUSO4|tap.OffloadUSO6:
			t.Errorf("%s: half of USO", FeatureString(acked))
		}
		// Every flag comes from a bit the driver acked.
		for _, p := range []struct {
			flag uint32
			bit  uint64
		}{{tap.OffloadCSUM, FGuestCsum}, {tap.OffloadTSO4, FGuestTSO4}, {tap.OffloadTSO6, FGuestTSO6},
			{tap.OffloadTSOECN, FGuestECN}, {tap.OffloadUFO, FGuestUFO}, {tap.OffloadUSO4, FGuestUSO4}, {tap.OffloadUSO6, FGuestUSO6}} {
			if f&p.flag != 0 && acked&p.bit == 0 {
				t.Errorf("%s: %s not acked", FeatureString(acked), OffloadString(p.flag))
			}
		}
	}
}

func TestValidateFeatures(t *testing.T) {
	tests := []struct {
		acked   uint64
		wantErr string
	}{
		{0, ""},
		{FCsum | FGuestCsum, ""},
		{FGuestCsum | FGuestTSO4 | FGuestTSO6 | FGuestECN | FGuestUFO | FGuestUSO4 | FGuestUSO6, ""},
		{FCsum | FHostTSO4 | FHostTSO6 | FHostECN | FHostUFO | FHostUSO, ""},
		{FCtrlVQ | FCtrlRx | FCtrlGuestOffloads | FCtrlVLAN | FGuestAnnounce | FCtrlMACAddr | FMQ, ""},
		{FGuestTSO4, "GUEST_TSO4 requires GUEST_CSUM"},
		{FGuestTSO6, "GUEST_TSO6 requires GUEST_CSUM"},
		{FGuestCsum | FGuestECN, "GUEST_ECN requires GUEST_TSO4 or GUEST_TSO6"},
		{FGuestUFO, "GUEST_UFO requires GUEST_CSUM"},
		{FGuestUSO4, "GUEST_USO4 requires GUEST_CSUM"},
		{FGuestUSO6, "GUEST_USO6 requires GUEST_CSUM"},
		{FHostTSO4, "HOST_TSO4 requires CSUM"},
		{FHostTSO6, "HOST_TSO6 requires CSUM"},
		{FCsum | FHostECN, "HOST_ECN requires HOST_TSO4 or HOST_TSO6"},
		{FHostUFO, "HOST_UFO requires CSUM"},
		{FHostUSO, "HOST_USO requires CSUM"},
		{FCtrlRx, "CTRL_RX requires CTRL_VQ"},
		{FCtrlGuestOffloads, "CTRL_GUEST_OFFLOADS requires CTRL_VQ"},
		{FCtrlVLAN, "CTRL_VLAN requires CTRL_VQ"},
		{FGuestAnnounce, "GUEST_ANNOUNCE requires CTRL_VQ"},
		{FMQ, "MQ requires CTRL_VQ"},
		{FCtrlMACAddr, "CTRL_MAC_ADDR requires CTRL_VQ"},
		{FCtrlVQ | FCtrlRxExtra, "CTRL_RX_EXTRA requires CTRL_RX"},
		// GUEST_CSUM alone does not satisfy a HOST dependency.
		{FGuestCsum | FHostTSO4, "HOST_TSO4 requires CSUM"},
		{FCsum | FGuestTSO4, "GUEST_TSO4 requires GUEST_CSUM"},
	}
	for _, tt := range tests {
		err := ValidateFeatures(tt.acked)
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("%s: unexpected error %v", FeatureString(tt.acked), err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("%s: error %v, want %q", FeatureString(tt.acked), err, tt.wantErr)
		}
	}
}

func TestOfferedFeatures(t *testing.T) {
	const allTap = tap.OffloadCSUM | tap.OffloadTSO4 | tap.OffloadTSO6 | tap.OffloadTSOECN | tap.OffloadUFO | tap.OffloadUSO4 | tap.OffloadUSO6
	base := FMAC | FStatus | FMrgRxbuf | FCtrlVQ | FCtrlRx | virtio.FRingEventIdx | virtio.FRingIndirect | virtio.FAnyLayout | virtio.FVersion1
	tests := []struct {
		name      string
		cfg       Config
		supported uint32
		want      uint64
	}{
		{"off", Config{Offload: OffloadOff}, allTap, base},
		{"csum", Config{Offload: OffloadCsum}, allTap, base | FCsum | FGuestCsum | FCtrlGuestOffloads},
		{"on", Config{Offload: OffloadOn}, allTap, base | FCsum | FGuestCsum | FCtrlGuestOffloads |
			FHostTSO4 | FHostTSO6 | FHostECN | FGuestTSO4 | FGuestTSO6 | FGuestECN |
			FHostUFO | FGuestUFO | FHostUSO | FGuestUSO4 | FGuestUSO6},
		{"on, no UFO/USO in kernel", Config{Offload: OffloadOn}, tap.OffloadCSUM | tap.OffloadTSO4 | tap.OffloadTSO6 | tap.OffloadTSOECN,
			base | FCsum | FGuestCsum | FCtrlGuestOffloads | FHostTSO4 | FHostTSO6 | FHostECN | FGuestTSO4 | FGuestTSO6 | FGuestECN},
		{"on, half USO", Config{Offload: OffloadOn}, tap.OffloadCSUM | tap.OffloadUSO4,
			base | FCsum | FGuestCsum | FCtrlGuestOffloads | FHostTSO4 | FHostTSO6 | FHostECN},
		{"on, tap without csum", Config{Offload: OffloadOn}, 0, base},
		{"mtu", Config{Offload: OffloadOff, MTU: 9000}, allTap, base | FMTU},
	}
	for _, tt := range tests {
		got := offeredFeatures(tt.cfg, tt.supported)
		if got != tt.want {
			t.Errorf("%s: offered %s, want %s", tt.name, FeatureString(got), FeatureString(tt.want))
		}
		// What is offered must itself be a valid set: a driver acking
		// everything must be accepted.
		if err := ValidateFeatures(got); err != nil {
			t.Errorf("%s: offered set is inconsistent: %v", tt.name, err)
		}
	}
}

func TestFeatureString(t *testing.T) {
	if got := FeatureString(FCsum | FGuestTSO4 | virtio.FVersion1 | 1<<50); got != "CSUM|GUEST_TSO4|VERSION_1|bit50" {
		t.Errorf("FeatureString = %q", got)
	}
	if got := OffloadString(tap.OffloadCSUM | tap.OffloadUSO6 | 0x100); got != "CSUM|USO6|0x100" {
		t.Errorf("OffloadString = %q", got)
	}
	for b := range featureNames {
		if bits.OnesCount64(b) != 1 {
			t.Errorf("feature name for %#x is not a single bit", b)
		}
	}
}

func TestParseOffloadMode(t *testing.T) {
	for s, want := range map[string]OffloadMode{"on": OffloadOn, "": OffloadOn, "off": OffloadOff, "csum": OffloadCsum} {
		got, err := ParseOffloadMode(s)
		if err != nil || got != want {
			t.Errorf("ParseOffloadMode(%q) = %v, %v", s, got, err)
		}
		if s != "" && got.String() != s {
			t.Errorf("%v.String() = %q", got, got.String())
		}
	}
	if _, err := ParseOffloadMode("tso"); err == nil {
		t.Error("ParseOffloadMode(tso) succeeded")
	}
}
