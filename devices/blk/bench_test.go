package blk

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/govmd/govmd/virtio/virtiotest"
)

// Benchmark image: 64 MiB of non-zero data, so that reads are not served
// from holes.
const benchImage = 64 << 20

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

// BenchmarkIO measures 4 KiB requests through the whole device: a driver
// loop in the benchmark goroutine keeps depth requests in flight on one
// queue, the device's worker serves them with preadv/pwritev. The image is
// a file in the host page cache (no O_DIRECT) and FLUSH is negotiated, so
// writes are not synced: this measures the device's overhead, not the disk.
func BenchmarkIO(b *testing.B) {
	path := benchImagePath(b)
	for _, bc := range []struct {
		name  string
		write bool
		rand  bool
	}{
		{"seq-read-4k", false, false},
		{"rand-read-4k", false, true},
		{"seq-write-4k", true, false},
		{"rand-write-4k", true, true},
	} {
		for _, depth := range []int{1, 32} {
			b.Run(bc.name+"-qd"+itoa(depth), func(b *testing.B) {
				benchIO(b, path, bc.write, bc.rand, depth)
			})
		}
	}
}

func itoa(n int) string {
	if n < 10 {
		return string(rune('0' + n))
	}
	return itoa(n/10) + string(rune('0'+n%10))
}

func benchIO(b *testing.B, path string, write, random bool, depth int) {
	const blockSize = 4096
	e := newEnv(b, envConfig{path: path})
	r := e.rings[0]
	if 3*depth > int(r.Size) {
		b.Fatalf("depth %d too large for queue size %d", depth, r.Size)
	}
	typ := uint32(TypeIn)
	dataFlags := uint16(virtiotest.DescNext | virtiotest.DescWrite)
	if write {
		typ = TypeOut
		dataFlags = virtiotest.DescNext
	}
	// Slot s uses descriptors 3s (header), 3s+1 (data), 3s+2 (status).
	hdrs := make([]uint64, depth)
	status := make([]uint64, depth)
	for s := 0; s < depth; s++ {
		hdrs[s] = e.alloc.Get(headerSize, 16)
		data := e.alloc.Get(blockSize, blockSize)
		status[s] = e.alloc.Get(1, 1)
		d := uint16(3 * s)
		r.PutDesc(d, hdrs[s], headerSize, virtiotest.DescNext, d+1)
		r.PutDesc(d+1, data, blockSize, dataFlags, d+2)
		r.PutDesc(d+2, status[s], 1, virtiotest.DescWrite, 0)
	}
	blocks := uint64(benchImage / blockSize)
	next := uint64(0)
	rng := uint64(0x9e3779b97f4a7c15)
	var h [headerSize]byte
	binary.LittleEndian.PutUint32(h[0:], typ)
	post := func(slot int) {
		blk := next % blocks
		next++
		if random {
			rng ^= rng << 13
			rng ^= rng >> 7
			rng ^= rng << 17
			blk = rng % blocks
		}
		binary.LittleEndian.PutUint64(h[8:], blk*(blockSize/SectorSize))
		if err := e.mem.WriteAt(h[:], hdrs[slot]); err != nil {
			b.Fatal(err)
		}
		r.PushAvail(uint16(3 * slot))
	}

	availEvent := r.Used + 4 + 8*uint64(r.Size)

	b.SetBytes(blockSize)
	b.ReportAllocs()
	b.ResetTimer()
	submitted, completed := 0, 0
	for ; submitted < depth && submitted < b.N; submitted++ {
		post(submitted)
	}
	e.drv.Notify(0)
	idle := 0
	for completed < b.N {
		head, _, ok := r.PopUsed()
		if !ok {
			if idle++; idle > 64 {
				runtime.Gosched()
			}
			continue
		}
		idle = 0
		completed++
		slot := int(head) / 3
		var st [1]byte
		if err := e.mem.ReadAt(st[:], status[slot]); err != nil || st[0] != StatusOK {
			b.Fatalf("request failed with status %d (%v)", st[0], err)
		}
		if submitted < b.N {
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
	}
	b.StopTimer()
	if s := b.Elapsed().Seconds(); s > 0 {
		b.ReportMetric(float64(b.N)/s, "IOPS")
	}
}
