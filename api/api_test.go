package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	vnet "github.com/govmd/govmd/devices/net"
	"github.com/govmd/govmd/vmm"
)

// fakeVM records what the API asked of it.
type fakeVM struct {
	mu     sync.Mutex
	state  vmm.State
	calls  []string
	linkUp map[string]bool
}

func newFakeVM() *fakeVM { return &fakeVM{state: vmm.StateRunning, linkUp: map[string]bool{"0": true}} }

type netStats struct {
	TxPackets, RxPackets uint64
	Drops                map[string]uint64
	Active               bool
}

func (f *fakeVM) Counters() vmm.Counters {
	return vmm.Counters{
		VCPUs: []vmm.VCPUCounters{{ID: 0, Exits: map[string]uint64{"IO": 3}, KVM: map[string]uint64{"exits": 7}}},
		Devices: []vmm.DeviceCounters{
			{Kind: "nic", Index: 0, Name: "tap0", Slot: 1, Notifications: []uint64{4, 5, 0},
				Stats: netStats{TxPackets: 11, RxPackets: 12, Drops: map[string]uint64{"TooBig": 1}, Active: true}},
			{Kind: "disk", Index: 0, Name: "/images/\xff.img", Slot: 2, Stats: map[string]any{"reads": 3, "path": "x"}},
		},
		Boot: map[string]float64{"first_entry": 12.5},
	}
}

func (f *fakeVM) State() vmm.State {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state
}

func (f *fakeVM) Uptime() time.Duration { return 1500 * time.Millisecond }

func (f *fakeVM) NICs() []vmm.NICInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	return []vmm.NICInfo{{Index: 0, Name: "tap0", LinkState: true, LinkUp: f.linkUp["0"]}}
}

func (f *fakeVM) call(name string, next vmm.State) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, name)
	if f.state == vmm.StateStopped {
		return vmm.ErrNotRunning
	}
	if next != "" {
		f.state = next
	}
	return nil
}

func (f *fakeVM) Pause(ctx context.Context) error { return f.call("pause", vmm.StatePaused) }
func (f *fakeVM) Resume() error                   { return f.call("resume", vmm.StateRunning) }
func (f *fakeVM) PowerButton() error              { return f.call("power-button", vmm.StateShuttingDown) }
func (f *fakeVM) Stop() error                     { return f.call("stop", vmm.StateStopped) }

func (f *fakeVM) SetLink(nic string, up bool) (bool, error) {
	if err := f.call(fmt.Sprintf("link %s %v", nic, up), ""); err != nil {
		return false, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch nic {
	case "0", "tap0":
		changed := f.linkUp["0"] != up
		f.linkUp["0"] = up
		return changed, nil
	case "1":
		return false, vnet.ErrNoLinkStatus
	}
	return false, vmm.ErrNoSuchNIC
}

func (f *fakeVM) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// serve starts a server for vm on a socket in a temporary directory and
// returns a client of it.
func serve(t *testing.T, vm VM) (*Client, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "api.sock")
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	info := Info{Version: "test", Config: map[string]any{"kernel": "/k", "cpus": 2}}
	go func() { done <- NewServer(vm, info, nil).Serve(ctx, l) }()
	c := NewClient(path)
	t.Cleanup(func() {
		c.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return c, path
}

// raw sends one request and returns its status and body.
func raw(t *testing.T, path, method, target, body string) (int, http.Header, []byte) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}, Timeout: 10 * time.Second}
	defer hc.CloseIdleConnections()
	req, _ := http.NewRequest(method, "http://govmd"+target, strings.NewReader(body))
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

func TestRoutes(t *testing.T) {
	vm := newFakeVM()
	_, path := serve(t, vm)
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, %v", st.Mode(), err)
	}
	for _, tc := range []struct {
		method, path, body string
		code               int
		want               string
	}{
		{"GET", "/vm", "", 200, `"state":"running"`},
		{"GET", "/vm", "", 200, `"config":{"cpus":2,"kernel":"/k"}`},
		{"GET", "/vm/counters", "", 200, `"exits":7`},
		{"GET", "/metrics", "", 200, `govmd_nic_tx_packets{index="0",name="tap0"} 11`},
		{"PUT", "/vm/pause", "", 204, ``},
		{"GET", "/vm", "", 200, `"state":"paused"`},
		{"PUT", "/vm/resume", "{}", 204, ``},
		{"PUT", "/vm/net/0/link", `{"up":false}`, 204, ``},
		{"GET", "/vm", "", 200, `"link_up":false`},
		{"PUT", "/vm/net/tap0/link", `{"up": true}`, 204, ``},
		{"PUT", "/vm/net/7/link", `{"up":true}`, 404, `no such NIC`},
		{"PUT", "/vm/net/1/link", `{"up":true}`, 409, `VIRTIO_NET_F_STATUS`},
		{"PUT", "/vm/net//link", `{"up":true}`, 404, `no such resource`},
		{"PUT", "/vm/net/0/link", `{"up":"yes"}`, 400, `cannot unmarshal`},
		{"PUT", "/vm/net/0/link", `{"up":true,"speed":10}`, 400, `unknown field`},
		{"PUT", "/vm/net/0/link", `{}`, 400, `want {\"up\": true|false}`},
		{"PUT", "/vm/net/0/link", ``, 400, `empty`},
		{"PUT", "/vm/net/0/link", `{"up":true} {"up":false}`, 400, `data after`},
		{"PUT", "/vm/net/0/link", `{"up":tr`, 400, `body`},
		{"PUT", "/vm/pause", `{"now":1}`, 400, `takes none`},
		{"PUT", "/vm/power-button", "", 204, ``},
		{"PUT", "/vm/stop", "", 204, ``},
		{"PUT", "/vm/resume", "", 409, `not running`},
		{"GET", "/vm/nothing", "", 404, `"error":"no such resource`},
		{"GET", "/", "", 404, `no such resource`},
		{"POST", "/vm/counters", "", 405, `method not allowed (allowed: GET)`},
		{"GET", "/vm/pause", "", 405, `(allowed: PUT)`},
		{"DELETE", "/vm/net/0/link", "", 405, `(allowed: PUT)`},
	} {
		code, hdr, b := raw(t, path, tc.method, tc.path, tc.body)
		if code != tc.code || !strings.Contains(string(b), tc.want) {
			t.Errorf("%s %s %s: %d %s, want %d with %q", tc.method, tc.path, tc.body, code, b, tc.code, tc.want)
		}
		if code >= 400 && (!json.Valid(b) || hdr.Get("Content-Type") != "application/json") {
			t.Errorf("%s %s: error body %q is not JSON", tc.method, tc.path, b)
		}
	}
	want := []string{"pause", "resume", "link 0 false", "link tap0 true", "link 7 true", "link 1 true", "power-button", "stop", "resume"}
	if got := vm.Calls(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("calls %q, want %q", got, want)
	}
}

// TestBodyCap: a body over MaxBodyBytes is refused.
func TestBodyCap(t *testing.T) {
	_, path := serve(t, newFakeVM())
	big := `{"up":true,"x":"` + strings.Repeat("a", MaxBodyBytes) + `"}`
	code, _, b := raw(t, path, "PUT", "/vm/net/0/link", big)
	if code != 400 || !strings.Contains(string(b), "larger than") {
		t.Errorf("big body: %d %s", code, b)
	}
	code, _, b = raw(t, path, "PUT", "/vm/pause", strings.Repeat(" ", MaxBodyBytes+1))
	if code != 400 || !strings.Contains(string(b), "larger than") {
		t.Errorf("big empty body: %d %s", code, b)
	}
}

// TestMetricsParse: GET /metrics parses with Prometheus' own parser and
// has the counters of GET /vm/counters.
func TestMetricsParse(t *testing.T) {
	c, _ := serve(t, newFakeVM())
	b, err := c.Metrics(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("metrics do not parse: %v\n%s", err, b)
	}
	value := func(name string, labels map[string]string) (float64, bool) {
		f, ok := families[name]
		if !ok {
			return 0, false
		}
	next:
		for _, m := range f.Metric {
			for k, v := range labels {
				found := false
				for _, lp := range m.Label {
					if lp.GetName() == k && lp.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue(), true
			case m.Gauge != nil:
				return m.Gauge.GetValue(), true
			case m.Untyped != nil:
				return m.Untyped.GetValue(), true
			}
		}
		return 0, false
	}
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"govmd_vcpu_exits_total", map[string]string{"vcpu": "0", "reason": "IO"}, 3},
		{"govmd_vcpu_kvm_stat", map[string]string{"stat": "exits"}, 7},
		{"govmd_nic_tx_packets", map[string]string{"name": "tap0"}, 11},
		{"govmd_nic_rx_packets", map[string]string{"index": "0"}, 12},
		{"govmd_nic_drops_too_big", nil, 1},
		{"govmd_nic_active", nil, 1},
		{"govmd_nic_link_up", map[string]string{"name": "tap0"}, 1},
		{"govmd_disk_reads", map[string]string{"name": "/images/\uFFFD.img"}, 3},
		{"govmd_device_notifications_total", map[string]string{"kind": "nic", "queue": "1"}, 5},
		{"govmd_boot_milestone_seconds", map[string]string{"milestone": "first_entry"}, 0.0125},
		{"govmd_vm_state", map[string]string{"state": "running"}, 1},
		{"govmd_vm_uptime_seconds", nil, 1.5},
		{"govmd_build_info", map[string]string{"version": "test"}, 1},
	} {
		got, ok := value(tc.name, tc.labels)
		if !ok || got != tc.want {
			t.Errorf("%s%v = %v (found %v), want %v", tc.name, tc.labels, got, ok, tc.want)
		}
	}
	if _, ok := families["govmd_disk_path"]; ok {
		t.Error("a string stat became a metric")
	}
}

// TestOpenAPIMatchesRouter: docs/openapi.json documents exactly the
// router's paths and methods, and every route answers.
func TestOpenAPIMatchesRouter(t *testing.T) {
	b, err := os.ReadFile("../docs/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	var documented, routed []string
	for p, ops := range doc.Paths {
		for m := range ops {
			if m == "parameters" || m == "summary" || m == "description" {
				continue
			}
			documented = append(documented, strings.ToUpper(m)+" "+p)
		}
	}
	for _, r := range Routes {
		routed = append(routed, r.Method+" "+r.Path)
	}
	sort.Strings(documented)
	sort.Strings(routed)
	if strings.Join(documented, "\n") != strings.Join(routed, "\n") {
		t.Errorf("docs/openapi.json documents\n%s\nthe router has\n%s", strings.Join(documented, "\n"), strings.Join(routed, "\n"))
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Errorf("openapi %q", doc.OpenAPI)
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
	c, path := serve(t, newFakeVM())
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("GET /vm/counters HTTP/1.1\r\nHost: x\r\n")) // no end of header
	if _, err := c.Counters(context.Background()); err != nil {
		t.Fatalf("another client while one is slow: %v", err)
	}
	conn.SetReadDeadline(time.Now().Add(headerTimeout + 5*time.Second))
	if _, err := io.ReadAll(conn); err != nil {
		t.Fatalf("the slow client was not dropped: %v", err)
	}
}

// TestConcurrentClients: many clients at once (more than MaxConns) are
// all answered.
func TestConcurrentClients(t *testing.T) {
	_, path := serve(t, newFakeVM())
	const n = 500
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := NewClient(path)
			defer c.Close()
			if _, err := c.Counters(context.Background()); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestClientErrors(t *testing.T) {
	c, _ := serve(t, newFakeVM())
	err := c.SetLink(context.Background(), "9", false)
	var se *StatusError
	if !errors.As(err, &se) || se.Code != 404 || !strings.Contains(se.Message, "no such NIC") {
		t.Errorf("SetLink of a missing NIC: %v", err)
	}
	dead := NewClient(filepath.Join(t.TempDir(), "none.sock"))
	if _, err := dead.VM(context.Background()); err == nil || !strings.Contains(err.Error(), "none.sock") {
		t.Errorf("missing socket: %v", err)
	}
}

// FuzzDecodeLink: the link body decoder never panics and accepts only an
// object with a boolean "up".
func FuzzDecodeLink(f *testing.F) {
	for _, s := range []string{`{"up":true}`, `{"up":false}`, `{}`, `{"up":1}`, `[]`, `{"up":true}x`, `{"up":null}`, "\x00", `{"UP":true}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := DecodeLink(bytes.NewReader(b))
		if err != nil {
			return
		}
		if l.Up == nil {
			t.Fatalf("accepted %q without up", b)
		}
		var back map[string]json.RawMessage
		if json.Unmarshal(b, &back) != nil {
			t.Fatalf("accepted %q, which is not one JSON object", b)
		}
	})
}

// FuzzServeHTTP: any method, path and body gets an answer with a JSON
// error body or a success, never a panic.
func FuzzServeHTTP(f *testing.F) {
	f.Add("PUT", "/vm/net/0/link", []byte(`{"up":false}`))
	f.Add("GET", "/vm", []byte(nil))
	f.Add("PUT", "/vm/pause", []byte(`{}`))
	f.Add("PATCH", "/vm/net/%2e%2e/link", []byte(`{"up":true`))
	s := NewServer(newFakeVM(), Info{Version: "fuzz"}, nil)
	f.Fuzz(func(t *testing.T, method, target string, body []byte) {
		if target == "" || target[0] != '/' {
			target = "/" + target
		}
		req, err := http.NewRequest(method, "http://govmd"+target, bytes.NewReader(body))
		if err != nil {
			return
		}
		w := &recorder{h: http.Header{}}
		s.ServeHTTP(w, req)
		if w.code >= 400 && !json.Valid(w.body.Bytes()) {
			t.Fatalf("%s %s: %d with a body that is not JSON: %q", method, target, w.code, w.body.Bytes())
		}
	})
}

// recorder is a minimal http.ResponseWriter.
type recorder struct {
	h    http.Header
	code int
	body bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.h }
func (r *recorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = 200
	}
	return r.body.Write(b)
}
func (r *recorder) WriteHeader(c int) { r.code = c }
