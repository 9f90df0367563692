package boot

import (
	"errors"
	"slices"
	"testing"

	"github.com/govmd/govmd/memory"
)

func TestE820(t *testing.T) {
	const gib = 1 << 30
	low := memory.Range{GPA: 0, Size: 512 * mib}
	bios := E820Entry{0x9fc00, 0x60400, E820Reserved}
	tests := []struct {
		name     string
		ram      []memory.Range
		reserved []memory.Range
		want     []E820Entry
		wantErr  error
	}{
		{
			name: "low RAM only",
			ram:  []memory.Range{low},
			want: []E820Entry{{0, 0x9fc00, E820RAM}, bios, {0x100000, 511 * mib, E820RAM}},
		},
		{
			name: "low and high RAM, unsorted",
			ram:  []memory.Range{{GPA: 4 * gib, Size: gib}, {GPA: 0, Size: 3 * gib}},
			want: []E820Entry{{0, 0x9fc00, E820RAM}, bios, {0x100000, 3*gib - mib, E820RAM}, {4 * gib, gib, E820RAM}},
		},
		{
			name:     "reserved outside RAM (ECAM) and inside the BIOS area (ACPI)",
			ram:      []memory.Range{low},
			reserved: []memory.Range{{GPA: 0xe0000000, Size: 0x10000000}, {GPA: 0xe0000, Size: 0x20000}},
			want:     []E820Entry{{0, 0x9fc00, E820RAM}, bios, {0x100000, 511 * mib, E820RAM}, {0xe0000000, 0x10000000, E820Reserved}},
		},
		{
			name:     "reserved inside RAM splits it",
			ram:      []memory.Range{low},
			reserved: []memory.Range{{GPA: 64 * mib, Size: mib}},
			want: []E820Entry{
				{0, 0x9fc00, E820RAM}, bios, {0x100000, 63 * mib, E820RAM},
				{64 * mib, mib, E820Reserved}, {65 * mib, 447 * mib, E820RAM},
			},
		},
		{
			name:     "reserved straddling the end of RAM",
			ram:      []memory.Range{low},
			reserved: []memory.Range{{GPA: 511 * mib, Size: 2 * mib}},
			want:     []E820Entry{{0, 0x9fc00, E820RAM}, bios, {0x100000, 510 * mib, E820RAM}, {511 * mib, 2 * mib, E820Reserved}},
		},
		{
			name:     "adjacent and overlapping reserved ranges merge",
			ram:      []memory.Range{low},
			reserved: []memory.Range{{GPA: 0x100000, Size: 0x1000}, {GPA: 0x100800, Size: 0x1000}, {GPA: 0x101800, Size: 0x800}},
			want:     []E820Entry{{0, 0x9fc00, E820RAM}, {0x9fc00, 0x62400, E820Reserved}, {0x102000, 512*mib - 0x102000, E820RAM}},
		},
		{
			name:     "empty ranges are ignored",
			ram:      []memory.Range{low, {GPA: 8 * gib}},
			reserved: []memory.Range{{GPA: 64 * mib}},
			want:     []E820Entry{{0, 0x9fc00, E820RAM}, bios, {0x100000, 511 * mib, E820RAM}},
		},
		{
			name: "RAM smaller than the BIOS area",
			ram:  []memory.Range{{GPA: 0, Size: 0x80000}},
			want: []E820Entry{{0, 0x80000, E820RAM}, bios},
		},
		{
			name: "adjacent RAM ranges merge",
			ram:  []memory.Range{{GPA: 0, Size: 2 * mib}, {GPA: 2 * mib, Size: 2 * mib}},
			want: []E820Entry{{0, 0x9fc00, E820RAM}, bios, {0x100000, 3 * mib, E820RAM}},
		},
		{name: "no RAM", want: []E820Entry{bios}},
		{
			name:    "overlapping RAM",
			ram:     []memory.Range{low, {GPA: 256 * mib, Size: 512 * mib}},
			wantErr: ErrConfig,
		},
		{
			name:    "RAM wraps",
			ram:     []memory.Range{{GPA: ^uint64(0) - 0xfff, Size: 0x2000}},
			wantErr: ErrConfig,
		},
		{
			name:     "reserved wraps",
			ram:      []memory.Range{low},
			reserved: []memory.Range{{GPA: 1, Size: ^uint64(0)}},
			wantErr:  ErrConfig,
		},
		{
			name:     "too many entries",
			ram:      []memory.Range{low},
			reserved: holes(200),
			wantErr:  ErrConfig,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := E820(tc.ram, tc.reserved)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("E820: %v, want %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("E820:\n got %v\nwant %v", got, tc.want)
			}
			for i := 1; i < len(got); i++ {
				if got[i-1].Addr+got[i-1].Size > got[i].Addr {
					t.Errorf("entries %v and %v overlap or are unsorted", got[i-1], got[i])
				}
			}
		})
	}
}

// holes returns n one-page reserved ranges with gaps between them.
func holes(n int) []memory.Range {
	var rs []memory.Range
	for i := range n {
		rs = append(rs, memory.Range{GPA: uint64(64*mib + i*2*pageSize), Size: pageSize})
	}
	return rs
}

func TestE820TypeString(t *testing.T) {
	for typ, want := range map[E820Type]string{E820RAM: "usable", E820Reserved: "reserved", E820ACPI: "ACPI data", E820NVS: "ACPI NVS", 9: "type 9"} {
		if got := typ.String(); got != want {
			t.Errorf("%d: %q, want %q", uint32(typ), got, want)
		}
	}
	if got := (E820Entry{0x1000, 0x1000, E820RAM}).String(); got != "[0x1000-0x1fff] usable" {
		t.Errorf("entry string %q", got)
	}
}
