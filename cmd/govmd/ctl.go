package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/govmd/govmd/api"
	"github.com/govmd/govmd/vmm"
)

const ctlUsage = `usage:
  govmd ctl --api-socket PATH [--json] [--timeout D] COMMAND

Talks to a running govmd (govmd run --api-socket PATH). Commands:
  status              state, uptime, version, NICs (GET /vm)
  config              the VM's configuration, as govmd run --config reads it
  counters            every device's counters and the vCPUs' exits (GET /vm/counters)
  metrics             the counters in the Prometheus text format (GET /metrics)
  pause | resume      stop the vCPUs / let them run again
  power-button        press the ACPI power button (the guest shuts down)
  stop                end the VM at once
  link NIC up|down    set a NIC's link (NIC: its index or tap name)
Human-readable output by default; --json prints the API's JSON. Exit
status 0 on success, 1 when the request failed, 2 on bad usage.
`

// runCtl is govmd ctl.
func runCtl(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ctl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	sock := fs.String("api-socket", "", "the API socket of the govmd to talk to")
	asJSON := fs.Bool("json", false, "print the API's JSON instead of text (for scripts)")
	timeout := fs.Duration("timeout", 30*time.Second, "give up on the request after this long")
	if code, ok := parseFlags(fs, args, ctlUsage, "govmd ctl", stdout, stderr); !ok {
		return code
	}
	usageErr := func(msg string) int {
		fmt.Fprintf(stderr, "govmd ctl: %s\n", msg)
		return exitUsage
	}
	if *sock == "" {
		return usageErr("--api-socket PATH is required")
	}
	cmd := fs.Args()
	if len(cmd) == 0 {
		return usageErr("no command (status, config, counters, metrics, pause, resume, power-button, stop, link)")
	}
	want := map[string]int{"status": 1, "config": 1, "counters": 1, "metrics": 1, "pause": 1, "resume": 1, "power-button": 1, "stop": 1, "link": 3}
	n, ok := want[cmd[0]]
	if !ok {
		return usageErr(fmt.Sprintf("unknown command %q", cmd[0]))
	}
	if len(cmd) != n {
		if cmd[0] == "link" {
			return usageErr("usage: link NIC up|down")
		}
		return usageErr(fmt.Sprintf("%s takes no arguments", cmd[0]))
	}
	var up bool
	if cmd[0] == "link" {
		switch cmd[2] {
		case "up":
			up = true
		case "down":
		default:
			return usageErr(fmt.Sprintf("link: %q is not up or down", cmd[2]))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	c := api.NewClient(*sock)
	defer c.Close()
	fail := func(err error) int {
		fmt.Fprintf(stderr, "govmd ctl: %v\n", err)
		return exitFailure
	}
	switch cmd[0] {
	case "status", "config":
		b, err := c.Do(ctx, "GET", "/vm", nil)
		if err != nil {
			return fail(err)
		}
		var v api.VMInfo
		if err := json.Unmarshal(b, &v); err != nil {
			return fail(fmt.Errorf("GET /vm: %w", err))
		}
		if cmd[0] == "config" {
			out, _ := json.MarshalIndent(v.Config, "", "  ")
			fmt.Fprintf(stdout, "%s\n", out)
			return exitOK
		}
		if *asJSON {
			stdout.Write(b)
			return exitOK
		}
		fmt.Fprintf(stdout, "state:   %s\nuptime:  %s\nversion: %s\n", v.State, (time.Duration(v.Uptime*1e3) * time.Millisecond).String(), v.Version)
		for _, n := range v.NICs {
			link := "link up"
			if !n.LinkUp {
				link = "link down"
			}
			if !n.LinkState {
				link += " (fixed: no VIRTIO_NET_F_STATUS)"
			}
			fmt.Fprintf(stdout, "nic %d:   %s, %s\n", n.Index, n.Name, link)
		}
		return exitOK
	case "counters":
		b, err := c.Do(ctx, "GET", "/vm/counters", nil)
		if err != nil {
			return fail(err)
		}
		if *asJSON {
			stdout.Write(b)
			return exitOK
		}
		if err := printCounters(stdout, b); err != nil {
			return fail(fmt.Errorf("GET /vm/counters: %w", err))
		}
		return exitOK
	case "metrics":
		b, err := c.Metrics(ctx)
		if err != nil {
			return fail(err)
		}
		stdout.Write(b)
		return exitOK
	case "link":
		if err := c.SetLink(ctx, cmd[1], up); err != nil {
			return fail(err)
		}
		if !*asJSON {
			fmt.Fprintf(stdout, "nic %s: link %s\n", cmd[1], cmd[2])
		}
		return exitOK
	}
	if err := c.Action(ctx, cmd[0]); err != nil {
		return fail(err)
	}
	if !*asJSON {
		done := map[string]string{"pause": "paused", "resume": "resumed", "power-button": "power button pressed", "stop": "stopped"}
		fmt.Fprintln(stdout, done[cmd[0]])
	}
	return exitOK
}

// printCounters prints GET /vm/counters as text: a line per vCPU and per
// device, key=value sorted by key.
func printCounters(w io.Writer, b []byte) error {
	var c vmm.Counters // Stats decodes as a JSON object (map)
	if err := json.Unmarshal(b, &c); err != nil {
		return err
	}
	kv := func(m map[string]uint64) string {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var parts []string
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
		}
		return strings.Join(parts, " ")
	}
	for _, v := range c.VCPUs {
		fmt.Fprintf(w, "vcpu %d: exits %s; kvm exits=%d\n", v.ID, kv(v.Exits), v.KVM["exits"])
	}
	for _, d := range c.Devices {
		var parts []string
		for _, s := range api.Flatten(d.Stats) {
			parts = append(parts, fmt.Sprintf("%s=%g", s.Name, s.Value))
		}
		fmt.Fprintf(w, "%s %d (%s): transport_faults=%d notifications=%v %s\n", d.Kind, d.Index, d.Name, d.TransportFaults, d.Notifications, strings.Join(parts, " "))
	}
	if len(c.Boot) > 0 {
		fmt.Fprintf(w, "boot: %s\n", vmm.FormatBootTimes(c.Boot))
	}
	return nil
}
