package vmm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/govmd/govmd/boot"
	"github.com/govmd/govmd/kvm"
)

// vcpuThread is one vCPU and the OS thread that runs it.
type vcpuThread struct {
	id  int
	cpu *kvm.VCPU
	tid atomic.Int64 // 0 until the thread runs
	// sample asks the thread to record its RIP at its next exit (the
	// guest profile's sampler sets it, then kicks).
	sample atomic.Bool
}

// exitStats counts vCPU exits by reason, per vCPU (each vCPU's thread
// writes only its own counters, with atomics: no lock on the exit path, and
// the counts may be read while the vCPUs run), and the instructions govmd
// carried out for the host's emulator (rare: under a lock).
type exitStats struct {
	perCPU []vcpuExits // by vCPU id; set before the vCPUs start
	// kvm holds KVM's own counters of each vCPU (nil where the kernel
	// has no binary statistics), set by the vCPU's thread when it starts
	// and closed with the VM.
	kvm []atomic.Pointer[kvm.Stats]

	mu       sync.Mutex
	emulated map[string]uint64
}

// maxCountedExit bounds the exit reasons counted one by one; higher ones
// (none that KVM gives x86 today) share the last counter.
const maxCountedExit = 63

// vcpuExits is one vCPU's exit counts by reason.
type vcpuExits [maxCountedExit + 1]atomic.Uint64

func (e *vcpuExits) add(r kvm.ExitReason) { e[min(r, maxCountedExit)].Add(1) }

// emulatedInsn counts one emulated instruction and reports whether it was
// the first of its kind.
func (s *exitStats) emulatedInsn(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.emulated == nil {
		s.emulated = map[string]uint64{}
	}
	s.emulated[name]++
	return s.emulated[name] == 1
}

// byReason returns the exit counts summed over the vCPUs.
func (s *exitStats) byReason() map[kvm.ExitReason]uint64 {
	out := map[kvm.ExitReason]uint64{}
	for i := range s.perCPU {
		for r := range s.perCPU[i] {
			if n := s.perCPU[i][r].Load(); n > 0 {
				out[kvm.ExitReason(r)] += n
			}
		}
	}
	return out
}

func (s *exitStats) String() string {
	var parts []string
	for r, n := range s.byReason() {
		parts = append(parts, fmt.Sprintf("%s=%d", strings.TrimPrefix(r.String(), "KVM_EXIT_"), n))
	}
	s.mu.Lock()
	for name, n := range s.emulated {
		parts = append(parts, fmt.Sprintf("emulated_%s=%d", name, n))
	}
	s.mu.Unlock()
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

// ErrGuestCrash marks a Run error that is the guest's own doing: a triple
// fault (the guest kernel crashed so hard that the CPU reset itself).
var ErrGuestCrash = errors.New("guest crashed")

// Run starts the vCPUs and device loops and waits until the guest powers
// off or resets, a vCPU fails, or ctx is canceled. It may be called once.
func (v *VM) Run(ctx context.Context) (Result, error) {
	ran := false
	v.runOnce.Do(func() { ran = true })
	if !ran {
		return ExitFailed, errors.New("vmm: Run called twice")
	}
	defer func() {
		v.runEnd.Store(time.Now().UnixNano())
		close(v.runDone)
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	v.serveINTx()
	if v.cfg.ConsoleIn != nil {
		go v.consoleInput(ctx, v.cfg.ConsoleIn)
	}

	clock := newPhaseClock(time.Now())
	var wg sync.WaitGroup
	ready := make(chan error, v.cfg.CPUs)
	start := make(chan struct{})
	for id := 0; id < v.cfg.CPUs; id++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v.vcpuMain(id, ready, start)
		}()
	}
	var setupErr error
	for i := 0; i < v.cfg.CPUs; i++ {
		if err := <-ready; err != nil && setupErr == nil {
			setupErr = err
		}
	}
	clock.mark("vcpus")
	if setupErr == nil && v.cfg.sharedMemory() && !shmemHugePages() {
		// Said once everything is set up: bad input stays one error line.
		v.log.Info("guest RAM is shared with device processes and gets no transparent huge pages: /sys/kernel/mm/transparent_hugepage/shmem_enabled does not allow them (advise does; or sandbox=off)")
	}
	if setupErr == nil && v.cfg.Confine != nil {
		if err := v.cfg.Confine(); err != nil {
			setupErr = fmt.Errorf("vmm: confining the process: %w", err)
		}
		clock.mark("confine")
	}
	v.log.Debug("vcpus set up", clock.attrs...)
	if setupErr != nil {
		v.end(ExitFailed, setupErr)
	}
	now := time.Now()
	v.runStart.Store(now.UnixNano())
	if setupErr == nil {
		v.MarkBoot(MarkVCPUsStart, now)
	}
	close(start)
	if v.cfg.GuestProfile != "" {
		v.sampler = newRIPSampler(10 * time.Millisecond)
		samplerDone := make(chan struct{})
		go v.sampler.run(v, samplerDone)
		defer func() {
			close(samplerDone)
			if err := v.writeGuestProfile(); err != nil {
				v.log.Error("writing the guest profile failed", "err", err)
			}
		}()
	}

	select {
	case <-v.endCh:
	case <-ctx.Done():
		v.end(ExitCanceled, nil)
	}
	wg.Wait()
	return v.endRes, v.endErr
}

// kickAll forces every running vCPU out of KVM_RUN.
func (v *VM) kickAll() {
	v.cpusMu.Lock()
	defer v.cpusMu.Unlock()
	for _, t := range v.cpus {
		if tid := t.tid.Load(); tid != 0 {
			_ = t.cpu.Kick(int(tid))
		}
	}
}

// vcpuMain creates, sets up and runs vCPU id on a locked OS thread. It
// reports setup on ready, then waits for start.
func (v *VM) vcpuMain(id int, ready chan<- error, start <-chan struct{}) {
	runtime.LockOSThread()
	// The thread is left locked: it carried signal-driven kicks and ends
	// with the goroutine.
	cpu, err := v.kvm.CreateVCPU(id)
	if err != nil {
		ready <- err
		return
	}
	defer cpu.Close()
	if err := v.setupVCPU(cpu, id); err != nil {
		ready <- fmt.Errorf("vcpu %d: %w", id, err)
		return
	}
	if st, err := cpu.OpenStats(); err == nil {
		v.stats.kvm[id].Store(st)
	} else {
		v.log.Debug("no KVM statistics for the vCPU", "vcpu", id, "err", err)
	}
	t := &vcpuThread{id: id, cpu: cpu}
	t.tid.Store(int64(kvm.ThreadID()))
	v.cpusMu.Lock()
	v.cpus = append(v.cpus, t)
	v.cpusMu.Unlock()
	defer func() {
		v.cpusMu.Lock()
		for i, c := range v.cpus {
			if c == t {
				v.cpus = append(v.cpus[:i], v.cpus[i+1:]...)
				break
			}
		}
		v.cpusMu.Unlock()
	}()
	ready <- nil
	<-start
	if err := v.loop(t); err != nil {
		v.end(ExitFailed, err)
	}
}

// setupVCPU gives a new vCPU its CPUID and, for the boot vCPU, the kernel
// entry state and the local APIC's LINT wiring.
func (v *VM) setupVCPU(cpu *kvm.VCPU, id int) error {
	if err := cpu.SetCPUID2(guestCPUID(v.cpuid, id, v.cfg.CPUs, v.prof)); err != nil {
		return err
	}
	if id != 0 {
		return nil // application processors wait for INIT/SIPI in KVM
	}
	lapic, err := cpu.GetLAPIC()
	if err != nil {
		return err
	}
	lapic.SetBSPLINTs()
	if err := cpu.SetLAPIC(lapic); err != nil {
		return err
	}
	sregs, err := cpu.GetSregs()
	if err != nil {
		return err
	}
	applyEntrySregs(sregs, &v.entry)
	if err := cpu.SetSregs(sregs); err != nil {
		return err
	}
	e := &v.entry
	return cpu.SetRegs(&kvm.Regs{RIP: e.RIP, RSP: e.RSP, RSI: e.RSI, RBX: e.RBX, RFLAGS: e.RFLAGS})
}

func kvmSegment(s boot.Segment) kvm.Segment {
	b := func(x bool) uint8 {
		if x {
			return 1
		}
		return 0
	}
	return kvm.Segment{
		Base: s.Base, Limit: s.Limit, Selector: s.Selector, Type: s.Type,
		Present: b(s.Present), DPL: s.DPL, DB: b(s.DB), S: b(s.S), L: b(s.L), G: b(s.G),
		AVL: b(s.AVL), Unusable: b(s.Unusable),
	}
}

// applyEntrySregs sets the segment, descriptor-table and control registers
// of the boot loader's entry state; TR, LDT and the APIC base keep KVM's
// reset values.
func applyEntrySregs(s *kvm.Sregs, e *boot.CPUState) {
	s.CS, s.DS, s.ES = kvmSegment(e.CS), kvmSegment(e.DS), kvmSegment(e.ES)
	s.FS, s.GS, s.SS = kvmSegment(e.FS), kvmSegment(e.GS), kvmSegment(e.SS)
	s.GDT = kvm.DTable{Base: e.GDTBase, Limit: e.GDTLimit}
	s.IDT = kvm.DTable{}
	s.CR0, s.CR3, s.CR4, s.EFER = e.CR0, e.CR3, e.CR4, e.EFER
}

// loop runs the vCPU until the VM stops or the vCPU fails.
func (v *VM) loop(t *vcpuThread) error {
	cpu := t.cpu
	exits := &v.stats.perCPU[t.id]
	if !v.stopping.Load() {
		v.firstEntry.CompareAndSwap(0, time.Now().UnixNano())
	}
	for {
		if v.stopping.Load() {
			if v.endRes == ExitCanceled {
				v.logStopState(t)
			}
			return nil
		}
		if v.paused.Load() {
			v.park()
			continue
		}
		exit, err := cpu.Run()
		if err != nil {
			return err
		}
		exits.add(exit.Reason)
		switch exit.Reason {
		case kvm.ExitIntr:
			if err := cpu.SetImmediateExit(false); err != nil {
				return err
			}
			if v.sampler != nil && t.sample.Swap(false) {
				if regs, err := cpu.GetRegs(); err == nil {
					v.sampler.add(regs.RIP)
				}
			}
		case kvm.ExitIO:
			io, err := exit.IO()
			if err != nil {
				return fmt.Errorf("vcpu %d: %w", t.id, err)
			}
			size := int(io.Size)
			for i := 0; i < int(io.Count); i++ {
				chunk := io.Data[i*size : (i+1)*size]
				if io.Direction == kvm.IOOut {
					v.pio.Write(uint64(io.Port), chunk)
				} else {
					v.pio.Read(uint64(io.Port), chunk)
				}
			}
		case kvm.ExitMMIO:
			m, err := exit.MMIO()
			if err != nil {
				return fmt.Errorf("vcpu %d: %w", t.id, err)
			}
			if m.IsWrite {
				v.mmio.Write(m.Addr, m.Data)
			} else {
				v.mmio.Read(m.Addr, m.Data)
			}
		case kvm.ExitSystemEvent:
			se := exit.SystemEvent()
			switch se.Type {
			case kvm.SystemEventShutdown:
				v.end(ExitPowerOff, nil)
			case kvm.SystemEventReset:
				v.end(ExitReboot, nil)
			default:
				return v.vcpuError(t, exit, fmt.Sprintf("guest reported a %s system event", se.Type))
			}
		case kvm.ExitInternalError:
			if ok, err := v.handleEmulationFailure(t, exit); ok || err != nil {
				if err != nil {
					return err
				}
				continue
			}
			return v.vcpuError(t, exit, internalErrorHint(exit, v.prof.pvm))
		case kvm.ExitShutdown:
			return fmt.Errorf("%w: %w", ErrGuestCrash, v.vcpuError(t, exit, "triple fault: the guest took an exception it could not handle"))
		case kvm.ExitHLT:
			return v.vcpuError(t, exit, "the vCPU halted and KVM returned to the VMM")
		case kvm.ExitFailEntry:
			return v.vcpuError(t, exit, "KVM could not enter the guest (invalid vCPU state)")
		case kvm.ExitIRQWindowOpen, kvm.ExitTPRAccess, kvm.ExitIOAPICEOI:
			// Nothing to do with the in-kernel irqchip.
		default:
			return v.vcpuError(t, exit, "unexpected exit")
		}
	}
}

// handleEmulationFailure carries out an instruction KVM's emulator could
// not, and reports whether the vCPU can continue.
func (v *VM) handleEmulationFailure(t *vcpuThread, exit kvm.Exit) (bool, error) {
	ie := exit.InternalError()
	if ie.Suberror != kvm.InternalErrorEmulation || len(ie.InsnBytes) == 0 {
		return false, nil
	}
	regs, err := t.cpu.GetRegs()
	if err != nil {
		return false, err
	}
	sregs, err := t.cpu.GetSregs()
	if err != nil {
		return false, err
	}
	em, err := emulateFailed(ie.InsnBytes, regs, int(sregs.SS.DPL), sregs.CS.L == 1)
	if err != nil {
		return false, nil
	}
	if err := t.cpu.SetRegs(regs); err != nil {
		return false, err
	}
	if em.injectBP {
		if err := t.cpu.InjectException(3, nil); err != nil {
			return false, err
		}
	}
	if v.stats.emulatedInsn(em.name) {
		v.log.Info("emulated an instruction the host's KVM emulator lacks", "vcpu", t.id, "insn", em.name,
			"rip", fmt.Sprintf("%#x", regs.RIP))
	}
	return true, nil
}

// logStopState logs where a vCPU was when the VM was canceled (debug
// level): for a guest that hung, the RIP says where.
func (v *VM) logStopState(t *vcpuThread) {
	if !v.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	regs, err := t.cpu.GetRegs()
	if err != nil {
		return
	}
	cpl := -1
	if s, err := t.cpu.GetSregs(); err == nil {
		cpl = int(s.SS.DPL)
	}
	v.log.Debug("vcpu state at stop", "vcpu", t.id, "rip", fmt.Sprintf("%#x", regs.RIP),
		"rsp", fmt.Sprintf("%#x", regs.RSP), "rflags", fmt.Sprintf("%#x", regs.RFLAGS), "cpl", cpl,
		"stack_text", v.stackText(t, regs.RSP))
}

// stackText returns the words on the top 512 bytes of a vCPU's stack that
// look like kernel text addresses (0xffffffff8xxxxxxx), innermost first:
// with the guest's System.map they are a rough backtrace. Only guest
// memory is read; nothing is trusted.
func (v *VM) stackText(t *vcpuThread, rsp uint64) string {
	var out []string
	for off := uint64(0); off < 512; off += 8 {
		gva := rsp + off
		gpa, ok, err := t.cpu.TranslateAddress(gva)
		if err != nil || !ok {
			break
		}
		b, err := v.mem.Slice(gpa, 8)
		if err != nil {
			break
		}
		if w := binary.LittleEndian.Uint64(b); w>>28 == 0xffffffff8 {
			out = append(out, fmt.Sprintf("%#x", w))
		}
	}
	return strings.Join(out, " ")
}

// vcpuError builds the error that ends the VM: the exit, the vCPU's
// registers and what to do.
func (v *VM) vcpuError(t *vcpuThread, exit kvm.Exit, what string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "vcpu %d: %s: %s", t.id, what, exit.String())
	if regs, err := t.cpu.GetRegs(); err == nil {
		fmt.Fprintf(&b, " rip=%#x rsp=%#x rflags=%#x", regs.RIP, regs.RSP, regs.RFLAGS)
	}
	if s, err := t.cpu.GetSregs(); err == nil {
		mode := "protected"
		switch {
		case s.CR0&1 == 0:
			mode = "real"
		case s.CS.L == 1:
			mode = "long"
		}
		fmt.Fprintf(&b, " cpl=%d mode=%s cr0=%#x cr3=%#x cr4=%#x efer=%#x", s.SS.DPL, mode, s.CR0, s.CR3, s.CR4, s.EFER)
	}
	return errors.New(b.String())
}

// internalErrorHint names the instruction KVM failed on and says what to
// do about it.
func internalErrorHint(exit kvm.Exit, pvm bool) string {
	ie := exit.InternalError()
	if ie.Suberror != kvm.InternalErrorEmulation {
		return "KVM internal error"
	}
	name := describeInsn(ie.InsnBytes)
	msg := "KVM's instruction emulator failed"
	if name != "" {
		msg += " on " + name
	}
	if pvm {
		msg += " (this host is PVM: KVM emulates every instruction of a guest that is not PVM-enlightened;" +
			" boot the guest with noxsave clearcpuid=smap,popcnt nofsgsbase and see docs/pvm.md)"
	} else {
		msg += " (if /dev/kvm is software-nested PVM, try --cpu-profile pvm)"
	}
	return msg
}

// describeInsn recognises instructions known to be missing from KVM's
// emulator.
func describeInsn(b []byte) string {
	skip := 0
	for skip < len(b) && (b[skip] == 0x66 || b[skip] == 0xf2 || b[skip] == 0xf3 || b[skip] == 0xf0 || b[skip]&0xf0 == 0x40) {
		skip++
	}
	op := b[skip:]
	switch {
	case hasPrefix(op, 0x0f, 0x01, 0xca):
		return "clac (SMAP)"
	case hasPrefix(op, 0x0f, 0x01, 0xcb):
		return "stac (SMAP)"
	case hasPrefix(op, 0x0f, 0xc7) && len(op) > 2 && op[2]>>3&7 == 1:
		return "cmpxchg8b/16b"
	case hasPrefix(op, 0x0f, 0xae) && len(op) > 2 && op[2]>>6 != 3:
		switch op[2] >> 3 & 7 {
		case 4:
			return "xsave"
		case 5:
			return "xrstor"
		case 6:
			return "xsaveopt"
		}
	case hasPrefix(op, 0x0f, 0xae) && len(op) > 2 && op[2]>>6 == 3 && op[2]>>3&7 <= 3:
		return "rd/wrfsbase/gsbase (FSGSBASE)"
	case hasPrefix(op, 0x0f, 0xb8):
		return "popcnt"
	case hasPrefix(op, 0x0f, 0x01, 0xd0):
		return "xgetbv"
	case len(op) > 0 && op[0] == 0x9b:
		return "fwait"
	case len(op) > 0 && op[0] == 0xcc:
		return "int3"
	case hasPrefix(op, 0x0f, 0x01, 0xc1), hasPrefix(op, 0x0f, 0x01, 0xd9):
		return "vmcall/vmmcall (hypercall)"
	}
	return ""
}
