package main

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/govmd/govmd/vmm"
)

// dialPort connects a client to a socket port.
func dialPort(t *testing.T, s *socketPort) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", s.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readN reads exactly n bytes from c within a few seconds.
func readN(t *testing.T, c net.Conn, n int) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("reading %d bytes from the port's socket: %v (got %q)", n, err, b)
	}
	return string(b)
}

// portRead is one Read of the port (the device's input reader), in the
// background.
func portRead(s *socketPort) <-chan string {
	ch := make(chan string, 1)
	go func() {
		b := make([]byte, 4096)
		n, err := s.Read(b)
		if err != nil {
			ch <- "error: " + err.Error()
			return
		}
		ch <- string(b[:n])
	}()
	return ch
}

func waitRead(t *testing.T, ch <-chan string) string {
	t.Helper()
	select {
	case s := <-ch:
		return s
	case <-time.After(5 * time.Second):
		t.Fatal("the port's Read did not return")
		return ""
	}
}

func newTestSocketPort(t *testing.T) *socketPort {
	t.Helper()
	s, err := listenSocketPort(filepath.Join(t.TempDir(), "port.sock"), "--port", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestSocketPort: output written while no client is connected reaches
// the first client, later output goes straight to it, what it sends is
// read, and its going away does not end the port: the next client takes
// over. Close ends Read with EOF and removes the socket.
func TestSocketPort(t *testing.T) {
	s := newTestSocketPort(t)
	s.Write([]byte("early "))
	s.Write([]byte("boot\n"))
	pending := portRead(s) // waits for a client

	a := dialPort(t, s)
	if got := readN(t, a, 11); got != "early boot\n" {
		t.Fatalf("first client got %q, want the output kept while none was connected", got)
	}
	s.Write([]byte("live"))
	if got := readN(t, a, 4); got != "live" {
		t.Fatalf("got %q", got)
	}
	a.Write([]byte("to guest"))
	if got := waitRead(t, pending); got != "to guest" {
		t.Fatalf("Read %q", got)
	}

	// The client leaves: Read goes on waiting, for the next client.
	a.Close()
	next := portRead(s)
	select {
	case got := <-next:
		t.Fatalf("Read returned %q after the client left; want it to wait for the next", got)
	case <-time.After(100 * time.Millisecond):
	}
	b := dialPort(t, s)
	b.Write([]byte("second"))
	if got := waitRead(t, next); got != "second" {
		t.Fatalf("Read %q from the second client", got)
	}

	// Close: Read ends, the socket is gone, writes are dropped.
	blocked := portRead(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := waitRead(t, blocked); got != "error: "+io.EOF.Error() {
		t.Fatalf("Read after Close: %q, want EOF", got)
	}
	if _, err := os.Stat(s.path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left after Close: %v", err)
	}
	if n, err := s.Write([]byte("x")); n != 1 || err != nil {
		t.Errorf("Write after Close: %d, %v", n, err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestSocketPortReplace: a new client replaces the connected one, which
// is disconnected; the port reads from and writes to the new one.
func TestSocketPortReplace(t *testing.T) {
	s := newTestSocketPort(t)
	a := dialPort(t, s)
	s.Write([]byte("a"))
	readN(t, a, 1) // a is the client now
	pending := portRead(s)
	b := dialPort(t, s)
	a.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := a.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("the replaced client read %d bytes, %v; want EOF", n, err)
	}
	b.Write([]byte("from b"))
	if got := waitRead(t, pending); got != "from b" {
		t.Fatalf("Read %q", got)
	}
	s.Write([]byte("to b"))
	if got := readN(t, b, 4); got != "to b" {
		t.Fatalf("got %q", got)
	}
}

// TestSocketPortLimits: output beyond the backlog while no client is
// connected is dropped whole; a client that reads nothing is dropped once
// a write has waited writeTimeout, and the port goes on (the guest's
// transmit queue is not held longer).
func TestSocketPortLimits(t *testing.T) {
	s := newTestSocketPort(t)
	fill := bytes.Repeat([]byte("k"), socketBacklog-2)
	s.Write(fill)
	s.Write([]byte("xyz")) // does not fit: dropped
	s.Write([]byte("ab"))  // fits
	c := dialPort(t, s)
	if got := readN(t, c, socketBacklog); got != string(fill)+"ab" {
		t.Fatalf("first client got %d bytes ending %q", len(got), got[len(got)-8:])
	}

	s.mu.Lock()
	s.writeTimeout = 200 * time.Millisecond
	s.mu.Unlock()
	big := bytes.Repeat([]byte("z"), 1<<20) // more than a socket buffer
	start := time.Now()
	for i := 0; i < 16; i++ {
		s.Write(big)
		s.mu.Lock()
		gone := s.conn == nil
		s.mu.Unlock()
		if gone {
			break
		}
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("writes to a client that reads nothing took %s", took)
	}
	s.mu.Lock()
	gone := s.conn == nil
	s.mu.Unlock()
	if !gone {
		t.Fatal("a client that reads nothing was not dropped")
	}
	s.Write([]byte("kept"))
	d := dialPort(t, s)
	if got := readN(t, d, 4); got != "kept" {
		t.Fatalf("next client got %q", got)
	}
}

// TestPortSpecs: the endpoints of --port and --hvc, and the errors of
// bad ones (all of them vmm.ErrConfig: exit status 2).
func TestPortSpecs(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "out.txt")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		spec     string
		wantErr  string // "" for none
		socket   bool
		wantName string
	}{
		{spec: "data=" + filepath.Join(dir, "data.txt"), wantName: "data"},
		{spec: "agent=unix:" + filepath.Join(dir, "agent.sock"), socket: true, wantName: "agent"},
		{spec: "a=b=" + filepath.Join(dir, "x"), wantErr: "no such directory"},
		{spec: "noendpoint", wantErr: "NAME=PATH"},
		{spec: "=" + file, wantErr: "NAME=PATH"},
		{spec: "a=unix:", wantErr: "no socket path"},
		{spec: "a=unix:" + file, wantErr: "not a socket"},
		{spec: "a=unix:" + filepath.Join(dir, "no", "s.sock"), wantErr: "--port socket"},
	}
	for _, tc := range tests {
		t.Run(tc.spec, func(t *testing.T) {
			ps := &portSet{}
			defer ps.Close()
			p, err := ps.port(tc.spec)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, vmm.ErrConfig) {
					t.Fatalf("err %v, want a configuration error mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Name != tc.wantName || p.Out == nil || (p.In != nil) != tc.socket {
				t.Fatalf("port %+v", p)
			}
			if tc.socket {
				if st, err := os.Stat(ps.socketPaths()[0]); err != nil || st.Mode()&os.ModeSocket == 0 {
					t.Fatalf("no socket: %v", err)
				}
			}
		})
	}
}
