package nettest_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/govmd/govmd/api"
	vnet "github.com/govmd/govmd/devices/net"
	"github.com/govmd/govmd/vmm"
)

// apiBurst is how many GET /vm/counters the API load sends at once.
const apiBurst = 1000

// benchVM is the control API's view of the benchmark's device: its
// counters, as govmd run's API serves them; it has nothing to steer.
type benchVM struct{ dev *vnet.Device }

func (v benchVM) Counters() vmm.Counters {
	return vmm.Counters{Devices: []vmm.DeviceCounters{{Kind: "nic", Name: "govmdA", Stats: v.dev.Stats()}}}
}
func (benchVM) State() vmm.State                   { return vmm.StateRunning }
func (benchVM) Uptime() time.Duration              { return 0 }
func (benchVM) NICs() []vmm.NICInfo                { return nil }
func (benchVM) Pause(context.Context) error        { return vmm.ErrNotRunning }
func (benchVM) Resume() error                      { return vmm.ErrNotRunning }
func (benchVM) PowerButton() error                 { return vmm.ErrNotRunning }
func (benchVM) Stop() error                        { return vmm.ErrNotRunning }
func (benchVM) SetLink(string, bool) (bool, error) { return false, vmm.ErrNotRunning }

// apiLoadGen is a control-API server for the benchmark's device and a
// client that sends it, once a second, apiBurst concurrent GET
// /vm/counters (each on a connection of its own), until the benchmark
// ends.
type apiLoadGen struct {
	ok, failed atomic.Int64
	bursts     atomic.Int64
	stop       func()
}

func startAPILoad(b *testing.B, dev *vnet.Device) *apiLoadGen {
	b.Helper()
	path := filepath.Join(b.TempDir(), "api.sock")
	l, err := api.Listen(path)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := api.NewServer(benchVM{dev}, api.Info{Version: "bench"}, nil).Serve(ctx, l); err != nil {
			b.Errorf("api: %v", err)
		}
	}()
	g := &apiLoadGen{}
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for ctx.Err() == nil {
			var burst sync.WaitGroup
			for i := 0; i < apiBurst; i++ {
				burst.Add(1)
				go func() {
					defer burst.Done()
					c := api.NewClient(path)
					defer c.Close()
					rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
					defer rcancel()
					if _, err := c.Counters(rctx); err != nil && !errors.Is(ctx.Err(), context.Canceled) {
						g.failed.Add(1)
						return
					}
					g.ok.Add(1)
				}()
			}
			burst.Wait()
			g.bursts.Add(1)
			select {
			case <-tick.C:
			case <-ctx.Done():
			}
		}
	}()
	g.stop = func() { cancel(); wg.Wait() }
	b.Cleanup(g.stop)
	return g
}

// report stops the load and reports the requests answered per second and
// the failed ones.
func (g *apiLoadGen) report(b *testing.B, el time.Duration) {
	g.stop()
	b.ReportMetric(float64(g.ok.Load())/el.Seconds(), "apireq/s")
	b.ReportMetric(float64(g.failed.Load()), "apifailed")
	if g.bursts.Load() == 0 {
		b.Error("no burst of API requests completed during the benchmark")
	}
}
