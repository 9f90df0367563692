// Package api serves govmd's control API: HTTP/1.1 over a unix socket with
// JSON bodies, in the conventions of Firecracker and Cloud Hypervisor. The
// routes are in Routes and in docs/openapi.json, which a test keeps equal.
//
// The API is hostile input, like the guest: requests are size-capped and
// time-bounded, connections are limited in number, unknown paths, wrong
// methods and malformed or unknown bodies get a 4xx with a JSON error body
// ({"error": "..."}), and no handler blocks a vCPU or a device worker
// (they read atomic counters; pausing waits for the vCPUs, it does not
// hold them).
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"time"

	"golang.org/x/net/netutil"

	vnet "github.com/govmd/govmd/devices/net"
	"github.com/govmd/govmd/internal/unixsock"
	"github.com/govmd/govmd/vmm"
)

// VM is what the API reads and steers (*vmm.VM).
type VM interface {
	Counters() vmm.Counters
	State() vmm.State
	Uptime() time.Duration
	NICs() []vmm.NICInfo
	Pause(ctx context.Context) error
	Resume() error
	PowerButton() error
	Stop() error
	SetLink(nic string, up bool) (changed bool, err error)
}

// Limits on requests and connections.
const (
	MaxHeaderBytes = 16 << 10
	MaxBodyBytes   = 64 << 10
	// MaxConns bounds the connections served at once; more wait in the
	// socket's backlog.
	MaxConns      = 128
	headerTimeout = 5 * time.Second
	ioTimeout     = 10 * time.Second
	idleTimeout   = time.Minute
	// pauseTimeout bounds how long PUT /vm/pause waits for the vCPUs.
	pauseTimeout = 5 * time.Second
)

// Listen creates the API socket at path with mode 0600. An existing path is
// an error, unless it is a socket nobody listens on (left by a govmd that
// died), which is replaced.
func Listen(path string) (net.Listener, error) {
	l, err := unixsock.Listen(path, "api socket")
	if err != nil {
		return nil, err
	}
	return l, nil
}

// Info is what GET /vm says besides the VM's live state.
type Info struct {
	// Version is govmd's version (govmd version).
	Version string
	// Config is the VM's configuration, in the schema of govmd run
	// --config.
	Config any
}

// VMInfo is the body of GET /vm.
type VMInfo struct {
	State   vmm.State     `json:"state"`
	Uptime  float64       `json:"uptime_s"`
	Version string        `json:"version"`
	Config  any           `json:"config"`
	NICs    []vmm.NICInfo `json:"nics"`
}

// Link is the body of PUT /vm/net/{id}/link.
type Link struct {
	Up *bool `json:"up"`
}

// Error is the body of every error response.
type Error struct {
	Error string `json:"error"`
}

// Route is one method on one path; a path segment {name} matches any
// one segment.
type Route struct {
	Method, Path string
	handler      func(s *Server, w http.ResponseWriter, r *http.Request, params map[string]string)
}

// Routes are the API's routes.
var Routes = []Route{
	{http.MethodGet, "/vm", (*Server).getVM},
	{http.MethodGet, "/vm/counters", (*Server).getCounters},
	{http.MethodGet, "/metrics", (*Server).getMetrics},
	{http.MethodPut, "/vm/pause", (*Server).putPause},
	{http.MethodPut, "/vm/resume", (*Server).putResume},
	{http.MethodPut, "/vm/power-button", (*Server).putPowerButton},
	{http.MethodPut, "/vm/stop", (*Server).putStop},
	{http.MethodPut, "/vm/net/{id}/link", (*Server).putLink},
}

// Server is the API's HTTP server for one VM.
type Server struct {
	vm      VM
	info    Info
	log     *slog.Logger
	metrics http.Handler
}

// NewServer returns the API server of vm; log may be nil.
func NewServer(vm VM, info Info, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{vm: vm, info: info, log: log}
	s.metrics = newMetricsHandler(vm, info.Version, log)
	return s
}

// Serve answers requests on l until ctx is done; then it closes l and
// returns nil.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	hs := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: headerTimeout,
		ReadTimeout:       ioTimeout,
		WriteTimeout:      ioTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	stop := context.AfterFunc(ctx, func() { hs.Close() })
	defer stop()
	err := hs.Serve(netutil.LimitListener(l, MaxConns))
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// match reports whether path matches pattern, and its parameters.
func match(pattern, path string) (map[string]string, bool) {
	ps, xs := strings.Split(pattern, "/"), strings.Split(path, "/")
	if len(ps) != len(xs) {
		return nil, false
	}
	var params map[string]string
	for i, p := range ps {
		if strings.HasPrefix(p, "{") && strings.HasSuffix(p, "}") {
			if xs[i] == "" {
				return nil, false
			}
			if params == nil {
				params = map[string]string{}
			}
			params[p[1:len(p)-1]] = xs[i]
			continue
		}
		if p != xs[i] {
			return nil, false
		}
	}
	return params, true
}

// ServeHTTP routes a request; it implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	var allowed []string
	for _, rt := range Routes {
		params, ok := match(rt.Path, r.URL.Path)
		if !ok {
			continue
		}
		if rt.Method == r.Method {
			rt.handler(s, w, r, params)
			return
		}
		allowed = append(allowed, rt.Method)
	}
	if allowed == nil {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such resource %q", r.URL.Path))
		return
	}
	sort.Strings(allowed)
	list := strings.Join(allowed, ", ")
	w.Header().Set("Allow", list)
	writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("%s %s: method not allowed (allowed: %s)", r.Method, r.URL.Path, list))
}

func (s *Server) getVM(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	nics := s.vm.NICs()
	if nics == nil {
		nics = []vmm.NICInfo{}
	}
	writeJSON(w, http.StatusOK, VMInfo{
		State: s.vm.State(), Uptime: s.vm.Uptime().Seconds(), Version: s.info.Version,
		Config: s.info.Config, NICs: nics,
	})
}

func (s *Server) getCounters(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	writeJSON(w, http.StatusOK, s.vm.Counters())
}

func (s *Server) getMetrics(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	s.metrics.ServeHTTP(w, r)
}

// action runs a PUT that takes no body and answers 204.
func (s *Server) action(w http.ResponseWriter, r *http.Request, what string, fn func() error) {
	if err := readEmpty(r.Body); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := fn(); err != nil {
		writeError(w, statusOf(err), what+": "+err.Error())
		return
	}
	s.log.Info("api: "+what, "state", s.vm.State())
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) putPause(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	s.action(w, r, "pause", func() error {
		ctx, cancel := context.WithTimeout(r.Context(), pauseTimeout)
		defer cancel()
		return s.vm.Pause(ctx)
	})
}

func (s *Server) putResume(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	s.action(w, r, "resume", s.vm.Resume)
}

func (s *Server) putPowerButton(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	s.action(w, r, "power button", s.vm.PowerButton)
}

func (s *Server) putStop(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	s.action(w, r, "stop", s.vm.Stop)
}

func (s *Server) putLink(w http.ResponseWriter, r *http.Request, params map[string]string) {
	l, err := DecodeLink(r.Body)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	id := params["id"]
	if _, err := s.vm.SetLink(id, *l.Up); err != nil {
		writeError(w, statusOf(err), "link: "+err.Error())
		return
	}
	s.log.Info("api: link", "net", id, "up", *l.Up)
	w.WriteHeader(http.StatusNoContent)
}

// DecodeLink decodes the body of PUT /vm/net/{id}/link: one JSON object
// with exactly the field "up" (a boolean), nothing after it.
func DecodeLink(body io.Reader) (Link, error) {
	var l Link
	if err := decodeStrict(body, &l); err != nil {
		return Link{}, err
	}
	if l.Up == nil {
		return Link{}, errors.New(`body: want {"up": true|false}`)
	}
	return l, nil
}

// decodeStrict decodes one JSON value into v: unknown fields, trailing
// data and an oversized body are errors.
func decodeStrict(body io.Reader, v any) error {
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return fmt.Errorf("body larger than %d bytes", tooBig.Limit)
		}
		if errors.Is(err, io.EOF) {
			return errors.New("body: empty, want a JSON object")
		}
		return fmt.Errorf("body: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("body: data after the JSON object")
	}
	return nil
}

// readEmpty accepts an empty body or an empty JSON object.
func readEmpty(body io.Reader) error {
	b, err := io.ReadAll(body)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return fmt.Errorf("body larger than %d bytes", tooBig.Limit)
		}
		return fmt.Errorf("body: %w", err)
	}
	if s := strings.TrimSpace(string(b)); s != "" && s != "{}" {
		return errors.New("body: this request takes none (or {})")
	}
	return nil
}

// statusOf maps a VM's error to an HTTP status.
func statusOf(err error) int {
	switch {
	case errors.Is(err, vmm.ErrNoSuchNIC):
		return http.StatusNotFound
	case errors.Is(err, vmm.ErrNotRunning), errors.Is(err, vnet.ErrNoLinkStatus):
		return http.StatusConflict
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// writeJSON writes v as the JSON body of a response with status code.
func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "encoding the response: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}

func writeError(w http.ResponseWriter, code int, msg string) {
	b, _ := json.Marshal(Error{Error: msg})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}
