package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/govmd/govmd/internal/testkernel"
)

// TestBadInput checks that every kind of bad user input is one line on
// stderr and exit status 2, with nothing created.
func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	kernel := write("bzImage", testkernel.BzImage(testkernel.PowerOff(0x604)))
	text := write("README", []byte("not a kernel\n"))
	short := write("short", testkernel.BzImage(nil)[:1024])
	big := write("initrd", make([]byte, 48<<20))
	odd := write("odd.img", make([]byte, 1000))
	consoleOut := filepath.Join(dir, "console.log")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no kernel", []string{"run"}, "--kernel is required"},
		{"not a kernel", []string{"run", "--kernel", text}, "neither a bzImage"},
		{"truncated bzImage", []string{"run", "--kernel", short}, "truncated"},
		{"missing kernel", []string{"run", "--kernel", filepath.Join(dir, "nope")}, "no such file"},
		{"initrd larger than memory", []string{"run", "--kernel", kernel, "--initrd", big, "--memory", "32M"}, "initrd"},
		{"kernel larger than memory", []string{"run", "--kernel", big, "--memory", "32M"}, "larger than the 32M"},
		// A device would be read without end (2.8 GB in 4 s before the
		// size check): refused before any byte is read.
		{"kernel /dev/zero", []string{"run", "--kernel", "/dev/zero"}, "not a regular file (a character device)"},
		{"initrd /dev/zero", []string{"run", "--kernel", kernel, "--initrd", "/dev/zero"}, "initrd /dev/zero is not a regular file"},
		{"kernel directory", []string{"run", "--kernel", dir}, "not a regular file (a directory)"},
		{"memory 0", []string{"run", "--kernel", kernel, "--memory", "0"}, "--memory must be greater than 0"},
		{"memory garbage", []string{"run", "--kernel", kernel, "--memory", "lots"}, "not a number"},
		{"cpus 0", []string{"run", "--kernel", kernel, "--cpus", "0"}, "--cpus must be at least 1"},
		{"cpus too many", []string{"run", "--kernel", kernel, "--cpus", "999"}, "out of range"},
		{"bad net option", []string{"run", "--kernel", kernel, "--net", "tap=t0,speed=fast"}, "unknown option"},
		{"net without tap", []string{"run", "--kernel", kernel, "--net", "mac=02:00:00:00:00:01"}, "tap=NAME is required"},
		{"bad transport", []string{"run", "--kernel", kernel, "--net", "tap=t0,transport=mmio"}, "transport"},
		{"same tap twice", []string{"run", "--kernel", kernel, "--net", "tap=t0", "--net", "tap=t0"}, "used by two NICs"},
		{"missing disk", []string{"run", "--kernel", kernel, "--disk", filepath.Join(dir, "none.img")}, "disk"},
		{"disk size", []string{"run", "--kernel", kernel, "--disk", odd, "--console", consoleOut}, "512"},
		{"unknown flag", []string{"run", "--kernel", kernel, "--turbo"}, "flag provided but not defined"},
		{"unknown command", []string{"start"}, "unknown command"},
		{"bad log level", []string{"run", "--kernel", kernel, "--log-level", "loud"}, "log-level"},
		{"api socket path is a file", []string{"run", "--kernel", kernel, "--api-socket", text}, "not a socket"},
		{"api socket in a missing directory", []string{"run", "--kernel", kernel, "--api-socket", filepath.Join(dir, "no", "api.sock")}, "api socket"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(tc.args, strings.NewReader(""), &stdout, &stderr)
			if code != exitUsage {
				t.Fatalf("exit %d, want %d; stderr %q", code, exitUsage, stderr.String())
			}
			msg := strings.TrimRight(stderr.String(), "\n")
			if tc.name != "unknown command" && strings.Contains(msg, "\n") {
				t.Errorf("stderr is not one line: %q", msg)
			}
			if !strings.Contains(msg, tc.want) {
				t.Errorf("stderr %q does not mention %q", msg, tc.want)
			}
			if _, err := os.Stat(consoleOut); err == nil {
				t.Errorf("bad input created the console file %s", consoleOut)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"version"}, nil, &stdout, &stderr); code != 0 || !strings.HasPrefix(stdout.String(), "govmd ") {
		t.Fatalf("version: %d %q %q", code, stdout.String(), stderr.String())
	}
}
