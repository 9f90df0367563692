package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	vconsole "github.com/govmd/govmd/devices/console"
	"github.com/govmd/govmd/internal/ratelimit"
	"github.com/govmd/govmd/internal/unixsock"
	"github.com/govmd/govmd/vmm"
)

// socketPrefix marks a console port's endpoint as a unix socket govmd
// listens on (--hvc unix:PATH, --port NAME=unix:PATH) rather than a file.
const socketPrefix = "unix:"

// Limits of a socket port.
const (
	// socketBacklog is how much guest output a socket port keeps while no
	// client is connected, delivered to the next client; a write that
	// does not fit is dropped whole (counted, logged).
	socketBacklog = 64 << 10
	// socketWriteTimeout is how long a write to the client may block (a
	// client that reads nothing): then the client is dropped, so that the
	// port's transmit queue, which waits for the write, moves on.
	socketWriteTimeout = 5 * time.Second
)

// socketPort is a console port served on a unix socket: what the guest
// writes goes to the connected client, what the client sends goes to the
// guest. One client at a time: a new connection replaces the current one
// (so a client that went away without the port noticing never locks the
// next one out). The host side stays open for the guest whether or not a
// client is connected: a guest reader waits for a client's bytes, a
// guest writer's output is kept (up to socketBacklog) for the next
// client. Its Read ends (io.EOF) only at Close.
type socketPort struct {
	path         string
	l            *net.UnixListener
	log          *ratelimit.Logger
	writeTimeout time.Duration // socketWriteTimeout

	mu      sync.Mutex
	changed *sync.Cond // conn or closed changed
	conn    *net.UnixConn
	pending []byte // output while no client
	dropped int64  // bytes of output dropped since the last client
	closed  bool
	done    chan struct{} // the accept loop ended
}

// listenSocketPort creates the socket (mode 0600; a stale socket is
// replaced) and starts accepting clients.
func listenSocketPort(path, flag string, log *slog.Logger) (*socketPort, error) {
	l, err := unixsock.Listen(path, flag+" socket")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", vmm.ErrConfig, err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &socketPort{path: path, l: l, log: ratelimit.New(log.With("socket", path), 10*time.Second, 10),
		writeTimeout: socketWriteTimeout, done: make(chan struct{})}
	s.changed = sync.NewCond(&s.mu)
	go s.accept()
	return s, nil
}

func (s *socketPort) accept() {
	defer close(s.done)
	for {
		c, err := s.l.AcceptUnix()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			// Out of descriptors, say: try again a little later.
			s.log.Warn("console socket: accepting a client failed", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		old := s.conn
		s.conn = c
		if s.dropped > 0 {
			s.log.Warn("console socket: guest output dropped while no client was connected", "bytes", s.dropped)
			s.dropped = 0
		}
		if len(s.pending) > 0 {
			s.writeLocked(s.pending)
			s.pending = nil
		}
		s.changed.Broadcast()
		s.mu.Unlock()
		if old != nil {
			old.Close() // ends a Read on it
			s.log.Info("console socket: a new client replaced the connected one")
		}
	}
}

// Read returns what the connected client sends, waiting for a client; a
// client's end or error only drops it. It returns io.EOF once the port is
// closed.
func (s *socketPort) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		s.mu.Lock()
		for s.conn == nil && !s.closed {
			s.changed.Wait()
		}
		if s.closed {
			s.mu.Unlock()
			return 0, io.EOF
		}
		c := s.conn
		s.mu.Unlock()
		n, err := c.Read(p)
		if n > 0 {
			return n, nil
		}
		s.mu.Lock()
		if s.conn == c {
			if !errors.Is(err, io.EOF) {
				s.log.Warn("console socket: client dropped", "err", err)
			}
			s.dropLocked()
		}
		s.mu.Unlock()
	}
}

// Write gives p to the connected client, or keeps it for the next one.
// It never fails: what cannot be delivered is dropped and logged, and the
// guest's port keeps working.
func (s *socketPort) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
	case s.conn != nil:
		s.writeLocked(p)
	case len(s.pending)+len(p) <= socketBacklog:
		s.pending = append(s.pending, p...)
	default:
		s.dropped += int64(len(p))
	}
	return len(p), nil
}

// writeLocked writes p to the client, dropping the client if that fails
// or takes longer than s.writeTimeout. s.mu is held.
func (s *socketPort) writeLocked(p []byte) {
	c := s.conn
	if err := c.SetWriteDeadline(time.Now().Add(s.writeTimeout)); err == nil {
		_, err = c.Write(p)
		if err == nil {
			return
		}
		s.log.Warn("console socket: client dropped: writing guest output failed", "err", err)
	}
	s.dropLocked()
}

// dropLocked closes the connected client. s.mu is held.
func (s *socketPort) dropLocked() {
	s.conn.Close()
	s.conn = nil
	s.changed.Broadcast()
}

// Close stops accepting, closes the client, ends Read and removes the
// socket. It is idempotent.
func (s *socketPort) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	if s.conn != nil {
		s.dropLocked()
	}
	s.changed.Broadcast()
	s.mu.Unlock()
	err := s.l.Close() // unlinks the socket where this process may
	<-s.done
	if rerr := os.Remove(s.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		// As for the API socket: a confined govmd (nobody) cannot
		// remove a socket in a directory only root may write; the
		// next govmd on the path replaces it.
		return fmt.Errorf("console socket %s left behind: %w", s.path, rerr)
	}
	return err
}

// portSet makes the endpoints of --hvc and --port: an output file,
// created once the VM is set up, or a unix socket (unix:PATH), listened
// on at once.
type portSet struct {
	log     *slog.Logger
	files   []*lateFile
	sockets []*socketPort
}

// endpoint returns the Out and In of a port whose endpoint is spec (flag
// names it in errors). A file gives output only: In is nil.
func (ps *portSet) endpoint(spec, flag string) (io.Writer, io.Reader, error) {
	if path, ok := strings.CutPrefix(spec, socketPrefix); ok {
		if path == "" {
			return nil, nil, fmt.Errorf("%w: %s %q: no socket path after %s", vmm.ErrConfig, flag, spec, socketPrefix)
		}
		s, err := listenSocketPort(path, flag, ps.log)
		if err != nil {
			return nil, nil, err
		}
		ps.sockets = append(ps.sockets, s)
		return s, s, nil
	}
	f, err := newLateFile(spec, flag)
	if err != nil {
		return nil, nil, err
	}
	ps.files = append(ps.files, f)
	return f, nil, nil
}

// port returns a named port (--port NAME=ENDPOINT).
func (ps *portSet) port(spec string) (vconsole.Port, error) {
	name, endpoint, ok := strings.Cut(spec, "=")
	if !ok || name == "" || endpoint == "" {
		return vconsole.Port{}, fmt.Errorf("%w: --port %q: want NAME=PATH or NAME=unix:PATH", vmm.ErrConfig, spec)
	}
	out, in, err := ps.endpoint(endpoint, "--port")
	if err != nil {
		return vconsole.Port{}, err
	}
	return vconsole.Port{Name: name, Out: out, In: in}, nil
}

// socketPaths returns the paths of the sockets.
func (ps *portSet) socketPaths() []string {
	var p []string
	for _, s := range ps.sockets {
		p = append(p, s.path)
	}
	return p
}

// Close closes the files and the sockets (removing them).
func (ps *portSet) Close() {
	for _, f := range ps.files {
		f.Close()
	}
	for _, s := range ps.sockets {
		if err := s.Close(); err != nil && ps.log != nil {
			ps.log.Warn("console port", "err", err)
		}
	}
}
