package netdevice

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	vnet "github.com/govmd/govmd/devices/net"
	"github.com/govmd/govmd/virtio/vhostuser"
)

// Descriptors a started process finds its tap, socket and stats channel
// on.
const (
	ChildTapFD    = 3
	ChildSocketFD = 4
	ChildStatsFD  = 5
)

// Args returns the net-device flags for cfg's MAC, offloads, lock and
// user, the tap, socket and stats channel being ChildTapFD, ChildSocketFD
// and ChildStatsFD.
func Args(cfg Config) []string {
	args := []string{"--tap-fd", fmt.Sprint(ChildTapFD), "--socket-fd", fmt.Sprint(ChildSocketFD),
		"--stats-fd", fmt.Sprint(ChildStatsFD), "--offload", cfg.Offload.String()}
	if cfg.MAC != nil {
		args = append(args, "--mac", cfg.MAC.String())
	}
	if cfg.Locked {
		args = append(args, "--locked")
	}
	if cfg.User != "" {
		args = append(args, "--user", cfg.User)
	}
	return args
}

// Process is a net-device process serving one tap, and the frontend's end
// of its socket.
type Process struct {
	Conn  *vhostuser.Conn
	stats *statsClient
	cmd   *exec.Cmd
	done  chan struct{}
	err   error // Wait's, once done is closed
}

// socketpair returns the two ends of a new unix stream socketpair.
func socketpair(name string) (mine, theirs *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("net-device: %w", os.NewSyscallError("socketpair", err))
	}
	return os.NewFile(uintptr(fds[0]), name), os.NewFile(uintptr(fds[1]), name), nil
}

// Start runs argv (with env added to this process's environment) as a
// net-device process that takes over tap, one end of a new socketpair
// for vhost-user and one for its counters (ChildTapFD, ChildSocketFD,
// ChildStatsFD), with stderr as its standard error; Conn is the other end
// of the first, Stats asks on the second. If this process dies, the
// socket closes and the net-device process ends its session and exits.
func Start(argv, env []string, tap *os.File, stderr io.Writer) (*Process, error) {
	mine, theirs, err := socketpair("vhost-user")
	if err != nil {
		return nil, err
	}
	defer theirs.Close()
	statsMine, statsTheirs, err := socketpair("net-device stats")
	if err != nil {
		mine.Close()
		return nil, err
	}
	defer statsTheirs.Close()
	defer statsMine.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = stderr
	cmd.Stderr = stderr
	cmd.ExtraFiles = []*os.File{tap, theirs, statsTheirs} // descriptors 3, 4 and 5
	if err := cmd.Start(); err != nil {
		mine.Close()
		return nil, fmt.Errorf("net-device: starting %s: %w", argv[0], err)
	}
	c, err := net.FileConn(mine)
	mine.Close()
	var sc *statsClient
	if err == nil {
		sc, err = newStatsClient(statsMine)
	}
	if err != nil {
		if c != nil {
			c.Close()
		}
		cmd.Process.Kill()
		cmd.Wait()
		return nil, fmt.Errorf("net-device: %w", err)
	}
	p := &Process{Conn: vhostuser.NewConn(c.(*net.UnixConn)), stats: sc, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Stats asks the process for its device's counters, waiting at most
// timeout. After a failed exchange it fails at once.
func (p *Process) Stats(timeout time.Duration) (vnet.Stats, error) {
	if p.stats == nil {
		return vnet.Stats{}, ErrNoStats
	}
	return p.stats.get(timeout)
}

// Pid returns the process ID.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err returns how the process ended (after Done): nil for exit status 0.
func (p *Process) Err() error { return p.err }

// Describe says how an ended process ended, for a log line: the
// sandbox's kill is named as such.
func (p *Process) Describe() string {
	var ee *exec.ExitError
	if !errors.As(p.err, &ee) {
		if p.err == nil {
			return "exited normally"
		}
		return p.err.Error()
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	if ok && ws.Signaled() && ws.Signal() == syscall.SIGSYS {
		return "killed by its seccomp filter (a forbidden system call)"
	}
	return strings.TrimSpace(ee.String())
}

// Stop waits up to timeout for the process to exit (its frontend closes
// the connection first, which ends its session), then kills it.
func (p *Process) Stop(timeout time.Duration) {
	if p.stats != nil {
		defer p.stats.Close()
	}
	select {
	case <-p.done:
		return
	case <-time.After(timeout):
	}
	p.cmd.Process.Kill()
	<-p.done
}
