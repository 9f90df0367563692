package vmm

import (
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"

	"github.com/govmd/govmd/internal/eventfd"
	"github.com/govmd/govmd/kvm"
)

// irqVM is the part of *kvm.VM the interrupt plumbing uses (a fake in
// tests).
type irqVM interface {
	SetGSIRouting(entries []kvm.RoutingEntry) error
	SignalMSI(msg kvm.MSI) (bool, error)
	AddIRQFD(fd int, gsi uint32, resampleFD int) error
	RemoveIRQFD(fd int, gsi uint32) error
}

// router owns KVM's GSI routing table: the irqchip routes it was made
// with (kvm.PCIRQRouting, which matches the MADT's IRQ0 -> GSI 2
// override) plus one MSI route per MSI-X vector in use.
type router struct {
	vm   irqVM
	pins []kvm.RoutingEntry

	mu   sync.Mutex
	msi  map[uint32]kvm.MSI
	next uint32
}

func newRouter(vm irqVM, pins []kvm.RoutingEntry) *router {
	return &router{vm: vm, pins: pins, msi: map[uint32]kvm.MSI{}, next: firstMSIGSI}
}

// allocGSI reserves a GSI for an MSI route.
func (r *router) allocGSI() (uint32, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.next >= maxGSI {
		return 0, errors.New("vmm: out of GSIs for MSI-X vectors")
	}
	g := r.next
	r.next++
	return g, nil
}

// setMSI points gsi at msg and installs the table.
func (r *router) setMSI(gsi uint32, msg kvm.MSI) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if old, ok := r.msi[gsi]; ok && old == msg {
		return nil
	}
	r.msi[gsi] = msg
	return r.installLocked()
}

// install installs the table; setupVM calls it once, before the guest
// runs, so that the PIT is on the pin the MADT names from the start.
func (r *router) install() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.installLocked()
}

func (r *router) installLocked() error {
	table := append([]kvm.RoutingEntry(nil), r.pins...)
	gsis := make([]uint32, 0, len(r.msi))
	for g := range r.msi {
		gsis = append(gsis, g)
	}
	sort.Slice(gsis, func(i, j int) bool { return gsis[i] < gsis[j] })
	for _, g := range gsis {
		table = append(table, kvm.MSIRoute(g, r.msi[g]))
	}
	return r.vm.SetGSIRouting(table)
}

// msixSink delivers one PCI function's MSI-X vectors through irqfds. Each
// vector has a GSI whose MSI route follows the guest's table entry; a
// delivery is one eventfd write, which KVM turns into the interrupt.
// It implements pcitransport.MSIXSink.
type msixSink struct {
	vm  irqVM
	r   *router
	log *slog.Logger

	// mu guards vectors' state: Deliver and Route run under the MSI-X
	// table's lock, VectorFD under none.
	mu      sync.Mutex
	vectors []msiVector // fixed length after newMSIXSink
}

type msiVector struct {
	gsi    uint32
	fd     *eventfd.EventFD
	msg    kvm.MSI
	routed bool // msg is installed for gsi
	irqfd  bool // fd is registered with KVM
	// direct: fd was handed to another process (VectorFD), which writes
	// it without asking; parked: its irqfd is deassigned while the guest
	// masks the vector.
	direct, parked bool
}

func newMSIXSink(vm irqVM, r *router, n int, log *slog.Logger) (*msixSink, error) {
	s := &msixSink{vm: vm, r: r, log: log}
	for i := 0; i < n; i++ {
		gsi, err := r.allocGSI()
		if err != nil {
			s.Close()
			return nil, err
		}
		fd, err := eventfd.New()
		if err != nil {
			s.Close()
			return nil, err
		}
		v := msiVector{gsi: gsi, fd: fd}
		if err := vm.AddIRQFD(fd.FD(), gsi, -1); err != nil {
			// Not fatal: Deliver falls back to KVM_SIGNAL_MSI.
			log.Warn("irqfd not available; MSI-X goes through KVM_SIGNAL_MSI", "gsi", gsi, "err", err)
		} else {
			v.irqfd = true
		}
		s.vectors = append(s.vectors, v)
	}
	return s, nil
}

// Deliver implements pcitransport.MSIXSink. It runs with the MSI-X table
// lock held, so the route it installs cannot be overtaken by a table
// write.
func (s *msixSink) Deliver(vector int, addr uint64, data uint32) {
	if vector < 0 || vector >= len(s.vectors) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v := &s.vectors[vector]
	msg := kvm.MSI{Address: addr, Data: data}
	if v.irqfd && (!v.routed || v.msg != msg) {
		if err := s.r.setMSI(v.gsi, msg); err != nil {
			s.log.Warn("MSI route update failed; using KVM_SIGNAL_MSI", "gsi", v.gsi, "err", err)
			v.routed = false
		} else {
			v.msg, v.routed = msg, true
		}
	}
	if v.irqfd && v.routed {
		if err := v.fd.Write(); err == nil {
			return
		}
	}
	if _, err := s.vm.SignalMSI(msg); err != nil {
		s.log.Warn("MSI delivery failed", "vector", vector, "err", err)
	}
}

// Route implements pcitransport.MSIXSink: an unmasked vector gets its
// route installed ahead of the first delivery.
func (s *msixSink) Route(vector int, addr uint64, data uint32, masked bool) {
	if vector < 0 || vector >= len(s.vectors) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v := &s.vectors[vector]
	if masked {
		if v.direct {
			s.park(v, true)
		}
		return
	}
	// The route first: unparking may deliver at once.
	msg := kvm.MSI{Address: addr, Data: data}
	if (v.irqfd || v.parked) && !(v.routed && v.msg == msg) {
		if err := s.r.setMSI(v.gsi, msg); err != nil {
			s.log.Warn("MSI route update failed", "gsi", v.gsi, "err", err)
			v.routed = false
		} else {
			v.msg, v.routed = msg, true
		}
	}
	if v.direct {
		s.park(v, false)
	}
}

// VectorFD implements pcitransport.VectorFDs: the vector's irqfd, with its
// route installed, for a process that writes it directly. From then on
// the vector's irqfd is deassigned while the guest masks it (the eventfd
// counts what arrives meanwhile) and assigned again at unmask, when KVM
// delivers what is pending.
func (s *msixSink) VectorFD(vector int, addr uint64, data uint32) (int, bool) {
	if vector < 0 || vector >= len(s.vectors) {
		return -1, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v := &s.vectors[vector]
	if !v.irqfd {
		return -1, false
	}
	msg := kvm.MSI{Address: addr, Data: data}
	if !v.routed || v.msg != msg {
		if err := s.r.setMSI(v.gsi, msg); err != nil {
			s.log.Warn("MSI route update failed", "gsi", v.gsi, "err", err)
			v.routed = false
			return -1, false
		}
		v.msg, v.routed = msg, true
	}
	v.direct = true
	return v.fd.FD(), true
}

// park deassigns a direct vector's irqfd while it is masked and assigns
// it again when it is not.
func (s *msixSink) park(v *msiVector, masked bool) {
	switch {
	case masked && v.irqfd:
		if err := s.vm.RemoveIRQFD(v.fd.FD(), v.gsi); err != nil {
			s.log.Warn("parking a masked vector's irqfd failed", "gsi", v.gsi, "err", err)
			return
		}
		v.irqfd, v.parked = false, true
	case !masked && v.parked:
		if err := s.vm.AddIRQFD(v.fd.FD(), v.gsi, -1); err != nil {
			s.log.Warn("unparking a vector's irqfd failed", "gsi", v.gsi, "err", err)
			return
		}
		v.irqfd, v.parked = true, false
	}
}

// Close unregisters the irqfds and closes the eventfds.
func (s *msixSink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, v := range s.vectors {
		if v.irqfd {
			errs = append(errs, s.vm.RemoveIRQFD(v.fd.FD(), v.gsi))
		}
		errs = append(errs, v.fd.Close())
	}
	s.vectors = nil
	return errors.Join(errs...)
}

// intxLine is a PCI INTx pin as a level-triggered irqfd with a resample
// eventfd. It implements pcitransport.INTxLine.
type intxLine struct {
	vm       irqVM
	gsi      uint32
	fd       *eventfd.EventFD
	resample *eventfd.EventFD
}

func newINTxLine(vm irqVM, gsi uint32) (*intxLine, error) {
	fd, err := eventfd.New()
	if err != nil {
		return nil, err
	}
	rs, err := eventfd.New()
	if err != nil {
		fd.Close()
		return nil, err
	}
	if err := vm.AddIRQFD(fd.FD(), gsi, rs.FD()); err != nil {
		fd.Close()
		rs.Close()
		return nil, fmt.Errorf("INTx irqfd for GSI %d: %w", gsi, err)
	}
	return &intxLine{vm: vm, gsi: gsi, fd: fd, resample: rs}, nil
}

// Raise implements pcitransport.INTxLine.
func (l *intxLine) Raise() { _ = l.fd.Write() }

// serveResample calls onResample each time the guest acknowledges the
// interrupt, until the resample eventfd is canceled.
func (l *intxLine) serveResample(onResample func()) {
	for {
		if _, err := l.resample.Wait(); err != nil {
			return
		}
		onResample()
	}
}

// Close unregisters the irqfd and closes the eventfds; a serveResample
// loop returns.
func (l *intxLine) Close() error {
	l.resample.Cancel()
	err := l.vm.RemoveIRQFD(l.fd.FD(), l.gsi)
	return errors.Join(err, l.fd.Close(), l.resample.Close())
}
