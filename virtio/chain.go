package virtio

// Copies between a device and a chain's buffers (or any list of buffers, as
// a receive path assembles from several chains). The buffers alias guest
// memory: what is copied out is a snapshot the guest can no longer change.

// Gather copies bytes from the concatenation of bufs, starting at offset off,
// into dst, and returns how many it copied (less than len(dst) if the
// buffers end first).
func Gather(dst []byte, bufs [][]byte, off int) int {
	n := 0
	for _, b := range bufs {
		if n == len(dst) {
			break
		}
		if off >= len(b) {
			off -= len(b)
			continue
		}
		n += copy(dst[n:], b[off:])
		off = 0
	}
	return n
}

// Scatter copies src into the concatenation of bufs at offset off and
// returns how many bytes it copied.
func Scatter(bufs [][]byte, off int, src []byte) int {
	n := 0
	for _, b := range bufs {
		if n == len(src) {
			break
		}
		if off >= len(b) {
			off -= len(b)
			continue
		}
		n += copy(b[off:], src[n:])
		off = 0
	}
	return n
}

// AppendFrom appends to dst the parts of bufs from offset off to the end,
// as sub-slices (no copy): an I/O vector for a system call.
func AppendFrom(dst [][]byte, bufs [][]byte, off int) [][]byte {
	for _, b := range bufs {
		if off >= len(b) {
			off -= len(b)
			continue
		}
		dst = append(dst, b[off:])
		off = 0
	}
	return dst
}
