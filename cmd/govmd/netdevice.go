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
	"syscall"

	vnet "github.com/govmd/govmd/devices/net"
	"github.com/govmd/govmd/devices/net/netdevice"
)

const netDeviceUsage = `usage:
  govmd net-device --tap NAME --socket PATH [--mac MAC] [--offload on|csum|off] [--locked]
                   [--user USER] [--log-level debug|info|warn|error]

Serves govmd's virtio-net device over vhost-user on PATH (one frontend
session: QEMU's -netdev vhost-user, or govmd run --net vhost-user=PATH),
confined once the tap is open and the frontend connected.
`

func runNetDevice(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("net-device", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfg := netdevice.Config{TapFD: -1, SocketFD: -1, StatsFD: -1}
	var mac, logLevel string
	fs.StringVar(&cfg.Tap, "tap", "", "tap interface to serve (created if missing, removed at exit if created)")
	fs.StringVar(&cfg.Socket, "socket", "", "unix socket path to listen on for the vhost-user frontend (mode 0600; removed once connected)")
	fs.StringVar(&mac, "mac", "", "the NIC's MAC address (default: a random locally administered one)")
	fs.TextVar(&cfg.Offload, "offload", vnet.OffloadOn, "offloads offered to the guest: on, csum or off")
	fs.BoolVar(&cfg.Locked, "locked", false, "drop transmitted frames with another source MAC, deliver only frames for this MAC, broadcast and multicast")
	fs.StringVar(&cfg.User, "user", "", "user to run as once set up (default: nobody when started as root)")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	// Used by govmd run, which hands over an open tap and a connected
	// socket (not for people).
	fs.IntVar(&cfg.TapFD, "tap-fd", -1, "an open tap descriptor to take over (set by govmd run)")
	fs.IntVar(&cfg.SocketFD, "socket-fd", -1, "a connected vhost-user socket descriptor (set by govmd run)")
	fs.IntVar(&cfg.StatsFD, "stats-fd", -1, "a connected socket descriptor on which to answer govmd run's requests for the device's counters (set by govmd run)")
	if code, ok := parseFlags(fs, args, netDeviceUsage, "govmd net-device", stdout, stderr); !ok {
		return code
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "govmd net-device: %v\n", err)
		if errors.Is(err, netdevice.ErrConfig) {
			return exitUsage
		}
		return exitFailure
	}
	if fs.NArg() > 0 {
		return fail(fmt.Errorf("%w: unexpected argument %q", netdevice.ErrConfig, fs.Arg(0)))
	}
	if mac != "" {
		m, err := net.ParseMAC(mac)
		if err != nil || len(m) != 6 || m[0]&1 != 0 {
			return fail(fmt.Errorf("%w: --mac %q is not a unicast Ethernet address", netdevice.ErrConfig, mac))
		}
		cfg.MAC = m
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		return fail(fmt.Errorf("%w: --log-level %q is not debug, info, warn or error", netdevice.ErrConfig, logLevel))
	}
	cfg.Log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if os.Getenv(netdevice.TestViolationEnv) == "1" {
		cfg.ViolationSignal = syscall.SIGUSR1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := netdevice.Run(ctx, cfg); err != nil {
		return fail(err)
	}
	return exitOK
}
