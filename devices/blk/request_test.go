package blk

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/govmd/govmd/virtio"
)

const capSectors = testImage / SectorSize

func zeroed(n int) []byte { return make([]byte, n) }

// TestRequests drives every request type and status path through a guest
// ring, with varied descriptor layouts, and checks the status byte, the
// used length, the data returned and the image afterwards.
func TestRequests(t *testing.T) { forTransports(t, testRequests) }

func testRequests(t *testing.T, tr transport) {
	orig := pattern(testImage)
	data1k := bytes.Repeat([]byte("0123456789abcdef"), 64) // 1024 bytes
	data4k := bytes.Repeat([]byte("write in many segments!"), 179)[:4096]

	type tc struct {
		name     string
		opts     Options
		acked    func(uint64) uint64
		readable []byte
		writeLen int
		spec     *chainSpec // nil: simple layout
		status   byte
		used     uint32
		// data is the expected content of the writable bytes before the
		// status byte (nil: not checked).
		data []byte
		// image checks the image afterwards (nil: unchanged).
		image func(t *testing.T, img []byte)
		// stats checks the counters.
		stats func(t *testing.T, s Stats)
	}
	unchangedExcept := func(off int, want []byte) func(*testing.T, []byte) {
		return func(t *testing.T, img []byte) {
			t.Helper()
			exp := append([]byte(nil), orig...)
			copy(exp[off:], want)
			if !bytes.Equal(img, exp) {
				t.Errorf("image differs from expectation (region %d+%d)", off, len(want))
			}
		}
	}
	noDiscard := func(f uint64) uint64 { return f &^ (FDiscard | FWriteZeroes) }
	poison := func(n int) []byte { return bytes.Repeat([]byte{0xee}, n) }

	tests := []tc{
		{name: "IN", readable: hdr(TypeIn, 2), writeLen: 1025, status: StatusOK, used: 1025, data: orig[1024:2048],
			stats: func(t *testing.T, s Stats) {
				if s.Reads != 1 || s.BytesRead != 1024 || s.Errors != 0 {
					t.Errorf("stats %v", s)
				}
			}},
		{name: "IN last sector", readable: hdr(TypeIn, capSectors-1), writeLen: 513, status: StatusOK, used: 513, data: orig[testImage-512:]},
		{name: "OUT", readable: cat(hdr(TypeOut, 3), data1k), writeLen: 1, status: StatusOK, used: 1,
			image: unchangedExcept(3*512, data1k),
			stats: func(t *testing.T, s Stats) {
				if s.Writes != 1 || s.BytesWritten != 1024 {
					t.Errorf("stats %v", s)
				}
			}},
		{name: "FLUSH", readable: hdr(TypeFlush, 0), writeLen: 1, status: StatusOK, used: 1},
		{name: "GET_ID", opts: Options{Serial: "serial-1"}, readable: hdr(TypeGetID, 0), writeLen: IDBytes + 1,
			status: StatusOK, used: IDBytes + 1, data: append([]byte("serial-1"), zeroed(12)...)},
		{name: "GET_ID default serial", readable: hdr(TypeGetID, 0), writeLen: IDBytes + 1,
			status: StatusOK, used: IDBytes + 1, data: append([]byte("disk.img"), zeroed(12)...)},
		{name: "GET_ID short buffer", opts: Options{Serial: "abcdefghijklmnopqrst"}, readable: hdr(TypeGetID, 0), writeLen: 9,
			status: StatusOK, used: 9, data: []byte("abcdefgh")},
		{name: "GET_ID long buffer", opts: Options{Serial: "abc"}, readable: hdr(TypeGetID, 0), writeLen: 41,
			status: StatusOK, used: 21, data: append(append([]byte("abc"), zeroed(17)...), poison(20)...)},
		{name: "DISCARD", readable: cat(hdr(TypeDiscard, 0), seg(16, 8, 0)), writeLen: 1, status: StatusOK, used: 1,
			image: unchangedExcept(16*512, zeroed(8*512))},
		{name: "DISCARD two segments", readable: cat(hdr(TypeDiscard, 0), seg(16, 8, 0), seg(40, 16, 0)), writeLen: 1,
			status: StatusOK, used: 1,
			image: func(t *testing.T, img []byte) {
				exp := append([]byte(nil), orig...)
				copy(exp[16*512:], zeroed(8*512))
				copy(exp[40*512:], zeroed(16*512))
				if !bytes.Equal(img, exp) {
					t.Error("image differs")
				}
			}},
		{name: "DISCARD zero sectors", readable: cat(hdr(TypeDiscard, 0), seg(capSectors, 0, 0)), writeLen: 1, status: StatusOK, used: 1},
		{name: "WRITE_ZEROES", readable: cat(hdr(TypeWriteZeroes, 0), seg(5, 3, 0)), writeLen: 1, status: StatusOK, used: 1,
			image: unchangedExcept(5*512, zeroed(3*512))},
		{name: "WRITE_ZEROES unmap", readable: cat(hdr(TypeWriteZeroes, 0), seg(capSectors-8, 8, FlagUnmap)), writeLen: 1,
			status: StatusOK, used: 1, image: unchangedExcept(testImage-8*512, zeroed(8*512))},

		// Unsupported.
		{name: "unknown type", readable: hdr(99, 0), writeLen: 1025, status: StatusUnsupp, used: 1, data: poison(1024),
			stats: func(t *testing.T, s Stats) {
				if s.Unsupported != 1 || s.Reads != 0 {
					t.Errorf("stats %v", s)
				}
			}},
		{name: "legacy SCSI type", readable: hdr(2, 0), writeLen: 513, status: StatusUnsupp, used: 1, data: poison(512)},
		{name: "type with barrier bit", readable: hdr(0x80000000|TypeIn, 0), writeLen: 513, status: StatusUnsupp, used: 1, data: poison(512)},
		{name: "DISCARD not negotiated", acked: noDiscard, readable: cat(hdr(TypeDiscard, 0), seg(0, 8, 0)), writeLen: 1, status: StatusUnsupp, used: 1},
		{name: "WRITE_ZEROES not negotiated", acked: noDiscard, readable: cat(hdr(TypeWriteZeroes, 0), seg(0, 8, 0)), writeLen: 1, status: StatusUnsupp, used: 1},
		{name: "DISCARD with unmap", readable: cat(hdr(TypeDiscard, 0), seg(0, 8, FlagUnmap)), writeLen: 1, status: StatusUnsupp, used: 1},
		{name: "WRITE_ZEROES unknown flag", readable: cat(hdr(TypeWriteZeroes, 0), seg(0, 8, 0), seg(8, 8, 2)), writeLen: 1, status: StatusUnsupp, used: 1},

		// Beyond the end.
		{name: "IN beyond end", readable: hdr(TypeIn, capSectors-1), writeLen: 1025, status: StatusIOErr, used: 1, data: poison(1024),
			stats: func(t *testing.T, s Stats) {
				if s.Errors != 1 || s.GuestFaults != 1 || s.BytesRead != 0 {
					t.Errorf("stats %v", s)
				}
			}},
		{name: "IN at capacity", readable: hdr(TypeIn, capSectors), writeLen: 513, status: StatusIOErr, used: 1},
		{name: "IN empty at capacity", readable: hdr(TypeIn, capSectors), writeLen: 1, status: StatusOK, used: 1},
		{name: "IN sector overflows", readable: hdr(TypeIn, 1<<55), writeLen: 513, status: StatusIOErr, used: 1},
		{name: "IN sector max", readable: hdr(TypeIn, ^uint64(0)), writeLen: 513, status: StatusIOErr, used: 1},
		{name: "OUT beyond end", readable: cat(hdr(TypeOut, capSectors-1), data1k), writeLen: 1, status: StatusIOErr, used: 1},
		{name: "OUT sector wraps", readable: cat(hdr(TypeOut, ^uint64(0)-1), data1k), writeLen: 1, status: StatusIOErr, used: 1},
		{name: "DISCARD beyond end", readable: cat(hdr(TypeDiscard, 0), seg(0, 8, 0), seg(capSectors-4, 8, 0)), writeLen: 1, status: StatusIOErr, used: 1},
		{name: "WRITE_ZEROES sector wraps", readable: cat(hdr(TypeWriteZeroes, 0), seg(^uint64(0), 2, 0)), writeLen: 1, status: StatusIOErr, used: 1},

		// Limits.
		{name: "DISCARD too many sectors", readable: cat(hdr(TypeDiscard, 0), seg(0, MaxDiscardSectors, 0), seg(0, 1, 0)), writeLen: 1, status: StatusIOErr, used: 1},
		{name: "DISCARD too many segments", readable: cat(hdr(TypeDiscard, 0), bytes.Repeat(seg(0, 1, 0), MaxDiscardSeg+1)), writeLen: 1, status: StatusIOErr, used: 1},
		{name: "WRITE_ZEROES max segments", readable: cat(hdr(TypeWriteZeroes, 0), bytes.Repeat(seg(0, 1, 0), MaxWriteZeroesSeg)), writeLen: 1, status: StatusOK, used: 1,
			image: unchangedExcept(0, zeroed(512))},
		{name: "DISCARD partial segment", readable: cat(hdr(TypeDiscard, 0), seg(0, 8, 0)[:12]), writeLen: 1, status: StatusIOErr, used: 1},
		{name: "DISCARD no segment", readable: hdr(TypeDiscard, 0), writeLen: 1, status: StatusIOErr, used: 1},

		// Read-only disk.
		{name: "RO OUT", opts: Options{ReadOnly: true}, readable: cat(hdr(TypeOut, 0), data1k), writeLen: 1, status: StatusIOErr, used: 1},
		{name: "RO DISCARD", opts: Options{ReadOnly: true}, readable: cat(hdr(TypeDiscard, 0), seg(0, 8, 0)), writeLen: 1, status: StatusIOErr, used: 1},
		{name: "RO WRITE_ZEROES", opts: Options{ReadOnly: true}, readable: cat(hdr(TypeWriteZeroes, 0), seg(0, 8, 0)), writeLen: 1, status: StatusIOErr, used: 1},
		{name: "RO IN", opts: Options{ReadOnly: true}, readable: hdr(TypeIn, 0), writeLen: 513, status: StatusOK, used: 513, data: orig[:512]},
		{name: "RO FLUSH", opts: Options{ReadOnly: true}, readable: hdr(TypeFlush, 0), writeLen: 1, status: StatusOK, used: 1},

		// Descriptor layouts.
		{name: "IN header split", readable: hdr(TypeIn, 4), writeLen: 513, spec: &chainSpec{readSegs: []int{3, 13}, writeSegs: []int{512, 1}},
			status: StatusOK, used: 513, data: orig[4*512 : 5*512]},
		{name: "IN header in 16 pieces", readable: hdr(TypeIn, 4), writeLen: 513,
			spec:   &chainSpec{readSegs: []int{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, writeSegs: []int{512, 1}},
			status: StatusOK, used: 513, data: orig[4*512 : 5*512]},
		{name: "OUT header split and shared with data", readable: cat(hdr(TypeOut, 7), data1k), writeLen: 1,
			spec: &chainSpec{readSegs: []int{5, 11 + 100, 924}, writeSegs: []int{1}}, status: StatusOK, used: 1,
			image: unchangedExcept(7*512, data1k)},
		{name: "OUT header and data in one descriptor", readable: cat(hdr(TypeOut, 9), data1k), writeLen: 1,
			spec: &chainSpec{readSegs: []int{16 + 1024}, writeSegs: []int{1}}, status: StatusOK, used: 1,
			image: unchangedExcept(9*512, data1k)},
		{name: "IN many segments", readable: hdr(TypeIn, 10), writeLen: 4097,
			spec:   &chainSpec{writeSegs: []int{1, 511, 1000, 7, 2577, 0, 1}},
			status: StatusOK, used: 4097, data: orig[10*512 : 10*512+4096]},
		{name: "OUT many segments", readable: cat(hdr(TypeOut, 20), data4k), writeLen: 1,
			spec:   &chainSpec{readSegs: []int{16, 3, 509, 0, 1024, 2048, 511, 1}, writeSegs: []int{1}},
			status: StatusOK, used: 1, image: unchangedExcept(20*512, data4k)},
		{name: "IN indirect", readable: hdr(TypeIn, 30), writeLen: 2049,
			spec:   &chainSpec{readSegs: []int{8, 8}, writeSegs: []int{1024, 1000, 25}, indirect: true},
			status: StatusOK, used: 2049, data: orig[30*512 : 30*512+2048]},
		{name: "OUT indirect", readable: cat(hdr(TypeOut, 31), data1k), writeLen: 1,
			spec:   &chainSpec{readSegs: []int{16, 512, 512}, writeSegs: []int{1}, indirect: true},
			status: StatusOK, used: 1, image: unchangedExcept(31*512, data1k)},
		{name: "IN status shares the data descriptor", readable: hdr(TypeIn, 6), writeLen: 1025,
			spec: &chainSpec{readSegs: []int{16}, writeSegs: []int{1025}}, status: StatusOK, used: 1025, data: orig[6*512 : 8*512]},
		{name: "IN status after empty descriptors", readable: hdr(TypeIn, 6), writeLen: 513,
			spec: &chainSpec{writeSegs: []int{300, 213, 0, 0}}, status: StatusOK, used: 513, data: orig[6*512 : 7*512]},
		{name: "DISCARD segments split across descriptors", readable: cat(hdr(TypeDiscard, 0), seg(16, 8, 0), seg(64, 8, 0)), writeLen: 1,
			spec: &chainSpec{readSegs: []int{10, 10, 5, 7, 16}, writeSegs: []int{1}}, status: StatusOK, used: 1,
			image: func(t *testing.T, img []byte) {
				exp := append([]byte(nil), orig...)
				copy(exp[16*512:], zeroed(8*512))
				copy(exp[64*512:], zeroed(8*512))
				if !bytes.Equal(img, exp) {
					t.Error("image differs")
				}
			}},

		// Malformed requests that can still be completed.
		{name: "header too short", readable: hdr(TypeIn, 0)[:8], writeLen: 513, spec: &chainSpec{readSegs: []int{8}, writeSegs: []int{512, 1}}, status: StatusIOErr, used: 1, data: poison(512),
			stats: func(t *testing.T, s Stats) {
				if s.GuestFaults != 1 || s.Errors != 1 {
					t.Errorf("stats %v", s)
				}
			}},
		{name: "no header", readable: nil, writeLen: 1, spec: &chainSpec{writeSegs: []int{1}}, status: StatusIOErr, used: 1},
		{name: "IN with readable data", readable: cat(hdr(TypeIn, 0), data1k[:512]), writeLen: 513, status: StatusIOErr, used: 1, data: poison(512)},
		{name: "OUT with writable data", readable: cat(hdr(TypeOut, 0), data1k[:512]), writeLen: 513, status: StatusIOErr, used: 1},
		{name: "DISCARD with writable data", readable: cat(hdr(TypeDiscard, 0), seg(0, 8, 0)), writeLen: 17, status: StatusIOErr, used: 1},
		{name: "GET_ID with readable data", readable: cat(hdr(TypeGetID, 0), data1k[:4]), writeLen: 21, status: StatusIOErr, used: 1},
		{name: "IN not a sector multiple", readable: hdr(TypeIn, 0), writeLen: 101, status: StatusIOErr, used: 1, data: poison(100)},
		{name: "OUT not a sector multiple", readable: cat(hdr(TypeOut, 0), data1k[:700]), writeLen: 1, status: StatusIOErr, used: 1},

		// Zero-length data.
		{name: "IN zero length", readable: hdr(TypeIn, 0), writeLen: 1, status: StatusOK, used: 1},
		{name: "OUT zero length", readable: hdr(TypeOut, 0), writeLen: 1, status: StatusOK, used: 1},
		{name: "GET_ID zero length", readable: hdr(TypeGetID, 0), writeLen: 1, status: StatusOK, used: 1},
		{name: "IN zero-length descriptors", readable: hdr(TypeIn, 0), writeLen: 1, spec: &chainSpec{readSegs: []int{16, 0}, writeSegs: []int{0, 1}},
			status: StatusOK, used: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, envConfig{transport: tr, opts: tt.opts, acked: tt.acked})
			spec := simple(tt.readable, tt.writeLen)
			if tt.spec != nil {
				spec = *tt.spec
			}
			got, used := e.do(tt.readable, tt.writeLen, spec)
			if st := got[len(got)-1]; st != tt.status {
				t.Errorf("status = %d, want %d", st, tt.status)
			}
			if used != tt.used {
				t.Errorf("used length = %d, want %d", used, tt.used)
			}
			if tt.data != nil && !bytes.Equal(got[:len(got)-1], tt.data) {
				t.Errorf("data = %q..., want %q...", trunc(got[:len(got)-1]), trunc(tt.data))
			}
			img := e.image()
			if tt.image != nil {
				tt.image(t, img)
			} else if !bytes.Equal(img, orig) {
				t.Error("image changed")
			}
			if tt.stats != nil {
				tt.stats(t, e.dev.Stats())
			}
			if s := e.drv.Status(); s&virtio.StatusNeedsReset != 0 {
				t.Errorf("device needs reset: %s", virtio.StatusString(s))
			}
			e.checkTransport()
		})
	}
}

func trunc(b []byte) []byte {
	if len(b) > 24 {
		return b[:24]
	}
	return b
}

// TestUnrecoverable checks that a request without a status byte sets
// DEVICE_NEEDS_RESET, is never completed, stops the queue, and that a reset
// brings the device back.
func TestUnrecoverable(t *testing.T) { forTransports(t, testUnrecoverable) }

func testUnrecoverable(t *testing.T, tr transport) {
	tests := []struct {
		name      string
		writeSegs []int
	}{
		{"no writable descriptor", nil},
		{"only empty writable descriptors", []int{0, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, envConfig{transport: tr})
			total := 0
			for _, n := range tt.writeSegs {
				total += n
			}
			// A good request first, in the same batch: it completes.
			good, _ := e.post(0, hdr(TypeFlush, 0), 1, simple(hdr(TypeFlush, 0), 1))
			e.post(0, hdr(TypeIn, 0), total, chainSpec{readSegs: []int{16}, writeSegs: tt.writeSegs})
			e.drv.Notify(0)
			h, _, ok := e.waitUsed(0, 5*time.Second)
			if !ok || h != good {
				t.Fatalf("good request: used %d %v", h, ok)
			}
			deadline := time.Now().Add(5 * time.Second)
			for e.drv.Status()&virtio.StatusNeedsReset == 0 {
				if time.Now().After(deadline) {
					t.Fatal("NEEDS_RESET not set")
				}
				time.Sleep(time.Millisecond)
			}
			select { // (the status is set before the interrupt leaves)
			case <-e.irq.WaitConfig():
			case <-time.After(5 * time.Second):
				t.Error("no configuration interrupt")
			}
			// The queue is stopped: a later good request is ignored.
			e.post(0, hdr(TypeFlush, 0), 1, simple(hdr(TypeFlush, 0), 1))
			e.drv.Notify(0)
			if _, _, ok := e.waitUsed(0, 100*time.Millisecond); ok {
				t.Fatal("queue still served after NEEDS_RESET")
			}
			if s := e.dev.Stats(); s.GuestFaults == 0 {
				t.Errorf("stats %v", s)
			}
			// Reset and start again.
			e.drv.Reset()
			e.start(e.drv.DeviceFeatures())
			got, _ := e.do(hdr(TypeIn, 1), 513, simple(hdr(TypeIn, 1), 513))
			if got[512] != StatusOK || !bytes.Equal(got[:512], pattern(testImage)[512:1024]) {
				t.Fatal("request after reset failed")
			}
		})
	}
}

// TestFlushWaitsForSync checks that a FLUSH is completed only after
// fdatasync has returned, and that writes before it are completed in order.
func TestFlushWaitsForSync(t *testing.T) { forTransports(t, testFlushWaitsForSync) }

func testFlushWaitsForSync(t *testing.T, tr transport) {
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	hb := &hookBackend{}
	hb.onSync = func() error {
		entered <- struct{}{}
		<-release
		return nil
	}
	e := newEnv(t, envConfig{transport: tr, wrap: func(b backend) backend { hb.backend = b; return hb }})
	data := bytes.Repeat([]byte{0x5a}, 512)
	wHead, _ := e.post(0, cat(hdr(TypeOut, 1), data), 1, simple(cat(hdr(TypeOut, 1), data), 1))
	fHead, fBufs := e.post(0, hdr(TypeFlush, 0), 1, simple(hdr(TypeFlush, 0), 1))
	e.drv.Notify(0)
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("sync not called")
	}
	// The device is inside fdatasync: nothing may be completed yet.
	time.Sleep(50 * time.Millisecond)
	if idx := e.rings[0].UsedIdx(); idx != 0 {
		t.Fatalf("used index %d while fdatasync has not returned", idx)
	}
	close(release)
	for _, want := range []uint16{wHead, fHead} {
		h, _, ok := e.waitUsed(0, 5*time.Second)
		if !ok || h != want {
			t.Fatalf("used %d %v, want %d", h, ok, want)
		}
	}
	if st := e.readBufs(fBufs); st[0] != StatusOK {
		t.Fatalf("flush status %d", st[0])
	}
	if hb.syncCount() != 1 {
		t.Fatalf("%d syncs, want 1", hb.syncCount())
	}
}

// TestWriteThrough checks that without VIRTIO_BLK_F_FLUSH every write is
// synced before it completes, and that with it writes are not.
func TestWriteThrough(t *testing.T) { forTransports(t, testWriteThrough) }

func testWriteThrough(t *testing.T, tr transport) {
	for _, flush := range []bool{false, true} {
		hb := &hookBackend{}
		acked := func(f uint64) uint64 {
			if !flush {
				return f &^ FFlush
			}
			return f
		}
		var completedBeforeSync bool
		var e *env
		var usedBefore uint16 // used index before the current request
		hb.onSync = func() error {
			completedBeforeSync = completedBeforeSync || e.rings[0].UsedIdx() != usedBefore
			return nil
		}
		e = newEnv(t, envConfig{transport: tr, acked: acked, wrap: func(b backend) backend { hb.backend = b; return hb }})
		req := cat(hdr(TypeOut, 1), bytes.Repeat([]byte{1}, 512))
		usedBefore = 0
		got, _ := e.do(req, 1, simple(req, 1))
		if got[0] != StatusOK {
			t.Fatalf("flush=%v: status %d", flush, got[0])
		}
		req = cat(hdr(TypeWriteZeroes, 0), seg(0, 1, 0))
		usedBefore = 1
		if got, _ := e.do(req, 1, simple(req, 1)); got[0] != StatusOK {
			t.Fatalf("flush=%v: write zeroes status %d", flush, got[0])
		}
		wantSyncs := 2
		if flush {
			wantSyncs = 0
		}
		if n := hb.syncCount(); n != wantSyncs {
			t.Errorf("flush=%v: %d syncs, want %d", flush, n, wantSyncs)
		}
		if completedBeforeSync {
			t.Errorf("flush=%v: write completed before its sync", flush)
		}
	}
}

// TestSyncFailure checks that a failed fdatasync fails the flush and every
// later write and flush, while reads keep working.
func TestSyncFailure(t *testing.T) { forTransports(t, testSyncFailure) }

func testSyncFailure(t *testing.T, tr transport) {
	hb := &hookBackend{onSync: func() error { return unix.EIO }}
	e := newEnv(t, envConfig{transport: tr, wrap: func(b backend) backend { hb.backend = b; return hb }})
	flush := hdr(TypeFlush, 0)
	if got, _ := e.do(flush, 1, simple(flush, 1)); got[0] != StatusIOErr {
		t.Fatalf("flush status %d, want IOERR", got[0])
	}
	hb.mu.Lock()
	hb.onSync = nil
	hb.mu.Unlock()
	out := cat(hdr(TypeOut, 0), bytes.Repeat([]byte{7}, 512))
	if got, _ := e.do(out, 1, simple(out, 1)); got[0] != StatusIOErr {
		t.Fatalf("write after failed sync: status %d", got[0])
	}
	if got, _ := e.do(flush, 1, simple(flush, 1)); got[0] != StatusIOErr {
		t.Fatalf("flush after failed sync: status %d", got[0])
	}
	in := hdr(TypeIn, 0)
	if got, _ := e.do(in, 513, simple(in, 513)); got[512] != StatusOK {
		t.Fatalf("read after failed sync: status %d", got[512])
	}
	if !bytes.Equal(e.image(), pattern(testImage)) {
		t.Fatal("image written after a failed sync")
	}
	if err := e.dev.Close(); err == nil || !strings.Contains(err.Error(), "earlier sync failed") {
		t.Fatalf("Close = %v, want the earlier sync failure", err)
	}
}

// TestHostIOError checks that backend errors become IOERR.
func TestHostIOError(t *testing.T) { forTransports(t, testHostIOError) }

func testHostIOError(t *testing.T, tr transport) {
	hb := &hookBackend{
		onPreadv:  func() error { return unix.EIO },
		onPwritev: func() error { return unix.ENOSPC },
		onPunch:   func() error { return unix.EIO },
	}
	e := newEnv(t, envConfig{transport: tr, wrap: func(b backend) backend { hb.backend = b; return hb }})
	reqs := []struct {
		readable []byte
		writeLen int
	}{
		{hdr(TypeIn, 0), 513},
		{cat(hdr(TypeOut, 0), make([]byte, 512)), 1},
		{cat(hdr(TypeDiscard, 0), seg(0, 8, 0)), 1},
		{cat(hdr(TypeWriteZeroes, 0), seg(0, 8, FlagUnmap)), 1},
	}
	for i, r := range reqs {
		got, _ := e.do(r.readable, r.writeLen, simple(r.readable, r.writeLen))
		if st := got[len(got)-1]; st != StatusIOErr {
			t.Errorf("request %d: status %d, want IOERR", i, st)
		}
	}
	if s := e.dev.Stats(); s.Errors != 4 || s.GuestFaults != 0 {
		t.Errorf("stats %v", s)
	}
}

// TestShortImage checks a file truncated under the device: reads past the
// new end fail instead of returning garbage, and writes do not extend the
// file past the capacity.
func TestShortImage(t *testing.T) { forTransports(t, testShortImage) }

func testShortImage(t *testing.T, tr transport) {
	e := newEnv(t, envConfig{transport: tr})
	if err := unix.Truncate(e.path, testImage/2); err != nil {
		t.Fatal(err)
	}
	in := hdr(TypeIn, capSectors-1)
	if got, _ := e.do(in, 513, simple(in, 513)); got[512] != StatusIOErr {
		t.Fatalf("read past the truncated end: status %d", got[512])
	}
}

// TestWriteZeroesFallback checks write-zeroes and discard on a file system
// that refuses fallocate modes (EOPNOTSUPP).
func TestWriteZeroesFallback(t *testing.T) { forTransports(t, testWriteZeroesFallback) }

func testWriteZeroesFallback(t *testing.T, tr transport) {
	var punches, zeroes int
	hb := &hookBackend{
		onPunch: func() error { punches++; return unix.EOPNOTSUPP },
		onZero:  func() error { zeroes++; return unix.EOPNOTSUPP },
	}
	orig := pattern(4 << 20)
	e := newEnv(t, envConfig{transport: tr, image: orig, wrap: func(b backend) backend { hb.backend = b; return hb }})
	// A range larger than the fallback's chunk, unaligned to it.
	const start, n = 3, 2500
	for i, flags := range []uint32{FlagUnmap, 0} {
		req := cat(hdr(TypeWriteZeroes, 0), seg(start+uint64(i), n, flags))
		if got, _ := e.do(req, 1, simple(req, 1)); got[0] != StatusOK {
			t.Fatalf("status %d", got[0])
		}
	}
	exp := append([]byte(nil), orig...)
	copy(exp[start*512:], zeroed((n+1)*512))
	if !bytes.Equal(e.image(), exp) {
		t.Fatal("image not zeroed as expected")
	}
	disc := cat(hdr(TypeDiscard, 0), seg(0, 8, 0))
	if got, _ := e.do(disc, 1, simple(disc, 1)); got[0] != StatusOK {
		t.Fatalf("discard status %d", got[0])
	}
	if punches != 1 || zeroes != 1 {
		t.Errorf("punch tried %d times, zero range %d times; want each once", punches, zeroes)
	}
	if !bytes.Equal(e.image(), exp) {
		t.Fatal("unsupported discard changed the image")
	}
}

// TestBatch posts many requests with one notification; all complete, with
// fewer interrupts than requests.
func TestBatch(t *testing.T) { forTransports(t, testBatch) }

func testBatch(t *testing.T, tr transport) {
	e := newEnv(t, envConfig{transport: tr, opts: Options{QueueSize: 512}})
	const n = 200
	heads := map[uint16]bool{}
	for i := 0; i < n; i++ {
		h, _ := e.post(0, hdr(TypeIn, uint64(i)), 513, chainSpec{readSegs: []int{16}, writeSegs: []int{513}})
		heads[h] = true
	}
	e.drv.Notify(0)
	for i := 0; i < n; i++ {
		h, used, ok := e.waitUsed(0, 5*time.Second)
		if !ok || !heads[h] || used != 513 {
			t.Fatalf("completion %d: head %d used %d ok %v", i, h, used, ok)
		}
		delete(heads, h)
	}
	if s := e.dev.Stats(); s.Reads != n || s.BytesRead != n*512 {
		t.Errorf("stats %v", s)
	}
	select { // the interrupt leaves after the used index is published
	case <-e.irq.Wait(0):
	case <-time.After(5 * time.Second):
	}
	if irqs := e.irq.Count(0); irqs == 0 || irqs > n/2 {
		t.Errorf("%d interrupts for %d requests", irqs, n)
	}
	if !tr.INTx && e.irq.Deliveries(1) != e.irq.Count(0) {
		t.Errorf("queue 0 vector sent %d messages, %d interrupts counted", e.irq.Deliveries(1), e.irq.Count(0))
	}
	e.checkTransport()
}

// TestMultiQueue serves requests on the second queue when MQ is negotiated.
func TestMultiQueue(t *testing.T) { forTransports(t, testMultiQueue) }

func testMultiQueue(t *testing.T, tr transport) {
	e := newEnv(t, envConfig{transport: tr, opts: Options{Queues: 2}})
	if len(e.rings) != 2 {
		t.Fatalf("%d rings", len(e.rings))
	}
	var cfg [2]byte
	e.drv.ReadConfig(cfgNumQueues, cfg[:])
	if cfg != [2]byte{2, 0} {
		t.Fatalf("num_queues %v", cfg)
	}
	for q := 0; q < 2; q++ {
		in := hdr(TypeIn, uint64(q))
		head, bufs := e.post(q, in, 513, simple(in, 513))
		e.drv.Notify(q)
		h, _, ok := e.waitUsed(q, 5*time.Second)
		if !ok || h != head {
			t.Fatalf("queue %d: used %d %v", q, h, ok)
		}
		got := e.readBufs(bufs)
		if got[512] != StatusOK || !bytes.Equal(got[:512], pattern(testImage)[q*512:(q+1)*512]) {
			t.Fatalf("queue %d: bad data", q)
		}
	}
}

// TestResetDuringLongRequest checks that Reset does not wait for a long
// write-zeroes fallback to finish.
func TestResetDuringLongRequest(t *testing.T) { forTransports(t, testResetDuringLongRequest) }

func testResetDuringLongRequest(t *testing.T, tr transport) {
	started := make(chan struct{}, 1)
	hb := &hookBackend{
		onZero: func() error { return unix.EOPNOTSUPP },
	}
	hb.onPwritev = func() error {
		select {
		case started <- struct{}{}:
		default:
		}
		time.Sleep(100 * time.Millisecond)
		return nil
	}
	e := newEnv(t, envConfig{transport: tr, image: make([]byte, 16<<20), wrap: func(b backend) backend { hb.backend = b; return hb }})
	req := cat(hdr(TypeWriteZeroes, 0), seg(0, 1<<15, 0)) // 16 MiB: 16 slow 1 MiB writes
	e.post(0, req, 1, simple(req, 1))
	e.drv.Notify(0)
	<-started
	t0 := time.Now()
	e.drv.Reset()
	if d := time.Since(t0); d > 500*time.Millisecond {
		t.Fatalf("reset took %v", d)
	}
	if e.rings[0].UsedIdx() != 0 {
		t.Fatal("interrupted request was completed")
	}
}

// TestErrorsWrapErrno checks the backend keeps errno values.
func TestErrorsWrapErrno(t *testing.T) {
	path := writeImage(t, make([]byte, 4096))
	d, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	_, err = d.be.pwritev([][]byte{make([]byte, 512)}, 0)
	if !errors.Is(err, unix.EBADF) {
		t.Fatalf("pwritev on a read-only file: %v, want EBADF", err)
	}
}
