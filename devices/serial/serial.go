// Package serial emulates a 16550A UART, the guest's console. Output bytes go
// to an io.Writer; input bytes are queued with Input and raise the receive
// interrupt.
//
// The UART is a bus.Handler for its 8 I/O ports. Its interrupt is an ISA
// line driven through a callback: the VMM connects it to the in-kernel
// interrupt controller.
package serial

import (
	"io"
	"sync"
)

// Register offsets.
const (
	regData = 0 // RBR (read), THR (write); DLL when DLAB
	regIER  = 1 // DLM when DLAB
	regIIR  = 2 // IIR (read), FCR (write)
	regLCR  = 3
	regMCR  = 4
	regLSR  = 5
	regMSR  = 6
	regSCR  = 7
)

const (
	ierRDI  = 0x01 // received data available
	ierTHRI = 0x02 // transmitter holding register empty
	ierRLSI = 0x04 // receiver line status

	iirNone = 0x01
	iirTHRI = 0x02
	iirRDI  = 0x04
	iirFIFO = 0xc0 // FIFOs enabled

	lcrDLAB = 0x80

	mcrLoop = 0x10

	lsrDR   = 0x01
	lsrOE   = 0x02
	lsrTHRE = 0x20
	lsrTEMT = 0x40

	msrDCD = 0x80
	msrDSR = 0x20
	msrCTS = 0x10
)

// fifoSize bounds the receive queue. The 16550A has 16 bytes; a larger
// buffer keeps pasted input from being dropped while the guest is slow.
const fifoSize = 4096

// UART is a 16550A. It is safe for concurrent use.
type UART struct {
	out io.Writer
	irq func(level bool)

	mu          sync.Mutex
	ier, lcr    uint8
	mcr, scr    uint8
	dll, dlm    uint8
	fcr         uint8
	lsrErr      uint8
	rx          []byte
	thriPending bool
	line        bool
	dropped     uint64
}

// New returns a UART writing guest output to out and driving its interrupt
// line with irq (which may be nil).
func New(out io.Writer, irq func(level bool)) *UART {
	if irq == nil {
		irq = func(bool) {}
	}
	return &UART{out: out, irq: irq, dll: 12, thriPending: false, mcr: 0x08}
}

// Input queues bytes for the guest to read. Bytes beyond the buffer are
// dropped and counted.
func (u *UART) Input(p []byte) {
	u.mu.Lock()
	room := fifoSize - len(u.rx)
	if len(p) > room {
		u.dropped += uint64(len(p) - room)
		u.lsrErr |= lsrOE
		p = p[:room]
	}
	u.rx = append(u.rx, p...)
	u.updateLocked()
	u.mu.Unlock()
}

// Dropped returns how many input bytes were dropped because the guest did
// not read them fast enough.
func (u *UART) Dropped() uint64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.dropped
}

func (u *UART) iirLocked() uint8 {
	switch {
	case u.ier&ierRLSI != 0 && u.lsrErr != 0:
		return 0x06
	case u.ier&ierRDI != 0 && len(u.rx) > 0:
		return iirRDI
	case u.ier&ierTHRI != 0 && u.thriPending:
		return iirTHRI
	}
	return iirNone
}

// updateLocked drives the interrupt line from the pending state. OUT2 in MCR
// gates the line on PC hardware; Linux sets it.
func (u *UART) updateLocked() {
	level := u.iirLocked() != iirNone && u.mcr&0x08 != 0
	if level != u.line {
		u.line = level
		u.irq(level)
	}
}

// Read implements bus.Handler.
func (u *UART) Read(off uint64, data []byte) {
	for i := range data {
		data[i] = 0
	}
	if len(data) != 1 || off > regSCR {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	var v uint8
	switch off {
	case regData:
		if u.lcr&lcrDLAB != 0 {
			v = u.dll
			break
		}
		if len(u.rx) > 0 {
			v = u.rx[0]
			u.rx = u.rx[1:]
			if len(u.rx) == 0 {
				u.rx = u.rx[:0:0] // release the backing array
			}
		}
	case regIER:
		if u.lcr&lcrDLAB != 0 {
			v = u.dlm
		} else {
			v = u.ier
		}
	case regIIR:
		v = u.iirLocked()
		if v == iirTHRI {
			u.thriPending = false
		}
		if u.fcr&0x01 != 0 {
			v |= iirFIFO
		}
	case regLCR:
		v = u.lcr
	case regMCR:
		v = u.mcr
	case regLSR:
		v = lsrTHRE | lsrTEMT | u.lsrErr
		if len(u.rx) > 0 {
			v |= lsrDR
		}
		u.lsrErr = 0
	case regMSR:
		if u.mcr&mcrLoop != 0 {
			// Loopback: outputs appear on inputs.
			v = (u.mcr&0x01)<<5 | (u.mcr&0x02)<<3 | (u.mcr&0x04)<<4 | (u.mcr&0x08)<<4
		} else {
			v = msrDCD | msrDSR | msrCTS
		}
	case regSCR:
		v = u.scr
	}
	data[0] = v
	u.updateLocked()
}

// Write implements bus.Handler.
func (u *UART) Write(off uint64, data []byte) {
	if len(data) != 1 || off > regSCR {
		return
	}
	v := data[0]
	u.mu.Lock()
	var out byte
	var emit bool
	switch off {
	case regData:
		if u.lcr&lcrDLAB != 0 {
			u.dll = v
			break
		}
		if u.mcr&mcrLoop != 0 {
			if len(u.rx) < fifoSize {
				u.rx = append(u.rx, v)
			}
		} else {
			out, emit = v, true
		}
		u.thriPending = true
	case regIER:
		if u.lcr&lcrDLAB != 0 {
			u.dlm = v
			break
		}
		old := u.ier
		u.ier = v & 0x0f
		if u.ier&ierTHRI != 0 && old&ierTHRI == 0 {
			// Enabling THRI with an empty transmitter raises it.
			u.thriPending = true
		}
	case regIIR:
		u.fcr = v
		if v&0x02 != 0 {
			u.rx = u.rx[:0]
		}
	case regLCR:
		u.lcr = v
	case regMCR:
		u.mcr = v & 0x1f
	case regSCR:
		u.scr = v
	}
	u.updateLocked()
	u.mu.Unlock()
	if emit && u.out != nil {
		// Outside the lock: a slow terminal must not block input.
		_, _ = u.out.Write([]byte{out})
	}
}
