// Package reset implements the ways a PC guest asks to be reset: the reset
// control register at port 0xCF9 (also the ACPI FADT reset register) and the
// i8042 keyboard controller's pulse-reset command (0xFE to port 0x64).
//
// The i8042 is otherwise absent: status reads say the output buffer is
// empty, so a guest that probes it finds no keyboard.
package reset

// CF9 is the reset control register. OnReset is called for a write with the
// "reset CPU" bit (bit 2) set.
type CF9 struct {
	OnReset func()
	last    uint8
}

// Read implements bus.Handler.
func (c *CF9) Read(off uint64, data []byte) {
	for i := range data {
		data[i] = 0
	}
	if len(data) == 1 && off == 0 {
		data[0] = c.last
	}
}

// Write implements bus.Handler.
func (c *CF9) Write(off uint64, data []byte) {
	if len(data) != 1 || off != 0 {
		return
	}
	c.last = data[0] & 0x0e
	if data[0]&0x04 != 0 && c.OnReset != nil {
		c.OnReset()
	}
}

// I8042 answers the keyboard controller's ports 0x60 (offset 0) and 0x64
// (offset 4). OnReset is called for the pulse-reset command.
type I8042 struct {
	OnReset func()
}

// Read implements bus.Handler.
func (k *I8042) Read(off uint64, data []byte) {
	for i := range data {
		data[i] = 0
	}
}

// Write implements bus.Handler.
func (k *I8042) Write(off uint64, data []byte) {
	if len(data) == 1 && off == 4 && data[0] == 0xfe && k.OnReset != nil {
		k.OnReset()
	}
}

// Sink ignores every access: for ports a guest writes for timing or
// diagnostics (the POST port 0x80) that need no emulation. Reads return
// zeros.
type Sink struct{}

// Read implements bus.Handler.
func (Sink) Read(off uint64, data []byte) {
	for i := range data {
		data[i] = 0
	}
}

// Write implements bus.Handler.
func (Sink) Write(uint64, []byte) {}
