package memory

import (
	"errors"
	"reflect"
	"testing"
)

func TestSliceBounds(t *testing.T) {
	m, err := New([]Range{{GPA: 0, Size: 0x2000}, {GPA: 0x10000, Size: 0x1000}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	tests := []struct {
		name string
		gpa  uint64
		n    uint64
		ok   bool
	}{
		{"start", 0, 1, true},
		{"whole first", 0, 0x2000, true},
		{"end of first, empty", 0x2000, 0, true},
		{"past first", 0x1fff, 2, false},
		{"gap", 0x3000, 1, false},
		{"second", 0x10000, 0x1000, true},
		{"second overflow", 0x10fff, 2, false},
		{"wrap", ^uint64(0), 2, false},
		{"huge length", 0x10, ^uint64(0), false},
		{"below", 0, 0x2001, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := m.Slice(tc.gpa, tc.n)
			if tc.ok {
				if err != nil || uint64(len(b)) != tc.n {
					t.Fatalf("Slice(%#x,%#x) = %d bytes, %v", tc.gpa, tc.n, len(b), err)
				}
				return
			}
			if !errors.Is(err, ErrRange) {
				t.Fatalf("Slice(%#x,%#x) err = %v, want ErrRange", tc.gpa, tc.n, err)
			}
		})
	}
}

func TestRejectsOverlap(t *testing.T) {
	if _, err := New([]Range{{0, 0x2000}, {0x1000, 0x1000}}); err == nil {
		t.Fatal("overlapping ranges accepted")
	}
	if _, err := New([]Range{{0, 0x1001}}); err == nil {
		t.Fatal("unaligned range accepted")
	}
}

func TestAtomic16(t *testing.T) {
	m, err := New([]Range{{0, 0x1000}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.PutUint16(0x10, 0xaaaa); err != nil {
		t.Fatal(err)
	}
	if err := m.StoreUint16Release(0x12, 0x1234); err != nil {
		t.Fatal(err)
	}
	if v, _ := m.Uint16(0x10); v != 0xaaaa {
		t.Fatalf("neighbour clobbered: %#x", v)
	}
	if v, err := m.LoadUint16Acquire(0x12); err != nil || v != 0x1234 {
		t.Fatalf("LoadUint16Acquire = %#x, %v", v, err)
	}
	if _, err := m.LoadUint16Acquire(0x13); err == nil {
		t.Fatal("misaligned load accepted")
	}
	if err := m.StoreUint16Release(0xffe, 7); err != nil {
		t.Fatal(err)
	}
	if _, err := m.LoadUint16Acquire(0x1000); err == nil {
		t.Fatal("out of range load accepted")
	}
}

func FuzzSlice(f *testing.F) {
	f.Add(uint64(0), uint64(1))
	f.Add(uint64(0xfff), uint64(2))
	m := FromBytes(Region{GPA: 0x1000, Host: make([]byte, 0x1000)}, Region{GPA: 0x4000, Host: make([]byte, 0x800)})
	f.Fuzz(func(t *testing.T, gpa, n uint64) {
		b, err := m.Slice(gpa, n)
		if err == nil && uint64(len(b)) != n {
			t.Fatalf("len %d != %d", len(b), n)
		}
	})
}

// TestSliceRegionSearch checks the region lookup against a linear scan,
// for every region of a memory with several, at and around their edges.
func TestSliceRegionSearch(t *testing.T) {
	var regions []Region
	// The fourth and fifth regions are adjacent.
	for i, gpa := range []uint64{0x1000, 0x3000, 0x8000, 0xa000, 0xc000, 0x100000} {
		regions = append(regions, Region{GPA: gpa, Host: make([]byte, 0x800*(i+1))})
	}
	m := FromBytes(regions...)
	linear := func(gpa uint64) (int, bool) {
		for i, r := range regions {
			if gpa >= r.GPA && gpa < r.GPA+uint64(len(r.Host)) {
				return i, true
			}
		}
		return 0, false
	}
	for _, r := range regions {
		end := r.GPA + uint64(len(r.Host))
		for _, gpa := range []uint64{0, r.GPA - 1, r.GPA, r.GPA + 1, end - 1, end, end + 1} {
			b, err := m.Slice(gpa, 1)
			i, ok := linear(gpa)
			if ok != (err == nil) {
				t.Fatalf("Slice(%#x, 1): err %v, want in region: %v", gpa, err, ok)
			}
			if ok && &b[0] != &regions[i].Host[gpa-regions[i].GPA] {
				t.Fatalf("Slice(%#x, 1) is not backed by region %d", gpa, i)
			}
		}
	}
}

// TestNewAlignsHugePages: every mapped region starts on a 2 MiB boundary
// (so KVM can back it with huge pages) and is private, writable memory.
func TestNewAlignsHugePages(t *testing.T) {
	for _, size := range []uint64{4096, 3 << 20, 64 << 20} {
		m, err := New([]Range{{GPA: 0, Size: size}, {GPA: 1 << 32, Size: size}})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range m.Regions() {
			if p := reflect.ValueOf(r.Host).Pointer(); p%hugePageSize != 0 {
				t.Errorf("size %#x: region at %#x mapped at %#x, not 2 MiB aligned", size, r.GPA, p)
			}
			if uint64(len(r.Host)) != size {
				t.Errorf("size %#x: region of %#x bytes", size, len(r.Host))
			}
			r.Host[0], r.Host[len(r.Host)-1] = 1, 2
		}
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
