package netdevice

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	vnet "github.com/govmd/govmd/devices/net"
)

// The stats channel: a socketpair between govmd run and its net-device
// process (ChildStatsFD on the process's side) on which the VMM asks for
// the device's live counters (the control API's GET /vm/counters). A
// request is one byte; the answer is a 4-byte little-endian length and
// that many bytes of the JSON of a devices/net Stats. The VMM takes the
// process's answers as hostile: bounded in size and time, decoded into
// the fixed Stats type.

// maxStatsBytes bounds an answer.
const maxStatsBytes = 16 << 10

// serveStats answers requests on c until it fails or closes.
func serveStats(c io.ReadWriteCloser, stats func() vnet.Stats) {
	defer c.Close()
	var req [1]byte
	for {
		if _, err := io.ReadFull(c, req[:]); err != nil {
			return
		}
		b, err := json.Marshal(stats())
		if err != nil || len(b) > maxStatsBytes {
			return
		}
		msg := binary.LittleEndian.AppendUint32(make([]byte, 0, 4+len(b)), uint32(len(b)))
		if _, err := c.Write(append(msg, b...)); err != nil {
			return
		}
	}
}

// statsClient asks a net-device process for its counters, one request at
// a time.
type statsClient struct {
	mu sync.Mutex
	c  net.Conn
	// broken is set after a failed exchange: the stream may be out of
	// step, so no further request is made.
	broken error
}

// ErrNoStats is returned by Process.Stats for a process started without
// a stats channel.
var ErrNoStats = errors.New("net-device: no stats channel")

func newStatsClient(f *os.File) (*statsClient, error) {
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	return &statsClient{c: c}, nil
}

func (s *statsClient) get(timeout time.Duration) (vnet.Stats, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.broken != nil {
		return vnet.Stats{}, s.broken
	}
	st, err := s.exchange(timeout)
	if err != nil {
		s.broken = fmt.Errorf("net-device stats: %w", err)
		return vnet.Stats{}, s.broken
	}
	return st, nil
}

func (s *statsClient) exchange(timeout time.Duration) (vnet.Stats, error) {
	if err := s.c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return vnet.Stats{}, err
	}
	if _, err := s.c.Write([]byte{1}); err != nil {
		return vnet.Stats{}, err
	}
	var hdr [4]byte
	if _, err := io.ReadFull(s.c, hdr[:]); err != nil {
		return vnet.Stats{}, err
	}
	n := binary.LittleEndian.Uint32(hdr[:])
	if n > maxStatsBytes {
		return vnet.Stats{}, fmt.Errorf("answer of %d bytes (at most %d)", n, maxStatsBytes)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(s.c, b); err != nil {
		return vnet.Stats{}, err
	}
	var st vnet.Stats
	if err := json.Unmarshal(b, &st); err != nil {
		return vnet.Stats{}, fmt.Errorf("answer: %w", err)
	}
	return st, nil
}

func (s *statsClient) Close() error { return s.c.Close() }
