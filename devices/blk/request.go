package blk

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/govmd/govmd/virtio"
)

// request is one parsed virtio-blk request (struct virtio_blk_req) located
// in a descriptor chain. Its slices alias guest memory, which the guest can
// change at any time: the header is copied out once by parseRequest, segment
// descriptors once by the executor; data is only ever transferred.
type request struct {
	typ    uint32
	sector uint64
	// in is the device-readable data after the 16-byte header; out is the
	// device-writable data before the status byte. Empty buffers are left
	// out.
	in, out       [][]byte
	inLen, outLen uint64
	// status is the last device-writable byte of the chain.
	status []byte
}

var (
	// errNoStatus means the request cannot be completed: there is no
	// device-writable byte for the status.
	errNoStatus = errors.New("request has no device-writable status byte")
	// errShortHeader means the request can be completed, with an error.
	errShortHeader = errors.New("request header is shorter than 16 bytes")
)

// parseRequest finds the header, data and status byte of the request in c,
// whatever the descriptor layout: the header may be split across
// descriptors and share one with data, and the status byte is the last byte
// of the last non-empty writable buffer, possibly sharing it with data. It
// reuses r's slices. If it returns errShortHeader, r.status is valid.
func parseRequest(c *virtio.Chain, r *request) error {
	clear(r.in)
	clear(r.out)
	r.in, r.out = r.in[:0], r.out[:0]
	r.inLen, r.outLen = 0, 0
	r.typ, r.sector, r.status = 0, 0, nil

	last := len(c.Writable) - 1
	for last >= 0 && len(c.Writable[last]) == 0 {
		last--
	}
	if last < 0 {
		return errNoStatus
	}
	sb := c.Writable[last]
	r.status = sb[len(sb)-1:]
	for _, b := range c.Writable[:last] {
		r.addOut(b)
	}
	r.addOut(sb[:len(sb)-1])

	var hdr [headerSize]byte
	got := 0
	for _, b := range c.Readable {
		if got < headerSize {
			k := copy(hdr[got:], b)
			got += k
			b = b[k:]
		}
		if len(b) > 0 {
			r.in = append(r.in, b)
			r.inLen += uint64(len(b))
		}
	}
	if got < headerSize {
		return errShortHeader
	}
	r.typ = binary.LittleEndian.Uint32(hdr[0:])
	// hdr[4:8] is the reserved field (legacy ioprio), ignored.
	r.sector = binary.LittleEndian.Uint64(hdr[8:])
	return nil
}

func (r *request) addOut(b []byte) {
	if len(b) > 0 {
		r.out = append(r.out, b)
		r.outLen += uint64(len(b))
	}
}

// result is how a request completes.
type result struct {
	status byte
	// written is the number of data bytes the device wrote into the
	// driver's buffers (the status byte is added on completion).
	written uint32
	// sync means the request may only complete after a successful sync:
	// FLUSH, and writes in write-through mode.
	sync bool
}

var (
	resOK     = result{status: StatusOK}
	resIOErr  = result{status: StatusIOErr}
	resUnsupp = result{status: StatusUnsupp}
)

// execute serves one parsed request.
func (w *worker) execute(r *request) result {
	d := w.d
	switch r.typ {
	case TypeIn:
		d.stats.reads.Add(1)
		return w.read(r)
	case TypeOut:
		d.stats.writes.Add(1)
		return w.write(r)
	case TypeFlush:
		d.stats.flushes.Add(1)
		if d.readOnly {
			return resOK // nothing of ours to make stable
		}
		if d.syncFailed.Load() {
			return w.failed()
		}
		return result{status: StatusOK, sync: true}
	case TypeGetID:
		d.stats.getIDs.Add(1)
		return w.getID(r)
	case TypeDiscard:
		d.stats.discards.Add(1)
		return w.discardOrZero(r)
	case TypeWriteZeroes:
		d.stats.writeZeroes.Add(1)
		return w.discardOrZero(r)
	default:
		return w.unsupported("request type %d", r.typ)
	}
}

func (w *worker) read(r *request) result {
	if r.inLen != 0 {
		return w.fault("read request with %d bytes of device-readable data", r.inLen)
	}
	if res, ok := w.checkData(r, r.out, r.outLen); !ok {
		return res
	}
	n, err := readFull(w.d.be, r.out, int64(r.sector*SectorSize))
	if err != nil {
		res := w.ioError("read", r.sector, r.outLen, err)
		res.written = uint32(n)
		return res
	}
	w.d.stats.bytesRead.Add(uint64(n))
	return result{status: StatusOK, written: uint32(n)}
}

func (w *worker) write(r *request) result {
	d := w.d
	if d.readOnly {
		d.stats.errors.Add(1)
		return resIOErr
	}
	if r.outLen != 0 {
		return w.fault("write request with %d bytes of device-writable data before the status", r.outLen)
	}
	if res, ok := w.checkData(r, r.in, r.inLen); !ok {
		return res
	}
	if d.syncFailed.Load() {
		return w.failed()
	}
	n, err := writeFull(d.be, r.in, int64(r.sector*SectorSize))
	if err != nil {
		return w.ioError("write", r.sector, r.inLen, err)
	}
	d.stats.bytesWritten.Add(uint64(n))
	return result{status: StatusOK, sync: w.writeThrough}
}

// checkData checks the data of a read or write: a multiple of 512 bytes
// inside the disk, within the advertised segment limits if the driver
// negotiated them.
func (w *worker) checkData(r *request, data [][]byte, n uint64) (result, bool) {
	if n%SectorSize != 0 {
		return w.fault("data length %d is not a multiple of %d", n, SectorSize), false
	}
	if !w.d.inRange(r.sector, n/SectorSize) {
		return w.fault("sectors %d+%d beyond capacity %d", r.sector, n/SectorSize, w.d.capacity), false
	}
	if w.segMax && uint64(len(data)) > uint64(w.d.segMax()) {
		return w.fault("%d data segments exceed seg_max %d", len(data), w.d.segMax()), false
	}
	if w.sizeMax {
		for _, b := range data {
			if len(b) > SizeMax {
				return w.fault("data segment of %d bytes exceeds size_max %d", len(b), SizeMax), false
			}
		}
	}
	return result{}, true
}

// inRange reports whether [sector, sector+n) lies inside the disk.
func (d *Device) inRange(sector, n uint64) bool {
	return sector <= d.capacity && n <= d.capacity-sector
}

func (w *worker) getID(r *request) result {
	if r.inLen != 0 {
		return w.fault("GET_ID request with %d bytes of device-readable data", r.inLen)
	}
	id := w.d.serial[:min(r.outLen, IDBytes)]
	n := 0
	for _, b := range r.out {
		if n == len(id) {
			break
		}
		n += copy(b, id[n:])
	}
	return result{status: StatusOK, written: uint32(n)}
}

// discardOrZero serves DISCARD and WRITE_ZEROES. All segments are copied
// out and checked before any is executed.
func (w *worker) discardOrZero(r *request) result {
	d := w.d
	discard := r.typ == TypeDiscard
	feature, maxSeg, maxSectors, name := uint64(FWriteZeroes), uint64(MaxWriteZeroesSeg), uint64(MaxWriteZeroesSectors), "WRITE_ZEROES"
	if discard {
		feature, maxSeg, maxSectors, name = FDiscard, MaxDiscardSeg, MaxDiscardSectors, "DISCARD"
	}
	if d.readOnly {
		d.stats.errors.Add(1)
		return resIOErr
	}
	if w.features&feature == 0 {
		return w.unsupported("%s without its feature", name)
	}
	if r.outLen != 0 {
		return w.fault("%s request with %d bytes of device-writable data before the status", name, r.outLen)
	}
	if r.inLen == 0 || r.inLen%segmentSize != 0 {
		return w.fault("%s data length %d is not a non-zero multiple of %d", name, r.inLen, segmentSize)
	}
	nseg := r.inLen / segmentSize
	if nseg > maxSeg {
		return w.fault("%s with %d segments (max %d)", name, nseg, maxSeg)
	}
	buf := w.segBuf[:nseg*segmentSize]
	virtio.Gather(buf, r.in, 0)
	var total uint64
	for i := uint64(0); i < nseg; i++ {
		s := buf[i*segmentSize:]
		sector := binary.LittleEndian.Uint64(s[0:])
		num := uint64(binary.LittleEndian.Uint32(s[8:]))
		flags := binary.LittleEndian.Uint32(s[12:])
		if flags&^FlagUnmap != 0 || (discard && flags&FlagUnmap != 0) {
			return w.unsupported("%s segment flags %#x", name, flags)
		}
		total += num
		if total > maxSectors {
			return w.fault("%s of more than %d sectors", name, maxSectors)
		}
		if !d.inRange(sector, num) {
			return w.fault("%s sectors %d+%d beyond capacity %d", name, sector, num, d.capacity)
		}
	}
	if d.syncFailed.Load() {
		return w.failed()
	}
	for i := uint64(0); i < nseg; i++ {
		s := buf[i*segmentSize:]
		sector := binary.LittleEndian.Uint64(s[0:])
		num := uint64(binary.LittleEndian.Uint32(s[8:]))
		unmap := binary.LittleEndian.Uint32(s[12:])&FlagUnmap != 0
		if num == 0 {
			continue
		}
		off, n := int64(sector*SectorSize), int64(num*SectorSize)
		var err error
		if discard {
			err = d.discard(off, n)
		} else {
			err = d.writeZeroes(w.ctx, off, n, unmap)
		}
		if w.ctx.Err() != nil {
			return resIOErr // the device is being reset; never completed
		}
		if err != nil {
			return w.ioError(name, sector, num*SectorSize, err)
		}
	}
	return result{status: StatusOK, sync: w.writeThrough}
}

func (w *worker) fault(format string, args ...any) result {
	w.d.stats.guestFaults.Add(1)
	w.d.stats.errors.Add(1)
	w.d.guestLog.Warn("virtio-blk driver error", "queue", w.idx, "err", fmt.Sprintf(format, args...))
	return resIOErr
}

func (w *worker) unsupported(format string, args ...any) result {
	w.d.stats.unsupported.Add(1)
	w.d.guestLog.Info("virtio-blk unsupported request", "queue", w.idx, "what", fmt.Sprintf(format, args...))
	return resUnsupp
}

func (w *worker) ioError(op string, sector, n uint64, err error) result {
	w.d.stats.errors.Add(1)
	w.d.ioLog.Warn("disk I/O error", "op", op, "sector", sector, "bytes", n, "err", err)
	return resIOErr
}

// failed answers a write or flush after a failed sync.
func (w *worker) failed() result {
	w.d.stats.errors.Add(1)
	return resIOErr
}
