package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	govmdBin  string
	buildErr  error
)

// repoRoot returns the repository root (the parent of this package).
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// govmd builds the binary once per test process.
func govmd(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		if b := os.Getenv("GOVMD_BIN"); b != "" {
			govmdBin = b // prebuilt, e.g. inside the nested-KVM VM
			return
		}
		dir, err := os.MkdirTemp("", "govmd-e2e-bin-")
		if err != nil {
			buildErr = err
			return
		}
		govmdBin = filepath.Join(dir, "govmd")
		// As make build builds it: static, pure Go. (A cgo build's
		// glibc threads are covered by internal/sandbox's tests.)
		cmd := exec.Command("go", "build", "-o", govmdBin, "./cmd/govmd")
		cmd.Dir = repoRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return govmdBin
}

// image returns the path of a built test image, skipping the test if the
// images have not been built.
func image(t testing.TB, rel string) string {
	t.Helper()
	dir := os.Getenv("GOVMD_IMAGES")
	if dir == "" {
		dir = filepath.Join(repoRoot(), "images", "out")
	}
	p := filepath.Join(dir, rel)
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("GOVMD_E2E_REQUIRE") != "" {
			t.Fatalf("test image %s missing (run make images): %v", p, err)
		}
		t.Skipf("test image %s missing (run make images)", p)
	}
	return p
}

func requireKVM(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		if os.Getenv("GOVMD_E2E_REQUIRE") != "" {
			t.Fatalf("/dev/kvm: %v", err)
		}
		t.Skipf("/dev/kvm not usable: %v", err)
	}
	f.Close()
}

// consoleEcho (GOVMD_E2E_CONSOLE=1) copies every guest console line to
// stdout as it arrives, for watching slow runs.
var consoleEcho = os.Getenv("GOVMD_E2E_CONSOLE") != ""

func full() bool { return os.Getenv("GOVMD_E2E") == "full" }

// Guest is one running govmd process.
type Guest struct {
	t      *testing.T
	cmd    *exec.Cmd
	mu     sync.Mutex
	lines  []string
	cond   *sync.Cond
	done   bool
	err    error
	log    *os.File
	stderr strings.Builder
	start  time.Time
	// lastLine is when the console last printed a line (start until then).
	lastLine time.Time
}

// Start runs govmd with args; the console goes to a pipe that the test
// reads. The process is killed when the test ends.
func Start(t *testing.T, args ...string) *Guest {
	t.Helper()
	return StartIn(t, "", args...)
}

// StartIn is Start with govmd running in network namespace ns (ip netns
// exec), or in the test's namespace if ns is empty.
func StartIn(t *testing.T, ns string, args ...string) *Guest {
	t.Helper()
	requireKVM(t)
	return startCmd(t, ns, append([]string{govmd(t)}, args...))
}

// startCmd is StartIn for any command (QEMU as a peer).
func startCmd(t *testing.T, ns string, argv []string) *Guest {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	if ns != "" {
		argv = append([]string{"ip", "netns", "exec", ns}, argv...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	// At the end of a test govmd gets SIGTERM (it logs its counters and
	// ring states, then exits), and SIGKILL if it is still there later.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 15 * time.Second
	cmd.Stdin = nil
	g := &Guest{t: t, cmd: cmd, start: time.Now(), lastLine: time.Now()}
	g.cond = sync.NewCond(&g.mu)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = &lockedWriter{w: &g.stderr, mu: &g.mu}
	logPath := filepath.Join(t.TempDir(), "console.log")
	g.log, _ = os.Create(logPath)
	t.Logf("%s", strings.Join(argv, " "))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go g.read(stdout)
	t.Cleanup(func() {
		cancel()
		g.Wait(10 * time.Second)
		if t.Failed() {
			g.mu.Lock()
			tail := g.lines
			if len(tail) > 60 {
				tail = tail[len(tail)-60:]
			}
			t.Logf("console (last %d lines):\n%s\nstderr:\n%s", len(tail), strings.Join(tail, "\n"), g.stderr.String())
			g.mu.Unlock()
		}
		g.log.Close()
	})
	return g
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (g *Guest) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		fmt.Fprintf(g.log, "%7.1fs %s\n", time.Since(g.start).Seconds(), line)
		if consoleEcho {
			fmt.Printf("console %7.1fs %s\n", time.Since(g.start).Seconds(), line)
		}
		g.mu.Lock()
		g.lines = append(g.lines, line)
		g.lastLine = time.Now()
		g.cond.Broadcast()
		g.mu.Unlock()
	}
	err := g.cmd.Wait()
	g.mu.Lock()
	g.done, g.err = true, err
	g.cond.Broadcast()
	g.mu.Unlock()
}

// Expect waits until a console line matches re and returns its submatches.
// It fails the test when timeout passes, govmd exits, or the console stays
// silent for the profile's Silence (reported as "guest console stalled",
// which scripts/nested.sh recognises).
func (g *Guest) Expect(re string, timeout time.Duration) []string {
	g.t.Helper()
	m, stalled, ok := g.expect(regexp.MustCompile(re), timeout)
	if crash := g.crashLine(); crash != "" {
		g.t.Fatalf("guest kernel failed while waiting for %q: %q", re, crash)
	}
	switch {
	case stalled:
		g.mu.Lock()
		last := ""
		if len(g.lines) > 0 {
			last = g.lines[len(g.lines)-1]
		}
		g.mu.Unlock()
		g.t.Fatalf("guest console stalled: no output for %v while waiting for %q (last line %q)", profile().Silence, re, last)
	case !ok && g.exited():
		g.t.Fatalf("the VMM exited while waiting for %q; stderr:\n%s", re, g.Stderr())
	case !ok:
		g.t.Fatalf("no console line matching %q within %v", re, timeout)
	}
	return m
}

// crashRe matches the console lines of a guest kernel that is dead or
// wedged: a panic, an oops, an RCU or soft-lockup stall.
var crashRe = regexp.MustCompile(`Kernel panic|BUG: |Oops|general protection fault|rcu: INFO: rcu_sched (self-)?detected stall|watchdog: BUG: soft lockup`)

func TestCrashRe(t *testing.T) {
	for _, tt := range []struct {
		line  string
		crash bool
	}{
		{"[    9.543777] BUG: ENTRY_TRAMPOLINE stack guard page was hit at 00000000d4154f00", true},
		{"[   28.930876] rcu: INFO: rcu_sched detected stalls on CPUs/tasks:", true},
		{"[   28.775883] rcu: INFO: rcu_sched self-detected stall on CPU", true},
		{"[   22.000000] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [nc:36]", true},
		{"[    0.000000] Kernel panic - not syncing: VFS: Unable to mount root fs", true},
		{"[    0.390000] Last level dTLB entries: 4KB 512, 2MB 0, 4MB 0, 1GB 0", false},
		{"GOVMD-STEP tcp-rx status=0", false},
	} {
		if got := crashRe.MatchString(tt.line); got != tt.crash {
			t.Errorf("crashRe.MatchString(%q) = %v, want %v", tt.line, got, tt.crash)
		}
	}
}

// crashLine returns the first console line that shows the guest kernel
// failed, or "".
func (g *Guest) crashLine() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, l := range g.lines {
		if crashRe.MatchString(l) {
			return l
		}
	}
	return ""
}

func (g *Guest) expect(rx *regexp.Regexp, timeout time.Duration) (m []string, stalled, ok bool) {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-tick.C:
				g.mu.Lock()
				g.cond.Broadcast()
				g.mu.Unlock()
			case <-stop:
				return
			}
		}
	}()
	g.mu.Lock()
	defer g.mu.Unlock()
	next := 0
	for {
		for ; next < len(g.lines); next++ {
			if m := rx.FindStringSubmatch(g.lines[next]); m != nil {
				return m, false, true
			}
			if crashRe.MatchString(g.lines[next]) {
				return nil, false, false
			}
		}
		if g.done || time.Now().After(deadline) {
			return nil, false, false
		}
		if time.Since(g.lastLine) > profile().Silence {
			return nil, true, false
		}
		g.cond.Wait()
	}
}

// Results returns every GOVMD-RESULT key=value pair printed so far.
func (g *Guest) Results() map[string]string {
	g.mu.Lock()
	defer g.mu.Unlock()
	res := map[string]string{}
	for _, l := range g.lines {
		i := strings.Index(l, "GOVMD-RESULT ")
		if i < 0 {
			continue
		}
		for _, kv := range strings.Fields(l[i+len("GOVMD-RESULT "):]) {
			if k, v, ok := strings.Cut(kv, "="); ok {
				res[k] = v
			}
		}
	}
	return res
}

// Wait waits for govmd to exit and returns its exit status (-1 if it was
// killed or did not exit in time; then it is killed).
func (g *Guest) Wait(timeout time.Duration) int {
	deadline := time.Now().Add(timeout)
	timer := time.AfterFunc(timeout, func() {
		g.mu.Lock()
		g.cond.Broadcast()
		g.mu.Unlock()
	})
	defer timer.Stop()
	g.mu.Lock()
	for !g.done && time.Now().Before(deadline) {
		g.cond.Wait()
	}
	done, err := g.done, g.err
	g.mu.Unlock()
	if !done {
		_ = g.cmd.Process.Kill()
		return -1
	}
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return -1
		}
		// A guest kernel that panicked reboots (panic=-1) and govmd
		// exits with 3: say so in the words scripts/nested.sh knows.
		if crash := g.crashLine(); crash != "" && ee.ExitCode() != 0 {
			g.t.Helper()
			g.t.Fatalf("guest kernel failed (govmd exit status %d): %q", ee.ExitCode(), crash)
		}
		return ee.ExitCode()
	}
	return -1
}

// exited reports whether the VMM process has exited.
func (g *Guest) exited() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.done
}

// Stderr returns what govmd wrote to stderr so far.
func (g *Guest) Stderr() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.stderr.String()
}

// Kill sends SIGKILL to govmd.
func (g *Guest) Kill() { _ = g.cmd.Process.Kill() }

// Console returns all console lines so far.
func (g *Guest) Console() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.lines...)
}
