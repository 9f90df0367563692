package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	vconsole "github.com/govmd/govmd/devices/console"
	"github.com/govmd/govmd/devices/fs"
	"github.com/govmd/govmd/vmm"
	"github.com/govmd/govmd/vmm/guestexec"
)

const execUsage = `usage:
  govmd exec --kernel PATH [--initrd PATH] [--cmdline EXTRA] [--share PATH,tag=TAG[,ro]]...
             [--net ...]... [--disk ...]... [--timeout DURATION] [--boot-timeout DURATION]
             [--cpus N] [--memory M] [--console PATH] [--timings] [--root-share[=DIR]]
             [--module FILE.ko]... [--stdin] [--port NAME=PATH|NAME=unix:PATH]... -- CMD [ARGS...]

Boots the guest, runs CMD in it with its stdout and stderr copied to
govmd's (and with --stdin govmd's stdin copied to its stdin; else CMD's
stdin is /dev/null), and exits with CMD's exit status. Shares are mounted at
/mnt/TAG. govmd's own exit statuses (which CMD's own statuses of the same
value can only be told apart from by the message govmd prints on stderr):
  121  the guest kernel panicked or oopsed (or crashed) while CMD ran
  122  the guest never started CMD (no boot, a crash or panic before it,
       an init failure, --boot-timeout)
  123  the guest stopped after starting CMD without reporting its status
  124  CMD ran longer than --timeout
  125  the VM failed (govmd or KVM)
  126  CMD could not be executed, 127 CMD was not found (as in a shell)
  2    bad usage or input; 130 interrupted
`

// runExec is govmd exec.
func runExec(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("exec", flag.ContinueOnError)
	flags.SetOutput(io.Discard)
	vf := addVMFlags(flags, "", "added to the kernel command line govmd exec builds ("+guestexec.BaseCmdline+")", "warn")
	var (
		timeout     = flags.Duration("timeout", 0, "stop CMD after it ran this long (0: no limit); exit status 124")
		bootTimeout = flags.Duration("boot-timeout", guestexec.DefaultBootTimeout, "give up if CMD has not started after this long; exit status 122")
		timings     = flags.Bool("timings", false, "print the boot timings on stderr, in ms since the VMM started: VM set up (built), vCPUs let go (vcpus_start), first vCPU entry, init reached, CMD started and ended, VM stopped")
		console     = flags.String("console", "", "write the guest's serial console to this file (default: kept in memory, its end printed when the guest fails)")
		envs        listFlag
		dir         = flags.String("dir", "/", "CMD's working directory in the guest")
		withStdin   = flags.Bool("stdin", false, "copy govmd's standard input to CMD's, as CMD reads it; its end is CMD's end of file (default: CMD's stdin is /dev/null)")
	)
	var rootShare optionalPath
	flags.Var(&rootShare, "root-share", "the guest's root file system is the host's (--root-share) or DIR's (--root-share=DIR), read-only over virtio-fs with a tmpfs overlay for writes, so CMD is any program there (the guest must run the host's programs: not on PVM; its kernel needs VIRTIO_FS and OVERLAY_FS, built in or as --module)")
	var modules, ports listFlag
	flags.Var(&ports, "port", "a named virtio-console port for CMD or a program it starts (repeatable): NAME=PATH sends what the guest writes to it to file PATH; NAME=unix:PATH serves it both ways on a unix socket govmd listens on (one client at a time). In the guest: /dev/vportNpM whose /sys/class/virtio-ports/vportNpM/name is NAME (not starting with govmd.)")
	flags.Var(&modules, "module", "a kernel module file (.ko, uncompressed) the guest's init loads before anything else (repeatable, loaded in order, dependencies first): for a kernel whose virtio_pci, virtio_console, fuse, virtiofs or overlay are modules, as Debian's are")
	flags.Var(&envs, "env", "KEY=VALUE in CMD's environment (repeatable; default PATH, HOME=/root, TERM=dumb)")
	start := time.Now()
	if code, ok := parseFlags(flags, args, execUsage, "govmd", stdout, stderr); !ok {
		return code
	}
	argv := flags.Args()
	if len(argv) == 0 {
		fmt.Fprintln(stderr, "govmd: exec needs a command after --")
		return exitUsage
	}
	fail := func(err error) int { return failWith(stderr, err, guestexec.StatusVMFailure) }
	cfg, err := vf.build(stderr)
	if err != nil {
		return fail(err)
	}
	cfg.Start = start
	ps := &portSet{log: cfg.Log}
	defer ps.Close()
	var extra []vconsole.Port
	for _, spec := range ports {
		p, err := ps.port(spec)
		if err != nil {
			return fail(err)
		}
		extra = append(extra, p)
	}
	if vf.confine {
		c, err := vmmConfinement(ps.socketPaths()...)
		if err != nil {
			return fail(err)
		}
		cfg.Confine = c
	}
	if len(ps.files) > 0 {
		cfg.Confine = openThenConfine(ps.files, cfg.Confine)
	}
	if rootShare.set {
		p, err := filepath.Abs(rootShare.path)
		if err != nil {
			return fail(fmt.Errorf("%w: --root-share: %w", vmm.ErrConfig, err))
		}
		rootShare.path = p
	}
	ec := guestexec.Config{VM: cfg, Argv: argv, Env: envs, Dir: *dir, RootShare: rootShare.path, Modules: modules, Timeout: *timeout,
		BootTimeout: *bootTimeout, Stdout: stdout, Stderr: stderr, Ports: extra, Log: cfg.Log}
	if *withStdin {
		ec.Stdin = stdin
	}
	if *console != "" {
		f, err := newLateFile(*console, "--console")
		if err != nil {
			return fail(err)
		}
		defer f.Close()
		ec.Console = f
		ec.VM.Confine = openThenConfine([]*lateFile{f}, ec.VM.Confine)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	out, err := guestexec.Run(ctx, ec)
	if err != nil {
		return fail(err)
	}
	if *timings {
		fmt.Fprintf(stderr, "govmd: timings (ms since the VMM started): %s\n", out.Timings)
	}
	if out.Reason != "" {
		if ctx.Err() != nil {
			fmt.Fprintln(stderr, "govmd: interrupted")
			if out.Timings.CmdStart.IsZero() && len(out.Console) > 0 {
				// Where a boot that was given up on stood.
				fmt.Fprintf(stderr, "govmd: the end of the guest's console:\n%s\n", lastLines(out.Console, 40))
			}
			return exitCanceled
		}
		fmt.Fprintf(stderr, "govmd: exec: %s (exit status %d)\n", out.Reason, out.Status)
		if out.Status != guestexec.StatusTimeout && len(out.Console) > 0 {
			fmt.Fprintf(stderr, "govmd: the end of the guest's console:\n%s\n", lastLines(out.Console, 40))
		}
	}
	return out.Status
}

// lateFile is an output file that is created once the VM is set up,
// right before govmd confines itself (which takes file creation away), so
// that bad input leaves no file behind. The guest writes nothing before
// that; a write before Open or after a failed one is dropped.
type lateFile struct {
	path string
	mu   sync.Mutex
	f    *os.File
}

// newLateFile checks that path's directory exists (a user's mistake is
// caught with the other bad input) and returns the file, not created yet.
func newLateFile(path, flag string) (*lateFile, error) {
	if st, err := os.Stat(filepath.Dir(path)); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("%w: %s %s: no such directory", vmm.ErrConfig, flag, path)
	}
	return &lateFile{path: path}, nil
}

// Open creates the file.
func (l *lateFile) Open() error {
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.f = f
	l.mu.Unlock()
	return nil
}

func (l *lateFile) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return len(p), nil
	}
	return l.f.Write(p)
}

// Close closes the file if it was created.
func (l *lateFile) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	return l.f.Close()
}

// openThenConfine returns the set-up hook (vmm.Config.Confine) that
// creates files and then runs confine (if not nil).
func openThenConfine(files []*lateFile, confine func() error) func() error {
	return func() error {
		for _, f := range files {
			if err := f.Open(); err != nil {
				return err
			}
		}
		if confine != nil {
			return confine()
		}
		return nil
	}
}

// optionalPath is a flag that is a path, "/" when given without one
// (--root-share, --root-share=DIR).
type optionalPath struct {
	path string
	set  bool
}

func (o *optionalPath) String() string { return o.path }
func (o *optionalPath) Set(s string) error {
	if s == "true" {
		s = "/"
	}
	if s == "" || s == "false" {
		return fmt.Errorf("want a directory")
	}
	o.path, o.set = s, true
	return nil
}
func (o *optionalPath) IsBoolFlag() bool { return true }

// lastLines returns the last n lines of b, each prefixed for the reader.
func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  | " + strings.Join(lines, "\n  | ")
}

// runShareRO is the hidden read-only helper of a --share ...,ro:
// govmd share-ro DIR -- VIRTIOFSD ARGS... (see fs.ExecReadOnly).
func runShareRO(args []string, stderr io.Writer) int {
	if len(args) < 3 || args[1] != "--" {
		fmt.Fprintln(stderr, "govmd: usage: govmd share-ro DIR -- COMMAND [ARGS...] (started by govmd for a read-only --share)")
		return exitUsage
	}
	err := fs.ExecReadOnly(args[0], args[2:])
	fmt.Fprintf(stderr, "govmd: %v\n", err)
	return exitFailure
}
