// Package harness is an in-process virtio-net guest for tests and
// benchmarks, in the spirit of QEMU's qtest/libqos: a Go driver that plays
// the guest against a real device model.
//
// It has three layers:
//
//   - Driver, the control plane (reset, feature negotiation, queue setup,
//     DRIVER_OK, notifications, configuration reads). The NIC drives its
//     device through a virtio PCI function (virtio/pcitransport) with
//     virtio/virtiotest/pcidriver, which finds the registers through the
//     capability list and BAR sizing and uses the legacy I/O BAR or the
//     modern capabilities, with MSI-X or INTx interrupts.
//   - NIC, the data plane of a virtio-net driver: it negotiates features
//     the way a given guest driver does, lays out rings in guest memory,
//     posts receive buffers and transmit chains, reassembles mergeable
//     frames and checks every received header against what it negotiated.
//   - NetEnv and Bridge, which give that driver a real Linux network stack:
//     the device's backend is tap A in namespace NA (the host side), and
//     the bridge moves frames between the NIC's queues and tap B in
//     namespace NB (the guest side), whose offloads follow the transmit
//     offloads the driver acked, so NB's stack produces the same headers a
//     Linux guest with those features would.
package nettest

import (
	"github.com/govmd/govmd/virtio/virtiotest"
	"github.com/govmd/govmd/virtio/virtiotest/pcidriver"
)

// Driver is the control plane of one virtio device as a guest driver sees
// it: the register accesses of the initialization sequence (virtio 1.x
// section 3.1) and of a reset, without the data path.
//
// An implementation drives either the modern (1.x) or the legacy (0.9.5)
// interface of the device, as Legacy reports (pcidriver.Driver is the one
// the NIC uses). An implementation must:
//   - Reset: write 0 to device_status; return once the device reads 0.
//   - DeviceFeatures: read all 64 (legacy: 32) offered feature bits.
//   - Negotiate: set ACKNOWLEDGE, then DRIVER, write exactly the given
//     driver features, and (modern) set FEATURES_OK and read it back;
//     report false if the device cleared it. Legacy has no FEATURES_OK:
//     return true, the device checks the features at DRIVER_OK.
//   - QueueMax and SetupQueue: select the queue; modern: program size,
//     the three ring addresses, the queue's MSI-X vector and
//     queue_enable; legacy: the queue must have its maximum size and is
//     given as the page frame number of the ring's descriptor table, the
//     available ring right after it and the used ring at the next 4 KiB
//     boundary, as the device computes them from the PFN
//     (virtiotest.NewRing lays out rings that way for both interfaces).
//   - DriverOK: set DRIVER_OK and return an error if the device then
//     reports DEVICE_NEEDS_RESET or FAILED.
//   - Notify: notify queue q (queue_notify register or notification
//     area); ReadConfig: read device-specific configuration bytes.
//
// Methods are called from one goroutine at a time, except Notify and
// Status, which the harness calls concurrently from its data-path
// goroutines.
type Driver interface {
	Legacy() bool
	Reset()
	DeviceFeatures() uint64
	Negotiate(features uint64) (accepted bool, err error)
	QueueMax(q int) uint16
	SetupQueue(q int, r *virtiotest.Ring) error
	DriverOK() error
	Notify(q int)
	ReadConfig(off int, p []byte)
	Status() uint8
}

var _ Driver = (*pcidriver.Driver)(nil)
