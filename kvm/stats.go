package kvm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// Stats reads KVM's own statistics of a vCPU or VM (the binary stats
// interface, KVM_GET_STATS_FD, Linux 5.14+): counters KVM keeps whatever
// handles the exit, such as "exits" (every exit from the guest, those KVM
// handled itself included), "irq_injections", "halt_exits", "io_exits".
// It may be read from any goroutine while the vCPU runs.
type Stats struct {
	f       *os.File
	dataOff int64
	descs   []statDesc
}

type statDesc struct {
	name   string
	offset uint32
	size   uint16 // number of u64 values (1 for a counter)
}

// KVM_STATS_TYPE_* in bits 0-3 of a descriptor's flags; only counters
// (cumulative) and instantaneous values are read.
const (
	statsTypeCumulative = 0
	statsTypeInstant    = 1
	statsTypeMask       = 0xf
)

// ErrNoStats is returned where the kernel lacks KVM_GET_STATS_FD.
var ErrNoStats = errors.New("kvm: no binary statistics (KVM_GET_STATS_FD)")

// OpenStats opens the vCPU's statistics. Like every vCPU ioctl it must be
// called from the goroutine that runs the vCPU, typically before its first
// Run; the Stats it returns may then be read from anywhere.
func (v *VCPU) OpenStats() (*Stats, error) {
	fd, e := ioctlVal(v.fd, kvmGetStatsFD, 0)
	if e != 0 {
		if e == unix.ENOTTY || e == unix.EINVAL {
			return nil, ErrNoStats
		}
		return nil, ioctlErr(kvmGetStatsFD, e)
	}
	f := os.NewFile(fd, "kvm-vcpu-stats")
	s, err := parseStats(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return s, nil
}

// parseStats reads the header and descriptors of a stats file:
//
//	struct kvm_stats_header { u32 flags, name_size, num_desc, id_offset,
//	                          desc_offset, data_offset; }
//	struct kvm_stats_desc { u32 flags; s16 exponent; u16 size; u32 offset;
//	                        u32 bucket_size; char name[name_size]; }
func parseStats(f *os.File) (*Stats, error) {
	le := binary.LittleEndian
	h := make([]byte, 24)
	if _, err := f.ReadAt(h, 0); err != nil {
		return nil, fmt.Errorf("kvm stats header: %w", err)
	}
	nameSize, num, descOff, dataOff := le.Uint32(h[4:]), le.Uint32(h[8:]), le.Uint32(h[16:]), le.Uint32(h[20:])
	if nameSize == 0 || nameSize > 4096 || num > 4096 {
		return nil, fmt.Errorf("kvm stats header: name size %d, %d descriptors", nameSize, num)
	}
	dsz := 16 + int(nameSize)
	d := make([]byte, dsz*int(num))
	if _, err := f.ReadAt(d, int64(descOff)); err != nil {
		return nil, fmt.Errorf("kvm stats descriptors: %w", err)
	}
	s := &Stats{f: f, dataOff: int64(dataOff)}
	for i := 0; i < int(num); i++ {
		x := d[i*dsz : (i+1)*dsz]
		typ := le.Uint32(x) & statsTypeMask
		if typ != statsTypeCumulative && typ != statsTypeInstant {
			continue
		}
		name, _, _ := strings.Cut(string(x[16:]), "\x00")
		s.descs = append(s.descs, statDesc{name: name, offset: le.Uint32(x[8:]), size: le.Uint16(x[6:])})
	}
	return s, nil
}

// Read returns the current value of every counter, by name.
func (s *Stats) Read() (map[string]uint64, error) {
	end := int64(0)
	for _, d := range s.descs {
		end = max(end, int64(d.offset)+8*int64(max(d.size, 1)))
	}
	buf := make([]byte, end)
	if _, err := s.f.ReadAt(buf, s.dataOff); err != nil {
		return nil, fmt.Errorf("kvm stats: %w", err)
	}
	out := make(map[string]uint64, len(s.descs))
	for _, d := range s.descs {
		if d.size == 1 {
			out[d.name] = binary.LittleEndian.Uint64(buf[d.offset:])
		}
	}
	return out, nil
}

// Close closes the statistics file.
func (s *Stats) Close() error { return s.f.Close() }
