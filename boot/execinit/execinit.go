// Package execinit is the guest side of `govmd exec`: a tiny init that runs
// one command in the guest and reports how it ended, and the cpio archive
// that carries it.
//
// govmd appends [Archive] to the user's initramfs (Linux unpacks
// concatenated cpio archives, later entries replacing earlier ones) and
// boots with "rdinit="+[InitPath] on the kernel command line. The init
// (src/init.c) mounts devtmpfs, proc, sysfs and a tmpfs on /tmp, finds three
// virtio-console ports by name ([PortStatus], [PortStdout], [PortStderr];
// it waits up to 30 s for them), mounts the virtiofs shares of
// [Spec.Mounts], and runs the command with its stdout and stderr on the
// two output ports and stdin on /dev/null, or with [Spec.Stdin] on a fourth
// port ([PortStdin]; the host closes it at the end of its input, which the
// command reads as EOF). It reports on the status port,
// one line each ([ParseStatus]):
//
//	init         the kernel reached init
//	start        the command was forked
//	exit N       it exited with status N (127: not found, 126: not
//	             executable, as a shell would say)
//	signal N     it was killed by signal N
//	fail TEXT    the init failed: a mount, chdir, fork
//
// After exit or signal (and after fail) it syncs and powers the VM off;
// the host may stop the VM as soon as it has read the line. As PID 1 it
// reaps every orphan until the command exits. Errors of its own also go to
// /dev/kmsg, the kernel console; without a status port it can only log
// there.
//
// The archive holds the init and its instructions: /govmd/argv and
// /govmd/env (NUL-terminated strings), /govmd/cwd (one line),
// /govmd/mounts (lines "TAG DIR ro|rw"), /govmd/root (a tag or empty) and
// /govmd/stdin ("1" or empty).
//
// # Why a committed binary
//
// The init must run on every guest CPU profile, including PVM guests that
// cannot execute x87, SSE or MMX instructions, nor 64-bit user code (only
// 32-bit code through IA32_EMULATION): so it is a static i386 program
// built with the kernel's own nolibc, integer code only. And `go install`
// must work without a C toolchain, let alone a multilib one: so the binary
// (init-i386) is committed next to its source and embedded. build.sh
// rebuilds it reproducibly (TOOLCHAIN records the compiler, binutils and
// kernel source it used; init-i386.sha256 its hash), and
// TestInitMatchesSource checks that the committed binary is what src/init.c
// compiles to whenever that toolchain is installed.
package execinit

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/u-root/u-root/pkg/cpio"
)

//go:embed init-i386
var initBinary []byte

// InitPath is where the init lands in the guest; the kernel command line
// needs "rdinit="+InitPath.
const InitPath = "/govmd/init"

// Port names the init looks for: the names of three virtio-console ports
// the init writes, and with [Spec.Stdin] a fourth one it reads.
const (
	PortStatus = "govmd.status"
	PortStdout = "govmd.stdout"
	PortStderr = "govmd.stderr"
	PortStdin  = "govmd.stdin"
)

// MaxStatusLine is the longest status line the init writes, with its
// newline. A longer line is not from the init; [ParseStatus] rejects it.
const MaxStatusLine = 512

// The init's limits (src/init.c; TestLimitsMatchSource keeps them in step).
const (
	maxArgs     = 4096      // strings in /govmd/argv, and in /govmd/env
	maxStrBytes = 128 << 10 // bytes of /govmd/argv, and of /govmd/env
	maxMounts   = 64 << 10  // bytes of /govmd/mounts
	maxPath     = 4096      // bytes of /govmd/cwd; PATH_MAX with the NUL
	maxTag      = 36        // a virtiofs tag: the device configuration's field
)

// defaultEnv is the environment for a nil [Spec.Env]: src/init.c's default,
// also written to /govmd/env so that the user's initramfs cannot supply
// one.
var defaultEnv = []string{
	"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"HOME=/root",
	"TERM=dumb",
}

// DefaultEnv returns the environment the command gets when [Spec.Env] is
// nil.
func DefaultEnv() []string { return append([]string(nil), defaultEnv...) }

// Spec is what the guest init runs.
type Spec struct {
	Argv   []string // CMD, len >= 1; Argv[0] without '/' is looked up in PATH
	Env    []string // "K=V"; nil: [DefaultEnv] (empty, not nil: no variables)
	Dir    string   // working directory in the guest; "" = "/"
	Mounts []Mount  // virtiofs shares, mounted in this order before the command starts
	// Root, if not empty, is the tag of a virtiofs share that becomes the
	// guest's root before Mounts are mounted: read-only, under an overlay
	// whose writable layer is a tmpfs (the kernel needs OVERLAY_FS).
	Root string
	// Modules are kernel modules (.ko images) the init loads first, in
	// this order, as /govmd/modules/000.ko, 001.ko, ...: for a kernel
	// whose virtio, virtio_console, fuse, virtiofs or overlay drivers are
	// modules. At most MaxModules.
	Modules [][]byte
	// Stdin makes the command's stdin the port [PortStdin] (which the init
	// then waits for too) instead of /dev/null.
	Stdin bool
}

// MaxModules is how many modules the init loads at most.
const MaxModules = 1000

// Mount is a virtiofs share the init mounts (creating Dir and its parents).
type Mount struct {
	Tag      string // the device's tag: 1 to 36 bytes of printable ASCII, no spaces
	Dir      string // absolute, clean, not "/", printable, no white space
	ReadOnly bool
}

// ErrSpec marks a [Spec] that [Archive] refuses.
var ErrSpec = errors.New("bad exec spec")

func specErr(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrSpec, fmt.Sprintf(format, a...))
}

// Archive returns an uncompressed newc cpio archive (with its trailer)
// holding /govmd/init, /govmd/argv, /govmd/env, /govmd/cwd, /govmd/mounts,
// /govmd/root, /govmd/stdin, the modules (/govmd/modules/NNN.ko),
// /dev/console and the directories /govmd, /proc, /sys, /dev, /tmp, /mnt,
// to append to an initramfs. The initramfs before it must be padded with
// zeros to a multiple of 4 bytes (the kernel looks for the next archive's
// magic at 4-byte boundaries); the archive's own length is a multiple of 4.
// Every record has uid/gid 0 and mtime 0, so the bytes depend on s alone.
//
// The directories, overriding the user's, get the usual modes (/tmp 1777,
// the others 0755); /dev/console (5:1, 0600) gives the init a console
// even if the user's initramfs has none.
func Archive(s Spec) ([]byte, error) {
	argv, err := nulStrings("argv", s.Argv)
	if err != nil {
		return nil, err
	}
	if len(s.Argv) == 0 || s.Argv[0] == "" {
		return nil, specErr("no command")
	}
	envList := s.Env
	if envList == nil {
		envList = defaultEnv
	}
	for _, e := range envList {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			return nil, specErr("environment entry %q is not K=V", e)
		}
	}
	env, err := nulStrings("environment", envList)
	if err != nil {
		return nil, err
	}
	dir := s.Dir
	if dir == "" {
		dir = "/"
	}
	if !strings.HasPrefix(dir, "/") || strings.ContainsAny(dir, "\x00\n") || len(dir) >= maxPath {
		return nil, specErr("working directory %q: want an absolute path, one line, shorter than %d bytes", dir, maxPath)
	}
	var mounts bytes.Buffer
	for _, m := range s.Mounts {
		if err := m.check(); err != nil {
			return nil, err
		}
		mode := "rw"
		if m.ReadOnly {
			mode = "ro"
		}
		fmt.Fprintf(&mounts, "%s %s %s\n", m.Tag, m.Dir, mode)
	}
	root := ""
	if s.Root != "" {
		if err := (Mount{Tag: s.Root, Dir: "/root-share"}).check(); err != nil {
			return nil, err
		}
		root = s.Root + "\n"
	}
	stdin := ""
	if s.Stdin {
		stdin = "1\n"
	}
	if mounts.Len() > maxMounts {
		return nil, specErr("%d mounts take %d bytes, more than the init's %d", len(s.Mounts), mounts.Len(), maxMounts)
	}
	if len(s.Modules) > MaxModules {
		return nil, specErr("%d modules, more than the init's %d", len(s.Modules), MaxModules)
	}

	dirRec := func(name string, perm uint64) cpio.Record { return cpio.Directory(name, perm) }
	file := func(name string, perm uint64, b []byte) cpio.Record {
		return cpio.StaticRecord(b, cpio.Info{Name: name, Mode: cpio.S_IFREG | perm})
	}
	recs := []cpio.Record{ // sorted, each directory before its contents
		dirRec("dev", 0o755),
		cpio.CharDev("dev/console", 0o600, 5, 1),
		dirRec("govmd", 0o755),
		file("govmd/argv", 0o644, argv),
		file("govmd/cwd", 0o644, []byte(dir+"\n")),
		file("govmd/env", 0o644, env),
		file("govmd/init", 0o755, initBinary),
	}
	if len(s.Modules) > 0 {
		recs = append(recs, dirRec("govmd/modules", 0o755))
		for i, m := range s.Modules {
			recs = append(recs, file(fmt.Sprintf("govmd/modules/%03d.ko", i), 0o644, m))
		}
	}
	recs = append(recs,
		file("govmd/mounts", 0o644, mounts.Bytes()),
		file("govmd/root", 0o644, []byte(root)),
		file("govmd/stdin", 0o644, []byte(stdin)),
		dirRec("mnt", 0o755),
		dirRec("proc", 0o755),
		dirRec("sys", 0o755),
		dirRec("tmp", 0o1777),
	)
	var buf bytes.Buffer
	w := cpio.Newc.Writer(&buf)
	for i, r := range recs {
		r.Ino = uint64(i + 1)
		r.UID, r.GID, r.MTime = 0, 0, 0
		r.NLink = 1
		if r.Mode&cpio.S_IFMT == cpio.S_IFDIR {
			r.NLink = 2
		}
		if err := w.WriteRecord(r); err != nil {
			return nil, fmt.Errorf("execinit: %s: %w", r.Name, err)
		}
	}
	if err := cpio.WriteTrailer(w); err != nil {
		return nil, fmt.Errorf("execinit: %w", err)
	}
	return buf.Bytes(), nil
}

// nulStrings joins ss, each NUL-terminated, within the init's limits.
func nulStrings(what string, ss []string) ([]byte, error) {
	if len(ss) > maxArgs {
		return nil, specErr("%d %s strings, more than the init's %d", len(ss), what, maxArgs)
	}
	var b []byte
	for _, s := range ss {
		if strings.IndexByte(s, 0) >= 0 {
			return nil, specErr("%s string %q contains NUL", what, s)
		}
		b = append(append(b, s...), 0)
		if len(b) > maxStrBytes {
			return nil, specErr("%s takes more than the init's %d bytes", what, maxStrBytes)
		}
	}
	return b, nil
}

func (m Mount) check() error {
	if m.Tag == "" || len(m.Tag) > maxTag {
		return specErr("mount tag %q: want 1 to %d bytes", m.Tag, maxTag)
	}
	for _, c := range []byte(m.Tag) {
		if c <= ' ' || c > '~' {
			return specErr("mount tag %q: only printable ASCII without spaces", m.Tag)
		}
	}
	d := m.Dir
	if !strings.HasPrefix(d, "/") || d == "/" || path.Clean(d) != d || len(d) >= maxPath {
		return specErr("mount %s: directory %q must be absolute, clean, not / and shorter than %d bytes", m.Tag, d, maxPath)
	}
	if !utf8.ValidString(d) {
		return specErr("mount %s: directory %q is not UTF-8", m.Tag, d)
	}
	for _, r := range d {
		if unicode.IsSpace(r) || !strconv.IsPrint(r) {
			return specErr("mount %s: directory %q: only printable characters without spaces", m.Tag, d)
		}
	}
	return nil
}

// Event is one line the init sent on the status port.
type Event struct {
	Kind string // "init", "start", "exit", "signal", "fail"
	Code int    // exit: the exit status (0-255); signal: the signal (1-64)
	Text string // fail: what failed (printable UTF-8)
}

// String returns the event as the init wrote it.
func (e Event) String() string {
	switch e.Kind {
	case "exit", "signal":
		return e.Kind + " " + strconv.Itoa(e.Code)
	case "fail":
		return "fail " + e.Text
	}
	return e.Kind
}

// ErrStatus marks a status line that is not one the init writes.
var ErrStatus = errors.New("bad status line")

// ParseStatus parses one status line (without the newline). The guest is
// not trusted: anything but the lines the init writes, byte for byte, is
// an error (wrapping [ErrStatus]) that quotes at most MaxStatusLine bytes
// of it; a fail text is printable UTF-8.
func ParseStatus(line []byte) (Event, error) {
	if len(line) >= MaxStatusLine {
		return Event{}, fmt.Errorf("%w: %d bytes, more than %d", ErrStatus, len(line)+1, MaxStatusLine)
	}
	bad := func(why string) (Event, error) {
		return Event{}, fmt.Errorf("%w: %s: %q", ErrStatus, why, line)
	}
	kind, arg, hasArg := strings.Cut(string(line), " ")
	switch kind {
	case "init", "start":
		if hasArg {
			return bad("unexpected argument")
		}
		return Event{Kind: kind}, nil
	case "exit", "signal":
		lo, hi := 0, 255
		if kind == "signal" {
			lo, hi = 1, 64
		}
		n, ok := decimal(arg)
		if !hasArg || !ok || n < lo || n > hi {
			return bad(fmt.Sprintf("want %s N, %d <= N <= %d", kind, lo, hi))
		}
		return Event{Kind: kind, Code: n}, nil
	case "fail":
		if arg == "" {
			return bad("fail without text")
		}
		if !utf8.ValidString(arg) {
			return bad("fail text is not UTF-8")
		}
		for _, r := range arg {
			if !strconv.IsPrint(r) {
				return bad("fail text is not printable")
			}
		}
		return Event{Kind: kind, Text: arg}, nil
	}
	return bad("unknown kind")
}

// decimal parses a canonical non-negative decimal of at most 3 digits (no
// sign, no leading zeros).
func decimal(s string) (int, bool) {
	if s == "" || len(s) > 3 || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	n := 0
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}
