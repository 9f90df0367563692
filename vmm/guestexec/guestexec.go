// Package guestexec runs one command in a fresh guest and reports how it
// ended: govmd exec.
//
// The guest side is govmd's own init (boot/execinit), appended to the
// initramfs as an extra cpio archive and started with rdinit=. It mounts
// the shares, runs the command with three virtio-console ports as its
// stdout and stderr and as a status channel ("init", "start", "exit N"),
// and powers off. This side copies the ports to Config.Stdout and
// Config.Stderr, timestamps the status lines, watches the serial console
// for a kernel panic, and turns every way a run can end into one exit
// status (the Status constants): none of them waits without a bound.
package guestexec

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/govmd/govmd/boot/execinit"
	"github.com/govmd/govmd/devices/console"
	"github.com/govmd/govmd/devices/fs"
	"github.com/govmd/govmd/vmm"
)

// Exit statuses of govmd exec other than the command's own (which it
// passes on: 0-255, 128+N for a command killed by signal N; 126 and 127
// when the guest init cannot execute or find the command, as a shell
// does). They collide with a command's own statuses of the same value;
// Outcome.Reason (govmd exec prints it) tells them apart.
const (
	// StatusPanic: the guest kernel panicked, oopsed (exec boots with
	// oops=panic) or crashed (triple fault) while the command ran.
	StatusPanic = 121
	// StatusNoStart: the guest never started the command: the kernel did
	// not boot (or crashed, or panicked before init), the init failed
	// (a share it could not mount), or BootTimeout passed.
	StatusNoStart = 122
	// StatusLost: the guest stopped after starting the command without
	// reporting its status (the command powered the guest off).
	StatusLost = 123
	// StatusTimeout: the command outlived Timeout.
	StatusTimeout = 124
	// StatusVMFailure: govmd or KVM failed (not the guest).
	StatusVMFailure = 125
)

// DefaultBootTimeout bounds the time from start until the command starts.
// It is generous: a guest boots in well under a second on hardware KVM but
// in about a minute on a PVM host.
const DefaultBootTimeout = 5 * time.Minute

// BaseCmdline is the kernel command line exec builds; the user's extra
// arguments follow it (so a later loglevel= overrides quiet).
const BaseCmdline = "console=ttyS0 panic=-1 oops=panic quiet rdinit=" + execinit.InitPath

// The ports of the exec console (Run sets them up in this order) and
// how long the command's queued output may take to reach Stdout and
// Stderr once it has exited.
const (
	portStatus   = 1
	portStdout   = 2
	portStderr   = 3
	flushTimeout = 5 * time.Second
)

// RootTag is the virtio-fs tag of the root share (Config.RootShare).
const RootTag = "govmd-root"

// panicGrace is how long the run goes on after a panic is seen, so that the
// rest of the panic message reaches the console.
const panicGrace = time.Second

// Config configures Run.
type Config struct {
	// VM is the machine: kernel, initrd, memory, CPUs, NICs, disks,
	// shares. Its Cmdline is the user's extra arguments (BaseCmdline
	// comes first); Run sets ConsolePorts, InitrdAppend and Console.
	VM vmm.Config
	// Argv is the command, Env what its environment adds to or changes
	// in the default (execinit.DefaultEnv, then what the kernel command
	// line passes to init), Dir its working directory ("" = /).
	Argv []string
	Env  []string
	Dir  string
	// RootShare, if not empty, is a host directory (govmd exec
	// --root-share: "/") that becomes the guest's root file system:
	// shared read-only over virtio-fs, under an overlay with a tmpfs for
	// writes, so that the command is any program of that tree. The
	// guest must be able to run its programs (not on PVM, where no
	// 64-bit user code runs) and its kernel needs VIRTIO_FS and
	// OVERLAY_FS built in.
	RootShare string
	// Modules are kernel module files (.ko) the guest's init loads, in
	// this order, before anything else: for a kernel whose virtio_pci,
	// virtio_console (which the init needs), fuse, virtiofs or overlay
	// are modules, such as Debian's.
	Modules []string
	// Timeout bounds the command's run time (0: no bound); BootTimeout
	// the time until it starts (0: DefaultBootTimeout).
	Timeout, BootTimeout time.Duration
	// Stdout and Stderr receive the command's output.
	Stdout, Stderr io.Writer
	// Stdin, if not nil, is the command's stdin (else /dev/null): read as
	// the guest reads, over a port of its own; its end (EOF or an error)
	// is the command's EOF. Run does not close it.
	Stdin io.Reader
	// Console, if not nil, receives a copy of the guest's serial console.
	Console io.Writer
	// Ports are named console ports of the user's (govmd exec --port),
	// added after the init's own; a name may not start with
	// PortPrefix. Their queued output is written before Run returns.
	Ports []console.Port
	Log   *slog.Logger
}

// PortPrefix starts the names of the init's own ports, which a port of
// Config.Ports may not take.
const PortPrefix = "govmd."

// Timings are the milestones of a run (zero if not reached).
type Timings struct {
	Start      time.Time // the VMM started (VM.Start)
	Built      time.Time // the VM was set up (vmm.MarkBuilt)
	VCPUsStart time.Time // the vCPUs were let go (vmm.MarkVCPUsStart)
	FirstEntry time.Time // a vCPU first entered the guest
	Init       time.Time // the kernel reached the init (its first status line)
	CmdStart   time.Time // the init started the command
	CmdEnd     time.Time // the init reported the command's status
	End        time.Time // the VM was stopped
}

// String renders the timings in milliseconds since Start.
func (t Timings) String() string {
	var parts []string
	for _, m := range []struct {
		name string
		t    time.Time
	}{{"built", t.Built}, {"vcpus_start", t.VCPUsStart}, {"first_entry", t.FirstEntry}, {"init", t.Init}, {"cmd_start", t.CmdStart}, {"cmd_end", t.CmdEnd}, {"end", t.End}} {
		if !m.t.IsZero() {
			parts = append(parts, fmt.Sprintf("%s=%.1fms", m.name, float64(m.t.Sub(t.Start).Microseconds())/1000))
		}
	}
	return strings.Join(parts, " ")
}

// Outcome is how a run ended.
type Outcome struct {
	// Status is govmd exec's exit status: the command's, or one of the
	// Status constants.
	Status int
	// Reason says why when Status is not the command's own ("" if it is).
	Reason string
	// Timings are the run's milestones.
	Timings Timings
	// Console is the end of the guest's serial console (the last
	// consoleKeep bytes).
	Console []byte
	// Counters are the VM's counters at the end (nil if it never ran).
	Counters *vmm.Counters
}

// consoleKeep is how much of the serial console an Outcome keeps.
const consoleKeep = 16 << 10

// Run boots the guest, runs the command and returns how it ended. Its
// error is the user's (bad configuration: errors.Is(err, vmm.ErrConfig))
// or a failure to create the VM; everything after that is an Outcome.
func Run(ctx context.Context, cfg Config) (Outcome, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Stdout == nil {
		cfg.Stdout = io.Discard
	}
	if cfg.Stderr == nil {
		cfg.Stderr = io.Discard
	}
	if cfg.BootTimeout <= 0 {
		cfg.BootTimeout = DefaultBootTimeout
	}
	if cfg.VM.Start.IsZero() {
		cfg.VM.Start = time.Now()
	}
	for _, p := range cfg.Ports {
		if strings.HasPrefix(p.Name, PortPrefix) || p.Name == "" {
			return Outcome{}, fmt.Errorf("%w: console port %q: a port needs a name not starting with %s", vmm.ErrConfig, p.Name, PortPrefix)
		}
	}
	spec := execinit.Spec{Argv: cfg.Argv, Env: MergeEnv(execinit.DefaultEnv(), cfg.Env), Dir: cfg.Dir, Stdin: cfg.Stdin != nil}
	for _, sh := range cfg.VM.Shares {
		spec.Mounts = append(spec.Mounts, execinit.Mount{Tag: sh.Tag, Dir: "/mnt/" + sh.Tag, ReadOnly: sh.ReadOnly})
	}
	if cfg.RootShare != "" {
		// A user's share tagged RootTag is refused by vmm's check of
		// the tags (used by two shares).
		cfg.VM.Shares = append([]fs.Share{{Path: cfg.RootShare, Tag: RootTag, ReadOnly: true}}, cfg.VM.Shares...)
		spec.Root = RootTag
	}
	var total int64
	for _, m := range cfg.Modules {
		b, err := vmm.ReadImage(m, "--module", int64(cfg.VM.Memory)-total)
		if err != nil {
			return Outcome{}, err
		}
		if !bytes.HasPrefix(b, []byte("\x7fELF")) {
			return Outcome{}, fmt.Errorf("%w: --module %s: not a kernel module (no ELF header; compressed modules are not supported)", vmm.ErrConfig, m)
		}
		total += int64(len(b))
		spec.Modules = append(spec.Modules, b)
	}
	archive, err := execinit.Archive(spec)
	if err != nil {
		return Outcome{}, fmt.Errorf("%w: %w", vmm.ErrConfig, err)
	}
	r := &run{cfg: cfg, events: make(chan execinit.Event, 16), panicked: make(chan struct{})}
	r.status.r = r
	r.con.r = r
	vc := cfg.VM
	vc.Cmdline = strings.TrimSpace(BaseCmdline + " " + cfg.VM.Cmdline)
	vc.InitrdAppend = archive
	vc.Console = &r.con
	vc.ConsolePorts = []console.Port{
		{Out: &r.con}, // hvc0: the kernel's console if the user asks for console=hvc0
		{Name: execinit.PortStatus, Out: &r.status},
		{Name: execinit.PortStdout, Out: cfg.Stdout},
		{Name: execinit.PortStderr, Out: cfg.Stderr},
	}
	if cfg.Stdin != nil {
		vc.ConsolePorts = append(vc.ConsolePorts, console.Port{Name: execinit.PortStdin, In: cfg.Stdin})
	}
	// The ports whose output is the command's: flushed once it exits.
	r.outPorts = []int{portStdout, portStderr}
	for _, p := range cfg.Ports {
		r.outPorts = append(r.outPorts, len(vc.ConsolePorts))
		vc.ConsolePorts = append(vc.ConsolePorts, p)
	}
	vm, err := vmm.New(vc)
	if err != nil {
		if errors.Is(err, vmm.ErrConfig) {
			return Outcome{}, err
		}
		return Outcome{Status: StatusVMFailure, Reason: "creating the VM: " + err.Error(),
			Timings: Timings{Start: vc.Start, End: time.Now()}}, nil
	}
	defer vm.Close()
	r.vm = vm
	return r.wait(ctx, vc.Start), nil
}

// MergeEnv returns base with the variables of over added, each replacing
// base's variable of the same name.
func MergeEnv(base, over []string) []string {
	out := append([]string(nil), base...)
	for _, kv := range over {
		name, _, _ := strings.Cut(kv, "=")
		replaced := false
		for i, b := range out {
			if n, _, _ := strings.Cut(b, "="); n == name {
				out[i], replaced = kv, true
				break
			}
		}
		if !replaced {
			out = append(out, kv)
		}
	}
	return out
}

// run is one exec run in progress.
type run struct {
	cfg      Config
	vm       *vmm.VM
	events   chan execinit.Event
	status   statusPort
	con      consoleTap
	panicked chan struct{}
	panicOne sync.Once
	outPorts []int // the command's output ports: stdout, stderr, Config.Ports
}

// wait runs the VM and follows the init's status lines, the timers and
// the console until the run ends.
func (r *run) wait(ctx context.Context, start time.Time) Outcome {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		res vmm.Result
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := r.vm.Run(ctx)
		done <- result{res, err}
	}()
	out := Outcome{Status: -1, Timings: Timings{Start: start}}
	boot := time.NewTimer(r.cfg.BootTimeout)
	defer boot.Stop()
	var cmdTimer <-chan time.Time
	var grace <-chan time.Time
	started, panicked := false, false
	panicCh := r.panicked
	finish := func(status int, reason string) {
		if out.Status < 0 {
			out.Status, out.Reason = status, reason
		}
		cancel()
	}
	// onEvent takes one of the init's status lines.
	onEvent := func(ev execinit.Event) {
		now := time.Now()
		switch ev.Kind {
		case "init":
			out.Timings.Init = now
			r.vm.MarkBoot("init", now)
		case "start":
			started = true
			out.Timings.CmdStart = now
			r.vm.MarkBoot("cmd_start", now)
			boot.Stop()
			if r.cfg.Timeout > 0 {
				cmdTimer = time.After(r.cfg.Timeout)
			}
		case "exit", "signal":
			out.Timings.CmdEnd = now
			r.vm.MarkBoot("cmd_end", now)
			// The command's last output may still be queued on
			// the stdout and stderr ports.
			if err := r.vm.FlushConsole(flushTimeout, r.outPorts...); err != nil {
				r.cfg.Log.Warn("exec: the command's output may be incomplete", "err", err)
			}
			code := ev.Code
			if ev.Kind == "signal" {
				code = 128 + ev.Code
			}
			finish(code, "")
		case "fail":
			finish(StatusNoStart, "the guest init failed: "+ev.Text)
		}
	}
	for {
		select {
		case ev := <-r.events:
			onEvent(ev)
		case <-boot.C:
			if !started {
				finish(StatusNoStart, fmt.Sprintf("the command did not start within %s (--boot-timeout)", r.cfg.BootTimeout))
			}
		case <-cmdTimer:
			finish(StatusTimeout, fmt.Sprintf("the command ran longer than %s (--timeout)", r.cfg.Timeout))
		case <-panicCh:
			panicked = true
			panicCh = nil
			grace = time.After(panicGrace)
		case <-grace:
			finish(StatusPanic, "the guest kernel panicked")
		case res := <-done:
			out.Timings.End = time.Now()
			out.Timings.FirstEntry = r.vm.FirstEntry()
			out.Timings.Built = r.vm.Milestone(vmm.MarkBuilt)
			out.Timings.VCPUsStart = r.vm.Milestone(vmm.MarkVCPUsStart)
			if out.Status < 0 && started && !panicked && (res.res == vmm.ExitPowerOff || res.res == vmm.ExitReboot) {
				// The init writes its status line and powers off at
				// once; a write(2) on a port returns before the device
				// took the buffer. Linux resets its virtio devices as it
				// powers off, and the console writes what was queued
				// then; a guest that does not reset them may have left
				// the line queued: take what is there.
				if err := r.vm.FlushConsole(flushTimeout, append([]int{portStatus}, r.outPorts...)...); err != nil {
					r.cfg.Log.Warn("exec: the guest's last console output may be lost", "err", err)
				}
				for drained := false; !drained; {
					select {
					case ev := <-r.events:
						onEvent(ev)
					default:
						drained = true
					}
				}
			}
			switch {
			case out.Status >= 0:
			case panicked:
				out.Status, out.Reason = StatusPanic, "the guest kernel panicked"
			case res.res == vmm.ExitFailed && errors.Is(res.err, vmm.ErrGuestCrash) && started:
				out.Status, out.Reason = StatusPanic, "the guest kernel crashed: "+res.err.Error()
			case res.res == vmm.ExitFailed && errors.Is(res.err, vmm.ErrGuestCrash):
				out.Status, out.Reason = StatusNoStart, "the guest kernel crashed before the command started: "+res.err.Error()
			case res.res == vmm.ExitFailed:
				out.Status, out.Reason = StatusVMFailure, fmt.Sprintf("the VM failed: %v", res.err)
			case res.res == vmm.ExitCanceled:
				out.Status, out.Reason = StatusVMFailure, "canceled"
			case started:
				out.Status, out.Reason = StatusLost, fmt.Sprintf("the guest stopped (%s) after starting the command without reporting its status", res.res)
			default:
				out.Status, out.Reason = StatusNoStart, fmt.Sprintf("the guest stopped (%s) before starting the command", res.res)
			}
			out.Console = r.con.tail()
			c := r.vm.Counters()
			out.Counters = &c
			return out
		}
	}
}

// statusPort parses the init's status lines (hostile input: a line is
// bounded, a bad one is logged and dropped).
type statusPort struct {
	r    *run
	mu   sync.Mutex
	line []byte
	long bool // the current line overflowed; dropped up to its newline
}

// maxStatusLine bounds one status line.
const maxStatusLine = 512

func (s *statusPort) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		chunk := p
		if i >= 0 {
			chunk = p[:i]
		}
		if !s.long {
			if len(s.line)+len(chunk) > maxStatusLine {
				s.long = true
				s.line = s.line[:0]
			} else {
				s.line = append(s.line, chunk...)
			}
		}
		if i < 0 {
			break
		}
		if !s.long {
			s.deliver(s.line)
		} else {
			s.r.cfg.Log.Warn("exec: status line too long; dropped")
		}
		s.line, s.long = s.line[:0], false
		p = p[i+1:]
	}
	return n, nil
}

func (s *statusPort) deliver(line []byte) {
	ev, err := execinit.ParseStatus(line)
	if err != nil {
		s.r.cfg.Log.Warn("exec: bad status line from the guest", "err", err)
		return
	}
	select {
	case s.r.events <- ev:
	default:
		s.r.cfg.Log.Warn("exec: status line dropped (too many)", "kind", ev.Kind)
	}
}

// panicLine matches what a Linux guest prints when it panics or oopses
// (also when the line is not the first thing on it: timestamps, prefixes).
var panicLine = regexp.MustCompile(`Kernel panic - not syncing|\bOops: |\bBUG: (unable to handle|kernel NULL pointer)`)

// consoleTap receives the guest's serial console: it keeps the last
// consoleKeep bytes, copies them to Config.Console and watches each line
// for a panic.
type consoleTap struct {
	r    *run
	mu   sync.Mutex
	ring []byte
	line []byte
}

func (c *consoleTap) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.r.cfg.Console != nil {
		c.r.cfg.Console.Write(p)
	}
	c.ring = append(c.ring, p...)
	if len(c.ring) > 2*consoleKeep {
		c.ring = append(c.ring[:0], c.ring[len(c.ring)-consoleKeep:]...)
	}
	for _, b := range p {
		if b != '\n' {
			if len(c.line) < 1024 {
				c.line = append(c.line, b)
			}
			continue
		}
		if panicLine.Match(c.line) {
			c.r.panicOne.Do(func() { close(c.r.panicked) })
		}
		c.line = c.line[:0]
	}
	return len(p), nil
}

// tail returns the last consoleKeep bytes of the console.
func (c *consoleTap) tail() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.ring
	if len(b) > consoleKeep {
		b = b[len(b)-consoleKeep:]
	}
	return append([]byte(nil), b...)
}
