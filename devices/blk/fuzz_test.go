package blk

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/govmd/govmd/internal/eventfd"
	"github.com/govmd/govmd/memory"
	"github.com/govmd/govmd/virtio"
)

// Fuzz guest memory: a queue of 8 entries at 0, the buffers the descriptors
// point at from fuzzDataBase. Descriptors may point past the end.
const (
	fuzzMemSize   = 64 << 10
	fuzzQueueSize = 8
	fuzzDescAddr  = 0x0
	fuzzAvailAddr = 0x100
	fuzzUsedAddr  = 0x1000
	fuzzDataBase  = 0x2000
	fuzzSectors   = 64
	fuzzDescBytes = 6 // compact descriptor encoding in the fuzz input
)

// fuzzDesc is one descriptor as encoded in the fuzz input: addr is an
// offset from fuzzDataBase.
type fuzzDesc struct {
	addr, len   uint16
	flags, next uint8
}

// fuzzInput encodes a fuzz input:
//
//	[0]    feature choices: 1 INDIRECT, 2 EVENT_IDX, 4 FLUSH, 8 DISCARD and
//	       WRITE_ZEROES, 16 SEG_MAX and SIZE_MAX
//	[1]    number of available chains (mod 9)
//	[2:10] heads of the available chains (mod 9: 8 is out of range)
//	then   8 descriptors of 6 bytes (addr, len little-endian, flags, next)
//	rest   the buffer area's content from fuzzDataBase
func fuzzInput(features, navail byte, heads [8]byte, descs []fuzzDesc, data []byte) []byte {
	b := []byte{features, navail}
	b = append(b, heads[:]...)
	for i := 0; i < fuzzQueueSize; i++ {
		var d fuzzDesc
		if i < len(descs) {
			d = descs[i]
		}
		b = binary.LittleEndian.AppendUint16(b, d.addr)
		b = binary.LittleEndian.AppendUint16(b, d.len)
		b = append(b, d.flags, d.next)
	}
	return append(b, data...)
}

// checkedBackend fails the fuzz run on any access outside the image.
type checkedBackend struct {
	backend
	size int64
	bad  atomic.Pointer[string]
}

func (c *checkedBackend) check(op string, off, n int64) {
	if off < 0 || n < 0 || off > c.size || n > c.size-off {
		msg := fmt.Sprintf("%s at %d+%d outside the image (%d bytes)", op, off, n, c.size)
		c.bad.Store(&msg)
	}
}

func iovLen(iovs [][]byte) int64 {
	var n int64
	for _, b := range iovs {
		n += int64(len(b))
	}
	return n
}

func (c *checkedBackend) preadv(iovs [][]byte, off int64) (int, error) {
	c.check("preadv", off, iovLen(iovs))
	return c.backend.preadv(iovs, off)
}

func (c *checkedBackend) pwritev(iovs [][]byte, off int64) (int, error) {
	c.check("pwritev", off, iovLen(iovs))
	return c.backend.pwritev(iovs, off)
}

func (c *checkedBackend) punchHole(off, n int64) error {
	c.check("punch", off, n)
	return c.backend.punchHole(off, n)
}

func (c *checkedBackend) zeroRange(off, n int64) error {
	c.check("zero range", off, n)
	return c.backend.zeroRange(off, n)
}

// sync does not call fdatasync: it would only slow the fuzzer down.
func (c *checkedBackend) sync() error { return nil }

type fuzzTransport struct{ needsReset, notified int }

func (t *fuzzTransport) Notify(int)         { t.notified++ }
func (t *fuzzTransport) ConfigChanged()     {}
func (t *fuzzTransport) NeedsReset(_ error) { t.needsReset++ }

func fuzzSeeds() [][]byte {
	hdrAt := func(typ uint32, sector uint64) []byte { return hdr(typ, sector) }
	var seeds [][]byte
	all := byte(1 | 2 | 4 | 8 | 16)
	// IN: header, 1024 data, status.
	seeds = append(seeds, fuzzInput(all, 1, [8]byte{0},
		[]fuzzDesc{{0, 16, 1, 1}, {0x100, 1024, 3, 2}, {0x600, 1, 2, 0}}, hdrAt(TypeIn, 3)))
	// OUT with header split and shared with data.
	seeds = append(seeds, fuzzInput(all, 1, [8]byte{0},
		[]fuzzDesc{{0, 7, 1, 1}, {7, 9 + 512, 1, 2}, {0x600, 1, 2, 0}}, append(hdrAt(TypeOut, 60), make([]byte, 512)...)))
	// DISCARD and WRITE_ZEROES, two chains.
	dz := cat(hdrAt(TypeDiscard, 0), seg(1, 2, 0), hdrAt(TypeWriteZeroes, 0), seg(62, 2, FlagUnmap))
	seeds = append(seeds, fuzzInput(all, 2, [8]byte{0, 2},
		[]fuzzDesc{{0, 32, 1, 1}, {0x600, 1, 2, 0}, {32, 32, 1, 3}, {0x601, 1, 2, 0}}, dz))
	// GET_ID and FLUSH.
	gf := cat(hdrAt(TypeGetID, 0), hdrAt(TypeFlush, 0))
	seeds = append(seeds, fuzzInput(all, 2, [8]byte{0, 2},
		[]fuzzDesc{{0, 16, 1, 1}, {0x100, 21, 2, 0}, {16, 16, 1, 3}, {0x600, 1, 2, 0}}, gf))
	// IN through an indirect table at offset 0x40.
	table := make([]byte, 0, 48)
	for _, d := range []struct {
		addr  uint64
		n     uint32
		flags uint16
		next  uint16
	}{{fuzzDataBase, 16, 1, 1}, {fuzzDataBase + 0x100, 512, 3, 2}, {fuzzDataBase + 0x400, 1, 2, 0}} {
		table = binary.LittleEndian.AppendUint64(table, d.addr)
		table = binary.LittleEndian.AppendUint32(table, d.n)
		table = binary.LittleEndian.AppendUint16(table, d.flags)
		table = binary.LittleEndian.AppendUint16(table, d.next)
	}
	ind := append(hdrAt(TypeIn, 63), make([]byte, 0x40-16)...)
	seeds = append(seeds, fuzzInput(all, 1, [8]byte{0}, []fuzzDesc{{0x40, 48, 4, 0}}, append(ind, table...)))
	// Beyond the end, no status, a loop.
	seeds = append(seeds, fuzzInput(all, 3, [8]byte{0, 3, 4},
		[]fuzzDesc{{0, 16, 1, 1}, {0x100, 1024, 3, 2}, {0x600, 1, 2, 0}, {0, 16, 0, 0}, {0, 16, 1, 5}, {0, 16, 1, 4}},
		hdrAt(TypeIn, 63)))
	return seeds
}

// fuzzRig is the fixture shared by the fuzz iterations: one device over a
// small image behind a checking backend, and guest memory.
type fuzzRig struct {
	path string
	d    *Device
	cb   *checkedBackend
	host []byte
	mem  *memory.Memory
}

func newFuzzRig(tb testing.TB, dir string) *fuzzRig {
	path := filepath.Join(dir, "fuzz.img")
	if err := os.WriteFile(path, pattern(fuzzSectors*SectorSize), 0o600); err != nil {
		tb.Fatal(err)
	}
	d, err := Open(path, Options{QueueSize: fuzzQueueSize})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { d.Close() })
	cb := &checkedBackend{backend: d.be, size: fuzzSectors * SectorSize}
	d.be = cb
	host := make([]byte, fuzzMemSize)
	return &fuzzRig{path: path, d: d, cb: cb, host: host, mem: memory.FromBytes(memory.Region{GPA: 0, Host: host})}
}

// run lays out the input in guest memory, drains the queue once and checks
// the invariants: no panic, no image access outside the image, no change of
// the image's size. It returns the used index the guest sees.
func (r *fuzzRig) run(t *testing.T, in []byte) uint16 {
	const fixed = 2 + 8 + fuzzQueueSize*fuzzDescBytes
	if len(in) < fixed {
		return 0
	}
	mem := r.mem
	clear(r.host)
	feat := in[0]
	features := uint64(virtio.FVersion1)
	for bit, fb := range map[byte]uint64{1: virtio.FRingIndirect, 2: virtio.FRingEventIdx, 4: FFlush,
		8: FDiscard | FWriteZeroes, 16: FSegMax | FSizeMax} {
		if feat&bit != 0 {
			features |= fb
		}
	}
	navail := uint16(in[1] % 9)
	for i := uint16(0); i < navail; i++ {
		_ = mem.PutUint16(fuzzAvailAddr+4+2*uint64(i), uint16(in[2+i]%9))
	}
	_ = mem.PutUint16(fuzzAvailAddr+2, navail)
	for i := 0; i < fuzzQueueSize; i++ {
		e := in[10+fuzzDescBytes*i:]
		var raw [16]byte
		binary.LittleEndian.PutUint64(raw[0:], fuzzDataBase+uint64(binary.LittleEndian.Uint16(e[0:])))
		binary.LittleEndian.PutUint32(raw[8:], uint32(binary.LittleEndian.Uint16(e[2:])))
		binary.LittleEndian.PutUint16(raw[12:], uint16(e[4]))
		binary.LittleEndian.PutUint16(raw[14:], uint16(e[5]))
		_ = mem.WriteAt(raw[:], fuzzDescAddr+16*uint64(i))
	}
	copy(r.host[fuzzDataBase:], in[fixed:])

	q, err := virtio.NewQueue(mem, virtio.QueueConfig{Size: fuzzQueueSize, DescAddr: fuzzDescAddr,
		AvailAddr: fuzzAvailAddr, UsedAddr: fuzzUsedAddr}, features)
	if err != nil {
		t.Fatal(err)
	}
	tr := &fuzzTransport{}
	w := newWorker(r.d, 0, virtio.Activation{Features: features, Queues: []*virtio.Queue{q},
		Kicks: make([]*eventfd.EventFD, 1), Transport: tr})
	_ = w.drain(context.Background()) // a broken queue is a guest error, reported to tr
	if msg := r.cb.bad.Load(); msg != nil {
		t.Fatal(*msg)
	}
	fi, statErr := os.Stat(r.path)
	if statErr != nil || fi.Size() != fuzzSectors*SectorSize {
		t.Fatalf("image size changed: %v %v", fi.Size(), statErr)
	}
	// Indirect tables hold raw addresses, so the guest can aim the
	// device's writes at its own rings: the used ring's content is not an
	// invariant, only the host side is.
	used, _ := mem.Uint16(fuzzUsedAddr + 2)
	return used
}

// FuzzRequestChain feeds fuzzer-chosen descriptor layouts and request
// headers to a queue worker. It must never panic, never touch the image
// outside its size, and never change the image's size.
func FuzzRequestChain(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	rig := newFuzzRig(f, f.TempDir())
	f.Fuzz(func(t *testing.T, in []byte) { rig.run(t, in) })
}

// TestFuzzSeeds checks that the seeds mean what they say, so the fuzzer
// starts from valid requests.
func TestFuzzSeeds(t *testing.T) {
	seeds := fuzzSeeds()
	tests := []struct {
		used   uint16
		status []uint16 // offsets of status bytes from fuzzDataBase
		want   []byte
	}{
		{1, []uint16{0x600}, []byte{StatusOK}},
		{1, []uint16{0x600}, []byte{StatusOK}},
		{2, []uint16{0x600, 0x601}, []byte{StatusOK, StatusOK}},
		{2, []uint16{0x114, 0x600}, []byte{StatusOK, StatusOK}},
		{1, []uint16{0x400}, []byte{StatusOK}},
		{1, []uint16{0x600}, []byte{StatusIOErr}}, // then a chain without status
	}
	rig := newFuzzRig(t, t.TempDir())
	for i, tt := range tests {
		if used := rig.run(t, seeds[i]); used != tt.used {
			t.Errorf("seed %d: %d used, want %d", i, used, tt.used)
		}
		for j, off := range tt.status {
			if got := rig.host[fuzzDataBase+int(off)]; got != tt.want[j] {
				t.Errorf("seed %d: status %d = %d, want %d", i, j, got, tt.want[j])
			}
		}
	}
}
