// Package blk is the virtio-blk device model (virtio 1.x section 5.2) over a
// raw disk image: a regular file or a block device, addressed in 512-byte
// sectors.
//
// Each request queue is served by its own goroutine, woken by the queue's
// notification eventfd; vCPUs never wait for disk I/O. Data moves with
// preadv/pwritev directly between the image and the guest's buffers.
//
// Requests are untrusted guest input. Their headers may be split across
// descriptors, their data spread over many segments and the status byte may
// share a descriptor with data; every sector range is checked against the
// capacity. A malformed request is completed with VIRTIO_BLK_S_IOERR; a
// request without a writable status byte cannot be completed at all, so the
// device reports DEVICE_NEEDS_RESET and stops using that queue.
//
// Durability: a completed FLUSH means every write completed before it is on
// stable storage (fdatasync returned). If the driver did not negotiate
// VIRTIO_BLK_F_FLUSH, writes are synced before they are completed
// (write-through), as the specification requires. If a sync ever fails the
// device stops accepting writes and flushes (VIRTIO_BLK_S_IOERR) until it is
// closed: after a failed fdatasync the kernel may have dropped dirty pages, so
// no later success could be trusted.
package blk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/govmd/govmd/internal/ratelimit"
	"github.com/govmd/govmd/virtio"
)

// Feature bits (virtio 1.x section 5.2.3).
const (
	FSizeMax     = 1 << 1
	FSegMax      = 1 << 2
	FGeometry    = 1 << 4
	FRO          = 1 << 5
	FBlkSize     = 1 << 6
	FFlush       = 1 << 9
	FTopology    = 1 << 10
	FConfigWCE   = 1 << 11
	FMQ          = 1 << 12
	FDiscard     = 1 << 13
	FWriteZeroes = 1 << 14
)

// Request types.
const (
	TypeIn          = 0
	TypeOut         = 1
	TypeFlush       = 4
	TypeGetID       = 8
	TypeDiscard     = 11
	TypeWriteZeroes = 13
)

// Request status values.
const (
	StatusOK     = 0
	StatusIOErr  = 1
	StatusUnsupp = 2
)

// Sizes fixed by the specification.
const (
	SectorSize = 512
	// IDBytes is the length of the device ID string (VIRTIO_BLK_ID_BYTES).
	IDBytes = 20
	// FlagUnmap is the unmap bit of a discard/write-zeroes segment.
	FlagUnmap = 1

	headerSize  = 16 // struct virtio_blk_req without data and status
	segmentSize = 16 // struct virtio_blk_discard_write_zeroes
)

// Limits the device advertises in its configuration space. Requests are
// checked against them.
const (
	// SizeMax is the largest data segment (size_max).
	SizeMax = 1 << 20
	// MaxDiscardSectors and MaxWriteZeroesSectors bound the total number
	// of sectors of one discard or write-zeroes request.
	MaxDiscardSectors     = 1 << 22
	MaxWriteZeroesSectors = 1 << 22
	// MaxDiscardSeg and MaxWriteZeroesSeg bound the number of segments of
	// one discard or write-zeroes request.
	MaxDiscardSeg     = 64
	MaxWriteZeroesSeg = 64
	// DiscardSectorAlignment is the discard granularity hint (4 KiB).
	DiscardSectorAlignment = 8

	// DefaultQueueSize is the queue size used when Options.QueueSize is 0.
	DefaultQueueSize = 256
	// MaxQueues bounds Options.Queues.
	MaxQueues = 64
)

// Offsets in struct virtio_blk_config.
const (
	cfgCapacity              = 0
	cfgSizeMax               = 8
	cfgSegMax                = 12
	cfgGeometry              = 16
	cfgBlkSize               = 20
	cfgTopology              = 24
	cfgWriteback             = 32
	cfgNumQueues             = 34
	cfgMaxDiscardSectors     = 36
	cfgMaxDiscardSeg         = 40
	cfgDiscardAlignment      = 44
	cfgMaxWriteZeroesSectors = 48
	cfgMaxWriteZeroesSeg     = 52
	cfgWriteZeroesMayUnmap   = 56
	// ConfigSize is the size of the configuration the device exposes: up
	// to and including unused1 (the secure-erase and zoned fields belong
	// to features the device does not offer).
	ConfigSize = 60
)

// Options configures a disk.
type Options struct {
	// ReadOnly opens the image read-only and offers VIRTIO_BLK_F_RO.
	ReadOnly bool
	// Serial is the device ID string returned by GET_ID: printable ASCII,
	// at most IDBytes bytes. Empty means derived from the file name.
	Serial string
	// Log receives the device's messages; nil discards them.
	Log *slog.Logger
	// QueueSize is the maximum size of each queue, a power of two from 4
	// to 32768; 0 means DefaultQueueSize.
	QueueSize uint16
	// Queues is the number of request queues; 0 means 1. With more than
	// one the device offers VIRTIO_BLK_F_MQ.
	Queues int
}

// Device is a virtio-blk disk backed by an image file. It implements
// virtio.Device.
//
// Lifecycle: Open, then a transport drives Activate and Reset (never
// concurrently with each other), then Close. ReadConfig, WriteConfig, Stats
// and the other accessors are safe for concurrent use at any time.
type Device struct {
	path      string
	f         *os.File
	be        backend
	readOnly  bool
	serial    [IDBytes]byte
	capacity  uint64 // in sectors
	queueSize uint16
	queues    int
	features  uint64
	log       *slog.Logger
	guestLog  *ratelimit.Logger // driver mistakes
	ioLog     *ratelimit.Logger // host I/O errors

	cfgMu sync.Mutex
	cfg   [ConfigSize]byte

	// syncFailed latches the first failed fdatasync: from then on writes
	// and flushes fail (see the package documentation).
	syncFailed atomic.Bool
	// noPunch and noZeroRange remember that the file system refused a
	// fallocate mode, so it is not tried again.
	noPunch     atomic.Bool
	noZeroRange atomic.Bool

	stats counters

	mu      sync.Mutex // guards closed; held by Activate, Reset and Close
	closed  bool
	workers virtio.Workers
}

var _ virtio.Device = (*Device)(nil)

// ErrClosed is returned by Activate after Close.
var ErrClosed = errors.New("blk: device closed")

// Open opens a raw disk image and returns a device for it. Every error is one
// line naming the path.
func Open(path string, opts Options) (*Device, error) {
	qsize := opts.QueueSize
	if qsize == 0 {
		qsize = DefaultQueueSize
	}
	if qsize < 4 || qsize > virtio.MaxQueueSize || qsize&(qsize-1) != 0 {
		return nil, fmt.Errorf("disk %s: queue size %d is not a power of two from 4 to %d", path, qsize, virtio.MaxQueueSize)
	}
	queues := opts.Queues
	if queues == 0 {
		queues = 1
	}
	if queues < 1 || queues > MaxQueues {
		return nil, fmt.Errorf("disk %s: %d queues (want 1 to %d)", path, queues, MaxQueues)
	}
	serial := opts.Serial
	if serial == "" {
		serial = serialFromPath(path)
	} else if err := checkSerial(serial); err != nil {
		return nil, fmt.Errorf("disk %s: serial %q: %w", path, serial, err)
	}

	f, size, err := openImage(path, opts.ReadOnly)
	if err != nil {
		return nil, err
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("disk", path)
	d := &Device{
		path:      path,
		f:         f,
		be:        newFileBackend(f),
		readOnly:  opts.ReadOnly,
		capacity:  uint64(size) / SectorSize,
		queueSize: qsize,
		queues:    queues,
		log:       log,
		guestLog:  ratelimit.New(log, 10*time.Second, 10),
		ioLog:     ratelimit.New(log, 10*time.Second, 10),
	}
	copy(d.serial[:], serial)
	d.features = FSizeMax | FSegMax | FBlkSize | FFlush |
		virtio.FRingEventIdx | virtio.FRingIndirect | virtio.FAnyLayout | virtio.FVersion1
	if d.readOnly {
		d.features |= FRO
	} else {
		d.features |= FDiscard | FWriteZeroes
	}
	if queues > 1 {
		d.features |= FMQ
	}
	d.initConfig()
	return d, nil
}

// openImage opens and checks the image: a regular file or block device whose
// size is a non-zero multiple of 512. It takes an advisory lock (shared for
// read-only, exclusive otherwise) so that two VMs cannot write one image, and
// opens a writable block device with O_EXCL so that a mounted one is refused.
func openImage(path string, readOnly bool) (*os.File, int64, error) {
	flags, lock := os.O_RDWR, unix.LOCK_EX
	if readOnly {
		flags, lock = os.O_RDONLY, unix.LOCK_SH
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0 && !readOnly {
		// An exclusive open of a block device fails if it is mounted
		// or in use by another exclusive opener.
		flags |= unix.O_EXCL
	}
	f, err := os.OpenFile(path, flags, 0)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the errno; the path is in our message
		}
		if errors.Is(err, unix.EBUSY) {
			return nil, 0, fmt.Errorf("disk image %s: block device in use (mounted or opened exclusively): %w", path, err)
		}
		return nil, 0, fmt.Errorf("disk image %s: %w", path, err)
	}
	fail := func(format string, args ...any) (*os.File, int64, error) {
		f.Close()
		return nil, 0, fmt.Errorf("disk image %s: "+format, append([]any{path}, args...)...)
	}
	fi, err := f.Stat()
	if err != nil {
		return fail("%w", err)
	}
	var size int64
	switch mode := fi.Mode(); {
	case mode.IsRegular():
		size = fi.Size()
	case mode.IsDir():
		return fail("%w", unix.EISDIR)
	case mode&os.ModeDevice != 0 && mode&os.ModeCharDevice == 0:
		size, err = f.Seek(0, io.SeekEnd)
		if err != nil {
			return fail("size of block device: %w", err)
		}
	default:
		return fail("not a regular file or block device (%v)", mode.Type())
	}
	switch {
	case size == 0:
		return fail("empty file (size 0)")
	case size%SectorSize != 0:
		return fail("size %d bytes is not a multiple of %d", size, SectorSize)
	}
	if err := unix.Flock(int(f.Fd()), lock|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return fail("in use by another process (locked)")
		}
		return fail("lock: %w", os.NewSyscallError("flock", err))
	}
	return f, size, nil
}

// serialFromPath derives a device ID from the file name: at most IDBytes
// bytes, non-printable or non-ASCII bytes replaced by '_'.
func serialFromPath(path string) string {
	b := []byte(filepath.Base(path))
	if len(b) > IDBytes {
		b = b[:IDBytes]
	}
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			b[i] = '_'
		}
	}
	return string(b)
}

func checkSerial(s string) error {
	if len(s) > IDBytes {
		return fmt.Errorf("longer than %d bytes", IDBytes)
	}
	for _, c := range []byte(s) {
		if c < 0x20 || c > 0x7e {
			return errors.New("not printable ASCII")
		}
	}
	return nil
}

func (d *Device) initConfig() {
	le := binary.LittleEndian
	c := d.cfg[:]
	le.PutUint64(c[cfgCapacity:], d.capacity)
	le.PutUint32(c[cfgSizeMax:], SizeMax)
	le.PutUint32(c[cfgSegMax:], d.segMax())
	// geometry and topology stay zero (GEOMETRY and TOPOLOGY not offered).
	le.PutUint32(c[cfgBlkSize:], SectorSize)
	if d.queues > 1 {
		le.PutUint16(c[cfgNumQueues:], uint16(d.queues))
	}
	if !d.readOnly {
		le.PutUint32(c[cfgMaxDiscardSectors:], MaxDiscardSectors)
		le.PutUint32(c[cfgMaxDiscardSeg:], MaxDiscardSeg)
		le.PutUint32(c[cfgDiscardAlignment:], DiscardSectorAlignment)
		le.PutUint32(c[cfgMaxWriteZeroesSectors:], MaxWriteZeroesSectors)
		le.PutUint32(c[cfgMaxWriteZeroesSeg:], MaxWriteZeroesSeg)
		c[cfgWriteZeroesMayUnmap] = 1
	}
}

// segMax is the advertised seg_max: a chain holds at most queueSize
// descriptors, and the header and status byte need one each.
func (d *Device) segMax() uint32 { return uint32(d.queueSize) - 2 }

// Path returns the image path.
func (d *Device) Path() string { return d.path }

// Capacity returns the disk size in 512-byte sectors.
func (d *Device) Capacity() uint64 { return d.capacity }

// ReadOnly reports whether the disk is read-only.
func (d *Device) ReadOnly() bool { return d.readOnly }

// Serial returns the device ID string.
func (d *Device) Serial() string {
	n := 0
	for n < IDBytes && d.serial[n] != 0 {
		n++
	}
	return string(d.serial[:n])
}

// Type returns virtio.DeviceBlock.
func (d *Device) Type() virtio.DeviceType { return virtio.DeviceBlock }

// Features returns the offered feature bits.
func (d *Device) Features() uint64 { return d.features }

// QueueSizes returns the maximum size of each request queue.
func (d *Device) QueueSizes() []uint16 {
	s := make([]uint16, d.queues)
	for i := range s {
		s[i] = d.queueSize
	}
	return s
}

// ConfigSize returns the size of struct virtio_blk_config as exposed.
func (d *Device) ConfigSize() int { return ConfigSize }

// ReadConfig reads the configuration; bytes out of range read as zero.
func (d *Device) ReadConfig(off uint64, data []byte) {
	clear(data)
	if off >= ConfigSize {
		return
	}
	d.cfgMu.Lock()
	copy(data, d.cfg[off:])
	d.cfgMu.Unlock()
}

// WriteConfig ignores the write: the configuration is read-only (the device
// does not offer VIRTIO_BLK_F_CONFIG_WCE).
func (d *Device) WriteConfig(off uint64, data []byte) {
	d.stats.guestFaults.Add(1)
	d.guestLog.Warn("virtio-blk driver error", "err",
		fmt.Sprintf("write of %d bytes to read-only configuration at %#x ignored", len(data), off))
}

// Activate starts one worker goroutine per enabled request queue (queue 0
// only, unless VIRTIO_BLK_F_MQ was negotiated).
func (d *Device) Activate(a virtio.Activation) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	if d.workers.Running() {
		return errors.New("blk: already active")
	}
	n := 1
	if a.Features&FMQ != 0 {
		n = d.queues
	}
	if len(a.Queues) < n || len(a.Kicks) < n {
		return fmt.Errorf("blk: activation has %d queues and %d eventfds, want %d", len(a.Queues), len(a.Kicks), n)
	}
	for i := 0; i < n; i++ {
		if a.Queues[i] != nil && a.Kicks[i] == nil {
			return fmt.Errorf("blk: queue %d has no notification eventfd", i)
		}
	}
	wb := byte(0)
	if a.Features&FFlush != 0 {
		wb = 1 // the host page cache is a writeback cache; FLUSH empties it
	}
	d.cfgMu.Lock()
	d.cfg[cfgWriteback] = wb
	d.cfgMu.Unlock()

	var waits []virtio.Interruptible
	for i := 0; i < n; i++ {
		if a.Queues[i] != nil {
			waits = append(waits, a.Kicks[i])
		}
	}
	ctx := d.workers.Start(waits...)
	for i := 0; i < n; i++ {
		if a.Queues[i] != nil {
			d.workers.Go(ctx, newWorker(d, i, a).run)
		}
	}
	return nil
}

// Reset stops the workers, waits for them to exit and returns the device to
// its initial state. Requests popped but not completed are dropped (the
// driver is resetting the queues anyway).
func (d *Device) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.resetLocked()
}

func (d *Device) resetLocked() {
	if !d.workers.Running() {
		return
	}
	d.workers.Stop()
	d.cfgMu.Lock()
	d.cfg[cfgWriteback] = 0
	d.cfgMu.Unlock()
}

// Close stops the device, syncs the image so that completed writes are not
// lost, and closes it. It is idempotent. The transport must not use the
// device afterwards.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.resetLocked()
	d.closed = true
	var errs []error
	if !d.readOnly {
		if err := d.be.sync(); err != nil {
			errs = append(errs, fmt.Errorf("disk image %s: sync: %w", d.path, err))
		} else if d.syncFailed.Load() {
			errs = append(errs, fmt.Errorf("disk image %s: an earlier sync failed; writes may be lost", d.path))
		}
	}
	if err := d.f.Close(); err != nil {
		errs = append(errs, fmt.Errorf("disk image %s: %w", d.path, err))
	}
	return errors.Join(errs...)
}
