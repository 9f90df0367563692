package sandbox

import "testing"

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

// TestLookup: names and numbers resolve; root is refused as a sandbox
// user (becomeUser), unknown users are errors.
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
	if err := becomeUser("root"); err == nil {
		t.Fatal("becoming root accepted")
	}
}
