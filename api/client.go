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
	"net/url"
	"time"

	"github.com/govmd/govmd/vmm"
)

// Client talks to a govmd API socket (govmd ctl, the tests).
type Client struct {
	path string
	hc   *http.Client
}

// NewClient returns a client of the API socket at path.
func NewClient(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		},
		MaxIdleConnsPerHost: 16,
	}
	return &Client{path: path, hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// Close releases the client's idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// StatusError is a response with an error status.
type StatusError struct {
	Method, Path string
	Code         int
	Message      string // the body's "error"
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%s %s: %d %s: %s", e.Method, e.Path, e.Code, http.StatusText(e.Code), e.Message)
}

// Do sends a request with body (JSON-encoded, unless nil) and returns the
// response body of a 2xx response, or a *StatusError.
func (c *Client) Do(ctx context.Context, method, path string, body any) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://govmd"+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("api socket %s: %w", c.path, unwrapURL(err))
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("api socket %s: %w", c.path, err)
	}
	if resp.StatusCode/100 != 2 {
		var e Error
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = string(bytes.TrimSpace(b))
		}
		return nil, &StatusError{Method: method, Path: path, Code: resp.StatusCode, Message: e.Error}
	}
	return b, nil
}

// unwrapURL drops net/http's url.Error wrapping ("Get \"http://govmd/vm\": ...").
func unwrapURL(err error) error {
	var u interface{ Unwrap() error }
	if errors.As(err, &u) {
		if inner := u.Unwrap(); inner != nil {
			return inner
		}
	}
	return err
}

// VM returns GET /vm.
func (c *Client) VM(ctx context.Context) (VMInfo, error) {
	var v VMInfo
	b, err := c.Do(ctx, http.MethodGet, "/vm", nil)
	if err == nil {
		err = json.Unmarshal(b, &v)
	}
	return v, err
}

// Counters returns GET /vm/counters (each device's Stats as a JSON
// object).
func (c *Client) Counters(ctx context.Context) (vmm.Counters, error) {
	var v vmm.Counters
	b, err := c.Do(ctx, http.MethodGet, "/vm/counters", nil)
	if err == nil {
		err = json.Unmarshal(b, &v)
	}
	return v, err
}

// Metrics returns GET /metrics, in the Prometheus text format.
func (c *Client) Metrics(ctx context.Context) ([]byte, error) {
	return c.Do(ctx, http.MethodGet, "/metrics", nil)
}

// Action sends PUT /vm/<what> (pause, resume, power-button, stop).
func (c *Client) Action(ctx context.Context, what string) error {
	_, err := c.Do(ctx, http.MethodPut, "/vm/"+what, nil)
	return err
}

// SetLink sends PUT /vm/net/{nic}/link.
func (c *Client) SetLink(ctx context.Context, nic string, up bool) error {
	_, err := c.Do(ctx, http.MethodPut, "/vm/net/"+url.PathEscape(nic)+"/link", Link{Up: &up})
	return err
}
