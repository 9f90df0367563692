package main

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/govmd/govmd/vmm"
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

// TestLateFile: an output file exists only once opened (set-up done),
// holds what was written after that, and a missing directory is bad input.
func TestLateFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	f, err := newLateFile(path, "--console")
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("dropped "))
	if _, err := os.Stat(path); err == nil {
		t.Fatal("created before Open")
	}
	hook := openThenConfine([]*lateFile{f}, nil)
	if err := hook(); err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("one "))
	f.Write([]byte("two\n"))
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "one two\n" {
		t.Fatalf("file %q, %v", b, err)
	}
	if _, err := newLateFile(filepath.Join(path+".d", "x"), "--console"); !errors.Is(err, vmm.ErrConfig) {
		t.Fatalf("a missing directory: %v", err)
	}
}
