// Command mkinitrd writes a reproducible initramfs: a newc cpio archive of
// a directory tree, with fixed metadata, and optionally a gzip copy of it.
//
// Every record gets uid/gid 0, the same mtime (-mtime, default
// $SOURCE_DATE_EPOCH, else 0), a sequential inode number and normalised
// permissions (0755 for directories and for files with any execute bit,
// 0644 for other files). Names are written in sorted order with each
// directory before its contents. Only directories, regular files and
// symlinks are taken from the tree; device nodes are added with -dev, so
// building needs no privileges.
//
// The gzip copy uses stored (uncompressed) deflate blocks: it is a valid
// .cpio.gz for any loader, but the guest kernel unpacks it at memcpy
// speed, which matters when the guest runs in an instruction emulator.
//
// Usage:
//
//	mkinitrd -root DIR [-o out.cpio] [-gz out.cpio.gz] [-mtime N]
//	         [-dev /dev/console:c:5:1:0600]... [-pattern /pattern:SIZE]...
//
// -pattern adds a regular file whose byte i is i%251 (a test pattern the
// host can recompute; 251 is prime, so it is not aligned to any packet,
// page or sector size), and next to it PATH.sha256: lines "N HEX", the
// sha256 of the first N bytes of that infinite stream for the sizes in
// patternSums, so the guest need not hash data it generated itself.
package main

import (
	"bufio"
	"compress/gzip"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

// entry is one archive member before inode/mtime assignment.
type entry struct {
	name string // normalised, no leading slash
	rec  cpio.Record
}

func main() {
	var (
		root    = flag.String("root", "", "directory to archive (required)")
		out     = flag.String("o", "", "write the uncompressed cpio here")
		gzOut   = flag.String("gz", "", "write the gzip (stored blocks) cpio here")
		mtime   = flag.Int64("mtime", -1, "mtime of every record (default $SOURCE_DATE_EPOCH or 0)")
		devs    listFlag
		pattern listFlag
	)
	flag.Var(&devs, "dev", "add a device node PATH:c|b:MAJOR:MINOR:PERM (repeatable)")
	flag.Var(&pattern, "pattern", "add a test-pattern file PATH:SIZE, byte i = i%251 (repeatable)")
	flag.Parse()
	if *root == "" || (*out == "" && *gzOut == "") || flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	if *mtime < 0 {
		*mtime = 0
		if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
			v, err := strconv.ParseInt(s, 10, 64)
			if err != nil || v < 0 {
				fatal(fmt.Errorf("bad SOURCE_DATE_EPOCH %q", s))
			}
			*mtime = v
		}
	}
	entries, err := collect(*root)
	if err != nil {
		fatal(err)
	}
	for _, d := range devs {
		e, err := devEntry(d)
		if err != nil {
			fatal(err)
		}
		entries = append(entries, e)
	}
	for _, p := range pattern {
		es, err := patternEntry(p)
		if err != nil {
			fatal(err)
		}
		entries = append(entries, es...)
	}
	entries, err = finish(entries, uint64(*mtime))
	if err != nil {
		fatal(err)
	}
	if *out != "" {
		if err := writeFile(*out, entries, false); err != nil {
			fatal(err)
		}
	}
	if *gzOut != "" {
		if err := writeFile(*gzOut, entries, true); err != nil {
			fatal(err)
		}
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "mkinitrd:", err)
	os.Exit(1)
}

// collect walks root and returns its directories, files and symlinks.
func collect(root string) ([]entry, error) {
	var es []entry
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		name := cpio.Normalize(filepath.ToSlash(rel))
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch m := fi.Mode(); {
		case m.IsDir():
			es = append(es, entry{name, cpio.Directory(name, 0o755)})
		case m&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			es = append(es, entry{name, cpio.Symlink(name, t)})
		case m.IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			perm := uint64(0o644)
			if m&0o111 != 0 {
				perm = 0o755
			}
			es = append(es, entry{name, cpio.StaticRecord(b, cpio.Info{Name: name, Mode: cpio.S_IFREG | perm})})
		default:
			return fmt.Errorf("%s: unsupported file type %v (use -dev for device nodes)", p, m.Type())
		}
		return nil
	})
	return es, err
}

func devEntry(spec string) (entry, error) {
	f := strings.Split(spec, ":")
	if len(f) != 5 || (f[1] != "c" && f[1] != "b") {
		return entry{}, fmt.Errorf("-dev %q: want PATH:c|b:MAJOR:MINOR:PERM", spec)
	}
	maj, err1 := strconv.ParseUint(f[2], 10, 32)
	min, err2 := strconv.ParseUint(f[3], 10, 32)
	perm, err3 := strconv.ParseUint(f[4], 8, 32)
	if err := errors.Join(err1, err2, err3); err != nil || perm > 0o7777 {
		return entry{}, fmt.Errorf("-dev %q: bad number: %v", spec, err)
	}
	name := cpio.Normalize(f[0])
	r := cpio.CharDev(name, perm, maj, min)
	if f[1] == "b" {
		r.Mode = cpio.S_IFBLK | perm
	}
	return entry{name, r}, nil
}

// patternSums are the stream lengths listed in PATH.sha256: powers of two
// from 512 bytes to 16 MiB, and 1000*2^k from 1000 to 16384000.
func patternSums() []int {
	var ns []int
	for n := 512; n <= 16<<20; n *= 2 {
		ns = append(ns, n)
	}
	for n := 1000; n <= 16384000; n *= 2 {
		ns = append(ns, n)
	}
	sort.Ints(ns)
	return ns
}

func patternBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

func patternEntry(spec string) ([]entry, error) {
	p, s, ok := strings.Cut(spec, ":")
	n, err := strconv.ParseUint(s, 10, 32)
	if !ok || err != nil {
		return nil, fmt.Errorf("-pattern %q: want PATH:SIZE", spec)
	}
	name := cpio.Normalize(p)
	ns := patternSums()
	stream := patternBytes(ns[len(ns)-1])
	var sums strings.Builder
	for _, k := range ns {
		fmt.Fprintf(&sums, "%d %x\n", k, sha256.Sum256(stream[:k]))
	}
	return []entry{
		{name, cpio.StaticRecord(patternBytes(int(n)), cpio.Info{Name: name, Mode: cpio.S_IFREG | 0o644})},
		{name + ".sha256", cpio.StaticRecord([]byte(sums.String()), cpio.Info{Name: name + ".sha256", Mode: cpio.S_IFREG | 0o644})},
	}, nil
}

// finish sorts the entries, adds missing parent directories, rejects
// duplicates and assigns the fixed metadata.
func finish(es []entry, mtime uint64) ([]entry, error) {
	have := map[string]bool{}
	for _, e := range es {
		if have[e.name] {
			return nil, fmt.Errorf("duplicate archive member %q", e.name)
		}
		have[e.name] = true
	}
	for _, e := range es {
		for d := path.Dir(e.name); d != "." && d != "/" && !have[d]; d = path.Dir(d) {
			have[d] = true
			es = append(es, entry{d, cpio.Directory(d, 0o755)})
		}
	}
	// Sorting by path components puts a directory before its contents
	// ("a" < "a/b" < "a-b" would break plain string order).
	sort.Slice(es, func(i, j int) bool {
		return lessPath(es[i].name, es[j].name)
	})
	for i := range es {
		r := &es[i].rec
		r.Name = es[i].name
		r.Ino = uint64(i + 1)
		r.UID, r.GID = 0, 0
		r.MTime = mtime
		r.Dev, r.Major, r.Minor = 0, 0, 0
		r.NLink = 1
		if r.Mode&cpio.S_IFMT == cpio.S_IFDIR {
			r.NLink = 2
		}
	}
	return es, nil
}

func lessPath(a, b string) bool {
	as, bs := strings.Split(a, "/"), strings.Split(b, "/")
	for i := 0; i < len(as) && i < len(bs); i++ {
		if as[i] != bs[i] {
			return as[i] < bs[i]
		}
	}
	return len(as) < len(bs)
}

func writeFile(name string, es []entry, compress bool) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(name), ".mkinitrd-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	bw := bufio.NewWriterSize(tmp, 1<<20)
	var w io.Writer = bw
	var zw *gzip.Writer
	if compress {
		// Header: no name, mtime 0, OS 255: byte-for-byte reproducible.
		zw, err = gzip.NewWriterLevel(bw, gzip.NoCompression)
		if err != nil {
			return err
		}
		w = zw
	}
	rw := cpio.Newc.Writer(w)
	for _, e := range es {
		if err := rw.WriteRecord(e.rec); err != nil {
			return fmt.Errorf("%s: %w", e.name, err)
		}
	}
	if err := cpio.WriteTrailer(rw); err != nil {
		return err
	}
	if zw != nil {
		if err := zw.Close(); err != nil {
			return err
		}
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), name)
}
