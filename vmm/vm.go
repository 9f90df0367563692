package vmm

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/govmd/govmd/acpi"
	"github.com/govmd/govmd/boot"
	"github.com/govmd/govmd/bus"
	"github.com/govmd/govmd/devices/console"
	"github.com/govmd/govmd/devices/reset"
	"github.com/govmd/govmd/devices/rtc"
	"github.com/govmd/govmd/devices/serial"
	"github.com/govmd/govmd/internal/ratelimit"
	"github.com/govmd/govmd/kvm"
	"github.com/govmd/govmd/memory"
	"github.com/govmd/govmd/pci"
)

// Result is how a VM run ended.
type Result int

// Run results.
const (
	ExitFailed   Result = iota // a vCPU or device failed; Run returns the error
	ExitPowerOff               // the guest powered off (ACPI S5 or a shutdown event)
	ExitReboot                 // the guest asked for a reset
	ExitCanceled               // the context was canceled
	ExitStopped                // Stop (the control API) ended the run
)

func (r Result) String() string {
	switch r {
	case ExitPowerOff:
		return "power off"
	case ExitReboot:
		return "reboot"
	case ExitCanceled:
		return "canceled"
	case ExitStopped:
		return "stopped"
	}
	return "failed"
}

// VM is one virtual machine. New builds it (nothing runs yet), Run runs it
// once, Close releases everything New created, in every case.
type VM struct {
	cfg  Config
	log  *slog.Logger
	glog *ratelimit.Logger // what a guest can make happen without limit
	prof guestProfile

	sys    *kvm.System
	kvm    *kvm.VM
	mem    *memory.Memory
	pio    *bus.Bus
	mmio   *bus.Bus
	root   *pci.Root
	uart   *serial.UART
	pm     *acpi.PM
	router *router
	cpuid  []kvm.CPUIDEntry
	entry  boot.CPUState
	format boot.Format

	devices []*pciDevice    // the virtio PCI functions, in slot order
	console *console.Device // Config.ConsolePorts' device, if any

	closers []func() error // run in reverse order by Close

	// Run state.
	runOnce  sync.Once
	stopping atomic.Bool
	endOnce  sync.Once
	endRes   Result
	endErr   error
	endCh    chan struct{}
	cpusMu   sync.Mutex
	cpus     []*vcpuThread
	stats    exitStats
	sampler  *ripSampler // nil unless cfg.GuestProfile is set
	closedMu sync.Mutex
	closed   bool

	// Control (control.go).
	runStart     atomic.Int64  // when Run started the vCPUs (Unix ns)
	runEnd       atomic.Int64  // when Run returned (Unix ns)
	runDone      chan struct{} // closed when Run returns
	powerPressed atomic.Bool
	// Pause sets paused and kicks the vCPUs; each parks at the top of its
	// loop (park) until Resume or the end of the run. paused is written
	// under pauseMu and read without it by the vCPU loop; parked counts
	// the parked vCPU threads (guarded by pauseMu, signalled on pauseCond).
	paused    atomic.Bool
	pauseMu   sync.Mutex
	pauseCond *sync.Cond // on pauseMu
	parked    int

	firstEntry atomic.Int64 // when a vCPU first entered the guest (Unix ns)
	bootMu     sync.Mutex
	boot       map[string]time.Time // MarkBoot's milestones
}

// VMM milestones of MarkBoot's, before the guest's first instruction.
const (
	// MarkBuilt: New returned (images read, memory, KVM VM and devices
	// set up).
	MarkBuilt = "built"
	// MarkVCPUsStart: Run created and set up the vCPUs, confined the
	// process and let the vCPUs go.
	MarkVCPUsStart = "vcpus_start"
)

// Milestone returns when MarkBoot recorded name, or the zero time.
func (v *VM) Milestone(name string) time.Time {
	v.bootMu.Lock()
	defer v.bootMu.Unlock()
	return v.boot[name]
}

// FirstEntry returns when a vCPU first entered the guest (KVM_RUN), or
// the zero time if none has yet.
func (v *VM) FirstEntry() time.Time {
	if ns := v.firstEntry.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// New checks cfg, loads the kernel and builds the VM: guest memory, the
// KVM VM with its irqchip, the platform devices, the PCI devices and the
// ACPI tables. Errors in what the user gave (flags, images, disks) wrap
// ErrConfig and are detected before any KVM object, tap or device is
// created; on any error everything created so far is released.
func New(cfg Config) (_ *VM, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	v := &VM{cfg: cfg, log: cfg.Log, glog: ratelimit.New(cfg.Log, 10*time.Second, 10), endCh: make(chan struct{}), runDone: make(chan struct{})}
	v.pauseCond = sync.NewCond(&v.pauseMu)
	v.stats.perCPU = make([]vcpuExits, cfg.CPUs)
	v.stats.kvm = make([]atomic.Pointer[kvm.Stats], cfg.CPUs)
	defer func() {
		if err != nil {
			v.Close()
		}
	}()
	clock := newPhaseClock(time.Now())
	prof, why := resolveProfile(cfg.CPUProfile, kvm.DetectHostProfile)
	v.prof = prof
	v.log.Debug("cpu profile", "pvm", prof.pvm, "bare", prof.bare, "why", why)
	clock.mark("profile")

	// 1. Everything that can be wrong with the user's files, before KVM.
	kernel, unmapKernel, err := mapImage(cfg.Kernel, "kernel", cfg.loadLimit())
	if err != nil {
		return nil, err
	}
	defer unmapKernel() // copied into guest RAM by boot.Load
	if err := guardFaults("kernel", cfg.Kernel, func() error {
		_, err := boot.Detect(kernel)
		return err
	}); err != nil {
		if errors.Is(err, ErrConfig) {
			return nil, err
		}
		return nil, configWrap(err, "kernel %s", cfg.Kernel)
	}
	var initrd []byte
	if cfg.Initrd != "" {
		if initrd, err = readImage(cfg.Initrd, "initrd", cfg.loadLimit()); err != nil {
			return nil, err
		}
	}
	if len(cfg.InitrdAppend) > 0 {
		initrd = AppendArchive(initrd, cfg.InitrdAppend)
	}
	clock.mark("images")
	ram := ramRanges(cfg.Memory)
	newMem := memory.New
	if cfg.sharedMemory() {
		newMem = memory.NewShared
	}
	if v.mem, err = newMem(ram); err != nil {
		return nil, fmt.Errorf("guest memory: %w", err)
	}
	v.closers = append(v.closers, v.mem.Close)
	clock.mark("memory")
	tables, rsdp, err := acpi.Build(v.acpiConfig(), acpiBase)
	if err != nil {
		return nil, fmt.Errorf("ACPI tables: %w", err)
	}
	if len(tables) > acpiMaxSize {
		return nil, fmt.Errorf("ACPI tables: %d bytes do not fit below 1 MiB", len(tables))
	}
	if err := v.mem.WriteAt(tables, acpiBase); err != nil {
		return nil, fmt.Errorf("ACPI tables: %w", err)
	}
	mp, err := boot.MPTable(v.mpConfig(), boot.MPTableAddr)
	if err != nil {
		return nil, fmt.Errorf("MP table: %w", err)
	}
	if err := v.mem.WriteAt(mp, boot.MPTableAddr); err != nil {
		return nil, fmt.Errorf("MP table: %w", err)
	}
	// A seed for the guest kernel's CRNG (bzImage: SETUP_RNG_SEED), so
	// that it is ready at boot instead of waiting for entropy.
	seed := make([]byte, 32)
	if _, err := rand.Read(seed); err != nil {
		return nil, fmt.Errorf("RNG seed: %w", err)
	}
	var loaded *boot.Loaded
	if err := guardFaults("kernel", cfg.Kernel, func() (err error) {
		loaded, err = boot.Load(v.mem, boot.Config{
			Kernel: kernel, Initrd: initrd, Cmdline: cfg.Cmdline, RAM: ram, RSDP: rsdp, RNGSeed: seed,
		})
		return err
	}); err != nil {
		if errors.Is(err, ErrConfig) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	v.entry, v.format = loaded.Entry, loaded.Format
	v.log.Debug("kernel loaded", "format", loaded.Format,
		"kernel", fmt.Sprintf("%#x+%#x", loaded.KernelRange.GPA, loaded.KernelRange.Size),
		"initrd", fmt.Sprintf("%#x+%#x", loaded.InitrdRange.GPA, loaded.InitrdRange.Size))
	clock.mark("load")
	disks, err := openDisks(cfg)
	if err != nil {
		return nil, err
	}
	for _, d := range disks {
		v.closers = append(v.closers, d.dev.Close)
	}
	nics, err := v.openNICs()
	if err != nil {
		return nil, err
	}
	shares, err := v.openShares()
	if err != nil {
		return nil, err
	}

	clock.mark("backends")

	// 2. KVM.
	if v.sys, err = kvm.Open(""); err != nil {
		return nil, fmt.Errorf("%w (govmd needs KVM: a readable and writable /dev/kvm)", err)
	}
	v.closers = append(v.closers, v.sys.Close)
	if v.kvm, err = v.sys.CreateVM(); err != nil {
		return nil, err
	}
	v.closers = append(v.closers, v.kvm.Close)
	clock.mark("kvm_vm")
	if err := v.setupVM(ram); err != nil {
		return nil, err
	}
	supported, err := v.sys.SupportedCPUID()
	if err != nil {
		return nil, err
	}
	v.cpuid = supported
	clock.mark("vm_setup")

	// 3. Devices.
	v.pio = bus.New("pio", v.log)
	v.mmio = bus.New("mmio", v.log)
	if err := v.addPlatform(); err != nil {
		return nil, err
	}
	if err := v.addPCIDevices(nics, disks, shares); err != nil {
		return nil, err
	}
	clock.mark("devices")
	v.log.Debug("vmm set-up", clock.attrs...)
	v.MarkBoot(MarkBuilt, time.Now())
	return v, nil
}

// phaseClock times the phases of a set-up for a debug log line: where
// the time to the first guest instruction goes on a slow host.
type phaseClock struct {
	last  time.Time
	attrs []any // name, duration, ...
}

func newPhaseClock(start time.Time) *phaseClock { return &phaseClock{last: start} }

// mark ends the phase called name.
func (c *phaseClock) mark(name string) {
	now := time.Now()
	c.attrs = append(c.attrs, name, now.Sub(c.last).Round(time.Microsecond))
	c.last = now
}

// acpiConfig describes the platform for the ACPI tables.
func (v *VM) acpiConfig() acpi.Config {
	routes := pci.Routes()
	prt := make([]acpi.PRTEntry, 0, len(routes))
	for _, r := range routes {
		// The slots that hold devices only (there is no hotplug): the
		// guest interprets this table at boot, which costs seconds when
		// its instructions are emulated (PVM).
		if r.Slot > v.cfg.pciDevices() {
			continue
		}
		prt = append(prt, acpi.PRTEntry{Slot: uint8(r.Slot), Pin: r.Pin - 1, GSI: r.GSI})
	}
	w := pciWindows()
	return acpi.Config{
		CPUs:    v.cfg.CPUs,
		PM1aEvt: portPM1aEvt,
		PM1aCnt: portPM1aCnt,
		PMTimer: portPMTimer,
		SCI:     irqSCI,
		Serial:  true,
		// The control API's power button (VM.PowerButton).
		PowerButton: true,
		PCI: &acpi.PCIConfig{
			Mem32: acpi.Window{Base: w.Mem32.Base, Size: w.Mem32.Size},
			PRT:   prt,
		},
		MaxSize: acpiMaxSize,
	}
}

// mpConfig describes the platform for the MP table, as acpiConfig does for
// the MADT and the _PRT.
func (v *VM) mpConfig() boot.MPConfig {
	c := boot.MPConfig{CPUs: v.cfg.CPUs, LAPICAddr: lapicAddr, IOAPICAddr: acpi.DefaultIOAPICAddr, SCI: irqSCI}
	for _, r := range pci.Routes() {
		if r.Slot <= v.cfg.pciDevices() {
			c.PCI = append(c.PCI, boot.MPRoute{Slot: r.Slot, Pin: int(r.Pin), IOAPICPin: int(r.GSI)})
		}
	}
	return c
}

// setupVM gives the VM its memory, irqchip and PIT.
func (v *VM) setupVM(ram []memory.Range) error {
	for _, c := range []kvm.Cap{kvm.CapIRQChip, kvm.CapUserMemory, kvm.CapIRQFD, kvm.CapIOEventFD, kvm.CapSetTSSAddr} {
		if n, err := v.sys.CheckExtension(c); err != nil || n <= 0 {
			return fmt.Errorf("KVM lacks %s (needed by govmd)", c)
		}
	}
	if err := v.kvm.SetTSSAddr(tssAddr); err != nil {
		return err
	}
	if err := v.kvm.SetIdentityMapAddr(identityMapAddr); err != nil {
		// Only VMX uses it; SVM and PVM refuse or ignore it.
		v.log.Debug("identity map address not set", "err", err)
	}
	if err := v.kvm.CreateIRQChip(); err != nil {
		return err
	}
	if err := v.kvm.CreatePIT2(); err != nil {
		return err
	}
	for i, r := range v.mem.Regions() {
		if err := v.kvm.SetUserMemoryRegion(uint32(i), 0, r.GPA, r.Host); err != nil {
			return err
		}
	}
	pins := kvm.PCIRQRouting()
	if v.prof.bare {
		// KVM nested on QEMU TCG: there the L0 emulation delivers an
		// edge interrupt again right after the guest's EOI, with
		// interrupts disabled, and the guest deadlocks in
		// handle_edge_irq (docs/pvm.md). With the PIT left on IOAPIC
		// pin 0, where the MADT does not put it, Linux finds no timer
		// on the IOAPIC and takes it through the 8259A (ExtINT), whose
		// handler masks the line while it runs.
		pins = kvm.DefaultIRQRouting()
	}
	v.router = newRouter(v.kvm, pins)
	if err := v.router.install(); err != nil {
		return fmt.Errorf("vmm: GSI routing: %w", err)
	}
	return nil
}

// irqLine drives an ISA interrupt line of the in-kernel irqchip.
func (v *VM) irqLine(gsi uint32) func(bool) {
	return func(level bool) {
		if err := v.kvm.SetIRQLine(gsi, level); err != nil {
			v.log.Warn("irq line", "gsi", gsi, "err", err)
		}
	}
}

// addPlatform registers the UART, CMOS, reset, ACPI PM and PCI host
// bridge.
func (v *VM) addPlatform() error {
	v.uart = serial.New(v.cfg.Console, v.irqLine(irqCOM1))
	v.pm = &acpi.PM{
		OnSleep: func(typ int) {
			if typ == acpi.SleepTypeS5 {
				v.end(ExitPowerOff, nil)
				return
			}
			v.glog.Info("guest entered an unsupported sleep state; ignoring", "slp_typ", typ)
		},
		SCI: v.irqLine(irqSCI),
	}
	onReset := func() { v.end(ExitReboot, nil) }
	regs := []struct {
		port, size uint64
		h          bus.Handler
	}{
		{portCOM1, 8, v.uart},
		{portCMOS, 2, rtc.New()},
		{portI8042Data, 5, &reset.I8042{OnReset: onReset}},
		{portPM1aEvt, 4, v.pm.EventBlock()},
		{portPM1aCnt, 2, v.pm.ControlBlock()},
		{portPMTimer, 4, acpi.NewPMTimer()},
		{portPOST, 1, reset.Sink{}},
	}
	for _, r := range regs {
		if err := v.pio.Register(r.port, r.size, r.h); err != nil {
			return fmt.Errorf("port %#x: %w", r.port, err)
		}
	}
	rc := pciWindows()
	rc.Reset = &reset.CF9{OnReset: onReset}
	root, err := pci.NewRoot(v.pio, v.mmio, v.log, rc)
	if err != nil {
		return err
	}
	v.root = root
	return nil
}

// end records how the run ended (the first call wins) and stops the vCPUs.
func (v *VM) end(res Result, err error) {
	v.endOnce.Do(func() {
		v.endRes, v.endErr = res, err
		v.stopping.Store(true)
		close(v.endCh)
	})
	v.wakeParked()
	v.kickAll()
}

// Close releases everything. It may be called more than once and after a
// failed New.
func (v *VM) Close() error {
	v.closedMu.Lock()
	defer v.closedMu.Unlock()
	if v.closed {
		return nil
	}
	v.closed = true
	v.stopping.Store(true) // device processes ending now are expected to
	var errs []error
	for _, d := range v.devices {
		d.tr.RemoveDoorbells()
	}
	for i := len(v.closers) - 1; i >= 0; i-- {
		if err := v.closers[i](); err != nil {
			errs = append(errs, err)
		}
	}
	v.closers = nil
	for i := range v.stats.kvm {
		if st := v.stats.kvm[i].Swap(nil); st != nil {
			st.Close()
		}
	}
	return errors.Join(errs...)
}

// consoleInput feeds the guest's serial input until r ends.
func (v *VM) consoleInput(ctx context.Context, r io.Reader) {
	buf := make([]byte, 64)
	for ctx.Err() == nil {
		n, err := r.Read(buf)
		if n > 0 {
			v.uart.Input(buf[:n])
		}
		if err != nil {
			return
		}
	}
}

// shmemHugePages reports whether shmem (a memfd) that asks for
// transparent huge pages gets them, from the host's shmem_enabled
// setting. An unreadable setting counts as yes (nothing to say).
func shmemHugePages() bool {
	b, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
	return err != nil || shmemTHP(string(b))
}

// shmemTHP parses shmem_enabled ("always within_size advise [never] deny
// force"): the selected word is advise, always, within_size or force.
func shmemTHP(setting string) bool {
	for _, w := range strings.Fields(setting) {
		if strings.HasPrefix(w, "[") {
			return w != "[never]" && w != "[deny]"
		}
	}
	return true
}
