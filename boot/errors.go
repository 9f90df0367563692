package boot

import "errors"

// Sentinel errors. Load and the parsers wrap them with details (sizes,
// addresses, offsets); test for them with errors.Is. Every error prints as
// one line.
var (
	// ErrNotKernel: the file is neither a bzImage nor an ELF file.
	ErrNotKernel = errors.New("kernel image is neither a bzImage nor an ELF vmlinux")
	// ErrTruncated: the file ends before something its headers describe.
	ErrTruncated = errors.New("kernel image is truncated")
	// ErrBadImage: a header field is invalid or inconsistent.
	ErrBadImage = errors.New("invalid kernel image")
	// ErrUnsupported: a valid image this loader cannot boot (old boot
	// protocol, zImage).
	ErrUnsupported = errors.New("unsupported kernel image")
	// ErrNoPVHNote: an ELF image without the PVH entry note.
	ErrNoPVHNote = errors.New("ELF kernel has no PVH entry note; use the bzImage")
	// ErrKernelTooLarge: no free RAM where the kernel must or may go.
	ErrKernelTooLarge = errors.New("kernel does not fit in guest RAM")
	// ErrInitrdTooLarge: no free RAM for the initrd below its limit.
	ErrInitrdTooLarge = errors.New("initrd does not fit in guest RAM")
	// ErrCmdlineTooLong: the command line exceeds what the kernel accepts.
	ErrCmdlineTooLong = errors.New("kernel command line too long")
	// ErrConfig: the caller's memory description is unusable.
	ErrConfig = errors.New("invalid boot configuration")
)
