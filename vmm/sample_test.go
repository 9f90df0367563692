package vmm

import (
	"strings"
	"testing"
	"time"
)

func TestRIPSamplerWrite(t *testing.T) {
	s := newRIPSampler(10 * time.Millisecond)
	syms := symtab{addrs: []uint64{0x1000, 0x2000}, names: []string{"start", "idle"}}
	for _, rip := range []uint64{0x1000, 0x1010, 0x2004, 0x2008, 0x2010, 0x10} {
		s.add(rip)
	}
	var b strings.Builder
	if err := s.writeSyms(&b, syms); err != nil {
		t.Fatal(err)
	}
	want := "# govmd guest profile: 6 samples, one per vCPU every 10ms\n" +
		"       3  50.0% idle\n" +
		"       2  33.3% start\n" +
		"       1  16.7% 0x10\n"
	if b.String() != want {
		t.Errorf("profile:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestSymtabName(t *testing.T) {
	syms := symtab{addrs: []uint64{0x1000, 0x2000}, names: []string{"a", "b"}}
	for _, c := range []struct {
		rip  uint64
		want string
	}{
		{0xfff, "0xfff"}, {0x1000, "a"}, {0x1fff, "a"}, {0x2000, "b"}, {0x2000 + 1<<20 + 1, "0x102001"},
	} {
		if got := syms.name(c.rip); got != c.want {
			t.Errorf("name(%#x) = %q, want %q", c.rip, got, c.want)
		}
	}
	if got := (symtab{}).name(0x1234); got != "0x1234" {
		t.Errorf("empty table: %q", got)
	}
}
