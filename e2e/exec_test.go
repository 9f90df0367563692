package e2e

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/govmd/govmd/devices/fs"
)

// execResult is one govmd exec run: its output, kept apart, and its exit
// status.
type execResult struct {
	stdout, stderr string
	status         int
	took           time.Duration
}

// govmdExec runs govmd exec with the test kernel and initramfs (and the
// profile's command line) plus args, within limit.
func govmdExec(t *testing.T, limit time.Duration, args ...string) execResult {
	t.Helper()
	return govmdExecIn(t, limit, nil, args...)
}

// govmdExecIn is govmdExec with stdin as govmd's standard input.
func govmdExecIn(t *testing.T, limit time.Duration, stdin io.Reader, args ...string) execResult {
	t.Helper()
	requireKVM(t)
	// --boot-timeout as the benchmarks have it: a guest that stalled in
	// early boot (nested KVM's L0 fault, docs/pvm.md) ends as such (122,
	// "guest console stalled", which scripts/nested.sh reruns) sooner
	// than the default 5 minutes would, and before limit.
	base := []string{"exec", "--kernel", image(t, "linux/vmlinux"), "--initrd", image(t, "initrd.cpio"),
		"--memory", "256M", "--boot-timeout", execBootLimit().String(), "--cmdline", cmdline(t, "")}
	return runExecIn(t, limit, stdin, append(base, args...)...)
}

// runExecArgs runs govmd with args (exec and its flags), within limit.
func runExecArgs(t *testing.T, limit time.Duration, args ...string) execResult {
	t.Helper()
	return runExecIn(t, limit, nil, args...)
}

// runExecIn is runExecArgs with stdin as govmd's standard input (nil:
// none, as exec.Cmd has it).
func runExecIn(t *testing.T, limit time.Duration, stdin io.Reader, args ...string) execResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, govmd(t), args...)
	cmd.Stdin = stdin
	cmd.WaitDelay = 10 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	t.Logf("govmd %s", strings.Join(args, " "))
	start := time.Now()
	err := cmd.Run()
	r := execResult{stdout: stdout.String(), stderr: stderr.String(), took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("govmd exec did not end within %s\nstdout:\n%s\nstderr:\n%s", limit, r.stdout, r.stderr)
	case errors.As(err, &ee):
		r.status = ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	t.Logf("exit status %d after %.1fs", r.status, r.took.Seconds())
	return r
}

// execFatalf fails the test for an unexpected exec result. When the
// guest's console (govmd prints its end on stderr) shows the guest kernel
// crashed, it says "guest kernel failed" first, and for a guest that never
// started the command within --boot-timeout "guest console stalled": in
// nested KVM those are the L0 fault scripts/nested.sh reruns
// (docs/pvm.md); anywhere they are failures all the same.
func execFatalf(t *testing.T, r execResult, format string, args ...any) {
	t.Helper()
	for _, l := range strings.Split(r.stderr, "\n") {
		if crashRe.MatchString(l) {
			t.Fatalf("guest kernel failed: %q; "+format, append([]any{strings.TrimSpace(l)}, args...)...)
		}
	}
	if r.status == 122 && strings.Contains(r.stderr, "(--boot-timeout)") {
		// No crash on the console, no command: a guest stuck in its
		// boot (in nested KVM, the L0 fault's other face).
		t.Fatalf("guest console stalled: the command did not start; "+format, args...)
	}
	t.Fatalf(format, args...)
}

// TestExec is govmd exec's contract, one boot per case: the command's
// stdout, stderr and exit status come back apart; with --stdin govmd's
// stdin is the command's, to its end of file; a guest panic, a command
// that outlives --timeout and a kernel that cannot boot each end with
// their own status within the profile's budget.
func TestExec(t *testing.T) {
	p := logProfile(t)
	budget := p.Boot + p.Step
	t.Run("status", func(t *testing.T) {
		r := govmdExec(t, budget, "--timings", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
		if r.status != 7 || r.stdout != "out\n" || !strings.Contains(r.stderr, "err\n") {
			execFatalf(t, r, "status %d stdout %q, want 7 and \"out\\n\"; stderr:\n%s", r.status, r.stdout, r.stderr)
		}
		if strings.Contains(r.stdout, "err") {
			t.Errorf("stderr leaked into stdout: %q", r.stdout)
		}
		m := regexp.MustCompile(`built=([0-9.]+)ms vcpus_start=([0-9.]+)ms first_entry=([0-9.]+)ms init=([0-9.]+)ms cmd_start=([0-9.]+)ms cmd_end=([0-9.]+)ms end=([0-9.]+)ms`).FindStringSubmatch(r.stderr)
		if m == nil {
			t.Fatalf("no timings line on stderr:\n%s", r.stderr)
		}
		prev := 0.0
		for i, name := range []string{"built", "vcpus_start", "first_entry", "init", "cmd_start", "cmd_end", "end"} {
			var v float64
			fmt.Sscan(m[i+1], &v)
			if v < prev {
				t.Errorf("timing %s=%.1fms before the previous one (%.1fms)", name, v, prev)
			}
			prev = v
		}
	})
	t.Run("stdin", func(t *testing.T) {
		// More than the device's 4 KiB input chunk; wc ends only at
		// EOF, which is the end of govmd's stdin.
		in := "line-0\n" + strings.Repeat("x", 5000) + "\n"
		r := govmdExecIn(t, budget, strings.NewReader(in), "--stdin", "--", "sh", "-c", `read first; echo "first=$first"; wc -c`)
		f := strings.Fields(r.stdout)
		if r.status != 0 || len(f) != 2 || f[0] != "first=line-0" || f[1] != "5001" {
			execFatalf(t, r, "status %d stdout %q, want 0 and \"first=line-0\" then 5001; stderr:\n%s", r.status, r.stdout, r.stderr)
		}
	})
	t.Run("port", func(t *testing.T) {
		// --port NAME=unix:PATH both ways: a client of the socket sends a
		// line, the command finds the port by its name, reads the line
		// from it and answers on it.
		// A directory the confined govmd (nobody) may remove its own
		// socket from at exit, as in /tmp; in one only root may write
		// the socket stays, to be replaced by the next govmd.
		dir := t.TempDir()
		for _, d := range []struct {
			path string
			mode os.FileMode
		}{{filepath.Dir(dir), 0o755}, {dir, 0o1777}} {
			if err := os.Chmod(d.path, d.mode); err != nil {
				t.Fatal(err)
			}
		}
		sock := filepath.Join(dir, "echo.sock")
		got := make(chan string, 1)
		go func() { got <- echoClient(sock, "hello\n", "got hello\n", budget) }()
		script := `for d in /sys/class/virtio-ports/*; do read n < $d/name; [ "$n" = echo ] && p=/dev/${d##*/}; done
read line < $p; echo "got $line" > $p; echo "port $p"`
		r := govmdExec(t, budget, "--port", "echo=unix:"+sock, "--", "sh", "-c", script)
		if r.status != 0 || !strings.HasPrefix(r.stdout, "port /dev/vport") {
			execFatalf(t, r, "status %d stdout %q, want 0 and the port's device; stderr:\n%s", r.status, r.stdout, r.stderr)
		}
		select {
		case s := <-got:
			if s != "" {
				t.Fatal(s)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the socket's client did not finish after govmd exited")
		}
		if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the port's socket is left after govmd exited: %v", err)
		}
	})
	t.Run("panic", func(t *testing.T) {
		con := filepath.Join(t.TempDir(), "console.log")
		r := govmdExec(t, budget, "--console", con, "--", "sh", "-c", "echo c > /proc/sysrq-trigger; sleep 600")
		if r.status != 121 || !strings.Contains(r.stderr, "panicked") || !strings.Contains(r.stderr, "Kernel panic") {
			t.Fatalf("status %d, want 121 with the panic on stderr:\n%s", r.status, r.stderr)
		}
		if b, err := os.ReadFile(con); err != nil || !strings.Contains(string(b), "Kernel panic - not syncing") {
			t.Errorf("--console file without the panic: %v\n%s", err, b)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		// A busy loop, not sleep: in nested KVM the guest's sleep 600 returned
		// at once (its timers are unreliable there, docs/pvm.md).
		r := govmdExec(t, budget, "--timeout", "2s", "--", "sh", "-c", "while :; do :; done")
		if r.status != 124 || !strings.Contains(r.stderr, "--timeout") {
			execFatalf(t, r, "status %d, want 124:\n%s", r.status, r.stderr)
		}
	})
	t.Run("not-found", func(t *testing.T) {
		if !full() && p.Name == "pvm" {
			t.Skip("one boot more on PVM: make e2e")
		}
		r := govmdExec(t, budget, "--", "/no/such/command")
		if r.status != 127 || !strings.Contains(r.stderr, "/no/such/command") {
			execFatalf(t, r, "status %d, want 127:\n%s", r.status, r.stderr)
		}
	})
	t.Run("no-boot", func(t *testing.T) {
		// The test kernel with its PVH entry point overwritten by ud2:
		// the first instruction faults with no IDT, a triple fault.
		k := brokenKernel(t, image(t, "linux/vmlinux"))
		r := runExecArgs(t, budget, "exec", "--kernel", k, "--initrd", image(t, "initrd.cpio"), "--memory", "256M", "--", "true")
		if r.status != 122 || !strings.Contains(r.stderr, "before the command started") {
			t.Fatalf("status %d, want 122:\n%s", r.status, r.stderr)
		}
	})
}

// echoClient connects to a console port's socket once govmd created it,
// sends send and reads until it has want: "" when it did, else what went
// wrong.
func echoClient(path, send, want string, limit time.Duration) string {
	deadline := time.Now().Add(limit)
	var c net.Conn
	for {
		var err error
		if c, err = net.Dial("unix", path); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Sprintf("connecting to %s: %v", path, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	defer c.Close()
	if _, err := io.WriteString(c, send); err != nil {
		return fmt.Sprintf("writing to the port: %v", err)
	}
	c.SetReadDeadline(deadline)
	var b []byte
	buf := make([]byte, 256)
	for !strings.Contains(string(b), want) {
		n, err := c.Read(buf)
		b = append(b, buf[:n]...)
		if err != nil {
			return fmt.Sprintf("read %q from the port, want %q: %v", b, want, err)
		}
	}
	return ""
}

// brokenKernel copies an ELF vmlinux with ud2 written over the code at its
// PVH entry point.
func brokenKernel(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	var entry uint64
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		notes := b[p.Off : p.Off+p.Filesz]
		for len(notes) >= 12 {
			nsz, dsz, typ := binary.LittleEndian.Uint32(notes), binary.LittleEndian.Uint32(notes[4:]), binary.LittleEndian.Uint32(notes[8:])
			off := 12 + (nsz+3)&^3
			desc := notes[off : off+dsz]
			if typ == 18 && string(notes[12:12+nsz]) == "Xen\x00" { // XEN_ELFNOTE_PHYS32_ENTRY
				entry = uint64(binary.LittleEndian.Uint32(desc))
			}
			notes = notes[off+(dsz+3)&^3:]
		}
	}
	if entry == 0 {
		t.Fatal("no PVH entry note")
	}
	patched := false
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && entry >= p.Paddr && entry < p.Paddr+p.Filesz {
			off := p.Off + entry - p.Paddr
			for i := uint64(0); i < 64; i += 2 {
				b[off+i], b[off+i+1] = 0x0f, 0x0b
			}
			patched = true
		}
	}
	if !patched {
		t.Fatal("PVH entry not in a loaded segment")
	}
	out := filepath.Join(t.TempDir(), "vmlinux-broken")
	if err := os.WriteFile(out, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestExecShares shares two host directories (one read-only) with an exec
// guest: the guest's digest of a 1 MiB host file matches, a file it writes
// appears on the host, the read-only share refuses writes, and nothing
// outside the shared directory is reachable through .., symbolic links
// (absolute and relative) or hard links. Every virtiofsd is gone after.
func TestExecShares(t *testing.T) {
	p := logProfile(t)
	requireVirtiofsd(t)
	base := t.TempDir()
	rw, ro := filepath.Join(base, "rw"), filepath.Join(base, "ro")
	for _, d := range []string{rw, ro} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	secret := filepath.Join(base, "secret")
	if err := os.WriteFile(secret, []byte("HOST-SECRET\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	big := pattern(1 << 20)
	if err := os.WriteFile(filepath.Join(rw, "big"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ro, "keep"), []byte("ro\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, target := range map[string]string{"abs": secret, "rel": "../secret", "dots": "../../../../../../" + secret} {
		if err := os.Symlink(target, filepath.Join(rw, name)); err != nil {
			t.Fatal(err)
		}
	}
	hash, want := "sha256sum", hexSHA(big)
	if p.Hash == "crc32" {
		// sha256sum of 1 MiB is minutes of emulated user code on PVM.
		hash, want = "crc32", fmt.Sprintf("%08x", crc32.ChecksumIEEE(big))
	}
	script := strings.Join([]string{
		`echo "hash=$(` + hash + ` < /mnt/rw/big)"`,
		`echo from-guest > /mnt/rw/written && echo write=ok`,
		`if echo x > /mnt/ro/new 2>/dev/null; then echo ro=writable; else echo ro=refused; fi`,
		`if rm /mnt/ro/keep 2>/dev/null; then echo rorm=removed; else echo rorm=refused; fi`,
		`for f in /mnt/rw/../secret /mnt/rw/../../secret /mnt/rw/abs /mnt/rw/rel /mnt/rw/dots; do cat $f 2>/dev/null; done`,
		`ln /mnt/rw/abs /mnt/rw/hard 2>/dev/null; cat /mnt/rw/hard 2>/dev/null`,
		`ln /mnt/rw/../secret /mnt/rw/hard2 2>/dev/null; cat /mnt/rw/hard2 2>/dev/null`,
		`ls -a /mnt/rw/.. /mnt/rw/../.. | tr '\n' ' '; echo`,
		`echo done`,
	}, "; ")
	r := govmdExec(t, p.Boot+2*p.Step, "--share", rw+",tag=rw", "--share", ro+",tag=ro,ro", "--", "sh", "-c", script)
	t.Logf("guest stdout:\n%s", r.stdout)
	if r.status != 0 || !strings.Contains(r.stdout, "done\n") {
		execFatalf(t, r, "status %d:\n%s\n%s", r.status, r.stdout, r.stderr)
	}
	for _, w := range []string{"hash=" + want, "write=ok", "ro=refused", "rorm=refused"} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("guest output lacks %q", w)
		}
	}
	if strings.Contains(r.stdout, "HOST-SECRET") {
		t.Errorf("the guest read a host file outside the share")
	}
	if b, err := os.ReadFile(filepath.Join(rw, "written")); err != nil || string(b) != "from-guest\n" {
		t.Errorf("the guest's file on the host: %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(ro, "new")); err == nil {
		t.Errorf("a file appeared in the read-only share")
	}
	if b, _ := os.ReadFile(secret); string(b) != "HOST-SECRET\n" {
		t.Errorf("the host file outside the share changed: %q", b)
	}
	if out, err := exec.Command("pgrep", "-f", "virtiofsd.*"+base).Output(); err == nil {
		t.Errorf("virtiofsd left running: %s", out)
	}
}

// TestExecRootShare runs a command from a host directory tree that is the
// guest's root (--root-share): on PVM, where the guest cannot run the
// host's 64-bit programs, the test initramfs unpacked into a directory
// (i386 busybox); elsewhere the host's own root, where `uname -r` prints
// the guest kernel's release. The guest reads a host file there, and what
// it writes stays in its overlay.
func TestExecRootShare(t *testing.T) {
	p := logProfile(t)
	requireVirtiofsd(t)
	base := []string{"exec", "--kernel", image(t, "linux/vmlinux"), "--memory", "256M", "--cmdline", cmdline(t, "")}
	if p.Name == "pvm" {
		dir := t.TempDir()
		unpack := exec.Command("cpio", "-idm", "--quiet")
		unpack.Dir = dir
		f, err := os.Open(image(t, "initrd.cpio"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		unpack.Stdin = f
		if out, err := unpack.CombinedOutput(); err != nil {
			t.Fatalf("cpio: %v\n%s", err, out)
		}
		if err := os.WriteFile(filepath.Join(dir, "root-marker"), []byte("from-the-host\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		r := runExecArgs(t, p.Boot+p.Step, append(base, "--root-share="+dir, "--",
			"sh", "-c", "cat /root-marker; echo w > /written && cat /written; grep ' / ' /proc/mounts")...)
		if r.status != 0 || !strings.HasPrefix(r.stdout, "from-the-host\nw\noverlay / overlay ") {
			execFatalf(t, r, "status %d stdout %q\n%s", r.status, r.stdout, r.stderr)
		}
		if _, err := os.Stat(filepath.Join(dir, "written")); err == nil {
			t.Errorf("the guest's write reached the shared root")
		}
		return
	}
	b, err := os.ReadFile(image(t, "linux/version"))
	if err != nil {
		t.Fatal(err)
	}
	release := strings.Fields(string(b))[2] // "Linux version 6.1.192 ..."
	r := runExecArgs(t, p.Boot+p.Step, append(base, "--root-share", "--", "uname", "-r")...)
	if r.status != 0 || strings.TrimSpace(r.stdout) != release {
		execFatalf(t, r, "status %d, uname -r %q, want %q\n%s", r.status, r.stdout, release, r.stderr)
	}
}

// TestHVC boots the test guest with govmd run --hvc and console=hvc0 last
// on its command line: the guest's /dev/console is its virtio-console's
// port 0, so the agent's lines land in the --hvc file, and the guest
// powers off with govmd exiting 0.
func TestHVC(t *testing.T) {
	p := logProfile(t)
	hvc := filepath.Join(t.TempDir(), "hvc0.log")
	r := runExecArgs(t, p.Boot+p.Step, "run", "--kernel", image(t, "linux/vmlinux"), "--initrd", image(t, "initrd.cpio"),
		"--memory", "256M", "--cmdline", cmdline(t, "govmd.test=ready console=hvc0"), "--console", filepath.Join(t.TempDir(), "serial.log"),
		"--hvc", hvc)
	b, err := os.ReadFile(hvc)
	if r.status != 0 || err != nil {
		execFatalf(t, r, "status %d, %v\n%s", r.status, err, r.stderr)
	}
	for _, want := range []string{"GOVMD-READY", "GOVMD-DONE status=0"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("hvc0 output lacks %q:\n%s", want, b)
		}
	}
}

// requireVirtiofsd skips a share test on a host without a virtiofsd that
// govmd would find.
func requireVirtiofsd(t *testing.T) {
	if _, err := fs.FindVirtiofsd(""); err != nil {
		t.Skip(err)
	}
}

// TestExecDebian runs govmd exec with Debian's stock cloud kernel, whose
// virtio_pci, virtio_console (the init's ports), fuse, virtiofs and
// overlay are modules: the init loads them from --module files, in
// images/out/debian/modules.load-order. The command comes from
// --root-share (the host's root) and `uname -r` prints Debian's release.
// Not on PVM: no 64-bit user code there, and Debian's kernel does not
// reach init under PVM's emulator in minutes (docs/pvm.md).
func TestExecDebian(t *testing.T) {
	if !full() {
		t.Skip("full matrix only (make e2e)")
	}
	p := logProfile(t)
	if p.Name == "pvm" {
		t.Skip("PVM: no 64-bit user code, and Debian's stock kernel does not reach init in minutes (docs/pvm.md)")
	}
	requireVirtiofsd(t)
	b, err := os.ReadFile(image(t, "debian/version"))
	if err != nil {
		t.Fatal(err)
	}
	release := strings.TrimSpace(string(b))
	order, err := os.ReadFile(image(t, "debian/modules.load-order"))
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"exec", "--kernel", image(t, "debian/vmlinux"), "--memory", "512M", "--cmdline", cmdline(t, "")}
	for _, m := range strings.Fields(string(order)) {
		args = append(args, "--module", image(t, "debian/modules/"+m))
	}
	args = append(args, "--root-share", "--", "uname", "-r")
	r := runExecArgs(t, 2*p.Boot+p.Step, args...)
	if r.status != 0 || strings.TrimSpace(r.stdout) != release {
		execFatalf(t, r, "status %d, uname -r %q, want %q\n%s", r.status, r.stdout, release, r.stderr)
	}
}
