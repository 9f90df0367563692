package tap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// inNetns runs f on a thread in a new, private network namespace, so that
// the taps and traffic of the test never touch the host's interfaces.
// Commands f runs with run() execute in that namespace too.
func inNetns(t *testing.T, f func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (taps in a network namespace)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("no /dev/net/tun: %v", err)
	}
	done := make(chan any, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			done <- fmt.Sprintf("skip: unshare: %v", err)
			return
		}
		defer func() { done <- recover() }()
		f()
	}()
	switch r := (<-done).(type) {
	case nil:
	case string:
		if s, ok := strings.CutPrefix(r, "skip: "); ok {
			t.Skip(s)
		}
		t.Fatal(r)
	default:
		panic(r)
	}
}

// run runs a command in the calling thread's namespace and panics on
// failure (inNetns turns the panic into a test failure).
func run(args ...string) string {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		panic(fmt.Sprintf("%s: %v: %s", strings.Join(args, " "), err, out))
	}
	return string(out)
}

func linkExists(name string) bool {
	return exec.Command("ip", "link", "show", name).Run() == nil
}

func TestOpenCreatesAndRemoves(t *testing.T) {
	inNetns(t, func() {
		tp, err := Open("gt0")
		if err != nil {
			panic(err)
		}
		if tp.Name() != "gt0" || tp.Existed() {
			panic(fmt.Sprintf("name %q existed %v", tp.Name(), tp.Existed()))
		}
		if want := OffloadCSUM | OffloadTSO4 | OffloadTSO6 | OffloadTSOECN; tp.SupportedOffloads()&want != want {
			panic(fmt.Sprintf("supported offloads %#x", tp.SupportedOffloads()))
		}
		if !linkExists("gt0") {
			panic("gt0 not created")
		}
		if err := tp.Close(); err != nil {
			panic(err)
		}
		if err := tp.Close(); err != nil {
			panic(fmt.Sprintf("second Close: %v", err))
		}
		if linkExists("gt0") {
			panic("gt0 still exists after Close")
		}
		anon, err := Open("")
		if err != nil {
			panic(err)
		}
		defer anon.Close()
		if anon.Name() == "" || !linkExists(anon.Name()) {
			panic(fmt.Sprintf("kernel-named tap %q", anon.Name()))
		}
	})
}

func TestOpenPersistent(t *testing.T) {
	inNetns(t, func() {
		run("ip", "tuntap", "add", "dev", "gtp", "mode", "tap")
		tp, err := Open("gtp")
		if err != nil {
			panic(err)
		}
		if !tp.Existed() {
			panic("persistent tap not reported as existing")
		}
		tp.Close()
		if !linkExists("gtp") {
			panic("persistent tap removed by Close")
		}
		run("ip", "tuntap", "del", "dev", "gtp", "mode", "tap")
	})
}

func TestOpenErrors(t *testing.T) {
	inNetns(t, func() {
		tp, err := Open("gtbusy")
		if err != nil {
			panic(err)
		}
		defer tp.Close()
		for _, tc := range []struct {
			name  string
			errno error
			msg   string
		}{
			{"gtbusy", unix.EBUSY, "in use"},
			{"lo", unix.EINVAL, "not a single-queue tap"},
			{"a-name-much-too-long", unix.EINVAL, "name longer than 15 bytes"},
		} {
			_, err := Open(tc.name)
			if !errors.Is(err, tc.errno) || !strings.Contains(err.Error(), tc.msg) || !strings.Contains(err.Error(), tc.name) {
				panic(fmt.Sprintf("Open(%s) = %v, want %v with %q", tc.name, err, tc.errno, tc.msg))
			}
		}
		run("ip", "tuntap", "add", "dev", "gttun", "mode", "tun")
		if _, err := Open("gttun"); !errors.Is(err, unix.EINVAL) {
			panic(fmt.Sprintf("Open(tun device) = %v", err))
		}
	})
}

// TestOpenPermission opens a tap as an unprivileged user (the test binary
// re-executed as nobody) and checks the error says what is missing.
func TestOpenPermission(t *testing.T) {
	if os.Getenv("GOVMD_TAP_HELPER") == "1" {
		_, err := Open("gtperm")
		fmt.Printf("ERR:%v\n", err)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to start the unprivileged helper")
	}
	// The test binary's directory is private to root: run a copy.
	dir, err := os.MkdirTemp("", "govmd-tap-perm")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	bin, err := os.ReadFile(os.Args[0])
	if err == nil {
		err = os.WriteFile(dir+"/tap.test", bin, 0o755)
	}
	if err == nil {
		err = os.Chmod(dir, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(dir+"/tap.test", "-test.run=^TestOpenPermission$")
	cmd.Env = append(os.Environ(), "GOVMD_TAP_HELPER=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Skipf("cannot run the helper as nobody: %v: %s", err, out)
	}
	if !strings.Contains(string(out), "ERR:tap gtperm: permission denied: creating or attaching a tap needs root or CAP_NET_ADMIN") {
		t.Errorf("unprivileged Open: %s", out)
	}
}

func TestSetOffload(t *testing.T) {
	inNetns(t, func() {
		tp, err := Open("gtoff")
		if err != nil {
			panic(err)
		}
		defer tp.Close()
		feature := func(name string) string {
			for _, l := range strings.Split(run("ethtool", "-k", "gtoff"), "\n") {
				if v, ok := strings.CutPrefix(strings.TrimSpace(l), name+": "); ok {
					return strings.Fields(v)[0]
				}
			}
			panic("no ethtool feature " + name)
		}
		if feature("tcp-segmentation-offload") != "off" || feature("tx-checksumming") != "off" {
			panic("offloads not cleared at Open")
		}
		if err := tp.SetOffload(OffloadCSUM | OffloadTSO4 | OffloadTSO6); err != nil {
			panic(err)
		}
		if feature("tcp-segmentation-offload") != "on" || feature("tx-checksumming") != "on" {
			panic("offloads not set")
		}
		if err := tp.SetOffload(0); err != nil {
			panic(err)
		}
		if feature("tcp-segmentation-offload") != "off" {
			panic("offloads not cleared")
		}
		if err := tp.SetOffload(0x8000); !errors.Is(err, unix.EINVAL) {
			panic(fmt.Sprintf("SetOffload(unknown) = %v", err))
		}
		if err := tp.SetVnetHdrSize(10); err != nil {
			panic(err)
		}
		if err := tp.SetVnetHdrSize(3); !errors.Is(err, unix.EINVAL) {
			panic(fmt.Sprintf("SetVnetHdrSize(3) = %v", err))
		}
	})
}

// arpRequest returns a 12-byte virtio header and an ARP request from
// 10.99.0.2 (mac) for 10.99.0.1.
func arpRequest(mac []byte) []byte {
	b := make([]byte, 12, 12+42)
	b = append(b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	b = append(b, mac...)
	b = append(b, 0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1)
	b = append(b, mac...)
	b = append(b, 10, 99, 0, 2, 0, 0, 0, 0, 0, 0, 10, 99, 0, 1)
	return b
}

// TestReadWrite writes ARP requests to a tap and reads the kernel's
// replies, checking that neither direction allocates.
func TestReadWrite(t *testing.T) {
	inNetns(t, func() {
		tp, err := Open("gtrw")
		if err != nil {
			panic(err)
		}
		defer tp.Close()
		run("ip", "addr", "add", "10.99.0.1/24", "dev", "gtrw")
		run("ip", "link", "set", "gtrw", "up")
		mac := []byte{0x52, 0x54, 0, 0xaa, 0xbb, 0xcc}
		req := arpRequest(mac)
		out := [][]byte{req[:5], req[5:20], req[20:]}
		hdr := make([]byte, 12)
		frame := make([]byte, 2048)
		in := [][]byte{hdr[:7], hdr[7:], frame}
		roundTrip := func() {
			if n, err := tp.WriteV(out); err != nil || n != len(req) {
				panic(fmt.Sprintf("WriteV = %d, %v", n, err))
			}
			for {
				n, err := tp.ReadV(in, true)
				if err != nil {
					panic(err)
				}
				f := frame[:n-12]
				if len(f) >= 42 && binary.BigEndian.Uint16(f[12:]) == 0x0806 && binary.BigEndian.Uint16(f[20:]) == 2 {
					if !bytes.Equal(f[0:6], mac) || !bytes.Equal(f[38:42], []byte{10, 99, 0, 2}) {
						panic(fmt.Sprintf("unexpected ARP reply % x", f))
					}
					return
				}
			}
		}
		roundTrip()
		if a := testing.AllocsPerRun(50, roundTrip); a != 0 {
			panic(fmt.Sprintf("%v allocations per write and read", a))
		}
	})
}

func TestCancel(t *testing.T) {
	inNetns(t, func() {
		tp, err := Open("gtcancel")
		if err != nil {
			panic(err)
		}
		defer tp.Close()
		buf := [][]byte{make([]byte, 2048)}
		if _, err := tp.ReadV(buf, false); !errors.Is(err, unix.EAGAIN) {
			panic(fmt.Sprintf("ReadV(no wait) = %v", err))
		}
		if a := testing.AllocsPerRun(50, func() { tp.ReadV(buf, false) }); a != 0 {
			panic(fmt.Sprintf("%v allocations per empty read", a))
		}
		errc := make(chan error, 1)
		go func() {
			_, err := tp.ReadV(buf, true)
			errc <- err
		}()
		time.Sleep(50 * time.Millisecond)
		select {
		case err := <-errc:
			panic(fmt.Sprintf("ReadV returned early: %v", err))
		default:
		}
		tp.CancelRead()
		select {
		case err := <-errc:
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				panic(fmt.Sprintf("cancelled ReadV = %v", err))
			}
		case <-time.After(2 * time.Second):
			panic("CancelRead did not stop ReadV")
		}
		if _, err := tp.ReadV(buf, true); !errors.Is(err, os.ErrDeadlineExceeded) {
			panic(fmt.Sprintf("ReadV after CancelRead = %v", err))
		}
		tp.ResumeRead()
		if _, err := tp.ReadV(buf, false); !errors.Is(err, unix.EAGAIN) {
			panic(fmt.Sprintf("ReadV after ResumeRead = %v", err))
		}
	})
}

func TestTooManyBuffers(t *testing.T) {
	inNetns(t, func() {
		tp, err := Open("gtmany")
		if err != nil {
			panic(err)
		}
		defer tp.Close()
		bufs := make([][]byte, MaxIovecs+1)
		for i := range bufs {
			bufs[i] = make([]byte, 1)
		}
		if _, err := tp.WriteV(bufs); !errors.Is(err, ErrTooManyBuffers) {
			panic(fmt.Sprintf("WriteV(1025 buffers) = %v", err))
		}
		if _, err := tp.ReadV(bufs, false); !errors.Is(err, ErrTooManyBuffers) {
			panic(fmt.Sprintf("ReadV(1025 buffers) = %v", err))
		}
	})
}

// TestFromFD: a tap descriptor handed over (as govmd run hands one to its
// net-device process) is taken over like an opened tap, and anything else
// is refused and closed.
func TestFromFD(t *testing.T) {
	inNetns(t, func() {
		tp, err := Open("gt1")
		if err != nil {
			panic(err)
		}
		defer tp.Close()
		f, err := tp.Dup()
		if err != nil {
			panic(err)
		}
		dup, _ := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		f.Close()
		got, err := FromFD(dup)
		if err != nil {
			panic(err)
		}
		if got.Name() != "gt1" || got.SupportedOffloads() != tp.SupportedOffloads() {
			panic(fmt.Sprintf("FromFD: name %q offloads %#x", got.Name(), got.SupportedOffloads()))
		}
		if err := got.SetOffload(OffloadCSUM); err != nil {
			panic(err)
		}
		got.Close()
		if !linkExists("gt1") {
			panic("closing the taken-over descriptor removed the tap still open elsewhere")
		}
		r, w, err := os.Pipe()
		if err != nil {
			panic(err)
		}
		defer w.Close()
		pfd, _ := unix.FcntlInt(r.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		r.Close()
		if _, err := FromFD(pfd); err == nil {
			panic("FromFD accepted a pipe")
		}
		if _, err := unix.FcntlInt(uintptr(pfd), unix.F_GETFD, 0); !errors.Is(err, unix.EBADF) {
			panic("FromFD did not close the refused descriptor")
		}
	})
}
