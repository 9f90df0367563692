package blk

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/govmd/govmd/virtio/virtiotest"
)

// Benchmark image: 64 MiB of non-zero data, so that reads are not served
// from holes. It is created in the test's temporary directory (TMPDIR):
// make bench puts it on tmpfs, so that the benchmarks measure the device
// and not the disk or the page cache's reclaim.
const benchImage = 64 << 20

const benchBlock = 4096

func benchImagePath(b *testing.B) string {
	b.Helper()
	path := filepath.Join(b.TempDir(), "bench.img")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	chunk := pattern(1 << 20)
	for off := 0; off < benchImage; off += len(chunk) {
		if _, err := f.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	return path
}

// benchPattern is one access pattern of 4 KiB requests.
type benchPattern struct {
	name  string
	write bool
	rand  bool
}

var benchPatterns = []benchPattern{
	{"seq-read-4k", false, false},
	{"rand-read-4k", false, true},
	{"seq-write-4k", true, false},
	{"rand-write-4k", true, true},
}

// blockSeq yields the block numbers of a pattern: 0, 1, 2, ... or a
// xorshift sequence, the same for the device and the raw loop.
type blockSeq struct {
	rand      bool
	next, rng uint64
}

func newBlockSeq(random bool) blockSeq { return blockSeq{rand: random, rng: 0x9e3779b97f4a7c15} }

func (s *blockSeq) block() uint64 {
	const blocks = benchImage / benchBlock
	if !s.rand {
		blk := s.next % blocks
		s.next++
		return blk
	}
	s.rng ^= s.rng << 13
	s.rng ^= s.rng >> 7
	s.rng ^= s.rng << 17
	return s.rng % blocks
}

// BenchmarkIO measures 4 KiB requests. For each access pattern:
//
//   - qd1, qd32: through the whole device. The in-process driver keeps
//     depth requests in flight on one queue and, like a guest, sleeps until
//     the completion interrupt when none is done (EVENT_IDX used_event);
//     the device's worker serves them with preadv/pwritev.
//   - raw: the limit. The same preadv/pwritev of the same blocks in the
//     same order on the same image, from one loop, with no device.
//
// The image is a file without O_DIRECT and FLUSH is negotiated, so writes
// are not synced: this measures the device's overhead, not the storage.
func BenchmarkIO(b *testing.B) {
	path := benchImagePath(b)
	for _, p := range benchPatterns {
		b.Run(p.name, func(b *testing.B) {
			for _, depth := range []int{1, 32} {
				b.Run("qd"+itoa(depth), func(b *testing.B) { benchIO(b, path, p, depth) })
			}
			b.Run("raw", func(b *testing.B) { benchRaw(b, path, p) })
		})
	}
}

func itoa(n int) string {
	if n < 10 {
		return string(rune('0' + n))
	}
	return itoa(n/10) + string(rune('0'+n%10))
}

// ioClock measures a benchmark's wall and CPU time.
type ioClock struct {
	start time.Time
	cpu0  time.Duration
}

func startClock() ioClock { return ioClock{time.Now(), cpuTime()} }

// report reports IOPS and the CPUs the process used (CPU time over wall
// time) for n requests since the clock started.
func (c ioClock) report(b *testing.B, n int) {
	if s := time.Since(c.start).Seconds(); s > 0 {
		b.ReportMetric(float64(n)/s, "IOPS")
		b.ReportMetric((cpuTime()-c.cpu0).Seconds()/s, "cpus")
	}
}

// cpuTime returns the user and system CPU time the process has used.
func cpuTime() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func benchIO(b *testing.B, path string, p benchPattern, depth int) {
	e := newEnv(b, envConfig{path: path})
	r := e.rings[0]
	if 3*depth > int(r.Size) {
		b.Fatalf("depth %d too large for queue size %d", depth, r.Size)
	}
	typ := uint32(TypeIn)
	dataFlags := uint16(virtiotest.DescNext | virtiotest.DescWrite)
	if p.write {
		typ = TypeOut
		dataFlags = virtiotest.DescNext
	}
	// Slot s uses descriptors 3s (header), 3s+1 (data), 3s+2 (status).
	hdrs := make([]uint64, depth)
	status := make([]uint64, depth)
	for s := 0; s < depth; s++ {
		hdrs[s] = e.alloc.Get(headerSize, 16)
		data := e.alloc.Get(benchBlock, benchBlock)
		status[s] = e.alloc.Get(1, 1)
		d := uint16(3 * s)
		r.PutDesc(d, hdrs[s], headerSize, virtiotest.DescNext, d+1)
		r.PutDesc(d+1, data, benchBlock, dataFlags, d+2)
		r.PutDesc(d+2, status[s], 1, virtiotest.DescWrite, 0)
	}
	seq := newBlockSeq(p.rand)
	var h [headerSize]byte
	binary.LittleEndian.PutUint32(h[0:], typ)
	post := func(slot int) {
		binary.LittleEndian.PutUint64(h[8:], seq.block()*(benchBlock/SectorSize))
		if err := e.mem.WriteAt(h[:], hdrs[slot]); err != nil {
			b.Fatal(err)
		}
		r.PushAvail(uint16(3 * slot))
	}
	availEvent := r.Used + 4 + 8*uint64(r.Size)
	irq := e.irq.Wait(0)
	timeout := time.NewTimer(time.Hour)
	defer timeout.Stop()

	b.SetBytes(benchBlock)
	b.ReportAllocs()
	clock := startClock()
	submitted, completed := 0, 0
	for b.Loop() {
		if submitted == 0 {
			for ; submitted < depth; submitted++ {
				post(submitted)
			}
			e.drv.Notify(0)
		}
		// One completion per iteration; the request that replaces it
		// keeps depth in flight.
		var head uint16
		for {
			var ok bool
			if head, _, ok = r.PopUsed(); ok {
				break
			}
			// Like a guest: ask for an interrupt at the next used
			// element and sleep until it comes.
			if r.ArmUsedEvent() {
				continue
			}
			timeout.Reset(time.Second)
			select {
			case <-irq:
			case <-timeout.C:
				b.Fatal("no completion within 1s")
			}
		}
		completed++
		slot := int(head) / 3
		var st [1]byte
		if err := e.mem.ReadAt(st[:], status[slot]); err != nil || st[0] != StatusOK {
			b.Fatalf("request failed with status %d (%v)", st[0], err)
		}
		old := r.AvailIdx()
		post(slot)
		submitted++
		// EVENT_IDX: notify only if the device asked for this index.
		ev, err := e.mem.LoadUint16Acquire(availEvent)
		if err != nil {
			b.Fatal(err)
		}
		if n := r.AvailIdx(); n-ev-1 < n-old {
			e.drv.Notify(0)
		}
	}
	clock.report(b, completed)
	// Let the requests still in flight finish before the device closes.
	deadline := time.Now().Add(5 * time.Second)
	for left := submitted - completed; left > 0 && time.Now().Before(deadline); {
		if _, _, ok := r.PopUsed(); ok {
			left--
			continue
		}
		time.Sleep(10 * time.Microsecond)
	}
}

// benchRaw does the device's system calls for the pattern directly: one
// preadv or pwritev of 4 KiB per request (unix.Preadv/Pwritev, as the
// device's file backend), into buffers taken in turn from 32, on the image
// opened as the device opens it.
func benchRaw(b *testing.B, path string, p benchPattern) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	bufs := make([][]byte, 32)
	for i := range bufs {
		bufs[i] = make([]byte, benchBlock)
		if p.write {
			copy(bufs[i], pattern(benchBlock))
		}
	}
	iov := make([][]byte, 1)
	seq := newBlockSeq(p.rand)
	b.SetBytes(benchBlock)
	b.ReportAllocs()
	clock := startClock()
	n, slot := 0, 0
	for b.Loop() {
		iov[0] = bufs[slot]
		slot = (slot + 1) % len(bufs)
		off := int64(seq.block() * benchBlock)
		var k int
		var err error
		if p.write {
			k, err = unix.Pwritev(fd, iov, off)
		} else {
			k, err = unix.Preadv(fd, iov, off)
		}
		if err != nil || k != benchBlock {
			b.Fatalf("transferred %d bytes: %v", k, err)
		}
		n++
	}
	clock.report(b, n)
}
