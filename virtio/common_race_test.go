package virtio

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/govmd/govmd/memory"
)

// runningDev tracks whether its workers would be running: Activate starts
// them (and refuses while they run, as a real device does), Reset stops
// them.
type runningDev struct {
	running atomic.Bool
	refused atomic.Int32
}

func (d *runningDev) Type() DeviceType              { return DeviceNet }
func (d *runningDev) Features() uint64              { return 0 }
func (d *runningDev) QueueSizes() []uint16          { return []uint16{8} }
func (d *runningDev) ConfigSize() int               { return 0 }
func (d *runningDev) ReadConfig(uint64, []byte)     {}
func (d *runningDev) WriteConfig(uint64, []byte)    {}
func (d *runningDev) ValidateFeatures(uint64) error { return nil }
func (d *runningDev) Reset()                        { d.running.Store(false) }
func (d *runningDev) Activate(a Activation) error {
	if !d.running.CompareAndSwap(false, true) {
		d.refused.Add(1)
		return errors.New("already active")
	}
	return nil
}

type nopTransport struct{}

func (nopTransport) Notify(int)       {}
func (nopTransport) ConfigChanged()   {}
func (nopTransport) NeedsReset(error) {}

// TestResetRacesDriverOK: a reset on one vCPU and DRIVER_OK on another,
// while a third thread holds the state lock now and then (a preempted
// vCPU thread). Status transitions must be atomic with respect to each
// other: whatever the order, the device's workers run exactly when the
// transport says it is active, and the next initialization works. Before,
// reset read "active", dropped the lock, and cleared it later: a DRIVER_OK
// in between started the device, the reset then forgot it without calling
// Device.Reset, and every later DRIVER_OK failed with NEEDS_RESET.
func TestResetRacesDriverOK(t *testing.T) {
	mem, err := memory.New([]memory.Range{{GPA: 0, Size: 1 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	const up = StatusAcknowledge | StatusDriver | StatusFeaturesOK
	for i := 0; i < 300; i++ {
		dev := &runningDev{}
		c, err := NewCommon(dev, mem, nopTransport{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		initialize := func() {
			c.SetStatus(StatusAcknowledge)
			c.SetStatus(StatusAcknowledge | StatusDriver)
			c.SetDriverFeatures(1, uint32(FVersion1>>32))
			c.SetStatus(up)
			c.SetQueue(0, QueueConfig{Size: 8, DescAddr: 0x10000, AvailAddr: 0x11000, UsedAddr: 0x12000}, true, "queue")
		}
		initialize()
		var wg sync.WaitGroup
		stop := make(chan struct{})
		go func() { // the preempted thread
			for {
				select {
				case <-stop:
					return
				default:
				}
				c.mu.Lock()
				time.Sleep(50 * time.Microsecond)
				c.mu.Unlock()
			}
		}()
		wg.Add(2)
		go func() { defer wg.Done(); c.SetStatus(0) }()
		go func() { defer wg.Done(); c.SetStatus(up | StatusDriverOK) }()
		wg.Wait()
		close(stop)
		if c.Active() != dev.running.Load() {
			t.Fatalf("iteration %d: transport active=%v, device running=%v", i, c.Active(), dev.running.Load())
		}
		// A clean re-initialization must work whatever happened.
		c.SetStatus(0)
		initialize()
		c.SetStatus(up | StatusDriverOK)
		if c.Status()&StatusNeedsReset != 0 || !dev.running.Load() || dev.refused.Load() != 0 {
			t.Fatalf("iteration %d: re-initialization: status %s, running %v, refused %d",
				i, StatusString(c.Status()), dev.running.Load(), dev.refused.Load())
		}
		c.Close()
	}
}
