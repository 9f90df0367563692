package netdevice

import (
	"encoding/binary"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	vnet "github.com/govmd/govmd/devices/net"
)

func TestStatsChannel(t *testing.T) {
	a, b := net.Pipe()
	go serveStats(b, func() vnet.Stats { return vnet.Stats{TxPackets: 7, RxBytes: 9} })
	c := &statsClient{c: a}
	defer c.Close()
	for i := 0; i < 3; i++ {
		st, err := c.get(time.Second)
		if err != nil || st.TxPackets != 7 || st.RxBytes != 9 {
			t.Fatalf("get: %v %v", st, err)
		}
	}
}

// TestStatsHostileProcess: a process that answers too much, garbage or
// nothing costs one bounded failure, and no request is made after it.
func TestStatsHostileProcess(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer func(w io.Writer)
		want   string
	}{
		{"oversized", func(w io.Writer) { w.Write(binary.LittleEndian.AppendUint32(nil, 1<<30)) }, "at most"},
		{"garbage", func(w io.Writer) { w.Write(append(binary.LittleEndian.AppendUint32(nil, 3), "{{{"...)) }, "answer"},
		{"wrong types", func(w io.Writer) {
			b := `{"TxPackets":"many"}`
			w.Write(append(binary.LittleEndian.AppendUint32(nil, uint32(len(b))), b...))
		}, "answer"},
		{"silent", func(w io.Writer) {}, "timeout"},
		{"short", func(w io.Writer) { w.Write(binary.LittleEndian.AppendUint32(nil, 100)); w.Write([]byte("{")) }, "timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := net.Pipe()
			defer b.Close()
			go func() {
				var req [1]byte
				if _, err := io.ReadFull(b, req[:]); err == nil {
					tc.answer(b)
				}
				io.Copy(io.Discard, b)
			}()
			c := &statsClient{c: a}
			defer c.Close()
			start := time.Now()
			_, err := c.get(200 * time.Millisecond)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
			if time.Since(start) > 5*time.Second {
				t.Fatal("not bounded in time")
			}
			if _, err2 := c.get(time.Second); err2 == nil {
				t.Fatal("a request after a failed exchange")
			}
		})
	}
}
