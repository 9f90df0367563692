// Package testkernel builds tiny synthetic kernels for tests: a bzImage
// (boot protocol 2.15, relocatable, 64-bit entry) whose startup_64 is the
// machine code a test supplies, and programs for it that print on COM1 and
// power off through the ACPI PM1a control block, or fault.
package testkernel

import "encoding/binary"

// Layout of the synthetic bzImage.
const (
	setupSects   = 4
	PrefAddress  = 2 << 20 // where the kernel wants to be loaded
	InitSize     = 4 << 20 // memory it claims
	entry64      = 0x200   // startup_64 offset in the protected-mode part
	payloadBytes = 0x2000
)

// BzImage returns a bzImage whose 64-bit entry runs code (at most
// payloadBytes-0x200 bytes).
func BzImage(code []byte) []byte {
	setup := (setupSects + 1) * 512
	b := make([]byte, setup+payloadBytes)
	le := binary.LittleEndian
	b[0], b[1] = 'M', 'Z'
	b[0x1f1] = setupSects
	le.PutUint32(b[0x1f4:], payloadBytes/16) // syssize
	le.PutUint16(b[0x1fe:], 0xaa55)
	b[0x200], b[0x201] = 0xeb, 0x6a
	copy(b[0x202:], "HdrS")
	le.PutUint16(b[0x206:], 0x020f)
	b[0x211] = 1                         // LOADED_HIGH
	le.PutUint32(b[0x22c:], 0x7fffffff)  // initrd_addr_max
	le.PutUint32(b[0x230:], 2<<20)       // kernel_alignment
	b[0x234] = 1                         // relocatable
	b[0x235] = 21                        // min_alignment
	le.PutUint16(b[0x236:], 1<<0|1<<1)   // XLF_KERNEL_64 | CAN_BE_LOADED_ABOVE_4G
	le.PutUint32(b[0x238:], 2047)        // cmdline_size
	le.PutUint64(b[0x258:], PrefAddress) // pref_address
	le.PutUint32(b[0x260:], InitSize)    // init_size
	copy(b[setup+entry64:], code)
	return b
}

// Print returns 64-bit code that writes s to the COM1 data port.
func Print(s string) []byte {
	code := []byte{0x66, 0xba, 0xf8, 0x03} // mov dx, 0x3f8
	for _, c := range []byte(s) {
		code = append(code, 0xb0, c, 0xee) // mov al, c; out dx, al
	}
	return code
}

// PowerOff is 64-bit code that writes SLP_TYP=5 | SLP_EN to the PM1a
// control block at port, then halts forever.
func PowerOff(port uint16) []byte {
	return []byte{
		0x66, 0xba, byte(port), byte(port >> 8), // mov dx, port
		0x66, 0xb8, 0x00, 0x34, // mov ax, 5<<10 | 1<<13
		0x66, 0xef, // out dx, ax
		0xf4,       // hlt
		0xeb, 0xfd, // jmp hlt
	}
}

// Reset is 64-bit code that writes the reset command 0x06 to port 0xcf9.
func Reset() []byte {
	return []byte{
		0x66, 0xba, 0xf9, 0x0c, // mov dx, 0xcf9
		0xb0, 0x06, // mov al, 6
		0xee,       // out dx, al
		0xf4,       // hlt
		0xeb, 0xfd, // jmp hlt
	}
}

// TripleFault is 64-bit code that executes ud2 with no IDT: #UD, #DF and
// a triple fault.
func TripleFault() []byte {
	return []byte{0x0f, 0x0b}
}
