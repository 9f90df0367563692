package nettest

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"

	vnet "github.com/govmd/govmd/devices/net"
	"github.com/govmd/govmd/devices/net/netdevice"
	"github.com/govmd/govmd/devices/net/tap"
	"github.com/govmd/govmd/memory"
	"github.com/govmd/govmd/virtio"
	"github.com/govmd/govmd/virtio/vhostuser"
)

// Remote hosts a device the way `govmd net-device` does, behind a
// vhost-user Backend, here served by a goroutine at the other end of a
// socketpair; Frontend is the device a NIC drives, and Mem the shared
// guest memory the NIC must use (NICConfig.Mem).
type Remote struct {
	Frontend *vhostuser.Frontend
	Backend  *vhostuser.Backend // in this process (NewRemote)
	Process  *netdevice.Process // or in its own (NewRemoteProcess)
	Mem      *memory.Memory
	cancel   context.CancelFunc
	done     chan error
}

// NewRemote serves dev over vhost-user to a new Frontend, with memSize
// bytes of shared guest memory.
func NewRemote(dev virtio.Device, memSize uint64, log *slog.Logger) (*Remote, error) {
	mem, err := memory.NewShared([]memory.Range{{GPA: 0, Size: memSize}})
	if err != nil {
		return nil, err
	}
	fe, be, err := socketPair()
	if err != nil {
		mem.Close()
		return nil, err
	}
	r := &Remote{Mem: mem, done: make(chan error, 1)}
	r.Backend = vhostuser.NewBackend(vhostuser.BackendConfig{Device: dev, Log: log})
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- r.Backend.Serve(ctx, be) }()
	cfg := vhostuser.FrontendConfig{Conn: fe, Mem: mem, Type: dev.Type(), QueueSizes: dev.QueueSizes(),
		ConfigSize: dev.ConfigSize(), Log: log}
	if _, ok := dev.(*vnet.Device); ok {
		cfg.Validate = vnet.ValidateFeatures
	}
	if r.Frontend, err = vhostuser.NewFrontend(cfg); err != nil {
		cancel()
		<-r.done
		mem.Close()
		return nil, err
	}
	return r, nil
}

// socketPair returns the two ends of a connected unix stream socket.
func socketPair() (a, b *vhostuser.Conn, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, os.NewSyscallError("socketpair", err)
	}
	conns := make([]*vhostuser.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "vhost-user")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			if i == 0 {
				unix.Close(fds[1])
			} else {
				conns[0].Close()
			}
			return nil, nil, err
		}
		conns[i] = vhostuser.NewConn(c.(*net.UnixConn))
	}
	return conns[0], conns[1], nil
}

// Close ends the session (the Frontend closes the connection) and waits
// for the backend, which stops the device. The NIC closes Mem.
func (r *Remote) Close() error {
	ferr := r.Frontend.Close()
	if r.Process != nil {
		r.Process.Stop(10 * time.Second)
		if err := r.Process.Err(); err != nil {
			return fmt.Errorf("net-device process: %s", r.Process.Describe())
		}
		return ferr
	}
	berr := <-r.done
	r.cancel()
	if berr != nil {
		return fmt.Errorf("vhost-user backend: %w", berr)
	}
	return ferr
}

// Environment of a test binary started as a net-device process by
// NewRemoteProcess.
const (
	backendEnv    = "GOVMD_NETTEST_BACKEND"
	backendMAC    = "GOVMD_NETTEST_BACKEND_MAC"
	backendOffl   = "GOVMD_NETTEST_BACKEND_OFFLOAD"
	backendLocked = "GOVMD_NETTEST_BACKEND_LOCKED"
)

// MaybeServeBackend makes a test binary started by NewRemoteProcess serve
// as the net-device process (netdevice.Run on the descriptors it was
// given, sandboxed) and exit; otherwise it returns at once. Call it first
// in TestMain.
func MaybeServeBackend() {
	if os.Getenv(backendEnv) != "1" {
		return
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg := netdevice.Config{TapFD: netdevice.ChildTapFD, SocketFD: netdevice.ChildSocketFD, StatsFD: netdevice.ChildStatsFD, Log: log,
		Locked: os.Getenv(backendLocked) == "1"}
	if m := os.Getenv(backendMAC); m != "" {
		cfg.MAC, _ = net.ParseMAC(m)
	}
	_ = cfg.Offload.UnmarshalText([]byte(os.Getenv(backendOffl)))
	if os.Getenv(netdevice.TestViolationEnv) == "1" {
		cfg.ViolationSignal = unix.SIGUSR1
	}
	if err := netdevice.Run(context.Background(), cfg); err != nil {
		fmt.Fprintf(os.Stderr, "net-device: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// NewRemoteProcess is NewRemote with the device in a sandboxed process of
// its own, as govmd run starts it: this test binary again (its TestMain
// must call MaybeServeBackend), handed t's descriptor and a socket. env is
// added to the process's environment.
func NewRemoteProcess(t *tap.Tap, dev vnet.Config, memSize uint64, env []string, log *slog.Logger) (*Remote, error) {
	mem, err := memory.NewShared([]memory.Range{{GPA: 0, Size: memSize}})
	if err != nil {
		return nil, err
	}
	f, err := t.Dup()
	if err != nil {
		mem.Close()
		return nil, err
	}
	defer f.Close()
	env = append(env, backendEnv+"=1", backendOffl+"="+dev.Offload.String())
	if dev.MAC != nil {
		env = append(env, backendMAC+"="+dev.MAC.String())
	}
	if dev.Locked {
		env = append(env, backendLocked+"=1")
	}
	p, err := netdevice.Start([]string{os.Args[0]}, env, f, os.Stderr)
	if err != nil {
		mem.Close()
		return nil, err
	}
	r := &Remote{Mem: mem, Process: p}
	cfg := vhostuser.FrontendConfig{Conn: p.Conn, Mem: mem, Type: virtio.DeviceNet,
		QueueSizes: []uint16{vnet.DefaultQueueSize, vnet.DefaultQueueSize, vnet.CtrlQueueSize},
		ConfigSize: vnet.ConfigSize, Validate: vnet.ValidateFeatures, Log: log}
	if r.Frontend, err = vhostuser.NewFrontend(cfg); err != nil {
		p.Stop(5 * time.Second)
		mem.Close()
		return nil, err
	}
	return r, nil
}
