// Package rng is a virtio entropy device (virtio-rng, device ID 4, virtio
// 1.x section 5.4): one request queue on which the driver posts
// device-writable buffers, which the device fills with random bytes from
// the host kernel (getrandom(2)) and completes.
//
// Guest input is hostile. A request is one descriptor chain; a chain with
// device-readable buffers or no writable byte is refused (completed with
// nothing written) and counted; a chain longer than MaxRequest is filled up
// to MaxRequest only (counted as capped), so that what one request costs
// the host does not depend on what the guest declares (the Firecracker
// #5762 class). RateLimit bounds the bytes per second over all requests:
// when it is reached the queue's worker waits, the vCPUs never do.
package rng

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/govmd/govmd/internal/ratelimit"
	"github.com/govmd/govmd/virtio"
)

// DeviceType is the virtio device ID of an entropy source.
const DeviceType virtio.DeviceType = 4

// Defaults and limits.
const (
	// DefaultMaxRequest is the most bytes one request gets by default:
	// Linux's hw_random core asks for 32 to 64 bytes at a time, a reader
	// of /dev/hwrng for up to the size of its read.
	DefaultMaxRequest = 64 << 10
	// DefaultRateLimit is the default ceiling, in bytes per second: far
	// above what a guest's entropy needs, low enough that a guest cannot
	// turn the device into a host CPU burner.
	DefaultRateLimit = 8 << 20
	// QueueSize is the request queue's size.
	QueueSize = 64
	// batchMax bounds the requests completed before they are published.
	batchMax = 16
)

// Config configures the device.
type Config struct {
	// MaxRequest caps the bytes one request is filled with (default
	// DefaultMaxRequest).
	MaxRequest int
	// RateLimit caps the bytes per second, with a burst of one second's
	// worth (default DefaultRateLimit; negative: no limit).
	RateLimit int64
	// Source fills a buffer with random bytes (default getrandom(2)).
	Source func(p []byte) (int, error)
	Log    *slog.Logger
}

// Device is a virtio-rng device. It implements virtio.Device.
//
// Lifecycle: New, then a transport drives Activate and Reset (never
// concurrently with each other), then Close. Stats is safe for concurrent
// use.
type Device struct {
	cfg   Config
	log   *slog.Logger
	glog  *ratelimit.Logger // driver mistakes
	stats counters

	mu      sync.Mutex // guards closed; held by Activate, Reset and Close
	closed  bool
	workers virtio.Workers
}

var _ virtio.Device = (*Device)(nil)

// ErrClosed is returned by Activate after Close.
var ErrClosed = errors.New("rng: device closed")

// New returns an entropy device.
func New(cfg Config) (*Device, error) {
	if cfg.MaxRequest == 0 {
		cfg.MaxRequest = DefaultMaxRequest
	}
	if cfg.MaxRequest < 1 || cfg.MaxRequest > 1<<20 {
		return nil, fmt.Errorf("rng: request cap %d out of range 1-1048576", cfg.MaxRequest)
	}
	if cfg.RateLimit == 0 {
		cfg.RateLimit = DefaultRateLimit
	}
	if cfg.Source == nil {
		cfg.Source = getrandom
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Device{cfg: cfg, log: cfg.Log, glog: ratelimit.New(cfg.Log, 10*time.Second, 10)}, nil
}

// getrandom fills p from the host kernel's random pool.
func getrandom(p []byte) (int, error) {
	for {
		n, err := unix.Getrandom(p, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, fmt.Errorf("getrandom: %w", err)
		}
		return n, nil
	}
}

// Type returns DeviceType.
func (d *Device) Type() virtio.DeviceType { return DeviceType }

// Features returns the offered feature bits.
func (d *Device) Features() uint64 {
	return virtio.FVersion1 | virtio.FRingEventIdx | virtio.FRingIndirect
}

// QueueSizes returns the request queue's size.
func (d *Device) QueueSizes() []uint16 { return []uint16{QueueSize} }

// ConfigSize returns 0: the device has no configuration.
func (d *Device) ConfigSize() int { return 0 }

// ReadConfig reads zeros.
func (d *Device) ReadConfig(_ uint64, data []byte) { clear(data) }

// WriteConfig counts the write as a driver mistake and ignores it.
func (d *Device) WriteConfig(off uint64, data []byte) {
	d.fault("write of %d bytes to the configuration at %#x (it has none)", len(data), off)
}

// Activate starts the request queue's worker.
func (d *Device) Activate(a virtio.Activation) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	if d.workers.Running() {
		return errors.New("rng: already active")
	}
	if len(a.Queues) < 1 || len(a.Kicks) < 1 || a.Queues[0] != nil && a.Kicks[0] == nil {
		return fmt.Errorf("rng: activation has %d queues and %d eventfds, want 1", len(a.Queues), len(a.Kicks))
	}
	if a.Queues[0] == nil {
		return nil // the driver enabled no queue: nothing to serve
	}
	ctx := d.workers.Start(a.Kicks[0])
	d.workers.Go(ctx, newWorker(d, a).run)
	return nil
}

// Reset stops the worker and waits for it.
func (d *Device) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.workers.Stop()
}

// Close stops the device. It is idempotent.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.workers.Stop()
	d.closed = true
	return nil
}

func (d *Device) fault(format string, args ...any) {
	d.stats.guestFaults.Add(1)
	d.glog.Warn("virtio-rng driver error", "err", fmt.Sprintf(format, args...))
}
