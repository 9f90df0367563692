package nettest

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"

	"golang.org/x/sys/unix"

	vnet "github.com/govmd/govmd/devices/net"
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
	Backend  *vhostuser.Backend
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
// for the Backend, which stops the device. The NIC closes Mem.
func (r *Remote) Close() error {
	ferr := r.Frontend.Close()
	berr := <-r.done
	r.cancel()
	if berr != nil {
		return fmt.Errorf("vhost-user backend: %w", berr)
	}
	return ferr
}
