package vhostuser

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Msg is one message: a request (or the reply to one), its payload and
// the file descriptors that came with it. The receiver owns FDs: it takes
// them (TakeFD) or closes them (CloseFDs).
type Msg struct {
	Req     Request
	Flags   uint32
	Payload []byte
	FDs     []int
}

// NeedReply reports whether the sender asked for an acknowledgement.
func (m *Msg) NeedReply() bool { return m.Flags&FlagNeedReply != 0 }

// CloseFDs closes the file descriptors not taken.
func (m *Msg) CloseFDs() {
	for _, fd := range m.FDs {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	m.FDs = nil
}

// TakeFD returns file descriptor i and leaves it to the caller (-1 if
// there is no such one).
func (m *Msg) TakeFD(i int) int {
	if i < 0 || i >= len(m.FDs) {
		return -1
	}
	fd := m.FDs[i]
	m.FDs[i] = -1
	return fd
}

// Conn is one end of a vhost-user socket. Send and Recv may be called
// from different goroutines; two Sends (or two Recvs) are serialized.
type Conn struct {
	c        *net.UnixConn
	rmu, wmu sync.Mutex
}

// NewConn wraps a connected unix stream socket.
func NewConn(c *net.UnixConn) *Conn { return &Conn{c: c} }

// Close closes the socket.
func (c *Conn) Close() error { return c.c.Close() }

// Shutdown shuts the connection down in both directions: the peer sees it
// close even while another descriptor of the socket stays open, and
// blocked Sends and Recvs return.
func (c *Conn) Shutdown() {
	_ = c.c.CloseRead()
	_ = c.c.CloseWrite()
}

// Send writes one message with its file descriptors (borrowed: the
// caller keeps them), and fails if it has not gone by deadline (zero: no
// deadline).
func (c *Conn) Send(req Request, flags uint32, payload []byte, deadline time.Time, fds ...int) error {
	if len(payload) > MaxPayload || len(fds) > MaxFDs {
		return fmt.Errorf("vhost-user: %s: payload of %d bytes with %d fds is too large", req, len(payload), len(fds))
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	b := make([]byte, headerSize, headerSize+len(payload))
	le.PutUint32(b, uint32(req))
	le.PutUint32(b[4:], version1|flags)
	le.PutUint32(b[8:], uint32(len(payload)))
	b = append(b, payload...)
	if err := c.c.SetWriteDeadline(deadline); err != nil {
		return err
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	n, oobn, err := c.c.WriteMsgUnix(b, oob, nil)
	if err != nil {
		return fmt.Errorf("vhost-user: sending %s: %w", req, err)
	}
	if oobn != len(oob) {
		return fmt.Errorf("vhost-user: sending %s: file descriptors not sent", req)
	}
	if n < len(b) {
		if _, err := c.c.Write(b[n:]); err != nil {
			return fmt.Errorf("vhost-user: sending %s: %w", req, err)
		}
	}
	return nil
}

// Recv reads one message, failing if none has come by deadline (zero: no
// deadline). A message that breaks the wire format (bad version or flags,
// a payload over MaxPayload, too many or truncated file descriptors) is an
// error wrapping ErrProtocol; the files it carried are closed.
func (c *Conn) Recv(deadline time.Time) (Msg, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if err := c.c.SetReadDeadline(deadline); err != nil {
		return Msg{}, err
	}
	var m Msg
	hdr := make([]byte, headerSize)
	oob := make([]byte, unix.CmsgSpace(4*MaxFDs))
	n, oobn, flags, _, err := c.c.ReadMsgUnix(hdr, oob)
	if oobn > 0 {
		fds, perr := parseRights(oob[:oobn])
		m.FDs = fds
		if perr != nil {
			m.CloseFDs()
			return Msg{}, perr
		}
	}
	if err != nil {
		m.CloseFDs()
		if n == 0 && errors.Is(err, io.EOF) {
			return Msg{}, io.EOF
		}
		return Msg{}, fmt.Errorf("vhost-user: receiving: %w", err)
	}
	if flags&unix.MSG_CTRUNC != 0 {
		m.CloseFDs()
		return Msg{}, protoErr("more than %d file descriptors", MaxFDs)
	}
	if n < headerSize {
		if _, err := io.ReadFull(c.c, hdr[n:]); err != nil {
			m.CloseFDs()
			return Msg{}, fmt.Errorf("vhost-user: receiving a header: %w", err)
		}
	}
	m.Req = Request(le.Uint32(hdr))
	m.Flags = le.Uint32(hdr[4:])
	size := le.Uint32(hdr[8:])
	if m.Flags&versionMask != version1 || m.Flags&^(versionMask|flagReply|FlagNeedReply) != 0 {
		m.CloseFDs()
		return Msg{}, protoErr("%s with flags %#x", m.Req, m.Flags)
	}
	if size > MaxPayload {
		m.CloseFDs()
		return Msg{}, protoErr("%s with a payload of %d bytes", m.Req, size)
	}
	m.Payload = make([]byte, size)
	if _, err := io.ReadFull(c.c, m.Payload); err != nil {
		m.CloseFDs()
		return Msg{}, fmt.Errorf("vhost-user: receiving %s: %w", m.Req, err)
	}
	return m, nil
}

// parseRights returns the file descriptors of SCM_RIGHTS control
// messages (close-on-exec).
func parseRights(oob []byte) ([]int, error) {
	cmsgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, protoErr("control message: %v", err)
	}
	var all []int
	closeAll := func() {
		for _, fd := range all {
			unix.Close(fd)
		}
	}
	for _, cm := range cmsgs {
		fds, err := unix.ParseUnixRights(&cm)
		if err != nil {
			closeAll()
			return nil, protoErr("control message: %v", err)
		}
		for _, fd := range fds {
			unix.CloseOnExec(fd)
		}
		all = append(all, fds...)
	}
	if len(all) > MaxFDs {
		closeAll()
		return nil, protoErr("%d file descriptors", len(all))
	}
	return all, nil
}

// Reply answers m with payload.
func (c *Conn) Reply(m *Msg, payload []byte, deadline time.Time) error {
	return c.Send(m.Req, flagReply, payload, deadline)
}

// Call sends a request and, if wantReply, waits for its reply (by
// deadline) and returns its payload. A reply for another request, or one
// with other flags than version and reply, is an ErrProtocol error.
func (c *Conn) Call(req Request, flags uint32, payload []byte, wantReply bool, deadline time.Time, fds ...int) ([]byte, error) {
	if err := c.Send(req, flags, payload, deadline, fds...); err != nil {
		return nil, err
	}
	if !wantReply {
		return nil, nil
	}
	m, err := c.Recv(deadline)
	if err != nil {
		return nil, err
	}
	m.CloseFDs() // no reply here carries files
	if m.Req != req || m.Flags != version1|flagReply {
		return nil, protoErr("reply %s with flags %#x to %s", m.Req, m.Flags, req)
	}
	return m.Payload, nil
}
