package boot

import (
	"bytes"
	"debug/elf"
	"os"
	"path/filepath"
	"testing"

	"github.com/govmd/govmd/memory"
)

// Real kernels, used when present. The project's test kernels are built
// into images/out/linux; a Debian kernel can be put in /tmp/govmd-kernels:
//
//	apt-get download linux-image-6.1.0-54-cloud-amd64-unsigned
//	dpkg-deb --fsys-tarfile linux-image-*.deb | tar -x --wildcards './boot/vmlinuz-*'
//	mkdir -p /tmp/govmd-kernels && mv boot/vmlinuz-* /tmp/govmd-kernels/
//
// An ELF vmlinux-* there (e.g. the bzImage payload, decompressed) is
// loaded through its PVH note.
//
// GOVMD_TEST_KERNEL may name one more kernel file.
func realKernels(t *testing.T) []string {
	t.Helper()
	paths := []string{"../images/out/linux/bzImage", "../images/out/linux/vmlinux"}
	debian, _ := filepath.Glob("/tmp/govmd-kernels/vmlinu[xz]-*")
	paths = append(paths, debian...)
	if p := os.Getenv("GOVMD_TEST_KERNEL"); p != "" {
		paths = append(paths, p)
	}
	var present []string
	for _, p := range paths {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			present = append(present, p)
		}
	}
	if len(present) == 0 {
		t.Skip("no real kernel: none of images/out/linux/{bzImage,vmlinux} or /tmp/govmd-kernels/vmlinuz-* exists")
	}
	return present
}

func TestRealKernels(t *testing.T) {
	for _, path := range realKernels(t) {
		t.Run(filepath.Base(path), func(t *testing.T) {
			kernel, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			format, err := Detect(kernel)
			if err != nil {
				t.Fatalf("Detect: %v", err)
			}
			mem, err := memory.New([]memory.Range{{GPA: 0, Size: 256 * mib}})
			if err != nil {
				t.Fatal(err)
			}
			defer mem.Close()
			initrd := bytes.Repeat([]byte("070701"), 100000)
			cfg := Config{Kernel: kernel, Initrd: initrd, Cmdline: "console=ttyS0 panic=-1"}
			l, err := Load(mem, cfg)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			t.Logf("%s: %v, kernel [%#x, %#x), initrd [%#x, %#x), entry %#x",
				path, format, l.KernelRange.GPA, l.KernelRange.End(), l.InitrdRange.GPA, l.InitrdRange.End(), l.Entry.RIP)
			if got := readMem(t, mem, l.InitrdRange.GPA, l.InitrdRange.Size); !bytes.Equal(got, initrd) {
				t.Error("initrd not loaded")
			}
			switch format {
			case FormatBzImage:
				checkRealBzImage(t, mem, kernel, l)
			case FormatPVH:
				checkRealPVH(t, mem, kernel, l)
			}
		})
	}
}

func checkRealBzImage(t *testing.T, mem *memory.Memory, kernel []byte, l *Loaded) {
	h, err := ParseBzImage(kernel)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("protocol %s, setup_sects %d, syssize %#x, pref_address %#x, init_size %#x, kernel_alignment %#x, xloadflags %#x, cmdline_size %d",
		versionString(h.Version), h.SetupSects, h.Syssize, h.PrefAddress, h.InitSize, h.KernelAlignment, h.XLoadFlags, h.CmdlineSize)
	if h.Version < 0x020c || h.XLoadFlags&XLFKernel64 == 0 {
		t.Errorf("protocol %s xloadflags %#x: want a 64-bit kernel with protocol 2.12+", versionString(h.Version), h.XLoadFlags)
	}
	// The test kernel is not relocatable (CONFIG_RELOCATABLE off): it must
	// run at pref_address, which the check of KernelRange below covers. A
	// relocatable kernel's pref_address is kernel_alignment-aligned.
	if h.RelocatableKernel != 0 && (h.KernelAlignment == 0 || h.PrefAddress%uint64(h.KernelAlignment) != 0) {
		t.Errorf("pref_address %#x not aligned to kernel_alignment %#x", h.PrefAddress, h.KernelAlignment)
	}
	if uint64(h.InitSize) < uint64(h.Syssize)*16 || h.CmdlineSize < 255 {
		t.Errorf("init_size %#x syssize %#x cmdline_size %d", h.InitSize, h.Syssize, h.CmdlineSize)
	}
	if l.KernelRange.GPA != h.PrefAddress {
		t.Errorf("loaded at %#x, not at pref_address %#x", l.KernelRange.GPA, h.PrefAddress)
	}
	if l.Entry.RIP != h.PrefAddress+0x200 || !l.Entry.LongMode {
		t.Errorf("entry %#x long mode %v", l.Entry.RIP, l.Entry.LongMode)
	}
	sects := int(h.SetupSects)
	if sects == 0 {
		sects = 4
	}
	off := (sects + 1) * 512
	code := kernel[off : off+int(h.Syssize)*16]
	if got := readMem(t, mem, h.PrefAddress, uint64(len(code))); !bytes.Equal(got, code) {
		t.Error("protected-mode code not at pref_address")
	}
	hdrEnd := 0x202 + int(kernel[0x201])
	zp := readMem(t, mem, ZeroPageAddr, pageSize)
	// Bytes the loader does not set come straight from the image.
	if !bytes.Equal(zp[0x1f1:0x1fa], kernel[0x1f1:0x1fa]) || !bytes.Equal(zp[0x200:0x210], kernel[0x200:0x210]) ||
		!bytes.Equal(zp[0x22c:0x250], kernel[0x22c:0x250]) || !bytes.Equal(zp[0x258:hdrEnd], kernel[0x258:hdrEnd]) {
		t.Error("setup header not copied into boot_params")
	}
	checkPageTables(t, mem)
}

func checkRealPVH(t *testing.T, mem *memory.Memory, kernel []byte, l *Loaded) {
	f, err := elf.NewFile(bytes.NewReader(kernel))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type != elf.PT_LOAD || p.Filesz == 0 {
			continue
		}
		n := min(p.Filesz, 4096)
		if got := readMem(t, mem, p.Paddr, n); !bytes.Equal(got, kernel[p.Off:p.Off+n]) {
			t.Errorf("segment at %#x not loaded", p.Paddr)
		}
	}
	if l.Entry.RBX != PVHStartInfoAddr || l.Entry.LongMode || l.Entry.CR0 != CR0PE|CR0ET {
		t.Errorf("entry state %+v", l.Entry)
	}
	if l.Entry.RIP < l.KernelRange.GPA || l.Entry.RIP >= l.KernelRange.End() {
		t.Errorf("entry %#x outside the kernel %+v", l.Entry.RIP, l.KernelRange)
	}
}
