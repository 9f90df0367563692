package vmm

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/govmd/govmd/devices/blk"
	"github.com/govmd/govmd/devices/console"
	"github.com/govmd/govmd/devices/fs"
	vnet "github.com/govmd/govmd/devices/net"
	"github.com/govmd/govmd/virtio/pcitransport"
)

// Config describes one VM. The zero values of optional fields are
// meaningful defaults; Validate fills them in and checks everything a user
// can get wrong before anything is created.
type Config struct {
	Kernel  string // path to a bzImage or an ELF vmlinux with a PVH note
	Initrd  string // optional initramfs path
	Cmdline string
	Memory  uint64 // bytes; default 512 MiB
	CPUs    int    // default 1

	// Console receives the guest's serial output; ConsoleIn, if not nil,
	// is the guest's serial input.
	Console   io.Writer
	ConsoleIn io.Reader

	Nets  []NetConfig
	Disks []DiskConfig
	// RNG adds a virtio-rng device (entropy from the host's getrandom).
	RNG bool

	// Shares are host directories the guest mounts with virtio-fs
	// (mount -t virtiofs TAG DIR), each served by a virtiofsd of its own
	// (Virtiofsd: its path; empty: fs.FindVirtiofsd's choice). A
	// read-only share needs ShareHelper: the command that runs govmd's
	// read-only helper (govmd run sets it to its own executable and
	// "share-ro", see fs.ExecReadOnly).
	Shares      []fs.Share
	Virtiofsd   string
	ShareHelper []string

	// ConsolePorts, if not empty, adds a virtio-console device with these
	// ports (port 0 is the guest's hvc0; named ports are /dev/vport*).
	ConsolePorts []console.Port

	// InitrdAppend is appended to the initrd (or is the initrd, without
	// one): an uncompressed cpio archive such as govmd exec's init
	// (boot/execinit). The initrd is padded to 4 bytes before it, as
	// Linux wants of concatenated archives.
	InitrdAppend []byte

	// CPUProfile selects the CPU the guest sees: ProfileAuto (default:
	// detect the host), ProfileHost (everything KVM supports), ProfilePVM
	// (avoid what a software-nested PVM host cannot emulate) or
	// ProfileBare (no hypervisor bit and no KVM paravirtual leaves: for
	// KVM nested on QEMU TCG).
	CPUProfile CPUProfile

	// NetDevice is the command that runs govmd net-device (govmd run
	// sets it to its own executable and "net-device"): each NIC with
	// Sandbox runs its device in such a process.
	NetDevice []string
	// Confine, if not nil, is called once the VM is set up (devices
	// open, vCPUs created), before the guest runs: it confines the
	// process (govmd run: internal/sandbox). An error stops the VM.
	Confine func() error

	// SharedMemory puts guest RAM in a memfd that device processes can
	// map (memory.NewShared). It is implied by any NIC served over
	// vhost-user (sandboxed or VhostUser).
	SharedMemory bool

	// GuestProfile, if set, is a file to which Run writes where the
	// vCPUs spent their time: each vCPU's RIP is sampled every 10 ms
	// (one extra exit each), counted per kernel function when the kernel
	// is an ELF vmlinux with symbols.
	GuestProfile string

	// Start is when the VMM started, the origin of the boot timings
	// (default: when Validate ran).
	Start time.Time

	Log *slog.Logger
}

// NetConfig is one virtio-net NIC: govmd's device on a tap (in a
// sandboxed process of its own, or in the VMM's), or a vhost-user
// backend's.
type NetConfig struct {
	Tap string
	// VhostUser is the socket of a vhost-user backend that serves the
	// NIC instead (Tap, Offload, Locked and Sandbox are then the
	// backend's business).
	VhostUser string
	MAC       net.HardwareAddr  // default: 52:54:00:12:34:56 + the NIC's index (the backend's own with VhostUser)
	Transport pcitransport.Mode // default: transitional
	Offload   vnet.OffloadMode  // default: on
	Locked    bool              // drop spoofed source MACs, filter received frames
	// Sandbox runs the device in a confined net-device process
	// (Config.NetDevice) served over vhost-user; otherwise it runs in the
	// VMM process. ParseNet turns it on unless sandbox=off.
	Sandbox bool
}

// name names the NIC in errors and logs: its tap or socket.
func (n *NetConfig) name() string {
	if n.VhostUser != "" {
		return n.VhostUser
	}
	return n.Tap
}

// remote reports whether the NIC's device is served over vhost-user.
func (n *NetConfig) remote() bool { return n.VhostUser != "" || n.Sandbox }

// DiskConfig is one virtio-blk disk backed by a raw image.
type DiskConfig struct {
	Path      string
	ReadOnly  bool
	Serial    string            // default: derived from the file name
	Transport pcitransport.Mode // default: transitional
	// Queues is the number of request queues (VIRTIO_BLK_F_MQ with more
	// than one); 0 means one per vCPU, at most DefaultDiskQueues, as
	// QEMU does: each vCPU then completes its own requests.
	Queues int
}

// DefaultDiskQueues caps the default number of request queues of a disk.
const DefaultDiskQueues = 16

// Limits on what a user may ask for.
const (
	MinMemory  = 16 << 20
	MaxMemory  = 1 << 40
	MaxCPUs    = 64
	maxDevices = 24 // PCI slots 1..24 for NICs and disks
)

// ErrConfig marks an error in the user's configuration (exit status 2).
var ErrConfig = errors.New("invalid configuration")

func configErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(format, args...))
}

// configWrap is configErr with a cause, kept in the chain (errors.Is finds
// both ErrConfig and, say, fs.ErrNotExist or boot.ErrKernelTooLarge).
func configWrap(cause error, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %w", ErrConfig, fmt.Sprintf(format, args...), cause)
}

// Validate checks the configuration and fills in defaults. It opens no
// devices; it only checks that files exist and are readable.
func (c *Config) Validate() error {
	if c.Kernel == "" {
		return configErr("--kernel is required")
	}
	if c.Memory == 0 {
		c.Memory = 512 << 20
	}
	if c.Memory < MinMemory || c.Memory > MaxMemory {
		return configErr("memory %s is out of range (%s to %s)", FormatSize(c.Memory), FormatSize(MinMemory), FormatSize(MaxMemory))
	}
	if c.Memory%(1<<20) != 0 {
		return configErr("memory %d bytes is not a whole number of MiB", c.Memory)
	}
	if _, err := imageSize(c.Kernel, "kernel", c.loadLimit()); err != nil {
		return err
	}
	if c.Initrd != "" {
		if _, err := imageSize(c.Initrd, "initrd", c.loadLimit()); err != nil {
			return err
		}
	}
	if c.CPUs == 0 {
		c.CPUs = 1
	}
	if c.CPUs < 1 || c.CPUs > MaxCPUs {
		return configErr("cpus %d is out of range (1 to %d)", c.CPUs, MaxCPUs)
	}
	if _, err := ParseCPUProfile(c.CPUProfile.String()); err != nil {
		return configWrap(err, "--cpu-profile")
	}
	if n := c.pciDevices(); n > maxDevices {
		return configErr("too many devices (%d, at most %d)", n, maxDevices)
	}
	taps := map[string]bool{}
	for i := range c.Nets {
		n := &c.Nets[i]
		if (n.Tap == "") == (n.VhostUser == "") {
			return configErr("--net: give either tap=NAME or vhost-user=SOCKET")
		}
		if taps[n.name()] {
			return configErr("%s %q used by two NICs", map[bool]string{true: "vhost-user socket", false: "tap"}[n.VhostUser != ""], n.name())
		}
		if err := validMode(n.Transport); err != nil {
			return configWrap(err, "--net %s", n.name())
		}
		if _, err := vnet.ParseOffloadMode(n.Offload.String()); err != nil {
			return configWrap(err, "--net %s", n.name())
		}
		if n.Tap != "" && n.Sandbox && len(c.NetDevice) == 0 {
			return configErr("--net %s: a sandboxed NIC needs the net-device command (Config.NetDevice)", n.name())
		}
		if n.VhostUser != "" {
			if err := vhostUserSocket(n.VhostUser); err != nil {
				return err
			}
		}
		taps[n.name()] = true
		if n.MAC == nil && n.VhostUser == "" {
			n.MAC = defaultMAC(i)
		}
	}
	tags := map[string]bool{}
	for _, sh := range c.Shares {
		if err := sh.Check(); err != nil {
			return configWrap(err, "--share %s", sh.Path)
		}
		if tags[sh.Tag] {
			return configErr("--share %s: tag %q used by two shares", sh.Path, sh.Tag)
		}
		tags[sh.Tag] = true
		if sh.ReadOnly && len(c.ShareHelper) == 0 {
			return configErr("--share %s: a read-only share needs the read-only helper (Config.ShareHelper)", sh.Path)
		}
	}
	if len(c.Shares) > 0 {
		p, err := fs.FindVirtiofsd(c.Virtiofsd)
		if err != nil {
			return configWrap(err, "--share")
		}
		c.Virtiofsd = p
	}
	if len(c.ConsolePorts) > console.MaxPorts {
		return configErr("%d console ports, at most %d", len(c.ConsolePorts), console.MaxPorts)
	}
	for i := range c.Disks {
		d := &c.Disks[i]
		if err := readable(d.Path, "disk"); err != nil {
			return err
		}
		if err := validMode(d.Transport); err != nil {
			return configWrap(err, "--disk %s", d.Path)
		}
		if d.Queues < 0 || d.Queues > blk.MaxQueues {
			return configErr("disk %s: %d queues (want 1 to %d)", d.Path, d.Queues, blk.MaxQueues)
		}
		if d.Queues == 0 {
			d.Queues = min(c.CPUs, DefaultDiskQueues)
		}
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Start.IsZero() {
		c.Start = time.Now()
	}
	if c.Console == nil {
		c.Console = io.Discard
	}
	return nil
}

// maxImage caps the size of a kernel or an initrd: both are loaded below
// 4 GiB (the boot protocols' initrd_addr_max and PVH's 32-bit module
// addresses).
const maxImage = 4 << 30

// loadLimit is the largest kernel or initrd that can fit in the guest's
// memory.
func (c *Config) loadLimit() int64 { return int64(min(c.Memory, maxImage)) }

// imageSize checks that path is a regular file (not a device, FIFO or
// directory, which could be read without end) of at most limit bytes, and
// returns its size.
func imageSize(path, what string, limit int64) (int64, error) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, configWrap(unwrapPathErr(err), "%s %s", what, path)
	}
	if !st.Mode().IsRegular() {
		return 0, configErr("%s %s is not a regular file (%s)", what, path, fileKind(st.Mode()))
	}
	if st.Size() > limit {
		return 0, configErr("%s %s is %s, larger than the %s it could be loaded into", what, path,
			FormatSize(uint64(st.Size())), FormatSize(uint64(limit)))
	}
	return st.Size(), nil
}

// ReadImage reads a user's file (what names it in errors: "kernel",
// "--module") of at most limit bytes; a missing, unreadable, oversized or
// irregular file is an error wrapping ErrConfig.
func ReadImage(path, what string, limit int64) ([]byte, error) { return readImage(path, what, limit) }

// openImage opens a kernel or an initrd that imageSize accepts and checks
// the file it opened the same way (the path may name another file by
// then), returning it and its size.
func openImage(path, what string, limit int64) (*os.File, int64, error) {
	if _, err := imageSize(path, what, limit); err != nil {
		return nil, 0, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, configWrap(unwrapPathErr(err), "%s %s", what, path)
	}
	st, err := f.Stat()
	switch {
	case err != nil:
		err = configWrap(err, "%s %s", what, path)
	case !st.Mode().IsRegular():
		err = configErr("%s %s is not a regular file (%s)", what, path, fileKind(st.Mode()))
	case st.Size() > limit:
		err = configErr("%s %s grew past %s while being read", what, path, FormatSize(uint64(limit)))
	}
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, st.Size(), nil
}

// readImage reads a kernel or an initrd (openImage), reading at most
// limit bytes whatever the file does meanwhile.
func readImage(path, what string, limit int64) ([]byte, error) {
	f, size, err := openImage(path, what, limit)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// One buffer of the size seen, read in place (io.ReadAll would copy a
	// 17 MB vmlinux several times as it grows its buffer), and one byte
	// more to see a file that grew.
	b := make([]byte, size+1)
	n, err := io.ReadFull(f, b)
	switch {
	case err == nil || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		b = b[:n]
	default:
		return nil, configWrap(unwrapPathErr(err), "%s %s", what, path)
	}
	if n > int(size) {
		rest, err := io.ReadAll(io.LimitReader(f, limit-int64(n)+1))
		if err != nil {
			return nil, configWrap(unwrapPathErr(err), "%s %s", what, path)
		}
		b = append(b, rest...)
	}
	if int64(len(b)) > limit {
		return nil, configErr("%s %s grew past %s while being read", what, path, FormatSize(uint64(limit)))
	}
	return b, nil
}

// fileKind names the type of a file that is not a regular file.
func fileKind(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&os.ModeCharDevice != 0:
		return "a character device"
	case m&os.ModeDevice != 0:
		return "a block device"
	case m&os.ModeNamedPipe != 0:
		return "a named pipe"
	case m&os.ModeSocket != 0:
		return "a socket"
	}
	return m.Type().String()
}

// sharedMemory reports whether guest RAM must be shareable with device
// processes.
func (c *Config) sharedMemory() bool {
	for i := range c.Nets {
		if c.Nets[i].remote() {
			return true
		}
	}
	return c.SharedMemory || len(c.Shares) > 0
}

// pciDevices is the number of PCI functions the VM gets: slots 1 to that
// number hold them.
func (c *Config) pciDevices() int {
	n := len(c.Nets) + len(c.Disks) + len(c.Shares)
	if c.RNG {
		n++
	}
	if len(c.ConsolePorts) > 0 {
		n++
	}
	return n
}

// validMode checks a transport mode a library caller may have set to any
// integer.
func validMode(m pcitransport.Mode) error {
	if m == pcitransport.Transitional || m == pcitransport.Modern || m == pcitransport.Legacy {
		return nil
	}
	return fmt.Errorf("unknown virtio transport %s", m)
}

func readable(path, what string) error {
	f, err := os.Open(path)
	if err != nil {
		return configWrap(unwrapPathErr(err), "%s %s", what, path)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return configWrap(err, "%s %s", what, path)
	}
	if st.IsDir() {
		return configErr("%s %s is a directory", what, path)
	}
	return nil
}

func unwrapPathErr(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// defaultMAC returns a locally administered unicast address for NIC i.
func defaultMAC(i int) net.HardwareAddr {
	return net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, byte(0x56 + i)}
}

// ParseSize parses a memory size such as 512M, 2G, 1024K or a plain number
// of bytes.
func ParseSize(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	mult := uint64(1)
	if t != "" {
		switch strings.ToUpper(t[len(t)-1:]) {
		case "K":
			mult, t = 1<<10, t[:len(t)-1]
		case "M":
			mult, t = 1<<20, t[:len(t)-1]
		case "G":
			mult, t = 1<<30, t[:len(t)-1]
		case "T":
			mult, t = 1<<40, t[:len(t)-1]
		}
	}
	v, err := strconv.ParseUint(t, 10, 64)
	if err != nil {
		return 0, configErr("size %q is not a number with an optional K, M, G or T suffix", s)
	}
	if v > (1<<63)/mult {
		return 0, configErr("size %q is too large", s)
	}
	return v * mult, nil
}

// FormatSize renders a byte count with a binary suffix.
func FormatSize(n uint64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%dG", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dM", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dK", n>>10)
	}
	return fmt.Sprintf("%d", n)
}

// vhostUserSocket checks that path is a socket (a missing or wrong path
// is the user's mistake, found before anything is created).
func vhostUserSocket(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return configWrap(unwrapPathErr(err), "--net vhost-user=%s", path)
	}
	if st.Mode()&os.ModeSocket == 0 {
		return configErr("--net vhost-user=%s: is a %s, not a socket", path, fileKind(st.Mode()))
	}
	return nil
}

// ParseNet parses a --net value:
// tap=NAME[,mac=XX:..][,transport=transitional|modern|legacy][,offload=on|off|csum][,locked][,sandbox=on|off]
// or vhost-user=SOCKET[,mac=XX:..][,transport=...].
func ParseNet(s string) (NetConfig, error) {
	n := NetConfig{Transport: pcitransport.Transitional, Offload: vnet.OffloadOn, Sandbox: true}
	var tapOnly []string // options that only a tap NIC takes
	for _, kv := range splitOpts(s) {
		k, v, hasV := strings.Cut(kv, "=")
		switch k {
		case "tap":
			if v == "" || len(v) > 15 || strings.ContainsAny(v, "/ \t") {
				return n, configErr("--net: tap name %q is not a valid interface name (1-15 characters)", v)
			}
			n.Tap = v
		case "vhost-user":
			if v == "" {
				return n, configErr("--net: vhost-user=SOCKET needs a path")
			}
			n.VhostUser = v
		case "sandbox":
			switch v {
			case "on":
				n.Sandbox = true
			case "off":
				n.Sandbox = false
			default:
				return n, configErr("--net: sandbox %q is not on or off", v)
			}
			tapOnly = append(tapOnly, k)
		case "mac":
			mac, err := net.ParseMAC(v)
			if err != nil || len(mac) != 6 {
				return n, configErr("--net: mac %q is not an Ethernet address", v)
			}
			if mac[0]&1 != 0 {
				return n, configErr("--net: mac %s is a multicast address", mac)
			}
			n.MAC = mac
		case "transport":
			if err := n.Transport.UnmarshalText([]byte(v)); err != nil || v == "" {
				return n, configErr("--net: transport %q is not one of transitional, modern, legacy", v)
			}
		case "offload":
			if err := n.Offload.UnmarshalText([]byte(v)); err != nil {
				return n, configErr("--net: offload %q is not one of on, off, csum", v)
			}
			tapOnly = append(tapOnly, k)
		case "locked":
			if hasV && v != "on" && v != "true" {
				return n, configErr("--net: locked takes no value")
			}
			n.Locked = true
			tapOnly = append(tapOnly, k)
		default:
			return n, configErr("--net: unknown option %q (want tap= or vhost-user=, mac=, transport=, offload=, locked, sandbox=)", k)
		}
	}
	switch {
	case n.Tap == "" && n.VhostUser == "":
		return n, configErr("--net %q: tap=NAME or vhost-user=SOCKET is required", s)
	case n.Tap != "" && n.VhostUser != "":
		return n, configErr("--net %q: tap= and vhost-user= exclude each other", s)
	case n.VhostUser != "" && len(tapOnly) > 0:
		return n, configErr("--net %q: %s is set by the vhost-user backend, not here", s, tapOnly[0])
	}
	if n.VhostUser != "" {
		n.Sandbox = false
	}
	return n, nil
}

// ParseDisk parses a --disk value:
// PATH[,ro][,serial=ID][,transport=...][,queues=N]
func ParseDisk(s string) (DiskConfig, error) {
	opts := splitOpts(s)
	if len(opts) == 0 || opts[0] == "" || strings.Contains(opts[0], "=") && !strings.HasPrefix(opts[0], "path=") && !fileExists(opts[0]) {
		return DiskConfig{}, configErr("--disk %q: the first field must be the image path", s)
	}
	d := DiskConfig{Path: strings.TrimPrefix(opts[0], "path="), Transport: pcitransport.Transitional}
	for _, kv := range opts[1:] {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "ro":
			d.ReadOnly = true
		case "serial":
			if len(v) > 20 {
				return d, configErr("--disk: serial %q is longer than 20 bytes", v)
			}
			d.Serial = v
		case "transport":
			if err := d.Transport.UnmarshalText([]byte(v)); err != nil || v == "" {
				return d, configErr("--disk: transport %q is not one of transitional, modern, legacy", v)
			}
		case "queues":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > blk.MaxQueues {
				return d, configErr("--disk: queues %q is not a number from 1 to %d", v, blk.MaxQueues)
			}
			d.Queues = n
		default:
			return d, configErr("--disk: unknown option %q (want ro, serial=, transport=, queues=)", k)
		}
	}
	if d.Serial == "" {
		d.Serial = DefaultSerial(d.Path)
	}
	return d, nil
}

// ParseShare parses a --share value: PATH,tag=TAG[,ro]. The path is
// made absolute (virtiofsd runs elsewhere).
func ParseShare(s string) (fs.Share, error) {
	opts := splitOpts(s)
	if len(opts) == 0 || opts[0] == "" || strings.HasPrefix(opts[0], "tag=") {
		return fs.Share{}, configErr("--share %q: the first field must be the directory", s)
	}
	p, err := filepath.Abs(strings.TrimPrefix(opts[0], "path="))
	if err != nil {
		return fs.Share{}, configWrap(err, "--share %q", s)
	}
	sh := fs.Share{Path: p}
	for _, kv := range opts[1:] {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "ro":
			sh.ReadOnly = true
		case "tag":
			if err := fs.CheckTag(v); err != nil {
				return sh, configWrap(err, "--share %s", opts[0])
			}
			sh.Tag = v
		default:
			return sh, configErr("--share: unknown option %q (want tag=, ro)", k)
		}
	}
	if sh.Tag == "" {
		return sh, configErr("--share %s: tag=TAG is required (the guest mounts the share by its tag)", opts[0])
	}
	return sh, nil
}

// DefaultSerial derives a disk serial from the image's file name.
func DefaultSerial(path string) string {
	s := filepath.Base(path)
	if len(s) > 20 {
		s = s[:20]
	}
	return s
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func splitOpts(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}
