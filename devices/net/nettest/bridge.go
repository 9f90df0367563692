package nettest

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	vnet "github.com/govmd/govmd/devices/net"
	"github.com/govmd/govmd/devices/net/tap"
	"github.com/govmd/govmd/virtio"
)

// Bridge connects a NIC to a tap (tap B, the guest side): frames NB's stack
// sends on tap B become transmit chains, and frames the device delivers
// into receive buffers are written to tap B, header included, after
// CheckRxHeader. Both directions move frames straight between the tap and
// guest memory.
//
// While a bridge runs, the NIC's Send and Recv must not be used.
type Bridge struct {
	n    *NIC
	t    *tap.Tap
	done chan struct{}
	stop atomic.Bool
	wg   sync.WaitGroup

	mu  sync.Mutex
	err error

	// TxFrames counts frames taken from tap B and posted; RxFrames frames
	// written to tap B; TapErrors writes tap B refused. TxVLAN and RxVLAN
	// count the 802.1Q-tagged frames among them.
	TxFrames, RxFrames, TapErrors atomic.Uint64
	TxVLAN, RxVLAN                atomic.Uint64
}

// StartBridge configures tap B for the NIC's negotiated features (header
// size, and as offloads what the driver's transmit features let a guest
// stack produce) and starts moving frames.
func (n *NIC) StartBridge(t *tap.Tap) (*Bridge, error) {
	if err := t.SetVnetHdrSize(n.HdrLen); err != nil {
		return nil, err
	}
	if err := t.SetOffload(HostTapOffloads(n.Acked)); err != nil {
		return nil, err
	}
	b := &Bridge{n: n, t: t, done: make(chan struct{})}
	b.wg.Add(2)
	go b.txPump()
	go b.rxPump()
	return b, nil
}

// Stop stops both directions and returns the first error either met
// (including a received header that broke the negotiated features).
func (b *Bridge) Stop() error {
	if !b.stop.Swap(true) {
		close(b.done)
		b.t.CancelRead()
		b.wg.Wait()
		b.t.ResumeRead()
	}
	return b.Err()
}

// Err returns the first error the bridge met so far.
func (b *Bridge) Err() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

func (b *Bridge) fail(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err == nil {
		b.err = err
	}
}

// txPump reads frames from tap B straight into transmit buffers in guest
// memory and posts them, publishing a batch when tap B has nothing more
// queued.
func (b *Bridge) txPump() {
	defer b.wg.Done()
	n := b.n
	iov := make([][]byte, 1)
	for !b.stop.Load() {
		slot, err := n.freeTxSlot(time.Hour, b.done)
		if err != nil {
			if !errors.Is(err, errStopped) {
				b.fail(err)
			}
			return
		}
		s := n.txSlots[slot]
		buf, err := n.Mem.Slice(s.addr, uint64(s.size))
		if err != nil {
			b.fail(err)
			return
		}
		iov[0] = buf
		k, err := b.t.ReadV(iov, false)
		if err != nil && errors.Is(err, unix.EAGAIN) {
			n.kickTx()
			k, err = b.t.ReadV(iov, true)
		}
		if err != nil {
			n.txFree = append(n.txFree, slot)
			if b.stop.Load() || errors.Is(err, os.ErrDeadlineExceeded) {
				return
			}
			b.fail(fmt.Errorf("reading tap B: %w", err))
			return
		}
		if k < n.HdrLen+14 {
			n.txFree = append(n.txFree, slot)
			continue
		}
		if err := n.postTx(slot, k); err != nil {
			b.fail(err)
			return
		}
		b.TxFrames.Add(1)
		if buf[n.HdrLen+12] == 0x81 && buf[n.HdrLen+13] == 0x00 {
			b.TxVLAN.Add(1)
		}
	}
}

// rxPump writes received frames to tap B.
func (b *Bridge) rxPump() {
	defer b.wg.Done()
	n := b.n
	sinceKick := 0
	for !b.stop.Load() {
		_, _, err := n.nextRx()
		switch {
		case errors.Is(err, errNoFrame):
			n.kickRx()
			sinceKick = 0
			if n.eventIdx && n.rx.ArmUsedEvent() {
				continue
			}
			select {
			case <-n.IRQ.Wait(vnet.RxQueue):
			case <-b.done:
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		case err != nil:
			n.violation(err)
			b.fail(fmt.Errorf("received frame: %w", err))
		default:
			if _, err := b.t.WriteV(n.rxIov); err != nil {
				if b.stop.Load() {
					return
				}
				b.TapErrors.Add(1)
				if !errors.Is(err, unix.EINVAL) {
					b.fail(fmt.Errorf("writing tap B: %w", err))
				}
			} else {
				b.RxFrames.Add(1)
				var eth [14]byte
				if virtio.Gather(eth[:], n.rxIov, n.HdrLen) == 14 && eth[12] == 0x81 && eth[13] == 0x00 {
					b.RxVLAN.Add(1)
				}
			}
		}
		clear(n.rxIov)
		n.repostRx()
		if sinceKick++; sinceKick >= 32 {
			n.kickRx()
			sinceKick = 0
		}
	}
}
