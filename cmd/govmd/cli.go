package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"

	"github.com/govmd/govmd/api"
	vconsole "github.com/govmd/govmd/devices/console"
	"github.com/govmd/govmd/vmm"
)

// Exit statuses.
const (
	exitOK       = 0
	exitFailure  = 1
	exitUsage    = 2
	exitReboot   = 3
	exitCanceled = 130
)

const usage = `usage:
  govmd run --kernel PATH [--initrd PATH] [--cmdline STR] [--memory 512M] [--cpus N]
            [--console stdio|PATH] [--net tap=NAME[,mac=MAC][,transport=transitional|modern|legacy]
            [,offload=on|off|csum][,locked][,sandbox=on|off]]... [--net vhost-user=SOCKET[,mac=MAC][,transport=...]]...
            [--disk PATH[,ro][,serial=ID][,transport=...][,queues=N]]... [--shared-memory]
            [--rng=on|off] [--cpu-profile auto|host|pvm|bare] [--log-level debug|info|warn|error]
            [--guest-profile FILE] [--api-socket PATH] [--config FILE]
            [--share PATH,tag=TAG[,ro]]... [--virtiofsd PATH] [--hvc PATH|unix:PATH] [--port NAME=PATH|NAME=unix:PATH]...
  govmd exec [the machine's flags of run] [--timeout D] [--boot-timeout D] [--timings] [--console PATH] [--stdin]
            [--port NAME=PATH|NAME=unix:PATH]... -- CMD [ARGS...]
  govmd ctl --api-socket PATH [--json] status|config|counters|metrics|pause|resume|power-button|stop|link NIC up|down
  govmd net-device --tap NAME --socket PATH [--mac MAC] [--offload on|csum|off] [--locked] [--user USER]
  govmd version

govmd run --help, govmd exec --help, govmd ctl --help and govmd net-device --help describe every flag.
`

// version is set by the linker (-X main.version=...); otherwise the module
// build info is used.
var version = ""

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		v := bi.Main.Version
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v += " " + s.Value[:12]
			}
		}
		return v
	}
	return "unknown"
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "govmd %s\n", versionString())
		return exitOK
	case "run":
		return runVM(args[1:], stdin, stdout, stderr)
	case "exec":
		return runExec(args[1:], stdin, stdout, stderr)
	case "ctl":
		return runCtl(args[1:], stdout, stderr)
	case "net-device":
		return runNetDevice(args[1:], stdout, stderr)
	case "share-ro":
		return runShareRO(args[1:], stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "govmd: unknown command %q\n%s", args[0], usage)
	return exitUsage
}

// onOff is a boolean flag that also takes on and off (--rng=off).
type onOff struct{ v *bool }

func (o onOff) String() string {
	if o.v != nil && *o.v {
		return "on"
	}
	return "off"
}

func (o onOff) Set(s string) error {
	switch strings.ToLower(s) {
	case "on", "true", "1", "yes":
		*o.v = true
	case "off", "false", "0", "no":
		*o.v = false
	default:
		return fmt.Errorf("%q is not on or off", s)
	}
	return nil
}

func (o onOff) IsBoolFlag() bool { return true }

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, " ") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

// vmFlags are the flags govmd run and govmd exec share: the machine.
type vmFlags struct {
	cfg      vmm.Config
	memory   *string
	logLevel *string
	confine  bool
	nets     listFlag
	disks    listFlag
	shares   listFlag
}

// addVMFlags registers the machine's flags on fs; cmdline is the default
// of --cmdline and what it means.
func addVMFlags(fs *flag.FlagSet, cmdline, cmdlineHelp, logLevel string) *vmFlags {
	f := &vmFlags{confine: true}
	cfg := &f.cfg
	f.memory = fs.String("memory", "512M", "guest RAM (K, M, G suffixes)")
	f.logLevel = fs.String("log-level", logLevel, "debug, info, warn or error")
	fs.StringVar(&cfg.Kernel, "kernel", "", "bzImage or ELF vmlinux (PVH)")
	fs.StringVar(&cfg.Initrd, "initrd", "", "initramfs")
	fs.StringVar(&cfg.Cmdline, "cmdline", cmdline, cmdlineHelp)
	fs.IntVar(&cfg.CPUs, "cpus", 1, "number of vCPUs")
	fs.TextVar(&cfg.CPUProfile, "cpu-profile", vmm.ProfileAuto, "auto, host, pvm or bare")
	fs.Var(&f.nets, "net", "virtio-net NIC (repeatable): tap=NAME runs govmd's device in a sandboxed process of its own (sandbox=off: in this process); vhost-user=SOCKET uses the backend listening there")
	fs.Var(&f.disks, "disk", "virtio-blk disk (repeatable)")
	fs.Var(&f.shares, "share", "share a host directory with virtio-fs (repeatable): PATH,tag=TAG[,ro]; served by a virtiofsd of its own (--virtiofsd), the guest mounts it with mount -t virtiofs TAG DIR")
	fs.StringVar(&cfg.Virtiofsd, "virtiofsd", "", "the virtiofsd to run for --share (default: virtiofsd on $PATH, /usr/libexec/virtiofsd, /usr/lib/qemu/virtiofsd)")
	fs.Var(onOff{&f.confine}, "confine", "once set up, confine govmd's own process: user nobody (when started as root, so no capabilities), no_new_privs, Landlock without file access, a seccomp allowlist (off keeps it as started)")
	fs.Var(onOff{&cfg.SharedMemory}, "shared-memory", "guest RAM in a memfd that device processes map (always so with sandboxed or vhost-user NICs and with shares)")
	cfg.RNG = true
	fs.Var(onOff{&cfg.RNG}, "rng", "a virtio-rng device: entropy from the host's getrandom(2), at most 64 KiB a request and 8 MiB/s (--rng=off omits it)")
	return f
}

// build turns the parsed flags into a VM configuration; its errors wrap
// vmm.ErrConfig.
func (f *vmFlags) build(stderr io.Writer) (vmm.Config, error) {
	cfg := f.cfg
	m, err := vmm.ParseSize(*f.memory)
	if err != nil {
		return cfg, err
	}
	if m == 0 {
		return cfg, fmt.Errorf("%w: --memory must be greater than 0", vmm.ErrConfig)
	}
	cfg.Memory = m
	if cfg.CPUs <= 0 {
		return cfg, fmt.Errorf("%w: --cpus must be at least 1", vmm.ErrConfig)
	}
	for _, s := range f.nets {
		n, err := vmm.ParseNet(s)
		if err != nil {
			return cfg, err
		}
		cfg.Nets = append(cfg.Nets, n)
	}
	for _, s := range f.disks {
		d, err := vmm.ParseDisk(s)
		if err != nil {
			return cfg, err
		}
		cfg.Disks = append(cfg.Disks, d)
	}
	for _, s := range f.shares {
		sh, err := vmm.ParseShare(s)
		if err != nil {
			return cfg, err
		}
		cfg.Shares = append(cfg.Shares, sh)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*f.logLevel)); err != nil {
		return cfg, fmt.Errorf("%w: --log-level %q is not debug, info, warn or error", vmm.ErrConfig, *f.logLevel)
	}
	exe, err := os.Executable()
	if err != nil {
		return cfg, fmt.Errorf("finding govmd's executable for device processes: %w", err)
	}
	cfg.NetDevice = []string{exe, "net-device", "--log-level", *f.logLevel}
	cfg.ShareHelper = []string{exe, "share-ro"}
	cfg.Log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	return cfg, nil
}

// failWith prints err as govmd's one error line and returns its exit
// status: exitUsage for the user's mistakes, else failure.
func failWith(stderr io.Writer, err error, failure int) int {
	fmt.Fprintf(stderr, "govmd: %v\n", err)
	if errors.Is(err, vmm.ErrConfig) {
		return exitUsage
	}
	return failure
}

// runOpts are govmd run's flags beyond the machine's.
type runOpts struct {
	vf                                *vmFlags
	console, apiPath, hvc, configPath *string
	ports                             *listFlag
}

// runFlags returns govmd run's flag set.
func runFlags() (*flag.FlagSet, *runOpts) {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o := &runOpts{vf: addVMFlags(fs, "console=ttyS0", "kernel command line", "info"), ports: &listFlag{}}
	o.console = fs.String("console", "stdio", "serial console: stdio or a file path")
	o.apiPath = fs.String("api-socket", "", "serve the control API (HTTP/1.1, JSON; docs/openapi.json) on this unix socket (mode 0600; a stale socket is replaced); drive it with govmd ctl")
	o.hvc = fs.String("hvc", "", "add a virtio-console whose port 0 is the guest's hvc0 (boot it with console=hvc0 to use it as its console): PATH is a file that gets what the guest writes there (created once the VM is set up); unix:PATH a unix socket govmd listens on, serving hvc0 both ways to one client at a time (output while none is connected is kept, up to 64 KiB, for the next)")
	fs.Var(o.ports, "port", "a named virtio-console port (repeatable), a guest program's /dev/vportNpM (NAME in /sys/class/virtio-ports/vportNpM/name): NAME=PATH sends what the guest writes to it to file PATH (created once the VM is set up); NAME=unix:PATH serves it both ways on a unix socket govmd listens on, to one client at a time (a new one replaces it; output while none is connected is kept, up to 64 KiB, for the next)")
	fs.StringVar(&o.vf.cfg.GuestProfile, "guest-profile", "", "write where the vCPUs spent their time (RIP sampled every 10 ms, per kernel function) to this file at exit (implies --confine=off)")
	o.configPath = fs.String("config", "", "read the machine's flags from this JSON file (keys: the flags' long names; the schema of GET /vm's config, see README); flags on the command line override it")
	return fs, o
}

func runVM(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs, o := runFlags()
	vf, console, apiPath, hvc, configPath := o.vf, o.console, o.apiPath, o.hvc, o.configPath
	if code, ok := parseFlags(fs, args, usage, "govmd", stdout, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "govmd: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	fail := func(err error) int { return failWith(stderr, err, exitFailure) }
	if *configPath != "" {
		if err := applyConfigFile(fs, *configPath); err != nil {
			return fail(err)
		}
	}
	ports := *o.ports
	cfg, err := vf.build(stderr)
	if err != nil {
		return fail(err)
	}
	confine := vf.confine
	ps := &portSet{log: cfg.Log}
	defer ps.Close()
	if *hvc != "" || len(ports) > 0 {
		port0 := vconsole.Port{}
		if *hvc != "" {
			out, in, err := ps.endpoint(*hvc, "--hvc")
			if err != nil {
				return fail(err)
			}
			port0.Out, port0.In = out, in
		}
		cfg.ConsolePorts = []vconsole.Port{port0}
		for _, spec := range ports {
			p, err := ps.port(spec)
			if err != nil {
				return fail(err)
			}
			cfg.ConsolePorts = append(cfg.ConsolePorts, p)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	// The console is opened only once the VM is built, so that bad input
	// creates no console file; the guest writes nothing before Run.
	out, in := &lateWriter{}, &lateReader{}
	cfg.Console, cfg.ConsoleIn = out, in
	var apiListener net.Listener
	if *apiPath != "" {
		l, err := api.Listen(*apiPath)
		if err != nil {
			return fail(fmt.Errorf("%w: %w", vmm.ErrConfig, err))
		}
		apiListener = l
		defer func() {
			l.Close() // unlinks the socket
			// A confined govmd runs as nobody, which cannot remove files in
			// a directory only root may write (Landlock allows it, the
			// file system's permissions do not). The next govmd on the
			// path replaces the stale socket.
			if err := os.Remove(*apiPath); err != nil && !errors.Is(err, os.ErrNotExist) {
				cfg.Log.Warn("api socket left behind", "path", *apiPath, "err", err)
			}
		}()
	}
	if confine && cfg.GuestProfile == "" {
		var sockets []string
		if *apiPath != "" {
			sockets = append(sockets, *apiPath)
		}
		c, err := vmmConfinement(append(sockets, ps.socketPaths()...)...)
		if err != nil {
			return fail(err)
		}
		cfg.Confine = c
	}
	if len(ps.files) > 0 {
		cfg.Confine = openThenConfine(ps.files, cfg.Confine)
	}
	vm, err := vmm.New(cfg)
	if err != nil {
		return fail(err)
	}
	if l := apiListener; l != nil {
		apiCtx, apiStop := context.WithCancel(context.Background())
		apiDone := make(chan struct{})
		go func() {
			defer close(apiDone)
			info := api.Info{Version: versionString(), Config: configOf(fs)}
			if err := api.NewServer(vm, info, cfg.Log).Serve(apiCtx, l); err != nil {
				cfg.Log.Error("api socket", "err", err)
			}
		}()
		defer func() { apiStop(); <-apiDone }()
	}
	con, err := openConsole(*console, stdin, stdout, stop)
	if err != nil {
		vm.Close()
		return fail(err)
	}
	defer con.Close()
	out.set(con.out)
	in.set(con.in)
	res, err := vm.Run(ctx)
	con.Restore() // before printing anything else on the terminal
	vm.LogStats()
	if cerr := vm.Close(); cerr != nil && err == nil {
		err = cerr
	}
	if err != nil {
		return fail(err)
	}
	switch res {
	case vmm.ExitPowerOff:
		return exitOK
	case vmm.ExitReboot:
		fmt.Fprintln(stderr, "govmd: guest requested a reboot; not restarting")
		return exitReboot
	case vmm.ExitCanceled:
		fmt.Fprintln(stderr, "govmd: interrupted")
		return exitCanceled
	case vmm.ExitStopped:
		cfg.Log.Info("stopped through the API")
		return exitOK
	}
	return exitFailure
}

// lateWriter forwards to a writer set after construction; writes before
// that are dropped.
type lateWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lateWriter) set(w io.Writer) { l.mu.Lock(); l.w = w; l.mu.Unlock() }

func (l *lateWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.w == nil {
		return len(p), nil
	}
	return l.w.Write(p)
}

// lateReader reads from a reader set after construction; a nil reader is
// at EOF.
type lateReader struct {
	mu sync.Mutex
	r  io.Reader
}

func (l *lateReader) set(r io.Reader) { l.mu.Lock(); l.r = r; l.mu.Unlock() }

func (l *lateReader) Read(p []byte) (int, error) {
	l.mu.Lock()
	r := l.r
	l.mu.Unlock()
	if r == nil {
		return 0, io.EOF
	}
	return r.Read(p)
}

// parseFlags parses args with fs. With -h or --help it prints usage and
// fs's flags to stdout and gives exitOK; on a bad flag it prints one line
// (prefixed with who) to stderr and gives exitUsage; ok means go on.
func parseFlags(fs *flag.FlagSet, args []string, usage, who string, stdout, stderr io.Writer) (code int, ok bool) {
	err := fs.Parse(args)
	switch {
	case err == nil:
		return 0, true
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(stdout, usage)
		fmt.Fprintf(stdout, "\ngovmd %s flags:\n", fs.Name())
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		return exitOK, false
	default:
		fmt.Fprintf(stderr, "%s: %v\n", who, err)
		return exitUsage, false
	}
}
