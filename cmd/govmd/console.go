package main

import (
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// escapeKey is the console escape prefix: Ctrl-A x quits, Ctrl-A Ctrl-A
// sends a literal Ctrl-A.
const escapeKey = 0x01

type console struct {
	in      io.Reader
	out     io.Writer
	file    *os.File // output file for --console PATH
	restore func()
	once    sync.Once
}

// openConsole sets up the guest's serial console. With "stdio" the guest
// writes to stdout and reads stdin; a terminal is put in raw mode and Ctrl-A
// x quits (calling quit). Any other value is a file that receives the
// output; the guest then gets no input.
func openConsole(spec string, stdin io.Reader, stdout io.Writer, quit func()) (*console, error) {
	c := &console{restore: func() {}}
	if spec != "stdio" {
		f, err := os.OpenFile(spec, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return nil, fmt.Errorf("--console: %w", err)
		}
		c.file, c.out = f, f
		return c, nil
	}
	c.out = stdout
	c.in = stdin
	if f, ok := stdin.(*os.File); ok {
		fd := int(f.Fd())
		if old, err := unix.IoctlGetTermios(fd, unix.TCGETS); err == nil {
			raw := *old
			raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
			raw.Oflag &^= unix.OPOST
			raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
			raw.Cflag &^= unix.CSIZE | unix.PARENB
			raw.Cflag |= unix.CS8
			raw.Cc[unix.VMIN], raw.Cc[unix.VTIME] = 1, 0
			if err := unix.IoctlSetTermios(fd, unix.TCSETS, &raw); err == nil {
				c.restore = func() { _ = unix.IoctlSetTermios(fd, unix.TCSETS, old) }
				c.in = &escapeReader{r: stdin, quit: quit}
				fmt.Fprint(stdout, "govmd: console on this terminal; Ctrl-A x quits\r\n")
			}
		}
	}
	return c, nil
}

// Restore puts the terminal back the way it was.
func (c *console) Restore() { c.once.Do(c.restore) }

func (c *console) Close() error {
	c.Restore()
	if c.file != nil {
		return c.file.Close()
	}
	return nil
}

// escapeReader passes terminal input to the guest, interpreting the escape
// sequences.
type escapeReader struct {
	r       io.Reader
	quit    func()
	pending bool
}

func (e *escapeReader) Read(p []byte) (int, error) {
	buf := make([]byte, len(p))
	for {
		n, err := e.r.Read(buf)
		out := p[:0]
		for _, b := range buf[:n] {
			switch {
			case e.pending:
				e.pending = false
				switch b {
				case 'x', 'X':
					e.quit()
					return len(out), io.EOF
				case escapeKey:
					out = append(out, escapeKey)
				}
			case b == escapeKey:
				e.pending = true
			default:
				out = append(out, b)
			}
		}
		if len(out) > 0 || err != nil {
			return len(out), err
		}
	}
}
