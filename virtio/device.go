package virtio

import (
	"github.com/govmd/govmd/internal/eventfd"
	"github.com/govmd/govmd/memory"
)

// Device is a virtio device model, driven by a transport through Common.
//
// Lifecycle: the transport owns feature negotiation and queue configuration
// until the driver sets DRIVER_OK. Then it calls Activate, and the device
// owns the queues until Reset. Activate and Reset are called from vCPU
// goroutines with no other call in progress; ReadConfig and WriteConfig may be
// called at any time, concurrently with the device's own goroutines.
type Device interface {
	// Type returns the virtio device ID.
	Type() DeviceType
	// Features returns the feature bits the device offers, including
	// VIRTIO_F_VERSION_1. A legacy transport masks what it cannot offer.
	Features() uint64
	// QueueSizes returns the maximum size of each queue; its length is the
	// number of queues.
	QueueSizes() []uint16
	// ConfigSize returns the size of the device-specific configuration.
	ConfigSize() int
	// ReadConfig and WriteConfig access the device-specific configuration.
	// Out-of-range accesses read zeros and are ignored.
	ReadConfig(off uint64, data []byte)
	WriteConfig(off uint64, data []byte)
	// Activate starts the device with the negotiated features and the
	// driver's queues. It must not block. An error leaves the device
	// inactive; the transport then sets DEVICE_NEEDS_RESET.
	Activate(a Activation) error
	// Reset stops the device's goroutines, waits for them to exit and
	// returns the device to its initial state.
	Reset()
}

// FeatureValidator is implemented by devices whose feature bits depend on
// each other. ValidateFeatures reports why an acked feature set is not
// acceptable (for example GUEST_TSO4 without GUEST_CSUM); the transport then
// refuses FEATURES_OK.
type FeatureValidator interface {
	ValidateFeatures(acked uint64) error
}

// Activation is what a device receives at DRIVER_OK.
type Activation struct {
	// Features are the negotiated feature bits. VIRTIO_F_VERSION_1 is set
	// if and only if the driver uses the modern (1.x) interface.
	Features uint64
	Mem      *memory.Memory
	// Queues holds the queues the driver enabled, by index; nil for a
	// queue the driver left disabled.
	Queues []*Queue
	// Kicks holds, by queue index, the eventfd the driver's notifications
	// arrive on (written by KVM through an ioeventfd, or by the transport).
	Kicks []*eventfd.EventFD
	// Transport is how the device signals the driver.
	Transport Transport
}

// Transport is the device's view of its transport: interrupts and error
// reporting. Its methods are safe for concurrent use and do not block.
type Transport interface {
	// Notify sends a used-buffer notification for queue q.
	Notify(q int)
	// ConfigChanged tells the driver the device configuration changed.
	ConfigChanged()
	// NeedsReset reports a device error (usually a driver mistake): the
	// device sets DEVICE_NEEDS_RESET and stops using its queues until the
	// driver resets it.
	NeedsReset(reason error)
}

// InterruptFDs is implemented by transports that can give a queue's
// used-buffer interrupt as an eventfd (a KVM irqfd whose route follows the
// guest's MSI-X table), so that a device served by another process (a
// vhost-user backend) interrupts the guest without passing through this
// one.
type InterruptFDs interface {
	// InterruptFD returns the eventfd that raises queue q's interrupt,
	// valid until the device is reset; ok is false when the queue's
	// interrupts must go through Notify (INTx, no vector, a masked
	// vector, no irqfd).
	InterruptFD(q int) (fd int, ok bool)
}
