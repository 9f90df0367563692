package main

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"
)

// tree creates a small staging directory.
func tree(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	for _, p := range []string{"bin", "etc", "a-b", "a/b"} {
		if err := os.MkdirAll(filepath.Join(d, p), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]struct {
		data string
		mode os.FileMode
	}{
		"init":        {"#!/bin/sh\necho hi\n", 0o700},
		"etc/fstab":   {"proc /proc proc defaults 0 0\n", 0o600},
		"a/b/c":       {"c", 0o640},
		"bin/busybox": {"\x7fELF", 0o750},
	}
	for n, f := range files {
		if err := os.WriteFile(filepath.Join(d, n), []byte(f.data), f.mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("busybox", filepath.Join(d, "bin/sh")); err != nil {
		t.Fatal(err)
	}
	return d
}

func build(t *testing.T, root string, mtime uint64) ([]entry, error) {
	t.Helper()
	es, err := collect(root)
	if err != nil {
		return nil, err
	}
	dev, err := devEntry("/dev/console:c:5:1:0600")
	if err != nil {
		return nil, err
	}
	pat, err := patternEntry("/pattern:1000")
	if err != nil {
		return nil, err
	}
	es = append(append(es, dev), pat...)
	return finish(es, mtime)
}

func archive(t *testing.T, root string, compress bool) []byte {
	t.Helper()
	es, err := build(t, root, 1704067200)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "initrd")
	if err := writeFile(out, es, compress); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestReproducible(t *testing.T) {
	// Two trees with the same content but different modes/timestamps on
	// disk give identical archives.
	a, b := tree(t), tree(t)
	if err := os.Chmod(filepath.Join(b, "init"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, gz := range []bool{false, true} {
		if x, y := archive(t, a, gz), archive(t, b, gz); !bytes.Equal(x, y) {
			t.Errorf("gzip=%v: archives differ", gz)
		}
	}
}

func TestArchiveContents(t *testing.T) {
	root := tree(t)
	raw := archive(t, root, false)
	zr, err := gzip.NewReader(bytes.NewReader(archive(t, root, true)))
	if err != nil {
		t.Fatal(err)
	}
	unz, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw, unz) {
		t.Fatal("gunzip(cpio.gz) != cpio")
	}

	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(raw)))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	got := map[string]cpio.Record{}
	for _, r := range recs {
		names = append(names, r.Name)
		got[r.Name] = r
		if r.UID != 0 || r.GID != 0 || r.MTime != 1704067200 {
			t.Errorf("%s: uid %d gid %d mtime %d", r.Name, r.UID, r.GID, r.MTime)
		}
	}
	want := "a a/b a/b/c a-b bin bin/busybox bin/sh dev dev/console etc etc/fstab init pattern pattern.sha256"
	if s := strings.Join(names, " "); s != want {
		t.Errorf("names:\n got %s\nwant %s", s, want)
	}
	tests := []struct {
		name string
		mode uint64
	}{
		{"a", cpio.S_IFDIR | 0o755},
		{"init", cpio.S_IFREG | 0o755},
		{"etc/fstab", cpio.S_IFREG | 0o644},
		{"bin/busybox", cpio.S_IFREG | 0o755},
		{"bin/sh", cpio.S_IFLNK | 0o777},
		{"dev/console", cpio.S_IFCHR | 0o600},
	}
	for _, tt := range tests {
		if m := got[tt.name].Mode; m != tt.mode {
			t.Errorf("%s: mode %#o, want %#o", tt.name, m, tt.mode)
		}
	}
	if c := got["dev/console"]; c.Rmajor != 5 || c.Rminor != 1 {
		t.Errorf("dev/console: %d:%d", c.Rmajor, c.Rminor)
	}

	// /pattern is the stream i%251, and pattern.sha256 matches it.
	pat := make([]byte, 1000)
	if _, err := got["pattern"].ReadAt(pat, 0); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	for i, c := range pat {
		if c != byte(i%251) {
			t.Fatalf("pattern[%d] = %d", i, c)
		}
	}
	sums := make([]byte, got["pattern.sha256"].FileSize)
	if _, err := got["pattern.sha256"].ReadAt(sums, 0); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	line := fmt.Sprintf("1000 %x\n", sha256.Sum256(pat))
	if !strings.Contains(string(sums), line) {
		t.Errorf("pattern.sha256 lacks %q", line)
	}
	if !strings.Contains(string(sums), "\n16777216 ") {
		t.Errorf("pattern.sha256 lacks 16 MiB")
	}
}

func TestDevEntryErrors(t *testing.T) {
	for _, s := range []string{"", "/dev/x", "/dev/x:q:1:2:0600", "/dev/x:c:a:2:0600", "/dev/x:c:1:2:99999"} {
		if _, err := devEntry(s); err == nil {
			t.Errorf("devEntry(%q): no error", s)
		}
	}
}

func TestDuplicate(t *testing.T) {
	es := []entry{{"a", cpio.Directory("a", 0o755)}, {"a", cpio.Directory("a", 0o755)}}
	if _, err := finish(es, 0); err == nil {
		t.Error("duplicate accepted")
	}
}
