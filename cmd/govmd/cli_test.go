package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/govmd/govmd/internal/testkernel"
	"github.com/govmd/govmd/virtio/vhostuser"
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
	silent := fakeBackend(t, filepath.Join(dir, "silent.sock"), nil)
	legacyOnly := fakeBackend(t, filepath.Join(dir, "legacy.sock"), func(c *vhostuser.Conn) {
		if m, err := c.Recv(time.Now().Add(10 * time.Second)); err == nil {
			c.Reply(&m, vhostuser.U64(0), time.Now().Add(time.Second))
		}
	})
	apiSock := filepath.Join(dir, "api.sock")
	portSock := filepath.Join(dir, "port.sock")
	busy, err := net.Listen("unix", filepath.Join(dir, "busy.sock")) // another program's socket
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	badField := write("bad-field.json", []byte(`{"kernel": "`+kernel+`", "turbo": true}`))
	badType := write("bad-type.json", []byte(`{"kernel": "`+kernel+`", "cpus": "two"}`))
	badList := write("bad-list.json", []byte(`{"kernel": "`+kernel+`", "net": "tap=t0"}`))
	notJSON := write("not.json", []byte(`kernel = "x"`))
	twoObjects := write("two.json", []byte(`{"kernel": "`+kernel+`"} {}`))
	badValue := write("bad-value.json", []byte(`{"kernel": "`+kernel+`", "memory": "lots"}`))
	apiInFile := write("api.json", []byte(`{"kernel": "`+kernel+`", "api-socket": "/tmp/x.sock"}`))
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"api socket owned by another program", []string{"run", "--kernel", kernel, "--api-socket", filepath.Join(dir, "busy.sock")}, "in use by another process"},
		{"api socket with a bad disk", []string{"run", "--kernel", kernel, "--api-socket", apiSock, "--disk", odd}, "512"},
		{"config with an unknown field", []string{"run", "--config", badField}, `unknown field "turbo"`},
		{"config with a wrong type", []string{"run", "--config", badType}, `field "cpus": want an integer`},
		{"config with a string for a list", []string{"run", "--config", badList}, `field "net": want an array of strings`},
		{"config not JSON", []string{"run", "--config", notJSON}, "not a JSON object"},
		{"config with two objects", []string{"run", "--config", twoObjects}, "data after"},
		{"config with a bad value", []string{"run", "--config", badValue}, "not a number"},
		{"config naming the api socket", []string{"run", "--config", apiInFile}, `unknown field "api-socket"`},
		{"config missing", []string{"run", "--config", filepath.Join(dir, "none.json")}, "no such file"},
		{"ctl without a socket", []string{"ctl", "status"}, "--api-socket PATH is required"},
		{"ctl without a command", []string{"ctl", "--api-socket", apiSock}, "no command"},
		{"ctl unknown command", []string{"ctl", "--api-socket", apiSock, "reboot"}, "unknown command"},
		{"ctl link without state", []string{"ctl", "--api-socket", apiSock, "link", "0"}, "link NIC up|down"},
		{"ctl link bad state", []string{"ctl", "--api-socket", apiSock, "link", "0", "sideways"}, "not up or down"},
		{"ctl extra argument", []string{"ctl", "--api-socket", apiSock, "pause", "now"}, "takes no arguments"},
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
		{"net without tap", []string{"run", "--kernel", kernel, "--net", "mac=02:00:00:00:00:01"}, "tap=NAME or vhost-user=SOCKET is required"},
		{"vhost-user socket missing", []string{"run", "--kernel", kernel, "--net", "vhost-user=" + filepath.Join(dir, "none.sock")}, "no such file"},
		{"vhost-user not a socket", []string{"run", "--kernel", kernel, "--net", "vhost-user=" + text}, "not a socket"},
		{"vhost-user with tap options", []string{"run", "--kernel", kernel, "--net", "vhost-user=" + silent + ",offload=off"}, "set by the vhost-user backend"},
		{"vhost-user silent socket", []string{"run", "--kernel", kernel, "--net", "vhost-user=" + silent}, "vhost-user backend failed"},
		{"vhost-user backend without VERSION_1", []string{"run", "--kernel", kernel, "--net", "vhost-user=" + legacyOnly}, "VERSION_1"},
		{"tap that is not a tap", []string{"run", "--kernel", kernel, "--net", "tap=lo"}, "tap lo:"},
		{"tap that is not a tap, in process", []string{"run", "--kernel", kernel, "--net", "tap=lo,sandbox=off"}, "tap lo:"},
		{"net-device without a tap", []string{"net-device", "--socket", filepath.Join(dir, "nd.sock")}, "--tap"},
		{"net-device without a socket", []string{"net-device", "--tap", "t0"}, "--socket"},
		{"net-device tap not a tap", []string{"net-device", "--tap", "lo", "--socket", filepath.Join(dir, "nd.sock")}, "tap lo:"},
		{"net-device bad mac", []string{"net-device", "--tap", "t0", "--socket", filepath.Join(dir, "nd.sock"), "--mac", "ff:ff:ff:ff:ff:ff"}, "--mac"},
		{"net-device bad offload", []string{"net-device", "--tap", "t0", "--socket", filepath.Join(dir, "nd.sock"), "--offload", "max"}, "offload"},
		{"bad sandbox option", []string{"run", "--kernel", kernel, "--net", "tap=t0,sandbox=maybe"}, "sandbox"},
		{"bad transport", []string{"run", "--kernel", kernel, "--net", "tap=t0,transport=mmio"}, "transport"},
		{"same tap twice", []string{"run", "--kernel", kernel, "--net", "tap=t0", "--net", "tap=t0"}, "used by two NICs"},
		{"missing disk", []string{"run", "--kernel", kernel, "--disk", filepath.Join(dir, "none.img")}, "disk"},
		{"disk size", []string{"run", "--kernel", kernel, "--disk", odd, "--console", consoleOut}, "512"},
		{"unknown flag", []string{"run", "--kernel", kernel, "--turbo"}, "flag provided but not defined"},
		{"unknown command", []string{"start"}, "unknown command"},
		{"bad log level", []string{"run", "--kernel", kernel, "--log-level", "loud"}, "log-level"},
		{"api socket path is a file", []string{"run", "--kernel", kernel, "--api-socket", text}, "not a socket"},
		{"share missing", []string{"run", "--kernel", kernel, "--share", filepath.Join(dir, "nodir") + ",tag=a"}, "no such file"},
		{"share is a file", []string{"run", "--kernel", kernel, "--share", text + ",tag=a"}, "not a directory"},
		{"share without tag", []string{"run", "--kernel", kernel, "--share", dir}, "tag=TAG is required"},
		{"share bad tag", []string{"run", "--kernel", kernel, "--share", dir + ",tag=a/b"}, "tag"},
		{"share tag twice", []string{"run", "--kernel", kernel, "--share", dir + ",tag=a", "--share", dir + ",tag=a"}, "used by two shares"},
		{"share without virtiofsd", []string{"run", "--kernel", kernel, "--share", dir + ",tag=a", "--virtiofsd", filepath.Join(dir, "no-virtiofsd")}, "virtiofsd"},
		{"port without path", []string{"run", "--kernel", kernel, "--port", "data"}, "NAME=PATH"},
		{"port with a bad name", []string{"run", "--kernel", kernel, "--port", "a/b=" + consoleOut}, "port"},
		{"port name twice", []string{"run", "--kernel", kernel, "--port", "a=" + consoleOut, "--port", "a=" + consoleOut}, "both named"},
		{"port socket without path", []string{"run", "--kernel", kernel, "--port", "a=unix:"}, "no socket path"},
		{"port socket in a missing directory", []string{"run", "--kernel", kernel, "--port", "a=unix:" + filepath.Join(dir, "no", "p.sock")}, "--port socket"},
		{"port socket, then a port of the same name", []string{"run", "--kernel", kernel, "--port", "a=unix:" + portSock, "--port", "a=" + consoleOut}, "both named"},
		{"hvc socket path is a file", []string{"run", "--kernel", kernel, "--hvc", "unix:" + text}, "not a socket"},
		{"exec port with the init's prefix", []string{"exec", "--kernel", kernel, "--port", "govmd.x=unix:" + portSock, "--", "true"}, "not starting with govmd."},
		{"exec without command", []string{"exec", "--kernel", kernel}, "needs a command"},
		{"exec bad timeout", []string{"exec", "--kernel", kernel, "--timeout", "soon", "--", "true"}, "flag -timeout"},
		{"exec share missing", []string{"exec", "--kernel", kernel, "--share", filepath.Join(dir, "nodir") + ",tag=a", "--", "true"}, "no such file"},
		{"exec root share missing", []string{"exec", "--kernel", kernel, "--root-share=" + filepath.Join(dir, "nodir"), "--", "true"}, "no such file"},
		{"exec share with the root share's tag", []string{"exec", "--kernel", kernel, "--root-share=" + dir, "--share", dir + ",tag=govmd-root", "--", "true"}, "used by two shares"},
		{"exec missing kernel", []string{"exec", "--kernel", filepath.Join(dir, "nope"), "--console", consoleOut, "--", "true"}, "no such file"},
		{"exec module missing", []string{"exec", "--kernel", kernel, "--module", filepath.Join(dir, "none.ko"), "--", "true"}, "--module"},
		{"exec module not ELF", []string{"exec", "--kernel", kernel, "--module", text, "--", "true"}, "not a kernel module"},
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
			if _, err := os.Stat(filepath.Join(dir, "nd.sock")); err == nil {
				t.Errorf("bad input left the net-device socket behind")
			}
			if _, err := os.Stat(apiSock); err == nil {
				t.Errorf("bad input left the api socket behind")
			}
			if _, err := os.Stat(portSock); err == nil {
				t.Errorf("bad input left the console port's socket behind")
			}
			if kids := children(t); len(kids) > 0 {
				t.Errorf("bad input left processes behind: %v", kids)
			}
		})
	}
}

// fakeBackend listens on path and runs serve (nil: never answer) on each
// connection: a socket that is not a working vhost-user backend.
func fakeBackend(t *testing.T, path string, serve func(c *vhostuser.Conn)) string {
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if serve != nil {
					serve(vhostuser.NewConn(c.(*net.UnixConn)))
				}
				io.Copy(io.Discard, c)
			}()
		}
	}()
	return path
}

// children lists this process's child processes (from /proc).
func children(t *testing.T) []string {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, task := range tasks {
		if c, err := os.ReadFile(task); err == nil {
			out = append(out, strings.Fields(string(c))...)
		}
	}
	return out
}

func TestVersion(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"version"}, nil, &stdout, &stderr); code != 0 || !strings.HasPrefix(stdout.String(), "govmd ") {
		t.Fatalf("version: %d %q %q", code, stdout.String(), stderr.String())
	}
}
