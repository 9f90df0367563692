package api

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/govmd/govmd/vmm"
)

type fakeVM struct{}

func (fakeVM) Counters() vmm.Counters {
	return vmm.Counters{VCPUs: []vmm.VCPUCounters{{ID: 0, Exits: map[string]uint64{"IO": 3}, KVM: map[string]uint64{"exits": 7}}}}
}

// serve starts a server on a socket in a temporary directory and returns
// an HTTP client that talks to it.
func serve(t *testing.T) (*http.Client, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "api.sock")
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- NewServer(fakeVM{}, nil).Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}, Timeout: 5 * time.Second}
	return c, path
}

func TestRoutes(t *testing.T) {
	c, path := serve(t)
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, %v", st.Mode(), err)
	}
	for _, tc := range []struct {
		method, path string
		code         int
		want         string
	}{
		{"GET", "/vm/counters", 200, `"exits":7`},
		{"GET", "/vm/nothing", 404, `"error":"no such resource`},
		{"POST", "/vm/counters", 405, `method not allowed (allowed: GET)`},
		{"DELETE", "/vm/counters", 405, `"error"`},
	} {
		req, _ := http.NewRequest(tc.method, "http://govmd"+tc.path, strings.NewReader(""))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || !strings.Contains(string(b), tc.want) {
			t.Errorf("%s %s: %d %s, want %d with %q", tc.method, tc.path, resp.StatusCode, b, tc.code, tc.want)
		}
		if !json.Valid(b) || resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s %s: body %q is not JSON", tc.method, tc.path, b)
		}
	}
}

func TestListen(t *testing.T) {
	dir := t.TempDir()
	// A socket nobody listens on is stale: replaced.
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if l, err := Listen(stale); err != nil {
		t.Errorf("stale socket: %v", err)
	} else {
		l.Close()
	}
	// One in use is refused, and so is a file that is not a socket.
	inUse := filepath.Join(dir, "used.sock")
	l2, err := Listen(inUse)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if _, err := Listen(inUse); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("socket in use: %v", err)
	}
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o644)
	if _, err := Listen(file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("regular file: %v", err)
	}
}

// TestSlowClient: a client that never finishes its request header is
// dropped, and the server keeps serving others.
func TestSlowClient(t *testing.T) {
	c, path := serve(t)
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("GET /vm/counters HTTP/1.1\r\nHost: x\r\n")) // no end of header
	resp, err := c.Get("http://govmd/vm/counters")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("another client while one is slow: %v", err)
	}
	resp.Body.Close()
	conn.SetReadDeadline(time.Now().Add(headerTimeout + 5*time.Second))
	if _, err := io.ReadAll(conn); err != nil {
		t.Fatalf("the slow client was not dropped: %v", err)
	}
}
