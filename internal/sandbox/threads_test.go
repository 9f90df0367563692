package sandbox

import (
	"errors"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// childEnv makes the test binary act as a confined child (see TestMain).
const childEnv = "GOVMD_SANDBOX_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "threads" {
		os.Exit(threadsChild())
	}
	os.Exit(m.Run())
}

// threadsChild confines itself, then makes the Go runtime create many OS
// threads, some of them from threads that were themselves created after
// confinement. In a cgo build those are glibc threads, whose first
// malloc sets up an arena and asks how many CPUs there are (an open of
// /sys/devices/system/cpu/online): the filter must not kill for that.
func threadsChild() int {
	cfg := Config{}
	if os.Geteuid() == 0 {
		cfg.User = "nobody"
	}
	if err := Confine(cfg); err != nil {
		os.Stderr.WriteString("confine: " + err.Error() + "\n")
		return 3
	}
	var wg sync.WaitGroup
	var spawn func(depth int)
	spawn = func(depth int) {
		defer wg.Done()
		// A locked goroutine that exits locked takes its thread with it,
		// so every level needs fresh threads.
		runtime.LockOSThread()
		ts := unix.Timespec{Nsec: int64(5 * time.Millisecond)}
		_ = unix.Nanosleep(&ts, nil)
		if depth > 0 {
			for i := 0; i < 4; i++ {
				wg.Add(1)
				go spawn(depth - 1)
			}
		}
		_ = unix.Nanosleep(&ts, nil)
	}
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go spawn(2)
	}
	wg.Wait()
	os.Stdout.WriteString("ok\n")
	return 0
}

// TestConfinedThreads: a confined process keeps working while the runtime
// creates threads after confinement (the test binary is a cgo build under
// -race, as a default `go build` on a host with a C compiler is).
func TestConfinedThreads(t *testing.T) {
	if os.Geteuid() != 0 {
		if c, err := effectiveCaps(); err != nil || c != 0 {
			t.Skip("needs root or no capabilities")
		}
	}
	for i := 0; i < 3; i++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childEnv+"=threads")
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("run %d (cgo %v): %v (%s)\n%s", i, cgoBuild, err, ee.ProcessState, out)
		}
		if err != nil || strings.TrimSpace(string(out)) != "ok" {
			t.Fatalf("run %d: %v\n%s", i, err, out)
		}
	}
}
