// Package netdevice runs govmd's virtio-net device as a vhost-user
// backend in a process of its own (govmd net-device): it opens or takes
// over the tap, waits for the frontend (a socket path it listens on, or a
// connected socket handed over by govmd run), builds the same devices/net
// model the VMM uses in-process, confines itself (internal/sandbox:
// an unprivileged user, no capabilities, no_new_privs, Landlock without
// file-system or network access, a seccomp allowlist whose only ioctls are
// TUNSETOFFLOAD and TUNSETVNETHDRSZ) and serves one frontend session.
package netdevice

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"

	vnet "github.com/govmd/govmd/devices/net"
	"github.com/govmd/govmd/devices/net/tap"
	"github.com/govmd/govmd/internal/sandbox"
	"github.com/govmd/govmd/internal/unixsock"
	"github.com/govmd/govmd/virtio/vhostuser"
)

// ErrConfig marks a mistake in the configuration (exit status 2).
var ErrConfig = errors.New("invalid configuration")

// Config configures one net-device process.
type Config struct {
	// Tap names the tap to open (created if missing), or TapFD is an
	// open tap descriptor to take over (-1: none).
	Tap   string
	TapFD int
	// Socket is the path to listen on for the frontend, or SocketFD a
	// connected socket to take over (-1: none).
	Socket   string
	SocketFD int
	// StatsFD is a stats channel (a connected socket, see stats.go) to
	// answer on; 0 or less: none.
	StatsFD int

	MAC     net.HardwareAddr
	Offload vnet.OffloadMode
	Locked  bool

	// User is who the process becomes once set up; empty means nobody
	// when started as root.
	User string
	// NoSandbox skips the confinement (debugging only).
	NoSandbox bool
	// ViolationSignal, if not zero, makes the process attempt a system
	// call the sandbox forbids when it receives that signal (tests prove
	// with it that the sandbox kills the process).
	ViolationSignal syscall.Signal

	Log *slog.Logger
}

// TestViolationEnv names the environment variable with which a test asks
// a net-device process for ViolationSignal (SIGUSR1 when set to 1).
const TestViolationEnv = "GOVMD_TEST_SANDBOX_VIOLATION"

// sandboxIoctls are the only ioctls a confined net device makes: the
// tap's offloads, set from the guest's acked features (at activation, on
// the control queue's GUEST_OFFLOADS_SET, at reset), and its header size
// (10 or 12 bytes, from the features). Neither needs a capability on an
// attached tap.
var sandboxIoctls = []uint64{unix.TUNSETOFFLOAD, unix.TUNSETVNETHDRSZ}

// Run sets up the device, confines the process and serves one session.
// It returns when the frontend closes the session (nil) or ctx is done
// (nil), or with the error that ended it; errors in cfg wrap ErrConfig.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if (cfg.Tap == "") == (cfg.TapFD < 0) {
		return fmt.Errorf("%w: give a tap (--tap NAME)", ErrConfig)
	}
	if (cfg.Socket == "") == (cfg.SocketFD < 0) {
		return fmt.Errorf("%w: give a socket (--socket PATH)", ErrConfig)
	}
	t, err := openTap(cfg)
	if err != nil {
		return err
	}
	defer t.Close()
	dev, err := vnet.New(t, vnet.Config{MAC: cfg.MAC, Offload: cfg.Offload, Locked: cfg.Locked, Log: log})
	if err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	defer func() {
		dev.Close()
		log.Info("net-device stats", "tap", t.Name(), "stats", dev.Stats().String())
	}()
	conn, err := connect(ctx, cfg, log)
	if err != nil {
		return err
	}
	if cfg.StatsFD > 0 {
		// Before the sandbox: taking over the descriptor makes system
		// calls the confined process may not.
		f := os.NewFile(uintptr(cfg.StatsFD), "net-device stats")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			conn.Close()
			return fmt.Errorf("%w: stats descriptor %d: %w", ErrConfig, cfg.StatsFD, err)
		}
		go serveStats(c, dev.Stats)
	}
	var violate chan os.Signal
	if cfg.ViolationSignal != 0 {
		violate = make(chan os.Signal, 1)
		signal.Notify(violate, cfg.ViolationSignal)
	}
	if !cfg.NoSandbox {
		user := cfg.User
		if user == "" && os.Geteuid() == 0 {
			user = "nobody"
		}
		audit := os.Getenv(sandbox.AuditEnv) == "1"
		if err := sandbox.Confine(sandbox.Config{User: user, Ioctls: sandboxIoctls, Log: audit}); err != nil {
			conn.Close()
			return err
		}
		log.Debug("net-device confined", "user", user)
	}
	if violate != nil {
		go func() {
			<-violate
			log.Warn("net-device: attempting a forbidden system call (test trigger)")
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
			log.Error("net-device: the forbidden system call returned", "fd", fd, "err", err)
		}()
	}
	log.Info("net-device serving", "tap", t.Name(), "mac", dev.MAC().String())
	b := vhostuser.NewBackend(vhostuser.BackendConfig{Device: dev, Log: log})
	return b.Serve(ctx, conn)
}

// openTap opens cfg's tap by name or takes over its descriptor.
func openTap(cfg Config) (*tap.Tap, error) {
	var t *tap.Tap
	var err error
	if cfg.TapFD >= 0 {
		t, err = tap.FromFD(cfg.TapFD)
	} else {
		t, err = tap.Open(cfg.Tap)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return t, nil
}

// connect returns the frontend's connection: the handed-over socket, or
// the first connection on a socket listening at cfg.Socket (which is
// removed once a frontend is connected: one process serves one session).
func connect(ctx context.Context, cfg Config, log *slog.Logger) (*vhostuser.Conn, error) {
	if cfg.SocketFD >= 0 {
		f := os.NewFile(uintptr(cfg.SocketFD), "vhost-user")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			return nil, fmt.Errorf("%w: socket descriptor %d: %w", ErrConfig, cfg.SocketFD, err)
		}
		uc, ok := c.(*net.UnixConn)
		if !ok {
			c.Close()
			return nil, fmt.Errorf("%w: socket descriptor %d is not a unix socket", ErrConfig, cfg.SocketFD)
		}
		return vhostuser.NewConn(uc), nil
	}
	l, err := unixsock.Listen(cfg.Socket, "vhost-user socket")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	l.SetUnlinkOnClose(true)
	defer l.Close()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	log.Info("net-device waiting for a vhost-user frontend", "socket", cfg.Socket)
	c, err := l.AcceptUnix()
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("vhost-user socket %s: %w", cfg.Socket, err)
	}
	return vhostuser.NewConn(c), nil
}
