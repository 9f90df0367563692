// Package unixsock creates the unix sockets govmd listens on (the API
// socket, a vhost-user backend's socket): mode 0600, and a stale socket
// left by a process that died is replaced, anything else at the path is
// an error.
package unixsock

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"syscall"
	"time"
)

// Listen creates a listening socket at path with mode 0600; what names
// the socket in errors ("api socket"). An existing path is an error, unless
// it is a socket nobody listens on, which is replaced.
func Listen(path, what string) (*net.UnixListener, error) {
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("%s %s: exists and is not a socket", what, path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("%s %s: in use by another process", what, path)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("%s %s: %w", what, path, err)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("%s %s: removing the stale socket: %w", what, path, err)
		}
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("%s %s: %w", what, path, err)
	}
	return l, nil
}
