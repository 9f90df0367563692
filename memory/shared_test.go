package memory

import (
	"os"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestNewSharedIsSeenByMapFiles: RAM from NewShared, mapped a second time
// through its file the way a vhost-user backend maps it, is the same
// memory in both directions; the file is sealed and the regions huge-page
// aligned.
func TestNewSharedIsSeenByMapFiles(t *testing.T) {
	m, err := NewShared([]Range{{GPA: 0, Size: 3 << 20}, {GPA: 1 << 32, Size: 1 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	f := m.File()
	if f == nil {
		t.Fatal("no file")
	}
	seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
	if err != nil || seals&(unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL) != unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL {
		t.Fatalf("seals %#x, %v", seals, err)
	}
	var frs []FileRange
	for _, r := range m.Regions() {
		if p := reflect.ValueOf(r.Host).Pointer(); p%hugePageSize != 0 {
			t.Errorf("region %#x mapped at %#x, not 2 MiB aligned", r.GPA, p)
		}
		if r.Offset%hugePageSize != 0 {
			t.Errorf("region %#x at file offset %#x", r.GPA, r.Offset)
		}
		frs = append(frs, FileRange{GPA: r.GPA, Size: uint64(len(r.Host)), FD: int(f.Fd()), Offset: r.Offset})
	}
	peer, err := MapFiles(frs)
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	for _, gpa := range []uint64{0, 3<<20 - 8, 1 << 32, 1<<32 + 1<<20 - 8} {
		if err := m.PutUint64(gpa, gpa^0x5a5a); err != nil {
			t.Fatal(err)
		}
		if v, err := peer.Uint64(gpa); err != nil || v != gpa^0x5a5a {
			t.Errorf("peer reads %#x at %#x (%v)", v, gpa, err)
		}
		if err := peer.PutUint64(gpa, ^gpa); err != nil {
			t.Fatal(err)
		}
		if v, _ := m.Uint64(gpa); v != ^gpa {
			t.Errorf("owner reads %#x at %#x after the peer wrote", v, gpa)
		}
	}
	if peer.Contains(3<<20, 1) {
		t.Error("peer memory extends past its range")
	}
}

// TestMapFilesRefuses: what a hostile frontend could send instead of a
// sealed memfd covering the range is refused, never mapped.
func TestMapFilesRefuses(t *testing.T) {
	sealed := func(t *testing.T, size int64, seals int) int {
		fd, err := unix.MemfdCreate("t", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		if err := unix.Ftruncate(fd, size); err != nil {
			t.Fatal(err)
		}
		if seals != 0 {
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
				t.Fatal(err)
			}
		}
		return fd
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	tests := []struct {
		name   string
		ranges func(t *testing.T) []FileRange
		want   string
	}{
		{"not sealed", func(t *testing.T) []FileRange {
			return []FileRange{{GPA: 0, Size: 1 << 20, FD: sealed(t, 1<<20, 0)}}
		}, "sealed"},
		{"shorter than the range", func(t *testing.T) []FileRange {
			return []FileRange{{GPA: 0, Size: 1 << 20, FD: sealed(t, 4096, unix.F_SEAL_SHRINK)}}
		}, "shorter"},
		{"offset past the end", func(t *testing.T) []FileRange {
			return []FileRange{{GPA: 0, Size: 4096, Offset: 1 << 20, FD: sealed(t, 1<<20, unix.F_SEAL_SHRINK)}}
		}, "shorter"},
		{"a pipe", func(t *testing.T) []FileRange {
			return []FileRange{{GPA: 0, Size: 4096, FD: int(r.Fd())}}
		}, "regular"},
		{"closed fd", func(t *testing.T) []FileRange {
			return []FileRange{{GPA: 0, Size: 4096, FD: 1 << 20}}
		}, "fstat"},
		{"wraps", func(t *testing.T) []FileRange {
			return []FileRange{{GPA: ^uint64(0) - 4095, Size: 8192, FD: sealed(t, 8192, unix.F_SEAL_SHRINK)}}
		}, "wraps"},
		{"overlap", func(t *testing.T) []FileRange {
			fd := sealed(t, 8192, unix.F_SEAL_SHRINK)
			return []FileRange{{GPA: 0, Size: 8192, FD: fd}, {GPA: 4096, Size: 4096, FD: fd}}
		}, "overlap"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := MapFiles(tt.ranges(t))
			if err == nil {
				m.Close()
				t.Fatal("mapped")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not mention %q", err, tt.want)
			}
		})
	}
}
