package execinit

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"
)

// member is what a test expects of one archive record.
type member struct {
	mode uint64
	data string // regular files only
}

// readArchive reads an archive back with u-root's reader and checks what
// every record must have; it returns the records by name, and the names in
// order.
func readArchive(t *testing.T, b []byte) (map[string]cpio.Record, []string) {
	t.Helper()
	if len(b)%4 != 0 {
		t.Errorf("archive is %d bytes, not a multiple of 4", len(b))
	}
	tail := b[len(b)-16:]
	if !bytes.Contains(tail, []byte(cpio.Trailer+"\x00")) {
		t.Errorf("archive does not end with the trailer: %q", tail)
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(b)))
	if err != nil {
		t.Fatalf("reading the archive back: %v", err)
	}
	byName := map[string]cpio.Record{}
	var names []string
	inos := map[uint64]bool{}
	for _, r := range recs {
		if _, dup := byName[r.Name]; dup {
			t.Errorf("%s: twice", r.Name)
		}
		byName[r.Name] = r
		names = append(names, r.Name)
		if r.UID != 0 || r.GID != 0 || r.MTime != 0 {
			t.Errorf("%s: uid %d gid %d mtime %d, want 0 0 0", r.Name, r.UID, r.GID, r.MTime)
		}
		if inos[r.Ino] {
			t.Errorf("%s: inode %d reused", r.Name, r.Ino)
		}
		inos[r.Ino] = true
		want := uint64(1)
		if r.Mode&cpio.S_IFMT == cpio.S_IFDIR {
			want = 2
		}
		if r.NLink != want { // >= 2 on a file would make the kernel look for hard links
			t.Errorf("%s: nlink %d, want %d", r.Name, r.NLink, want)
		}
	}
	return byName, names
}

func TestArchive(t *testing.T) {
	base := map[string]member{
		"dev":         {mode: cpio.S_IFDIR | 0o755},
		"dev/console": {mode: cpio.S_IFCHR | 0o600},
		"govmd":       {mode: cpio.S_IFDIR | 0o755},
		"govmd/init":  {mode: cpio.S_IFREG | 0o755, data: string(initBinary)},
		"mnt":         {mode: cpio.S_IFDIR | 0o755},
		"proc":        {mode: cpio.S_IFDIR | 0o755},
		"sys":         {mode: cpio.S_IFDIR | 0o755},
		"tmp":         {mode: cpio.S_IFDIR | 0o1777},
	}
	defEnv := "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\x00HOME=/root\x00TERM=dumb\x00"
	for _, tc := range []struct {
		name                   string
		spec                   Spec
		argv, env, cwd, mounts string
		root, stdin            string
		modules                []string // contents of /govmd/modules/NNN.ko
	}{
		{
			name: "minimal",
			spec: Spec{Argv: []string{"true"}},
			argv: "true\x00", env: defEnv, cwd: "/\n",
		},
		{
			name: "everything",
			spec: Spec{
				Argv: []string{"/bin/sh", "-c", "echo \"$X\" > out", "", "ünï cödé"},
				Env:  []string{"X=a b=c", "EMPTY=", "PATH=/opt/bin"},
				Dir:  "/work/sub dir",
				Mounts: []Mount{
					{Tag: "work", Dir: "/work"},
					{Tag: "ro_data-1", Dir: "/mnt/data/ünï", ReadOnly: true},
				},
			},
			argv:   "/bin/sh\x00-c\x00echo \"$X\" > out\x00\x00ünï cödé\x00",
			env:    "X=a b=c\x00EMPTY=\x00PATH=/opt/bin\x00",
			cwd:    "/work/sub dir\n",
			mounts: "work /work rw\nro_data-1 /mnt/data/ünï ro\n",
		},
		{
			name: "root share",
			spec: Spec{Argv: []string{"uname", "-r"}, Root: "govmd-root"},
			argv: "uname\x00-r\x00", env: defEnv, cwd: "/\n", root: "govmd-root\n",
		},
		{
			name: "stdin",
			spec: Spec{Argv: []string{"cat"}, Stdin: true},
			argv: "cat\x00", env: defEnv, cwd: "/\n", stdin: "1\n",
		},
		{
			name: "modules",
			spec: Spec{Argv: []string{"true"}, Modules: [][]byte{[]byte("virtio\x7fELF"), []byte("fuse"), nil}},
			argv: "true\x00", env: defEnv, cwd: "/\n",
			modules: []string{"virtio\x7fELF", "fuse", ""},
		},
		{
			name: "empty environment",
			spec: Spec{Argv: []string{"env"}, Env: []string{}},
			argv: "env\x00", env: "", cwd: "/\n",
		},
		{
			name: "at the limits",
			spec: Spec{
				Argv: append([]string{strings.Repeat("a", maxStrBytes-maxArgs)}, make([]string, maxArgs-1)...),
				Env:  []string{"K=" + strings.Repeat("v", maxStrBytes-3)},
				Dir:  "/" + strings.Repeat("d", maxPath-2),
			},
			argv: strings.Repeat("a", maxStrBytes-maxArgs) + strings.Repeat("\x00", maxArgs),
			env:  "K=" + strings.Repeat("v", maxStrBytes-3) + "\x00",
			cwd:  "/" + strings.Repeat("d", maxPath-2) + "\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Archive(tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]member{}
			for k, v := range base {
				want[k] = v
			}
			for k, v := range map[string]string{"argv": tc.argv, "env": tc.env, "cwd": tc.cwd, "mounts": tc.mounts, "root": tc.root, "stdin": tc.stdin} {
				want["govmd/"+k] = member{mode: cpio.S_IFREG | 0o644, data: v}
			}
			got, names := readArchive(t, b)
			wantNames := []string{"dev", "dev/console", "govmd", "govmd/argv", "govmd/cwd", "govmd/env", "govmd/init"}
			if len(tc.modules) > 0 {
				want["govmd/modules"] = member{mode: cpio.S_IFDIR | 0o755}
				wantNames = append(wantNames, "govmd/modules")
			}
			for i, m := range tc.modules {
				name := fmt.Sprintf("govmd/modules/%03d.ko", i)
				want[name] = member{mode: cpio.S_IFREG | 0o644, data: m}
				wantNames = append(wantNames, name)
			}
			wantNames = append(wantNames, "govmd/mounts", "govmd/root", "govmd/stdin", "mnt", "proc", "sys", "tmp")
			if strings.Join(names, " ") != strings.Join(wantNames, " ") {
				t.Errorf("names %q, want %q", names, wantNames)
			}
			for name, w := range want {
				r, ok := got[name]
				if !ok {
					t.Errorf("%s: missing", name)
					continue
				}
				if r.Mode != w.mode {
					t.Errorf("%s: mode %#o, want %#o", name, r.Mode, w.mode)
				}
				if name == "dev/console" && (r.Rmajor != 5 || r.Rminor != 1) {
					t.Errorf("%s: device %d:%d, want 5:1", name, r.Rmajor, r.Rminor)
				}
				if r.Mode&cpio.S_IFMT != cpio.S_IFREG {
					if r.FileSize != 0 {
						t.Errorf("%s: %d bytes of data", name, r.FileSize)
					}
					continue
				}
				data, err := io.ReadAll(io.NewSectionReader(r, 0, int64(r.FileSize)))
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if string(data) != w.data {
					t.Errorf("%s: %d bytes %.80q, want %d bytes %.80q", name, len(data), data, len(w.data), w.data)
				}
			}
			b2, err := Archive(tc.spec)
			if err != nil || !bytes.Equal(b, b2) {
				t.Errorf("a second Archive differs (err %v)", err)
			}
		})
	}
}

// TestInitBinary checks the embedded init: a static ELF32 i386 executable
// (no interpreter, nothing to relocate), as small as it should be, and the
// one init-i386.sha256 names.
func TestInitBinary(t *testing.T) {
	f, err := elf.NewFile(bytes.NewReader(initBinary))
	if err != nil {
		t.Fatal(err)
	}
	if f.Class != elf.ELFCLASS32 || f.Machine != elf.EM_386 || f.Type != elf.ET_EXEC || f.Data != elf.ELFDATA2LSB {
		t.Errorf("class %v machine %v type %v data %v, want ELFCLASS32 EM_386 ET_EXEC ELFDATA2LSB", f.Class, f.Machine, f.Type, f.Data)
	}
	entryOK := false
	for _, p := range f.Progs {
		switch p.Type {
		case elf.PT_INTERP, elf.PT_DYNAMIC:
			t.Errorf("has %v: not static", p.Type)
		case elf.PT_LOAD:
			if p.Flags&elf.PF_X != 0 && uint64(f.Entry) >= p.Vaddr && uint64(f.Entry) < p.Vaddr+p.Filesz {
				entryOK = true
			}
		}
	}
	if !entryOK {
		t.Errorf("entry %#x is in no executable segment", f.Entry)
	}
	if len(initBinary) > 32<<10 {
		t.Errorf("init is %d bytes: every byte is unpacked on every boot", len(initBinary))
	}
	sum, err := os.ReadFile("init-i386.sha256")
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(initBinary)
	if want := hex.EncodeToString(h[:]) + "  init-i386\n"; string(sum) != want {
		t.Errorf("init-i386.sha256 says %q, the embedded init is %q", sum, want)
	}
}

func TestArchiveRejects(t *testing.T) {
	ok := Spec{Argv: []string{"true"}}
	with := func(f func(*Spec)) Spec {
		s := ok
		f(&s)
		return s
	}
	mount := func(m Mount) Spec { return with(func(s *Spec) { s.Mounts = []Mount{{Tag: "ok", Dir: "/ok"}, m} }) }
	manyMounts := make([]Mount, 17) // 17 lines of 4000 bytes > 64 KiB
	for i := range manyMounts {
		manyMounts[i] = Mount{Tag: fmt.Sprint("t", i), Dir: fmt.Sprintf("/%d/%s", i, strings.Repeat("m", 3990))}
	}
	for _, tc := range []struct {
		name string
		spec Spec
	}{
		{"no argv", Spec{}},
		{"too many modules", with(func(s *Spec) { s.Modules = make([][]byte, MaxModules+1) })},
		{"root tag with a space", with(func(s *Spec) { s.Root = "a b" })},
		{"root tag too long", with(func(s *Spec) { s.Root = strings.Repeat("r", 37) })},
		{"empty argv", with(func(s *Spec) { s.Argv = []string{} })},
		{"empty command", with(func(s *Spec) { s.Argv = []string{"", "x"} })},
		{"NUL in argv", with(func(s *Spec) { s.Argv = []string{"echo", "a\x00b"} })},
		{"too many args", with(func(s *Spec) { s.Argv = make([]string, maxArgs+1); s.Argv[0] = "x" })},
		{"argv too long", with(func(s *Spec) { s.Argv = []string{"echo", strings.Repeat("a", maxStrBytes-5)} })},
		{"env without =", with(func(s *Spec) { s.Env = []string{"A=1", "B"} })},
		{"env without name", with(func(s *Spec) { s.Env = []string{"=1"} })},
		{"NUL in env", with(func(s *Spec) { s.Env = []string{"A=1\x00B=2"} })},
		{"too many env", with(func(s *Spec) {
			s.Env = make([]string, maxArgs+1)
			for i := range s.Env {
				s.Env[i] = "A="
			}
		})},
		{"env too long", with(func(s *Spec) { s.Env = []string{"A=" + strings.Repeat("a", maxStrBytes)} })},
		{"relative dir", with(func(s *Spec) { s.Dir = "work" })},
		{"dir with newline", with(func(s *Spec) { s.Dir = "/a\nb" })},
		{"dir with NUL", with(func(s *Spec) { s.Dir = "/a\x00b" })},
		{"dir too long", with(func(s *Spec) { s.Dir = "/" + strings.Repeat("d", maxPath-1) })},
		{"empty tag", mount(Mount{Dir: "/a"})},
		{"long tag", mount(Mount{Tag: strings.Repeat("t", maxTag+1), Dir: "/a"})},
		{"tag with space", mount(Mount{Tag: "a b", Dir: "/a"})},
		{"tag with newline", mount(Mount{Tag: "a\n", Dir: "/a"})},
		{"non-ASCII tag", mount(Mount{Tag: "tä", Dir: "/a"})},
		{"relative mount dir", mount(Mount{Tag: "t", Dir: "a"})},
		{"empty mount dir", mount(Mount{Tag: "t"})},
		{"mount on /", mount(Mount{Tag: "t", Dir: "/"})},
		{"unclean mount dir", mount(Mount{Tag: "t", Dir: "/a/../b"})},
		{"mount dir with slash", mount(Mount{Tag: "t", Dir: "/a/"})},
		{"mount dir with space", mount(Mount{Tag: "t", Dir: "/a b"})},
		{"mount dir with tab", mount(Mount{Tag: "t", Dir: "/a\tb"})},
		{"mount dir with newline", mount(Mount{Tag: "t", Dir: "/a\nb ro\nx"})},
		{"mount dir with NBSP", mount(Mount{Tag: "t", Dir: "/a\u00a0b"})},
		{"mount dir with escape", mount(Mount{Tag: "t", Dir: "/a\x1bb"})},
		{"mount dir not UTF-8", mount(Mount{Tag: "t", Dir: "/a\xffb"})},
		{"mount dir too long", mount(Mount{Tag: "t", Dir: "/" + strings.Repeat("d", maxPath-1)})},
		{"mounts too long", with(func(s *Spec) { s.Mounts = manyMounts })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Archive(tc.spec)
			if !errors.Is(err, ErrSpec) {
				t.Errorf("Archive: %d bytes, error %v; want ErrSpec", len(b), err)
			}
		})
	}
	if _, err := Archive(ok); err != nil {
		t.Errorf("the base spec fails: %v", err)
	}
	if _, err := Archive(with(func(s *Spec) { s.Mounts = manyMounts[:16] })); err != nil {
		t.Errorf("16 long mounts: %v", err)
	}
}

func TestParseStatus(t *testing.T) {
	long := "fail " + strings.Repeat("x", MaxStatusLine-6) // 511 bytes: the longest line
	for _, tc := range []struct {
		line string
		want Event // Kind "" means an error
	}{
		{"init", Event{Kind: "init"}},
		{"start", Event{Kind: "start"}},
		{"exit 0", Event{Kind: "exit", Code: 0}},
		{"exit 1", Event{Kind: "exit", Code: 1}},
		{"exit 127", Event{Kind: "exit", Code: 127}},
		{"exit 255", Event{Kind: "exit", Code: 255}},
		{"signal 1", Event{Kind: "signal", Code: 1}},
		{"signal 9", Event{Kind: "signal", Code: 9}},
		{"signal 64", Event{Kind: "signal", Code: 64}},
		{"fail mount work on /work: no such device (errno 19, ENODEV)", Event{Kind: "fail", Text: "mount work on /work: no such device (errno 19, ENODEV)"}},
		{"fail mount t on /mnt/ünï: x", Event{Kind: "fail", Text: "mount t on /mnt/ünï: x"}},
		{"fail  leading space", Event{Kind: "fail", Text: " leading space"}},
		{long, Event{Kind: "fail", Text: long[5:]}},

		{"", Event{}},
		{" ", Event{}},
		{"init ", Event{}},
		{"init x", Event{}},
		{"init\n", Event{}},
		{"init\r", Event{}},
		{"INIT", Event{}},
		{"start 1", Event{}},
		{" start", Event{}},
		{"exit", Event{}},
		{"exit ", Event{}},
		{"exit  1", Event{}},
		{"exit 1 ", Event{}},
		{"exit 1 2", Event{}},
		{"exit -1", Event{}},
		{"exit +1", Event{}},
		{"exit 01", Event{}},
		{"exit 00", Event{}},
		{"exit 256", Event{}},
		{"exit 1000", Event{}},
		{"exit 99999999999999999999999", Event{}},
		{"exit 0x10", Event{}},
		{"exit ١", Event{}},
		{"exit 1\x00", Event{}},
		{"signal 0", Event{}},
		{"signal 65", Event{}},
		{"signal 127", Event{}},
		{"signal", Event{}},
		{"fail", Event{}},
		{"fail ", Event{}},
		{"fail a\nb", Event{}},
		{"fail \x1b[2J", Event{}},
		{"fail a\x00", Event{}},
		{"fail \xff\xfe", Event{}},
		{"fail \xe2\x80", Event{}},           // a cut UTF-8 sequence
		{"fail right\u202eto left", Event{}}, // a format character
		{"fail zero\u200bwidth", Event{}},
		{"fail a\u0085b", Event{}},
		{long + "x", Event{}},
		{strings.Repeat("\xff", 1<<20), Event{}},
		{"stdout", Event{}},
	} {
		got, err := ParseStatus([]byte(tc.line))
		switch {
		case tc.want.Kind == "" && err == nil:
			t.Errorf("ParseStatus(%.60q) = %+v, want an error", tc.line, got)
		case tc.want.Kind == "" && !errors.Is(err, ErrStatus):
			t.Errorf("ParseStatus(%.60q): error %v does not wrap ErrStatus", tc.line, err)
		case tc.want.Kind == "" && len(err.Error()) > 4*MaxStatusLine+100:
			t.Errorf("ParseStatus(%.60q): a %d-byte error", tc.line, len(err.Error()))
		case tc.want.Kind != "" && (err != nil || got != tc.want):
			t.Errorf("ParseStatus(%.60q) = %+v, %v; want %+v", tc.line, got, err, tc.want)
		case tc.want.Kind != "" && got.String() != tc.line:
			t.Errorf("%+v.String() = %q, want %q", got, got.String(), tc.line)
		}
	}
}

func FuzzParseStatus(f *testing.F) {
	for _, s := range []string{"init", "start", "exit 0", "exit 255", "signal 9", "fail mount a on /b: x",
		"exit 01", "fail \xff", "fail \u202e", "signal 65", ""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		in := append([]byte(nil), line...)
		ev, err := ParseStatus(line)
		if !bytes.Equal(in, line) {
			t.Fatal("ParseStatus modified its input")
		}
		if err != nil {
			if !errors.Is(err, ErrStatus) {
				t.Fatalf("error %v does not wrap ErrStatus", err)
			}
			if len(err.Error()) > 4*MaxStatusLine+100 {
				t.Fatalf("a %d-byte error", len(err.Error()))
			}
			return
		}
		// Accepted lines are exactly what the init writes: the event
		// says it all, and is safe to print.
		if ev.String() != string(line) || len(line) >= MaxStatusLine {
			t.Fatalf("%q parsed as %+v (%q)", line, ev, ev.String())
		}
		for _, r := range ev.Text {
			if r < ' ' || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == '\u202e' {
				t.Fatalf("%q: text has %U", line, r)
			}
		}
	})
}

// TestLimitsMatchSource keeps the package's view of the init (limits,
// names, default environment) in step with src/init.c.
func TestLimitsMatchSource(t *testing.T) {
	src, err := os.ReadFile("src/init.c")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		fmt.Sprintf("#define MAX_ARGS %d ", maxArgs),
		fmt.Sprintf("#define MAX_STRS (%d * 1024) ", maxStrBytes/1024),
		fmt.Sprintf("#define MAX_MOUNTS (%d * 1024) ", maxMounts/1024),
		fmt.Sprintf("#define MAX_PATH %d ", maxPath),
		fmt.Sprintf("#define LINE_MAX %d ", MaxStatusLine),
		fmt.Sprintf("{%q, %q, %q, %q}", PortStatus, PortStdout, PortStderr, PortStdin),
		fmt.Sprintf("static char *default_env[] = {\n\t%q,\n\t%q,\n\t%q,\n\t0,\n};", defaultEnv[0], defaultEnv[1], defaultEnv[2]),
		`"/govmd/argv"`, `"/govmd/env"`, `"/govmd/cwd"`, `"/govmd/mounts"`, `"/govmd/root"`, `"/govmd/stdin"`,
		`path[] = "/govmd/modules/000.ko"`, fmt.Sprintf("i < %d; i++", MaxModules),
	} {
		if !bytes.Contains(src, []byte(want)) {
			t.Errorf("src/init.c does not say %q", want)
		}
	}
	if InitPath != "/govmd/init" {
		t.Errorf("InitPath %q is not the archive's govmd/init", InitPath)
	}
}

// TestInitMatchesSource rebuilds the init with build.sh, when the
// toolchain TOOLCHAIN records is here, and compares it with the committed
// init-i386.
func TestInitMatchesSource(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: rebuilding the init unpacks the kernel source tarball (some 15 s)")
	}
	for _, tool := range []string{"bash", "gcc", "ld", "tar", "xz", "dpkg-query", "sha256sum"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s to rebuild the init with", tool)
		}
	}
	if _, err := os.Stat("/usr/src/linux-source-6.1.tar.xz"); err != nil {
		t.Skipf("no kernel source for nolibc: %v", err)
	}
	out, err := exec.Command("gcc", "-m32", "-print-libgcc-file-name").Output()
	if _, serr := os.Stat(strings.TrimSpace(string(out))); err != nil || serr != nil {
		t.Skipf("gcc cannot build i386 programs (apt-get install gcc-multilib): %v %v", err, serr)
	}
	have, err := exec.Command("bash", "build.sh", "--toolchain").Output()
	if err != nil {
		t.Fatalf("build.sh --toolchain: %v", err)
	}
	want, err := os.ReadFile("TOOLCHAIN")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(have, want) {
		t.Skipf("not the toolchain init-i386 was built with; this one:\n%s\nTOOLCHAIN:\n%s", have, want)
	}
	dir := t.TempDir()
	cmd := exec.Command("bash", "build.sh", dir)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build.sh: %v\n%s", err, b)
	}
	for _, name := range []string{"init-i386", "init-i386.sha256", "TOOLCHAIN"} {
		built, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		committed, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(built, committed) {
			t.Errorf("%s: build.sh made %d bytes that differ from the committed %d: run boot/execinit/build.sh (src/init.c changed without the binary?)", name, len(built), len(committed))
		}
	}
	if built, _ := os.ReadFile(filepath.Join(dir, "init-i386")); !bytes.Equal(built, initBinary) {
		t.Errorf("the embedded init is not what build.sh makes")
	}
}
