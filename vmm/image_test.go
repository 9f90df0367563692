package vmm

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestMapImage: a mapped kernel reads as the file; one truncated while
// mapped gives an error naming it instead of killing the process; the
// checks of readImage hold.
func TestMapImage(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "vmlinux")
	want := bytes.Repeat([]byte("govmd!"), 3*4096)
	if err := os.WriteFile(path, want, 0o644); err != nil {
		t.Fatal(err)
	}
	b, release, err := mapImage(path, "kernel", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if !bytes.Equal(b, want) {
		t.Fatal("mapped bytes differ from the file")
	}
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	var sum byte
	err = guardFaults("kernel", path, func() error {
		for _, c := range b[2*4096:] {
			sum += c
		}
		return nil
	})
	if !errors.Is(err, ErrConfig) {
		t.Fatalf("reading a truncated mapping: error %v (sum %d), want a config error", err, sum)
	}
	t.Log(err)

	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if b, release, err := mapImage(empty, "kernel", 1<<20); err != nil || len(b) != 0 {
		t.Fatalf("empty file: %d bytes, error %v", len(b), err)
	} else {
		release()
	}
	for _, p := range []string{dir, filepath.Join(dir, "missing")} {
		if _, _, err := mapImage(p, "kernel", 1<<20); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: error %v, want a config error", p, err)
		}
	}
	if _, _, err := mapImage(path, "kernel", 1); err != nil {
		t.Errorf("a file truncated to 0 is not over a limit of 1: %v", err)
	}
	if err := os.WriteFile(path, want, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := mapImage(path, "kernel", 100); !errors.Is(err, ErrConfig) {
		t.Errorf("over the limit: error %v, want a config error", err)
	}
}
