package main

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/govmd/govmd/internal/sandbox"
	"github.com/govmd/govmd/kvm"
)

// vmmSyscalls are what govmd's own process needs beyond the sandbox's
// baseline once the VM runs: the disks (vectored positioned I/O, flush,
// discard), the API socket (accepting clients, removing it at exit), and
// its net-device processes (stopping and reaping them: Go uses pidfds).
var vmmSyscalls = []string{
	"preadv", "pwritev", "preadv2", "pwritev2", "fdatasync", "fsync", "fallocate",
	"accept4", "getsockname", "getpeername", "setsockopt", "getsockopt",
	"kill", "pidfd_send_signal", "waitid", "wait4",
}

// vmmIoctls are the ioctls it still makes: KVM's run-time requests, the
// tap offloads of NICs in the process (sandbox=off), and the terminal's
// mode (restored at exit).
func vmmIoctls() []uint64 {
	return append(kvm.RuntimeIoctls(), unix.TUNSETOFFLOAD, unix.TUNSETVNETHDRSZ, unix.TCGETS, unix.TCSETS)
}

// vmmConfinement returns what confines govmd run's process once its VM
// is set up. Started as root it becomes nobody (so it keeps no
// capability); the sockets it listens on (the API socket, console ports'
// sockets) are handed to that user so that it can remove them at exit,
// which is the only file-system change Landlock leaves it (in the
// sockets' directories).
func vmmConfinement(sockets ...string) (func() error, error) {
	cfg := sandbox.Config{Ioctls: vmmIoctls(), Syscalls: vmmSyscalls, Signals: true, Log: os.Getenv(sandbox.AuditEnv) == "1"}
	if os.Geteuid() == 0 {
		cfg.User = "nobody"
	}
	return func() error {
		for _, path := range sockets {
			if cfg.User != "" {
				uid, gid, err := sandbox.Lookup(cfg.User)
				if err != nil {
					return err
				}
				if err := os.Lchown(path, uid, gid); err != nil {
					return fmt.Errorf("socket %s: %w", path, err)
				}
			}
			cfg.RemovableDirs = append(cfg.RemovableDirs, filepath.Dir(path))
		}
		if len(sockets) > 0 {
			cfg.Syscalls = append(cfg.Syscalls, "unlinkat", "unlink")
		}
		return sandbox.Confine(cfg)
	}, nil
}
