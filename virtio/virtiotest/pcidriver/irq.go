package pcidriver

import (
	"sync"
)

// MSI message the driver programs: the local APIC's address and one data
// value (an IDT vector) per MSI-X table entry.
const (
	msiAddr     = 0xfee00000
	msiDataBase = 0x30
)

// target of a bound MSI message.
const targetConfig = -1

// IRQ is the guest's interrupt controller as a test sees it. It implements
// pcitransport.MSIXSink (the messages the function's MSI-X table sends) and
// pcitransport.INTxLine (its INTx pin). A Driver binds each message it
// programs to a queue or to configuration changes; a delivery wakes the
// queue's waiter and is counted. INTx assertions are handed to the
// Driver's interrupt handler, which reads the ISR to find their cause.
//
// IRQ is safe for concurrent use. Deliver, Route and Raise never block:
// the transport calls them with locks held.
type IRQ struct {
	mu       sync.Mutex
	bound    map[uint32]int // MSI data -> queue, or targetConfig
	counts   []uint64       // handled interrupts, by queue
	config   uint64
	vectors  map[int]uint64 // MSI-X deliveries, by table entry
	routes   map[int]Route
	stray    uint64 // deliveries of messages nobody bound
	intx     uint64 // INTx assertions
	spurious uint64 // INTx interrupts with a clear ISR

	wake  []chan struct{}
	cfgCh chan struct{}
	line  chan struct{} // INTx asserted, for the driver's handler
}

// Route is what the function last reported an MSI-X vector would deliver.
type Route struct {
	Addr   uint64
	Data   uint32
	Masked bool
}

// NewIRQ returns an interrupt controller for a function with nq queues.
func NewIRQ(nq int) *IRQ {
	i := &IRQ{
		bound:   map[uint32]int{},
		counts:  make([]uint64, nq),
		vectors: map[int]uint64{},
		routes:  map[int]Route{},
		wake:    make([]chan struct{}, nq),
		cfgCh:   make(chan struct{}, 1),
		line:    make(chan struct{}, 1),
	}
	for q := range i.wake {
		i.wake[q] = make(chan struct{}, 1)
	}
	return i
}

// bind makes the message with data mean an interrupt for target.
func (i *IRQ) bind(data uint32, target int) {
	i.mu.Lock()
	i.bound[data] = target
	i.mu.Unlock()
}

// Deliver implements pcitransport.MSIXSink: it records the delivery and
// runs the handler bound to the message.
func (i *IRQ) Deliver(vector int, addr uint64, data uint32) {
	i.mu.Lock()
	i.vectors[vector]++
	target, ok := i.bound[data]
	if !ok || addr != msiAddr {
		i.stray++
		i.mu.Unlock()
		return
	}
	i.mu.Unlock()
	if target == targetConfig {
		i.configInterrupt()
	} else {
		i.queueInterrupt(target)
	}
}

// Route implements pcitransport.MSIXSink.
func (i *IRQ) Route(vector int, addr uint64, data uint32, masked bool) {
	i.mu.Lock()
	i.routes[vector] = Route{Addr: addr, Data: data, Masked: masked}
	i.mu.Unlock()
}

// Raise implements pcitransport.INTxLine.
func (i *IRQ) Raise() {
	i.mu.Lock()
	i.intx++
	i.mu.Unlock()
	select {
	case i.line <- struct{}{}:
	default:
	}
}

func (i *IRQ) queueInterrupt(q int) {
	if q < 0 || q >= len(i.wake) {
		return
	}
	i.mu.Lock()
	i.counts[q]++
	i.mu.Unlock()
	select {
	case i.wake[q] <- struct{}{}:
	default:
	}
}

func (i *IRQ) configInterrupt() {
	i.mu.Lock()
	i.config++
	i.mu.Unlock()
	select {
	case i.cfgCh <- struct{}{}:
	default:
	}
}

func (i *IRQ) spuriousINTx() {
	i.mu.Lock()
	i.spurious++
	i.mu.Unlock()
}

// Wait returns a channel that receives after an interrupt for queue q
// (interrupts that arrive while nobody waits are remembered, one deep).
func (i *IRQ) Wait(q int) <-chan struct{} { return i.wake[q] }

// WaitConfig is Wait for configuration interrupts.
func (i *IRQ) WaitConfig() <-chan struct{} { return i.cfgCh }

// Count returns how many interrupts were handled for queue q: MSI-X
// messages bound to it, or INTx interrupts whose ISR had the queue bit
// (those count for every queue, as a guest then looks at every queue).
func (i *IRQ) Count(q int) uint64 {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.counts[q]
}

// ConfigCount returns how many configuration interrupts were handled.
func (i *IRQ) ConfigCount() uint64 {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.config
}

// Deliveries returns how many MSI-X messages MSI-X table entry vector sent.
func (i *IRQ) Deliveries(vector int) uint64 {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.vectors[vector]
}

// Stray returns how many MSI-X messages matched no bound message (a wrong
// address or data: the function used an entry the driver did not program).
func (i *IRQ) Stray() uint64 {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.stray
}

// INTx returns how many times the INTx line was raised, and how many of
// the interrupts the handler took found the ISR clear.
func (i *IRQ) INTx() (raised, spurious uint64) {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.intx, i.spurious
}

// LastRoute returns what the function last reported for MSI-X vector.
func (i *IRQ) LastRoute(vector int) (Route, bool) {
	i.mu.Lock()
	defer i.mu.Unlock()
	r, ok := i.routes[vector]
	return r, ok
}
