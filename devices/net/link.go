package net

import (
	"errors"
	"sync/atomic"

	"github.com/govmd/govmd/virtio"
)

// Link gives a virtio-net device (this package's Device, or a vhost-user
// frontend whose backend is one) a link state the VMM sets: with the link
// down, the status field of the configuration reads without
// VIRTIO_NET_S_LINK_UP, as if the cable were pulled. The caller tells the
// driver with a configuration-change interrupt (virtio.Transport's
// ConfigChanged). A driver sees the state only if it acked
// VIRTIO_NET_F_STATUS; without it Linux takes the link as always up.
//
// Link implements virtio.Device by forwarding to the device it wraps, and
// virtio.FeatureValidator when that device does.
type Link struct {
	virtio.Device
	down atomic.Bool
}

// ErrNoLinkStatus is returned by NewLink for a device that does not offer
// VIRTIO_NET_F_STATUS.
var ErrNoLinkStatus = errors.New("the NIC does not offer VIRTIO_NET_F_STATUS (no link state)")

// NewLink wraps dev, a virtio-net device, with its link up.
func NewLink(dev virtio.Device) (*Link, error) {
	if dev.Type() != virtio.DeviceNet {
		return nil, errors.New("not a virtio-net device")
	}
	if dev.Features()&FStatus == 0 {
		return nil, ErrNoLinkStatus
	}
	return &Link{Device: dev}, nil
}

// Up reports whether the link is up.
func (l *Link) Up() bool { return !l.down.Load() }

// SetUp sets the link state and reports whether it changed.
func (l *Link) SetUp(up bool) bool { return l.down.Swap(!up) == up }

// ReadConfig implements virtio.Device: the wrapped device's configuration,
// with LINK_UP cleared while the link is down.
func (l *Link) ReadConfig(off uint64, data []byte) {
	l.Device.ReadConfig(off, data)
	if !l.down.Load() || off > cfgStatus || off+uint64(len(data)) <= cfgStatus {
		return
	}
	data[cfgStatus-off] &^= statusLinkUp
}

// ValidateFeatures implements virtio.FeatureValidator.
func (l *Link) ValidateFeatures(acked uint64) error {
	if v, ok := l.Device.(virtio.FeatureValidator); ok {
		return v.ValidateFeatures(acked)
	}
	return nil
}
