// Package sandbox confines a govmd process once it holds every file it
// needs: it becomes an unprivileged user (no capabilities), sets
// no_new_privs, gives up all file-system and network access with Landlock
// (where the kernel has it), and installs a seccomp-BPF allowlist of
// system calls, with ioctl limited to the requests the caller names. A
// call outside the list kills the process.
//
// The seccomp filter is built with github.com/elastic/go-seccomp-bpf and
// Landlock applied with github.com/landlock-lsm/go-landlock; both act on
// every thread of the process (seccomp's TSYNC; Go's and psx's all-thread
// system calls for credentials and Landlock).
package sandbox

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"syscall"
	"time"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/landlock-lsm/go-landlock/landlock"
	llsys "github.com/landlock-lsm/go-landlock/landlock/syscall"
	"golang.org/x/sys/unix"
)

// Config says what the confined process keeps.
type Config struct {
	// User is the user (name or number) to become; its primary group is
	// taken too, supplementary groups are dropped. Empty keeps the
	// current user, which must then hold no capabilities.
	User string
	// Ioctls are the ioctl requests the process may still make
	// (TUNSETOFFLOAD for a net device).
	Ioctls []uint64
	// Syscalls are system calls allowed beyond Baseline.
	Syscalls []string
	// RemovableDirs are directories in which files may still be removed
	// (a VMM's sockets, unlinked at exit); Landlock allows nothing else.
	// Syscalls must then include unlinkat.
	RemovableDirs []string
	// Signals keeps the right to signal processes outside the Landlock
	// domain (a VMM stopping the net-device processes it started, which
	// confined themselves in domains of their own).
	Signals bool
	// Log makes a violation logged (to the kernel's audit log) instead of
	// fatal: for finding what a new code path needs, never in production.
	Log bool
}

// Baseline is what the Go runtime and a process that only reads, writes
// and polls the descriptors it already holds need: memory management
// (without executable mappings), threads, signals, timers, futexes, the
// netpoller, reads and writes (also of messages with descriptors on a
// unix socket), closing, shutting down and fcntl, and readlink (to check
// that a received descriptor is an eventfd, under Landlock that grants no
// file access). No open, exec, socket, connect, bind, accept, ptrace,
// mount or credential change is in it.
var Baseline = []string{
	"read", "write", "readv", "writev", "pread64", "pwrite64", "recvmsg", "sendmsg", "recvfrom", "sendto",
	"close", "shutdown", "fcntl", "fstat", "newfstatat", "lseek", "readlinkat",
	"munmap", "madvise", "brk", "mremap",
	"futex", "sched_yield", "sched_getaffinity", "nanosleep", "clock_gettime", "clock_nanosleep", "gettimeofday",
	"epoll_create1", "epoll_ctl", "epoll_pwait", "epoll_pwait2", "epoll_wait", "poll", "ppoll",
	"rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "restart_syscall",
	"getpid", "gettid", "tgkill", "getrandom", "getuid", "geteuid", "getgid", "getegid",
	"exit", "exit_group", "rseq",
	// glibc's thread start (cgo programs create threads with
	// pthread_create) registers the thread's robust futex list.
	"set_robust_list",
}

// AuditEnv names the environment variable that, set to 1, makes the
// processes govmd confines log violations instead of dying (Config.Log):
// for finding what a new code path needs, with the kernel's audit log.
const AuditEnv = "GOVMD_SANDBOX_AUDIT"

// Confine applies cfg to the whole process. It is irreversible.
func Confine(cfg Config) error {
	// What the standard library loads lazily from files must be loaded
	// now: the local time zone (for log timestamps).
	_ = time.Local.String()
	uid, gid := -1, -1
	if cfg.User != "" {
		var err error
		if uid, gid, err = lookup(cfg.User); err != nil {
			return err
		}
		if uid == 0 {
			return fmt.Errorf("sandbox: user %s is root", cfg.User)
		}
	} else if caps, err := effectiveCaps(); err != nil || caps != 0 {
		return fmt.Errorf("sandbox: running with capabilities %#x: give a user to switch to (%v)", caps, err)
	}
	// Landlock before the switch: it opens the paths of its rules, which
	// the user switched to may not be allowed to reach (a socket in a
	// directory only root can enter).
	var rules []landlock.Rule
	for _, dir := range cfg.RemovableDirs {
		rules = append(rules, landlock.PathAccess(llsys.AccessFSRemoveFile, dir))
	}
	ll := landlock.V11.BestEffort()
	var err error
	if cfg.Signals {
		// Files and network only: no scoped restrictions.
		if err = ll.RestrictPaths(rules...); err == nil {
			err = ll.RestrictNet()
		}
	} else {
		err = ll.Restrict(rules...)
	}
	if err != nil {
		return fmt.Errorf("sandbox: landlock: %w", err)
	}
	if uid > 0 {
		if err := switchUser(uid, gid); err != nil {
			return err
		}
		if caps, err := effectiveCaps(); err != nil || caps != 0 {
			return fmt.Errorf("sandbox: capabilities %#x left after becoming %s (%v)", caps, cfg.User, err)
		}
	}
	return loadFilter(cfg)
}

// switchUser switches every thread to uid and gid, with no supplementary
// groups, which clears the capability sets of a process started as root.
func switchUser(uid, gid int) error {
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("sandbox: setgroups: %w", err)
	}
	if err := syscall.Setresgid(gid, gid, gid); err != nil {
		return fmt.Errorf("sandbox: setresgid %d: %w", gid, err)
	}
	if err := syscall.Setresuid(uid, uid, uid); err != nil {
		return fmt.Errorf("sandbox: setresuid %d: %w", uid, err)
	}
	return nil
}

// nobodyID is the uid and gid of nobody where the user database has no
// such user (the overflow ID Linux uses for it).
const nobodyID = 65534

// Lookup resolves a user name or number to its uid and primary gid (the
// user database is read with the pure-Go parser of /etc/passwd).
func Lookup(name string) (uid, gid int, err error) { return lookup(name) }

func lookup(name string) (uid, gid int, err error) {
	var u *user.User
	n, perr := strconv.Atoi(name)
	if perr == nil {
		u, err = user.LookupId(name)
	} else {
		u, err = user.Lookup(name)
	}
	switch {
	case err == nil:
	case perr == nil && n > 0:
		// A number that is no user in the database (a minimal system
		// without /etc/passwd): that uid, and the gid of the same number.
		return n, n, nil
	case name == "nobody":
		return nobodyID, nobodyID, nil
	default:
		return 0, 0, fmt.Errorf("sandbox: user %s: %w", name, err)
	}
	uid, err = strconv.Atoi(u.Uid)
	if err != nil {
		return 0, 0, fmt.Errorf("sandbox: user %s: uid %q", name, u.Uid)
	}
	gid, err = strconv.Atoi(u.Gid)
	if err != nil {
		return 0, 0, fmt.Errorf("sandbox: user %s: gid %q", name, u.Gid)
	}
	return uid, gid, nil
}

// effectiveCaps returns the process's effective capability set, read from
// /proc/self/status (CapEff).
func effectiveCaps() (uint64, error) {
	// capget, not /proc/self/status: Landlock may already deny files.
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return 0, os.NewSyscallError("capget", err)
	}
	return uint64(data[0].Effective) | uint64(data[1].Effective)<<32, nil
}

// loadFilter installs the seccomp allowlist on every thread.
func loadFilter(cfg Config) error {
	if !seccomp.Supported() {
		return errors.New("sandbox: the kernel has no seccomp filters")
	}
	names := append(append([]string(nil), Baseline...), cfg.Syscalls...)
	var conds []seccomp.NameWithConditions
	for _, req := range cfg.Ioctls {
		conds = append(conds, seccomp.NameWithConditions{Name: "ioctl", Conditions: seccomp.ArgumentConditions{
			{Argument: 1, Operation: seccomp.Equal, Value: req},
		}})
	}
	noExec := seccomp.ArgumentConditions{{Argument: 2, Operation: seccomp.BitsNotSet, Value: unix.PROT_EXEC}}
	conds = append(conds,
		seccomp.NameWithConditions{Name: "mmap", Conditions: noExec},
		seccomp.NameWithConditions{Name: "mprotect", Conditions: noExec},
		// Threads only (the Go runtime's clone), never a new process.
		seccomp.NameWithConditions{Name: "clone", Conditions: seccomp.ArgumentConditions{
			{Argument: 0, Operation: seccomp.BitsSet, Value: unix.CLONE_THREAD},
		}},
	)
	def := seccomp.ActionKillProcess
	if cfg.Log {
		def = seccomp.ActionLog
	}
	filter := seccomp.Filter{
		NoNewPrivs: true,
		Flag:       seccomp.FilterFlagTSync,
		Policy: seccomp.Policy{
			DefaultAction: def,
			Syscalls: []seccomp.SyscallGroup{{
				Names:              names,
				NamesWithCondtions: conds,
				Action:             seccomp.ActionAllow,
			}, {
				// glibc (a cgo build's threads) tries clone3 first, whose
				// flags seccomp cannot see: ENOSYS makes it use clone.
				Names:  []string{"clone3"},
				Action: seccomp.ActionErrno | seccomp.Action(unix.ENOSYS),
			}},
		},
	}
	if cgoBuild {
		// A thread glibc starts after confinement sets up its malloc
		// arena at its first allocation and counts the CPUs by opening
		// /sys/devices/system/cpu/online; refused, it falls back to
		// sched_getaffinity. Only a cgo build has glibc threads: a pure
		// Go build (CGO_ENABLED=0, what the Makefile builds) keeps
		// opening fatal.
		filter.Policy.Syscalls = append(filter.Policy.Syscalls, seccomp.SyscallGroup{
			Names:  []string{"openat", "open"},
			Action: seccomp.ActionErrno | seccomp.Action(unix.EACCES),
		})
	}
	if err := seccomp.LoadFilter(filter); err != nil {
		return fmt.Errorf("sandbox: seccomp: %w", err)
	}
	return nil
}
