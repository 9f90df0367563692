package main

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestEscapeReader(t *testing.T) {
	quit := 0
	e := &escapeReader{r: strings.NewReader("ab\x01\x01c\x01x rest"), quit: func() { quit++ }}
	got, err := io.ReadAll(e)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "ab\x01c" || quit != 1 {
		t.Fatalf("got %q quit=%d", got, quit)
	}
}

// TestLazyFile: the exec console file exists only once written to, and
// holds what was written.
func TestLazyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	f := &lazyFile{path: path, log: slog.New(slog.DiscardHandler)}
	if _, err := os.Stat(path); err == nil {
		t.Fatal("created before the first write")
	}
	f.Write([]byte("one "))
	f.Write([]byte("two\n"))
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "one two\n" {
		t.Fatalf("file %q, %v", b, err)
	}
	bad := &lazyFile{path: filepath.Join(path, "sub"), log: slog.New(slog.DiscardHandler)}
	if n, err := bad.Write([]byte("x")); n != 1 || err != nil {
		t.Fatalf("Write to an uncreatable file = %d, %v; want the bytes dropped quietly", n, err)
	}
}
