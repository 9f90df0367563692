// Package api serves govmd's control API: HTTP/1.1 over a unix socket with
// JSON bodies, in the conventions of Firecracker and Cloud Hypervisor.
//
// The API is hostile input, like the guest: requests are size-capped and
// time-bounded, unknown paths, wrong methods and malformed bodies get a 4xx
// with a JSON error body ({"error": "..."}), and no handler blocks a vCPU
// or a device worker (they read snapshots).
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/govmd/govmd/internal/unixsock"
	"github.com/govmd/govmd/vmm"
)

// VM is what the API reads and steers.
type VM interface {
	Counters() vmm.Counters
}

// Limits on a request.
const (
	MaxHeaderBytes = 16 << 10
	MaxBodyBytes   = 64 << 10
	headerTimeout  = 5 * time.Second
	ioTimeout      = 10 * time.Second
	idleTimeout    = time.Minute
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

// Server is the API's HTTP server for one VM.
type Server struct {
	vm     VM
	log    *slog.Logger
	routes map[string]map[string]http.HandlerFunc // path -> method -> handler
}

// NewServer returns the API server of vm.
func NewServer(vm VM, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{vm: vm, log: log}
	s.routes = map[string]map[string]http.HandlerFunc{
		"/vm/counters": {http.MethodGet: s.getCounters},
	}
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
	err := hs.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// ServeHTTP routes a request; it implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	methods, ok := s.routes[r.URL.Path]
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such resource %q", r.URL.Path))
		return
	}
	h, ok := methods[r.Method]
	if !ok {
		var allowed []string
		for m := range methods {
			allowed = append(allowed, m)
		}
		sort.Strings(allowed)
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("%s %s: method not allowed (allowed: %s)", r.Method, r.URL.Path, strings.Join(allowed, ", ")))
		return
	}
	h(w, r)
}

func (s *Server) getCounters(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.vm.Counters())
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

// Error is the body of every error response.
type Error struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, code int, msg string) {
	b, _ := json.Marshal(Error{Error: msg})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}
