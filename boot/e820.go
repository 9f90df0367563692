package boot

import (
	"fmt"
	"slices"

	"github.com/govmd/govmd/memory"
)

// E820Type is the type of an e820 (and PVH memory map) entry.
type E820Type uint32

// E820 entry types.
const (
	E820RAM      E820Type = 1
	E820Reserved E820Type = 2
	E820ACPI     E820Type = 3
	E820NVS      E820Type = 4
)

func (t E820Type) String() string {
	switch t {
	case E820RAM:
		return "usable"
	case E820Reserved:
		return "reserved"
	case E820ACPI:
		return "ACPI data"
	case E820NVS:
		return "ACPI NVS"
	}
	return fmt.Sprintf("type %d", uint32(t))
}

// E820Entry is one entry of the memory map given to the kernel.
type E820Entry struct {
	Addr uint64
	Size uint64
	Type E820Type
}

func (e E820Entry) String() string {
	return fmt.Sprintf("[%#x-%#x] %v", e.Addr, e.Addr+e.Size-1, e.Type)
}

// E820 builds the memory map for RAM ranges ram and reserved ranges
// reserved. The result is sorted by address, its entries do not overlap,
// and adjacent entries of the same type are merged. BIOSArea is always
// reserved; reserved ranges take precedence over RAM; everything else in a
// RAM range is usable. Empty ranges are ignored. RAM ranges must not overlap
// each other; reserved ranges may overlap anything. It fails if a range
// wraps around the address space or if the map needs more than E820Max
// entries.
func E820(ram, reserved []memory.Range) ([]E820Entry, error) {
	var rams, resv []memory.Range
	for _, r := range ram {
		if r.Size == 0 {
			continue
		}
		if r.GPA+r.Size < r.GPA {
			return nil, fmt.Errorf("%w: RAM range %#x+%#x wraps around", ErrConfig, r.GPA, r.Size)
		}
		rams = append(rams, r)
	}
	slices.SortFunc(rams, func(a, b memory.Range) int { return cmpUint64(a.GPA, b.GPA) })
	for i := 1; i < len(rams); i++ {
		if rams[i-1].End() > rams[i].GPA {
			return nil, fmt.Errorf("%w: RAM ranges %#x+%#x and %#x+%#x overlap", ErrConfig,
				rams[i-1].GPA, rams[i-1].Size, rams[i].GPA, rams[i].Size)
		}
	}
	resv = append(resv, BIOSArea)
	for _, r := range reserved {
		if r.Size == 0 {
			continue
		}
		if r.GPA+r.Size < r.GPA {
			return nil, fmt.Errorf("%w: reserved range %#x+%#x wraps around", ErrConfig, r.GPA, r.Size)
		}
		resv = append(resv, r)
	}

	// Cut the address space at every range boundary and classify each
	// piece; the pieces are few (two per range).
	points := make([]uint64, 0, 2*(len(rams)+len(resv)))
	for _, r := range rams {
		points = append(points, r.GPA, r.End())
	}
	for _, r := range resv {
		points = append(points, r.GPA, r.End())
	}
	slices.Sort(points)
	points = slices.Compact(points)

	covered := func(rs []memory.Range, a, b uint64) bool {
		for _, r := range rs {
			if r.GPA <= a && b <= r.End() {
				return true
			}
		}
		return false
	}
	var out []E820Entry
	for i := 0; i+1 < len(points); i++ {
		a, b := points[i], points[i+1]
		var t E820Type
		switch {
		case covered(resv, a, b):
			t = E820Reserved
		case covered(rams, a, b):
			t = E820RAM
		default:
			continue
		}
		if n := len(out); n > 0 && out[n-1].Type == t && out[n-1].Addr+out[n-1].Size == a {
			out[n-1].Size += b - a
			continue
		}
		out = append(out, E820Entry{Addr: a, Size: b - a, Type: t})
	}
	if len(out) > E820Max {
		return nil, fmt.Errorf("%w: memory map needs %d entries, at most %d fit", ErrConfig, len(out), E820Max)
	}
	return out, nil
}

func cmpUint64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
