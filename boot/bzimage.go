package boot

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/govmd/govmd/memory"
)

// SetupHeader is the bzImage setup header (Documentation/arch/x86/boot.rst,
// "The Real-Mode Kernel Header"), as stored at file offset 0x1f1 and copied
// into boot_params at the same offset. The field order and sizes are the
// on-disk layout; encoding/binary decodes it without padding. Fields past
// the end of the header an image declares read as zero.
type SetupHeader struct {
	SetupSects          uint8  // 0x1f1 size of the setup code in 512-byte sectors; 0 means 4
	RootFlags           uint16 // 0x1f2
	Syssize             uint32 // 0x1f4 size of the protected-mode code in 16-byte units
	RAMSize             uint16 // 0x1f8 obsolete
	VidMode             uint16 // 0x1fa
	RootDev             uint16 // 0x1fc
	BootFlag            uint16 // 0x1fe 0xaa55
	Jump                uint16 // 0x200 short jump over the header: 0xeb, length
	Header              uint32 // 0x202 "HdrS"
	Version             uint16 // 0x206 boot protocol version, 0x020f = 2.15
	RealmodeSwtch       uint32 // 0x208
	StartSysSeg         uint16 // 0x20c obsolete
	KernelVersion       uint16 // 0x20e
	TypeOfLoader        uint8  // 0x210
	LoadFlags           uint8  // 0x211
	SetupMoveSize       uint16 // 0x212
	Code32Start         uint32 // 0x214
	RamdiskImage        uint32 // 0x218
	RamdiskSize         uint32 // 0x21c
	BootsectKludge      uint32 // 0x220 obsolete
	HeapEndPtr          uint16 // 0x224
	ExtLoaderVer        uint8  // 0x226
	ExtLoaderType       uint8  // 0x227
	CmdLinePtr          uint32 // 0x228
	InitrdAddrMax       uint32 // 0x22c highest address the initrd may occupy
	KernelAlignment     uint32 // 0x230
	RelocatableKernel   uint8  // 0x234
	MinAlignment        uint8  // 0x235
	XLoadFlags          uint16 // 0x236
	CmdlineSize         uint32 // 0x238 longest command line, without the NUL
	HardwareSubarch     uint32 // 0x23c
	HardwareSubarchData uint64 // 0x240
	PayloadOffset       uint32 // 0x248
	PayloadLength       uint32 // 0x24c
	SetupData           uint64 // 0x250
	PrefAddress         uint64 // 0x258
	InitSize            uint32 // 0x260 memory the kernel needs from its load address on
	HandoverOffset      uint32 // 0x264
	KernelInfoOffset    uint32 // 0x268
}

// Setup header constants.
const (
	HdrMagic = 0x53726448 // "HdrS" read as a little-endian uint32

	// LoadFlags bits.
	LoadedHigh = 1 << 0 // protected-mode code is loaded at 0x100000 or above
	CanUseHeap = 1 << 7 // heap_end_ptr is valid

	// XLoadFlags bits.
	XLFKernel64           = 1 << 0 // has the 64-bit entry at load address + 0x200
	XLFCanBeLoadedAbove4G = 1 << 1 // kernel, boot_params, cmdline, initrd may be above 4 GiB

	// MinVersion is the oldest boot protocol Load accepts (2.06).
	MinVersion = 0x0206

	hdrStart      = 0x1f1
	hdrMagicOff   = 0x202
	hdrKnownEnd   = 0x26c // end of kernel_info_offset (protocol 2.15)
	entry64Offset = 0x200 // startup_64 relative to the load address

	// Zero page (struct boot_params) offsets outside the setup header.
	bpACPIRSDPAddr     = 0x070
	bpExtRamdiskImage  = 0x0c0
	bpExtRamdiskSize   = 0x0c4
	bpExtCmdLinePtr    = 0x0c8
	bpE820Entries      = 0x1e8
	bpE820Table        = 0x2d0
	bpE820EntrySize    = 20
	bpVidMode          = 0x1fa
	bpTypeOfLoader     = 0x210
	bpLoadFlags        = 0x211
	bpCode32Start      = 0x214
	bpRamdiskImage     = 0x218
	bpRamdiskSize      = 0x21c
	bpHeapEndPtr       = 0x224
	bpCmdLinePtr       = 0x228
	bpSetupData        = 0x250
	heapEnd            = 0xde00 // heap_end_ptr: 0xe000 - 0x200, as for a modern loader
	defaultInitrdLimit = 0x37ffffff
)

// bzImage is a parsed and validated bzImage.
type bzImage struct {
	hdr         SetupHeader
	raw         []byte // the file
	hdrEnd      uint64 // file offset just past the setup header
	pmOffset    uint64 // file offset of the protected-mode code
	pmSize      uint64 // its size: syssize * 16
	pref        uint64 // where the kernel wants to be loaded
	footprint   uint64 // memory it needs from the load address on, page aligned
	align       uint64 // load address alignment (relocatable kernels)
	relocatable bool
	kernel64    bool
	above4G     bool
	cmdlineMax  uint64
	initrdEnd   uint64 // exclusive end of the highest address the initrd may use
}

// ParseBzImage parses and validates the setup header of the bzImage b. It
// checks everything Load relies on: the "HdrS" magic, the protocol version
// (at least 2.06), the header length, LOADED_HIGH, kernel_alignment for
// relocatable kernels, and that the file holds setup_sects and syssize
// worth of code.
func ParseBzImage(b []byte) (*SetupHeader, error) {
	bz, err := parseBzImage(b)
	if err != nil {
		return nil, err
	}
	h := bz.hdr
	return &h, nil
}

func parseBzImage(b []byte) (*bzImage, error) {
	n := uint64(len(b))
	if n < hdrMagicOff+4 {
		return nil, fmt.Errorf("%w: bzImage of %d bytes, the setup header needs at least %d", ErrTruncated, n, hdrMagicOff+4)
	}
	if binary.LittleEndian.Uint32(b[hdrMagicOff:]) != HdrMagic {
		return nil, ErrNotKernel
	}
	if b[0x200] != 0xeb || b[0x201] >= 0x80 {
		return nil, fmt.Errorf("%w: no forward short jump over the setup header at 0x200 (% x)", ErrBadImage, b[0x200:0x202])
	}
	hdrEnd := uint64(0x202) + uint64(b[0x201])
	if hdrEnd < 0x208 {
		return nil, fmt.Errorf("%w: setup header ends at %#x, before the protocol version", ErrBadImage, hdrEnd)
	}
	if n < hdrEnd {
		return nil, fmt.Errorf("%w: bzImage of %d bytes, its setup header ends at %#x", ErrTruncated, n, hdrEnd)
	}

	raw := make([]byte, hdrKnownEnd-hdrStart)
	copy(raw, b[hdrStart:min(hdrEnd, hdrKnownEnd)])
	bz := &bzImage{raw: b, hdrEnd: hdrEnd}
	if _, err := binary.Decode(raw, binary.LittleEndian, &bz.hdr); err != nil {
		// Cannot happen: raw has exactly the size of SetupHeader.
		return nil, fmt.Errorf("%w: decoding the setup header: %v", ErrBadImage, err)
	}
	h := &bz.hdr

	if h.Version < MinVersion {
		return nil, fmt.Errorf("%w: boot protocol %s is older than %s", ErrUnsupported, versionString(h.Version), versionString(MinVersion))
	}
	need := uint64(0x23c) // through cmdline_size (2.06)
	if h.Version >= 0x020a {
		need = 0x264 // through init_size (2.10)
	}
	if hdrEnd < need {
		return nil, fmt.Errorf("%w: setup header ends at %#x, protocol %s needs it to reach %#x",
			ErrBadImage, hdrEnd, versionString(h.Version), need)
	}
	if h.LoadFlags&LoadedHigh == 0 {
		return nil, fmt.Errorf("%w: zImage (loadflags without LOADED_HIGH)", ErrUnsupported)
	}

	sects := uint64(h.SetupSects)
	if sects == 0 {
		sects = 4
	}
	bz.pmOffset = (sects + 1) * 512
	if h.Syssize == 0 {
		return nil, fmt.Errorf("%w: syssize is 0", ErrBadImage)
	}
	bz.pmSize = uint64(h.Syssize) * 16
	if n < bz.pmOffset || n-bz.pmOffset < bz.pmSize {
		return nil, fmt.Errorf("%w: bzImage needs %d bytes (setup %#x + syssize*16 %#x), the file has %d",
			ErrTruncated, bz.pmOffset+bz.pmSize, bz.pmOffset, bz.pmSize, n)
	}

	bz.pref = 0x100000
	bz.footprint = bz.pmSize
	if h.Version >= 0x020a {
		if h.PrefAddress != 0 {
			bz.pref = h.PrefAddress
		}
		bz.footprint = max(bz.footprint, uint64(h.InitSize))
	}
	bz.footprint = alignUpNoWrap(bz.footprint, pageSize) // < 2^37: cannot wrap
	if h.Version >= 0x020c {
		bz.kernel64 = h.XLoadFlags&XLFKernel64 != 0
		bz.above4G = h.XLoadFlags&XLFCanBeLoadedAbove4G != 0
	}
	bz.relocatable = h.RelocatableKernel != 0
	if bz.relocatable {
		a := uint64(h.KernelAlignment)
		if a == 0 || a&(a-1) != 0 {
			return nil, fmt.Errorf("%w: kernel_alignment %#x is not a power of two", ErrBadImage, a)
		}
		bz.align = max(a, pageSize)
	}
	bz.cmdlineMax = min(uint64(h.CmdlineSize), CmdlineAreaSize-1)
	bz.initrdEnd = uint64(h.InitrdAddrMax) + 1
	if h.InitrdAddrMax == 0 {
		bz.initrdEnd = defaultInitrdLimit + 1
	}
	return bz, nil
}

func versionString(v uint16) string { return fmt.Sprintf("%d.%02d", v>>8, v&0xff) }

// zeroPage builds boot_params for a kernel loaded at load, with the initrd
// at initrd (Size 0: none), the command line at CmdlineAddr and memory map
// e820 (at most E820Max entries).
func (bz *bzImage) zeroPage(load uint64, initrd memory.Range, rsdp uint64, e820 []E820Entry) []byte {
	zp := make([]byte, pageSize)
	le := binary.LittleEndian
	copy(zp[hdrStart:], bz.raw[hdrStart:bz.hdrEnd])
	le.PutUint16(zp[bpVidMode:], 0xffff) // "normal" video mode
	zp[bpTypeOfLoader] = 0xff            // undefined loader
	zp[bpLoadFlags] |= CanUseHeap
	le.PutUint16(zp[bpHeapEndPtr:], heapEnd)
	le.PutUint32(zp[bpCode32Start:], uint32(load))
	le.PutUint32(zp[bpRamdiskImage:], uint32(initrd.GPA))
	le.PutUint32(zp[bpRamdiskSize:], uint32(initrd.Size))
	le.PutUint32(zp[bpExtRamdiskImage:], uint32(initrd.GPA>>32))
	le.PutUint32(zp[bpExtRamdiskSize:], uint32(initrd.Size>>32))
	le.PutUint32(zp[bpCmdLinePtr:], CmdlineAddr)
	le.PutUint32(zp[bpExtCmdLinePtr:], 0)
	le.PutUint64(zp[bpSetupData:], 0)
	le.PutUint64(zp[bpACPIRSDPAddr:], rsdp)
	zp[bpE820Entries] = byte(len(e820))
	for i, e := range e820 {
		p := zp[bpE820Table+i*bpE820EntrySize:]
		le.PutUint64(p, e.Addr)
		le.PutUint64(p[8:], e.Size)
		le.PutUint32(p[16:], uint32(e.Type))
	}
	return zp
}

// isBzImage reports whether b carries the setup header magic.
func isBzImage(b []byte) bool {
	return len(b) >= hdrMagicOff+4 && bytes.Equal(b[hdrMagicOff:hdrMagicOff+4], []byte("HdrS"))
}
