package vhostuser

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// msg encodes one message as it goes on the wire.
func msg(req Request, flags uint32, payload []byte) []byte {
	b := le.AppendUint32(nil, uint32(req))
	b = le.AppendUint32(b, version1|flags)
	b = le.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...)
}

// FuzzBackend feeds a Backend arbitrary bytes as a frontend's message
// stream (without file descriptors): whatever they say, the backend must
// neither panic nor hang, and end the session when the stream ends.
func FuzzBackend(f *testing.F) {
	var hs []byte
	for _, m := range [][]byte{
		msg(GetFeatures, 0, nil), msg(GetProtocolFeatures, 0, nil),
		msg(SetProtocolFeatures, 0, U64(ProtocolReplyAck|ProtocolConfig)), msg(SetOwner, FlagNeedReply, nil),
		msg(SetFeatures, FlagNeedReply, U64(1<<32|FProtocolFeatures)),
		msg(SetVringNum, FlagNeedReply, VringState{0, 16}.Encode()),
		msg(SetVringBase, FlagNeedReply, VringState{0, 3}.Encode()),
		msg(SetVringAddr, FlagNeedReply, VringAddr{Desc: 0x1000, Used: 0x3000, Avail: 0x2000}.Encode()),
		msg(SetVringEnable, FlagNeedReply, VringState{0, 1}.Encode()),
		msg(GetConfig, 0, Config{Offset: 2, Data: make([]byte, 4)}.Encode()),
		msg(GetVringBase, 0, VringState{0, 0}.Encode()),
		msg(GetQueueNum, 0, nil),
	} {
		hs = append(hs, m...)
	}
	f.Add(hs)
	f.Add(msg(SetMemTable, 0, EncodeMemTable([]Region{{Size: 4096}})))
	f.Add(msg(SetVringKick, 0, U64(VringNoFD)))
	f.Add(msg(SetConfig, FlagNeedReply, Config{Data: []byte{1}}.Encode()))
	f.Add([]byte{1, 0, 0, 0, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		conns := make([]*net.UnixConn, 2)
		for i, fd := range fds {
			file := os.NewFile(uintptr(fd), "s")
			c, err := net.FileConn(file)
			file.Close()
			if err != nil {
				t.Fatal(err)
			}
			conns[i] = c.(*net.UnixConn)
		}
		fe := conns[0]
		defer fe.Close()
		b := NewBackend(BackendConfig{Device: &echoDev{}})
		done := make(chan error, 1)
		go func() { done <- b.Serve(context.Background(), NewConn(conns[1])) }()
		go io.Copy(io.Discard, fe) // the replies
		fe.SetWriteDeadline(time.Now().Add(5 * time.Second))
		fe.Write(data)
		fe.CloseWrite()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("backend hangs on %x", data)
		}
	})
}

// FuzzPayloads: the payload decoders never panic, and what they accept
// encodes back to the same bytes.
func FuzzPayloads(f *testing.F) {
	f.Add(EncodeMemTable([]Region{{GuestAddr: 0, Size: 4096, UserAddr: 1 << 40}}))
	f.Add(VringAddr{Index: 1, Desc: 2, Used: 3, Avail: 4}.Encode())
	f.Add(Config{Offset: 1, Data: []byte{1, 2}}.Encode())
	f.Fuzz(func(t *testing.T, p []byte) {
		if rs, err := ParseMemTable(p); err == nil && !bytes.Equal(EncodeMemTable(rs), p[:8+32*len(rs)]) {
			// The padding word may hold anything.
			if !bytes.Equal(EncodeMemTable(rs)[8:], p[8:]) {
				t.Fatalf("memory table %x re-encodes differently", p)
			}
		}
		if a, err := ParseVringAddr(p); err == nil && !bytes.Equal(a.Encode(), p) {
			t.Fatalf("vring address %x re-encodes differently", p)
		}
		if s, err := ParseVringState(p); err == nil && !bytes.Equal(s.Encode(), p) {
			t.Fatalf("vring state %x re-encodes differently", p)
		}
		if c, err := ParseConfig(p); err == nil && !bytes.Equal(c.Encode(), p) {
			t.Fatalf("config %x re-encodes differently", p)
		}
	})
}
