package unixsock

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestListen: a new socket has mode 0600, a stale one is replaced, and a
// live socket, a regular file or a missing directory is an error.
func TestListen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.sock")
	l, err := Listen(path, "test socket")
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, %v", st.Mode(), err)
	}
	if _, err := Listen(path, "test socket"); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second Listen on a live socket: %v", err)
	}
	// A stale socket: the path stays, nobody listens.
	l.SetUnlinkOnClose(false)
	l.Close()
	l2, err := Listen(path, "test socket")
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	l2.Close()

	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o644)
	for _, tc := range []struct{ path, want string }{
		{file, "not a socket"},
		{filepath.Join(dir, "missing", "s.sock"), "test socket"},
	} {
		if _, err := Listen(tc.path, "test socket"); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Listen(%s) = %v, want %q", tc.path, err, tc.want)
		}
	}
}
