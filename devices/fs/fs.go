// Package fs shares a host directory with a guest as a virtio-fs device
// (virtio 1.x section 5.11, device ID 26), served by virtiofsd over
// vhost-user.
//
// govmd does not speak FUSE itself: the file system server is virtiofsd
// (QEMU's C one in Debian 12's qemu-system-common, or the newer Rust one
// where the host has it), a separate process with its own sandbox (mount,
// PID and network namespaces with pivot_root into the shared directory,
// and a seccomp filter). Start runs one per share with a private
// listening socket handed to it as a descriptor, so no socket path is
// ever visible to other programs; the device this process presents is a
// virtio/vhostuser Frontend with Config's bytes (virtiofsd does not
// provide a configuration). A read-only share is a read-only bind mount
// of the directory in a mount namespace of virtiofsd's own (ReadOnly
// below), so the guest's writes fail with EROFS whatever virtiofsd
// supports.
package fs

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/govmd/govmd/virtio"
	"github.com/govmd/govmd/virtio/vhostuser"
)

// DeviceType is the virtio device ID of a file system device.
const DeviceType virtio.DeviceType = 26

// Limits and sizes.
const (
	// TagMax is the longest tag: the configuration's tag field.
	TagMax = 36
	// ConfigSize is the configuration's size: tag[36], num_request_queues.
	ConfigSize = TagMax + 4
	// HiprioQueueSize and RequestQueueSize are the queues' maximum
	// sizes (queue 0 is the high-priority queue, 1 the request queue).
	HiprioQueueSize  = 128
	RequestQueueSize = 1024
)

// QueueSizes are the device's queues: high priority, then one request
// queue (QEMU's C virtiofsd serves one).
var QueueSizes = []uint16{HiprioQueueSize, RequestQueueSize}

// Share is one shared directory.
type Share struct {
	Path     string // the host directory
	Tag      string // what the guest mounts: mount -t virtiofs TAG DIR
	ReadOnly bool
}

// ErrShare marks a share the user got wrong (a missing or unreadable
// directory, a bad tag) or a virtiofsd that cannot be found.
var ErrShare = errors.New("bad share")

// CheckTag checks a tag: 1 to TagMax bytes of printable ASCII without
// spaces, commas or slashes (it ends up on a command line and in a path).
func CheckTag(tag string) error {
	if tag == "" || len(tag) > TagMax {
		return fmt.Errorf("%w: tag %q must be 1 to %d bytes", ErrShare, tag, TagMax)
	}
	for _, c := range []byte(tag) {
		if c <= ' ' || c > '~' || c == ',' || c == '/' {
			return fmt.Errorf("%w: tag %q: only printable ASCII without spaces, commas and slashes", ErrShare, tag)
		}
	}
	return nil
}

// Check checks a share before anything is started: the tag, and that
// Path is a directory this process can list.
func (s Share) Check() error {
	if err := CheckTag(s.Tag); err != nil {
		return err
	}
	f, err := os.Open(s.Path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return fmt.Errorf("%w: %s: %w", ErrShare, s.Path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrShare, s.Path, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("%w: %s is not a directory", ErrShare, s.Path)
	}
	if _, err := f.ReadDir(1); err != nil && err != io.EOF {
		return fmt.Errorf("%w: %s: %w", ErrShare, s.Path, err)
	}
	return nil
}

// ConfigBytes is the device configuration of a share tagged tag.
func ConfigBytes(tag string) []byte {
	b := make([]byte, ConfigSize)
	copy(b, tag)
	binary.LittleEndian.PutUint32(b[TagMax:], uint32(len(QueueSizes)-1))
	return b
}

// virtiofsd's usual places, newest first: the Rust one (Debian trixie,
// Fedora: /usr/libexec), QEMU's C one (Debian 12: /usr/lib/qemu).
var virtiofsdPaths = []string{"/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"}

// FindVirtiofsd returns the virtiofsd to run: path if not empty, else
// virtiofsd on $PATH, else the first of the usual places that exists.
func FindVirtiofsd(path string) (string, error) {
	if path != "" {
		if _, err := exec.LookPath(path); err != nil {
			return "", fmt.Errorf("%w: virtiofsd %s: %w", ErrShare, path, errors.Unwrap(err))
		}
		return path, nil
	}
	if p, err := exec.LookPath("virtiofsd"); err == nil {
		return p, nil
	}
	for _, p := range virtiofsdPaths {
		if _, err := exec.LookPath(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: no virtiofsd found (on $PATH, %s; Debian 12: apt-get install qemu-system-common)",
		ErrShare, strings.Join(virtiofsdPaths, ", "))
}

// Config configures Start.
type Config struct {
	Share Share
	// Virtiofsd is the server's path (from FindVirtiofsd).
	Virtiofsd string
	// ReadOnlyHelper is the command that runs a program in a mount
	// namespace of its own with a directory bind-mounted read-only
	// (govmd's own executable and its hidden "share-ro" command, see
	// ExecReadOnly); needed for a ReadOnly share.
	ReadOnlyHelper []string
	// Log receives virtiofsd's messages, one record per line (warn).
	Log *slog.Logger
}

// Daemon is a running virtiofsd serving one share.
type Daemon struct {
	// Conn is this side of its vhost-user connection.
	Conn *vhostuser.Conn
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	// stopping: Stop closed the connection; what virtiofsd says about
	// that (a hang-up) is only logged at debug level.
	stopping atomic.Bool
}

// Start starts virtiofsd for cfg.Share and connects to it. It creates a
// listening socket in a private directory (mode 0700, removed before
// Start returns), passes it to virtiofsd as descriptor 3 and connects to
// it itself, so the connection exists before virtiofsd has even started;
// virtiofsd accepts it when it is ready.
func Start(cfg Config) (*Daemon, error) {
	if err := cfg.Share.Check(); err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	dir, err := os.MkdirTemp("", "govmd-fs-")
	if err != nil {
		return nil, fmt.Errorf("virtio-fs: socket directory: %w", err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("virtio-fs: %w", err)
	}
	ln.SetUnlinkOnClose(false)
	lf, err := ln.File()
	ln.Close()
	if err != nil {
		return nil, fmt.Errorf("virtio-fs: %w", err)
	}
	defer lf.Close()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("virtio-fs: connecting to the socket: %w", err)
	}
	argv, err := cfg.argv()
	if err != nil {
		c.Close()
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.ExtraFiles = []*os.File{lf} // descriptor 3
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if cfg.Share.ReadOnly {
		// A mount namespace of its own (Go makes its mounts private),
		// in which the helper bind-mounts the share read-only.
		cmd.SysProcAttr.Unshareflags = syscall.CLONE_NEWNS
	}
	out, err := cmd.StderrPipe()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("virtio-fs: %w", err)
	}
	cmd.Stdout = nil
	if err := cmd.Start(); err != nil {
		c.Close()
		return nil, fmt.Errorf("%w: starting %s: %w", ErrShare, argv[0], err)
	}
	d := &Daemon{Conn: vhostuser.NewConn(c), cmd: cmd, done: make(chan struct{})}
	go func() {
		s := bufio.NewScanner(out)
		s.Buffer(make([]byte, 4096), 4096)
		for s.Scan() {
			line := strings.TrimSpace(s.Text())
			switch {
			case line == "":
			case d.stopping.Load():
				cfg.Log.Debug("virtiofsd", "tag", cfg.Share.Tag, "says", line)
			default:
				cfg.Log.Warn("virtiofsd", "tag", cfg.Share.Tag, "says", line)
			}
		}
		io.Copy(io.Discard, out)
		d.err = cmd.Wait()
		close(d.done)
	}()
	return d, nil
}

// argv is virtiofsd's command line for the share: the listening socket
// on descriptor 3, its namespace sandbox, no cache beyond the default.
func (cfg Config) argv() ([]string, error) {
	s := cfg.Share
	source := s.Path
	if s.ReadOnly {
		source = ReadOnlyMount // where the helper mounts s.Path read-only
	}
	var argv []string
	if rustVirtiofsd(cfg.Virtiofsd) {
		argv = []string{cfg.Virtiofsd, "--fd=3", "--shared-dir=" + source, "--sandbox=namespace", "--log-level=error"}
	} else {
		argv = []string{cfg.Virtiofsd, "--fd=3", "-o", "source=" + source, "-o", "sandbox=namespace", "-o", "log_level=err"}
	}
	if s.ReadOnly {
		if len(cfg.ReadOnlyHelper) == 0 {
			return nil, errors.New("virtio-fs: a read-only share needs the read-only helper")
		}
		argv = append(append(append([]string(nil), cfg.ReadOnlyHelper...), s.Path, "--"), argv...)
	}
	return argv, nil
}

// rustVirtiofsd reports whether path is the Rust virtiofsd, whose options
// are --shared-dir and friends (QEMU's C one takes -o source=...): by
// whether its --help mentions --shared-dir.
func rustVirtiofsd(path string) bool {
	out, _ := exec.Command(path, "--help").CombinedOutput()
	return bytes.Contains(out, []byte("--shared-dir"))
}

// Pid returns virtiofsd's process ID.
func (d *Daemon) Pid() int { return d.cmd.Process.Pid }

// Done is closed when virtiofsd has exited.
func (d *Daemon) Done() <-chan struct{} { return d.done }

// Err returns how virtiofsd ended (after Done).
func (d *Daemon) Err() error { return d.err }

// Stop closes the connection (virtiofsd ends its session and exits), waits
// up to timeout, then kills virtiofsd's process group.
func (d *Daemon) Stop(timeout time.Duration) {
	d.stopping.Store(true)
	d.Conn.Close()
	select {
	case <-d.done:
		return
	case <-time.After(timeout):
	}
	unix.Kill(-d.cmd.Process.Pid, unix.SIGKILL)
	select {
	case <-d.done:
	case <-time.After(timeout):
	}
}

// ReadOnlyMount is where the read-only helper mounts a read-only share
// for virtiofsd, in the helper's own mount namespace: a directory of a
// tmpfs it mounts on /tmp there. virtiofsd's namespace sandbox pivots its
// root into its source, which Linux refuses (EBUSY) when the source is
// "/" itself (govmd exec --root-share), so the source is never the share's
// own path. A share of "/" shows this /tmp, not the host's: an empty
// directory "ro".
const ReadOnlyMount = "/tmp/ro"

// ExecReadOnly is the read-only helper: in the mount namespace it was
// started in (Config.ReadOnlyHelper runs with one of its own, private), it
// clones dir's mount tree (open_tree), mounts a small tmpfs on /tmp,
// attaches the clone at ReadOnlyMount, makes it read-only and executes argv (virtiofsd, whose source is ReadOnlyMount). It returns
// only on error.
func ExecReadOnly(dir string, argv []string) error {
	if len(argv) == 0 {
		return errors.New("share-ro: no command")
	}
	// A detached copy of dir's mount tree first: dir may be under /tmp,
	// which the tmpfs hides next.
	tree, err := unix.OpenTree(unix.AT_FDCWD, dir, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
	if err != nil {
		return fmt.Errorf("share-ro: %s: %w", dir, os.NewSyscallError("open_tree", err))
	}
	tmp := path.Dir(ReadOnlyMount)
	if err := unix.Mount("govmd-share-ro", tmp, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=16k,mode=0700"); err != nil {
		return fmt.Errorf("share-ro: tmpfs on %s: %w", tmp, err)
	}
	if err := os.Mkdir(ReadOnlyMount, 0o700); err != nil {
		return fmt.Errorf("share-ro: %w", err)
	}
	if err := unix.MoveMount(tree, "", unix.AT_FDCWD, ReadOnlyMount, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("share-ro: attaching %s at %s: %w", dir, ReadOnlyMount, os.NewSyscallError("move_mount", err))
	}
	unix.Close(tree)
	if err := unix.Mount("", ReadOnlyMount, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("share-ro: read-only remount of %s: %w", dir, err)
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return fmt.Errorf("share-ro: %w", err)
	}
	return fmt.Errorf("share-ro: %w", unix.Exec(path, argv, os.Environ()))
}
