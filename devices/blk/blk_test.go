package blk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/govmd/govmd/internal/eventfd"
	"github.com/govmd/govmd/virtio"
)

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	file := func(name string, size int) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, make([]byte, size), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := file("good.img", 4096)
	tests := []struct {
		name  string
		path  string
		opts  Options
		want  string
		errno error
	}{
		{name: "missing", path: filepath.Join(dir, "missing.img"), want: "no such file or directory", errno: fs.ErrNotExist},
		{name: "directory", path: dir, want: "is a directory", errno: unix.EISDIR},
		{name: "directory read-only", path: dir, opts: Options{ReadOnly: true}, want: "is a directory", errno: unix.EISDIR},
		{name: "empty", path: file("empty.img", 0), want: "empty file (size 0)"},
		{name: "not a sector multiple", path: file("odd.img", 1000), want: "size 1000 bytes is not a multiple of 512"},
		{name: "character device", path: "/dev/null", opts: Options{ReadOnly: true}, want: "not a regular file or block device"},
		{name: "serial too long", path: good, opts: Options{Serial: strings.Repeat("x", 21)}, want: "longer than 20 bytes"},
		{name: "serial not ASCII", path: good, opts: Options{Serial: "disk\u00e9"}, want: "not printable ASCII"},
		{name: "queue size not a power of two", path: good, opts: Options{QueueSize: 100}, want: "queue size 100"},
		{name: "queue size too small", path: good, opts: Options{QueueSize: 2}, want: "queue size 2"},
		{name: "too many queues", path: good, opts: Options{Queues: MaxQueues + 1}, want: "queues"},
		{name: "negative queues", path: good, opts: Options{Queues: -1}, want: "queues"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := Open(tt.path, tt.opts)
			if err == nil {
				d.Close()
				t.Fatal("Open succeeded")
			}
			checkOneLine(t, err, tt.path, tt.want)
			if tt.errno != nil && !errors.Is(err, tt.errno) {
				t.Errorf("error %v does not wrap %v", err, tt.errno)
			}
		})
	}
}

func checkOneLine(t *testing.T, err error, path, want string) {
	t.Helper()
	msg := err.Error()
	if strings.Contains(msg, "\n") {
		t.Errorf("error is not one line: %q", msg)
	}
	if !strings.Contains(msg, path) {
		t.Errorf("error %q does not name %s", msg, path)
	}
	if !strings.Contains(msg, want) {
		t.Errorf("error %q does not say %q", msg, want)
	}
	if strings.Count(msg, path) > 1 {
		t.Errorf("error %q repeats the path", msg)
	}
}

// TestOpenPermissionDenied opens an image the caller may not read. Root
// bypasses file permissions, so as root the open is made from a thread whose
// file-system uid is 65534 (setfsuid drops the DAC override capabilities of
// that thread only): the kernel's permission check is real either way.
func TestOpenPermissionDenied(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "secret.img")
	if err := os.WriteFile(path, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 {
		if err := os.Chmod(path, 0); err != nil {
			t.Fatal(err)
		}
		_, err := Open(path, Options{ReadOnly: true})
		if err == nil {
			t.Fatal("Open succeeded")
		}
		checkOneLine(t, err, path, "permission denied")
		return
	}
	for _, ro := range []bool{true, false} {
		err := openAsUser(t, 65534, path, Options{ReadOnly: ro})
		if err == nil {
			t.Fatal("Open succeeded")
		}
		checkOneLine(t, err, path, "permission denied")
		if !errors.Is(err, fs.ErrPermission) {
			t.Errorf("error %v does not wrap EACCES", err)
		}
	}
}

// openAsUser calls Open on a dedicated OS thread whose file-system uid is
// uid. The thread is never unlocked, so it exits with the goroutine and its
// credentials cannot leak to other goroutines.
func openAsUser(t *testing.T, uid int, path string, opts Options) error {
	t.Helper()
	res := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		unix.Setfsuid(uid)
		if cur, _ := unix.SetfsuidRetUid(-1); cur != uid {
			res <- fmt.Errorf("setup: fsuid is %d, want %d", cur, uid)
			return
		}
		d, err := Open(path, opts)
		if err == nil {
			d.Close()
		}
		res <- err
	}()
	err := <-res
	if err != nil && strings.HasPrefix(err.Error(), "setup:") {
		t.Skip(err)
	}
	return err
}

func TestOpenLocked(t *testing.T) {
	path := writeImage(t, make([]byte, 4096))
	d, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, ro := range []bool{false, true} {
		_, err := Open(path, Options{ReadOnly: ro})
		if err == nil {
			t.Fatalf("second Open (read-only %v) succeeded", ro)
		}
		checkOneLine(t, err, path, "in use by another process")
	}
	d.Close()
	// Shared locks for read-only users.
	r1, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r1.Close()
	r2, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if _, err := Open(path, Options{}); err == nil {
		t.Fatal("read-write Open of an image open read-only succeeded")
	}
}

func TestConfig(t *testing.T) {
	tests := []struct {
		name     string
		opts     Options
		size     int
		features uint64 // must be offered
		absent   uint64 // must not be offered
		check    func(t *testing.T, cfg []byte)
	}{
		{
			name: "read-write", size: 3 << 20,
			features: FSizeMax | FSegMax | FBlkSize | FFlush | FDiscard | FWriteZeroes |
				virtio.FRingEventIdx | virtio.FRingIndirect | virtio.FVersion1,
			absent: FRO | FMQ | FGeometry | FTopology | FConfigWCE,
			check: func(t *testing.T, c []byte) {
				le := binary.LittleEndian
				want := []struct {
					name string
					got  uint64
					want uint64
				}{
					{"capacity", le.Uint64(c[0:]), 3 << 11},
					{"size_max", uint64(le.Uint32(c[8:])), SizeMax},
					{"seg_max", uint64(le.Uint32(c[12:])), DefaultQueueSize - 2},
					{"geometry", uint64(le.Uint32(c[16:])), 0},
					{"blk_size", uint64(le.Uint32(c[20:])), 512},
					{"topology", le.Uint64(c[24:]), 0},
					{"writeback+unused0", uint64(le.Uint16(c[32:])), 0},
					{"num_queues", uint64(le.Uint16(c[34:])), 0},
					{"max_discard_sectors", uint64(le.Uint32(c[36:])), MaxDiscardSectors},
					{"max_discard_seg", uint64(le.Uint32(c[40:])), MaxDiscardSeg},
					{"discard_sector_alignment", uint64(le.Uint32(c[44:])), DiscardSectorAlignment},
					{"max_write_zeroes_sectors", uint64(le.Uint32(c[48:])), MaxWriteZeroesSectors},
					{"max_write_zeroes_seg", uint64(le.Uint32(c[52:])), MaxWriteZeroesSeg},
					{"write_zeroes_may_unmap", uint64(c[56]), 1},
					{"unused1", uint64(c[57]) | uint64(c[58])<<8 | uint64(c[59])<<16, 0},
				}
				for _, w := range want {
					if w.got != w.want {
						t.Errorf("%s = %d, want %d", w.name, w.got, w.want)
					}
				}
			},
		},
		{
			name: "read-only multiqueue", size: 4096, opts: Options{ReadOnly: true, Queues: 4, QueueSize: 64},
			features: FRO | FMQ | FFlush, absent: FDiscard | FWriteZeroes,
			check: func(t *testing.T, c []byte) {
				le := binary.LittleEndian
				if le.Uint64(c[0:]) != 8 || le.Uint32(c[12:]) != 62 || le.Uint16(c[34:]) != 4 {
					t.Errorf("capacity %d seg_max %d num_queues %d", le.Uint64(c[0:]), le.Uint32(c[12:]), le.Uint16(c[34:]))
				}
				if !bytes.Equal(c[36:60], make([]byte, 24)) {
					t.Errorf("discard fields set on a read-only disk: % x", c[36:60])
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := Open(writeImage(t, make([]byte, tt.size)), tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if d.Type() != virtio.DeviceBlock || d.ConfigSize() != ConfigSize {
				t.Fatalf("type %d config size %d", d.Type(), d.ConfigSize())
			}
			if f := d.Features(); f&tt.features != tt.features || f&tt.absent != 0 {
				t.Errorf("features %#x", f)
			}
			if len(d.QueueSizes()) != max(tt.opts.Queues, 1) {
				t.Errorf("queue sizes %v", d.QueueSizes())
			}
			cfg := make([]byte, ConfigSize)
			d.ReadConfig(0, cfg)
			tt.check(t, cfg)
			// Byte-wise reads agree; reads past the end are zero.
			for off := 0; off < ConfigSize+8; off++ {
				var b [1]byte
				b[0] = 0xff
				d.ReadConfig(uint64(off), b[:])
				want := byte(0)
				if off < ConfigSize {
					want = cfg[off]
				}
				if b[0] != want {
					t.Fatalf("byte %d = %#x, want %#x", off, b[0], want)
				}
			}
			var tail [8]byte
			d.ReadConfig(ConfigSize-4, tail[:])
			if !bytes.Equal(tail[:4], cfg[ConfigSize-4:]) || [4]byte(tail[4:]) != [4]byte{} {
				t.Errorf("straddling read % x", tail)
			}
			d.ReadConfig(^uint64(0), tail[:])
			// Writes are ignored and counted.
			d.WriteConfig(cfgCapacity, []byte{1, 2, 3, 4, 5, 6, 7, 8})
			d.WriteConfig(cfgWriteback, []byte{1})
			after := make([]byte, ConfigSize)
			d.ReadConfig(0, after)
			if !bytes.Equal(after, cfg) {
				t.Error("configuration changed by a driver write")
			}
			if d.Stats().GuestFaults != 2 {
				t.Errorf("stats %v", d.Stats())
			}
		})
	}
}

// TestWriteback checks the writeback field follows the negotiated FLUSH.
func TestWriteback(t *testing.T) { forTransports(t, testWriteback) }

func testWriteback(t *testing.T, tr transport) {
	for _, flush := range []bool{true, false} {
		e := newEnv(t, envConfig{transport: tr, acked: func(f uint64) uint64 {
			if !flush {
				return f &^ FFlush
			}
			return f
		}})
		var wb [1]byte
		e.drv.ReadConfig(cfgWriteback, wb[:])
		if want := map[bool]byte{true: 1, false: 0}[flush]; wb[0] != want {
			t.Errorf("flush %v: writeback %d, want %d", flush, wb[0], want)
		}
		e.drv.Reset()
		e.drv.ReadConfig(cfgWriteback, wb[:])
		if wb[0] != 0 {
			t.Errorf("writeback %d after reset", wb[0])
		}
	}
}

func TestActivateErrors(t *testing.T) {
	d, err := Open(writeImage(t, make([]byte, 4096)), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, a := range []virtio.Activation{
		{},
		{Queues: []*virtio.Queue{{}}, Kicks: []*eventfd.EventFD{nil}},
	} {
		if err := d.Activate(a); err == nil {
			t.Fatalf("Activate(%+v) succeeded", a)
		}
		var wb [1]byte
		d.ReadConfig(cfgWriteback, wb[:])
		if d.workers.Running() || wb[0] != 0 {
			t.Fatal("failed activation left state behind")
		}
	}
	// No queue enabled: active and idle.
	if err := d.Activate(virtio.Activation{Queues: []*virtio.Queue{nil}, Kicks: []*eventfd.EventFD{nil}}); err != nil {
		t.Fatal(err)
	}
	d.Reset()
}

func TestLifecycle(t *testing.T) {
	e := newEnv(t, envConfig{})
	if err := e.dev.Activate(virtio.Activation{}); err == nil {
		t.Fatal("second Activate succeeded")
	}
	e.dev.Reset()
	e.dev.Reset() // idempotent
	if err := e.dev.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.dev.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := e.dev.Activate(virtio.Activation{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Activate after Close = %v", err)
	}
	if e.dev.Serial() != "disk.img" || e.dev.Capacity() != capSectors || e.dev.ReadOnly() || e.dev.Path() != e.path {
		t.Errorf("accessors: %q %d %v %q", e.dev.Serial(), e.dev.Capacity(), e.dev.ReadOnly(), e.dev.Path())
	}
}

func TestSerialFromPath(t *testing.T) {
	tests := []struct{ path, want string }{
		{"/images/root.img", "root.img"},
		{"rel/dir/a-very-long-image-name-indeed.raw", "a-very-long-image-na"},
		{"/x/d\u00e9j\u00e0.img", "d__j__.img"},
		{"/x/tab\there", "tab_here"},
	}
	for _, tt := range tests {
		if got := serialFromPath(tt.path); got != tt.want {
			t.Errorf("serialFromPath(%q) = %q, want %q", tt.path, got, tt.want)
		}
	}
}

func TestStatsString(t *testing.T) {
	s := Stats{Reads: 1, Writes: 2, Flushes: 3, Discards: 4, WriteZeroes: 5, GetIDs: 6,
		BytesRead: 7, BytesWritten: 8, Errors: 9, Unsupported: 10, GuestFaults: 11}
	want := "reads=1 writes=2 flushes=3 discards=4 write_zeroes=5 get_id=6 bytes_read=7 bytes_written=8 errors=9 unsupported=10 guest_faults=11"
	if s.String() != want {
		t.Errorf("String() = %q", s.String())
	}
}

// TestBlockDevice runs requests against a loop block device.
func TestBlockDevice(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop devices")
	}
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no loop devices: %v", err)
	}
	defer ctl.Close()
	backing := writeImage(t, pattern(testImage))
	bf, err := os.OpenFile(backing, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer bf.Close()
	var loop string
	var lf *os.File
	for try := 0; try < 10 && lf == nil; try++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			t.Skipf("LOOP_CTL_GET_FREE: %v", err)
		}
		loop = fmt.Sprintf("/dev/loop%d", n)
		f, err := os.OpenFile(loop, os.O_RDWR, 0)
		if err != nil {
			t.Skipf("open %s: %v", loop, err)
		}
		if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_SET_FD, int(bf.Fd())); err != nil {
			f.Close()
			if errors.Is(err, unix.EBUSY) {
				continue // raced with another user
			}
			t.Skipf("LOOP_SET_FD: %v", err)
		}
		lf = f
	}
	if lf == nil {
		t.Skip("no free loop device")
	}
	defer func() {
		unix.IoctlSetInt(int(lf.Fd()), unix.LOOP_CLR_FD, 0)
		lf.Close()
	}()

	e := newEnv(t, envConfig{path: loop})
	if e.dev.Capacity() != capSectors {
		t.Fatalf("capacity %d, want %d", e.dev.Capacity(), capSectors)
	}
	if e.dev.Serial() != filepath.Base(loop) {
		t.Errorf("serial %q", e.dev.Serial())
	}
	in := hdr(TypeIn, 3)
	got, _ := e.do(in, 1025, simple(in, 1025))
	if got[1024] != StatusOK || !bytes.Equal(got[:1024], pattern(testImage)[3*512:5*512]) {
		t.Fatal("read from block device")
	}
	data := bytes.Repeat([]byte{0x42}, 1024)
	out := cat(hdr(TypeOut, 3), data)
	if got, _ := e.do(out, 1, simple(out, 1)); got[0] != StatusOK {
		t.Fatalf("write status %d", got[0])
	}
	wz := cat(hdr(TypeWriteZeroes, 0), seg(4, 1, 0))
	if got, _ := e.do(wz, 1, simple(wz, 1)); got[0] != StatusOK {
		t.Fatalf("write zeroes status %d", got[0])
	}
	flush := hdr(TypeFlush, 0)
	if got, _ := e.do(flush, 1, simple(flush, 1)); got[0] != StatusOK {
		t.Fatalf("flush status %d", got[0])
	}
	got, _ = e.do(in, 1025, simple(in, 1025))
	if !bytes.Equal(got[:1024], append(data[:512], make([]byte, 512)...)) {
		t.Fatal("block device content after write and write zeroes")
	}
	past := hdr(TypeIn, capSectors)
	if got, _ := e.do(past, 513, simple(past, 513)); got[512] != StatusIOErr {
		t.Fatal("read past the end of the block device succeeded")
	}
}
