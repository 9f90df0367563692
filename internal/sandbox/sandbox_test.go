package sandbox

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestEffectiveCaps: capget gives what /proc/self/status says.
func TestEffectiveCaps(t *testing.T) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	v, ok := statusField(string(b), "CapEff")
	if !ok {
		t.Fatal("no CapEff in /proc/self/status")
	}
	want, err := strconv.ParseUint(v, 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := effectiveCaps(); err != nil || got != want {
		t.Fatalf("effectiveCaps() = %#x, %v; /proc/self/status CapEff %#x", got, err, want)
	}
}

func TestStatusField(t *testing.T) {
	status := "Name:\tgovmd\nUid:\t65534\t65534\t65534\t65534\nCapEff:\t0000000000000000\nNoNewPrivs:\t1\n"
	for _, tc := range []struct{ name, want string }{
		{"CapEff", "0000000000000000"}, {"NoNewPrivs", "1"}, {"Uid", "65534\t65534\t65534\t65534"},
	} {
		if v, ok := statusField(status, tc.name); !ok || v != tc.want {
			t.Errorf("%s = %q, %v", tc.name, v, ok)
		}
	}
	if _, ok := statusField(status, "Cap"); ok {
		t.Error("a prefix matched")
	}
}

// statusField returns the value of a "Name:\tvalue" line.
func statusField(status, name string) (string, bool) {
	for _, line := range strings.Split(status, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && k == name {
			return strings.TrimSpace(v), true
		}
	}
	return "", false
}

// TestLookup: names and numbers resolve; root is refused as a sandbox
// user (before anything is applied), unknown users are errors.
func TestLookup(t *testing.T) {
	if uid, _, err := Lookup("root"); err != nil || uid != 0 {
		t.Fatalf("root: %d %v", uid, err)
	}
	if uid, _, err := Lookup("0"); err != nil || uid != 0 {
		t.Fatalf("0: %d %v", uid, err)
	}
	if _, _, err := Lookup("no-such-user-here"); err == nil {
		t.Fatal("unknown user resolved")
	}
	if err := Confine(Config{User: "root"}); err == nil || !strings.Contains(err.Error(), "is root") {
		t.Fatalf("confining as root: %v", err)
	}
}
