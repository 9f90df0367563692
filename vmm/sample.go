package vmm

import (
	"bufio"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"time"
)

// ripSampler counts where the vCPUs are: every period it kicks each vCPU
// out of KVM_RUN and the vCPU's loop records its RIP (the guest profile,
// Config.GuestProfile). The kick costs one exit per vCPU and period.
type ripSampler struct {
	period time.Duration
	mu     sync.Mutex
	counts map[uint64]uint64
	total  uint64
}

func newRIPSampler(period time.Duration) *ripSampler {
	return &ripSampler{period: period, counts: map[uint64]uint64{}}
}

func (s *ripSampler) add(rip uint64) {
	s.mu.Lock()
	s.counts[rip]++
	s.total++
	s.mu.Unlock()
}

// run asks every vCPU for a sample each period until done is closed.
func (s *ripSampler) run(v *VM, done <-chan struct{}) {
	tick := time.NewTicker(s.period)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return
		case <-tick.C:
		}
		v.cpusMu.Lock()
		for _, t := range v.cpus {
			if tid := t.tid.Load(); tid != 0 {
				t.sample.Store(true)
				_ = t.cpu.Kick(int(tid))
			}
		}
		v.cpusMu.Unlock()
	}
}

// write writes the profile: a header, then one line per function (or per
// address when the kernel has no symbol table), most samples first:
// "samples percent symbol".
func (s *ripSampler) write(w io.Writer, kernel string) error {
	return s.writeSyms(w, kernelSymbols(kernel))
}

func (s *ripSampler) writeSyms(w io.Writer, syms symtab) error {
	s.mu.Lock()
	byName := map[string]uint64{}
	for rip, n := range s.counts {
		byName[syms.name(rip)] += n
	}
	total := s.total
	s.mu.Unlock()
	names := make([]string, 0, len(byName))
	for k := range byName {
		names = append(names, k)
	}
	sort.Slice(names, func(i, j int) bool {
		if byName[names[i]] != byName[names[j]] {
			return byName[names[i]] > byName[names[j]]
		}
		return names[i] < names[j]
	})
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, "# govmd guest profile: %d samples, one per vCPU every %v\n", total, s.period)
	for _, k := range names {
		fmt.Fprintf(bw, "%8d %5.1f%% %s\n", byName[k], 100*float64(byName[k])/float64(max(total, 1)), k)
	}
	return bw.Flush()
}

// symtab maps guest addresses to the kernel's function symbols.
type symtab struct {
	addrs []uint64
	names []string
}

// kernelSymbols reads the function symbols of an ELF kernel (vmlinux); a
// bzImage or a stripped kernel gives an empty table.
func kernelSymbols(path string) symtab {
	var t symtab
	f, err := elf.Open(path)
	if err != nil {
		return t
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		return t
	}
	sort.Slice(syms, func(i, j int) bool { return syms[i].Value < syms[j].Value })
	for _, s := range syms {
		if elf.ST_TYPE(s.Info) == elf.STT_FUNC && s.Value != 0 {
			t.addrs = append(t.addrs, s.Value)
			t.names = append(t.names, s.Name)
		}
	}
	return t
}

// name returns the function containing rip, or rip in hex.
func (t symtab) name(rip uint64) string {
	i := sort.Search(len(t.addrs), func(i int) bool { return t.addrs[i] > rip }) - 1
	if i < 0 || rip-t.addrs[i] > 1<<20 {
		return fmt.Sprintf("%#x", rip)
	}
	return t.names[i]
}

// writeGuestProfile writes the sampler's profile to path.
func (v *VM) writeGuestProfile() error {
	if v.sampler == nil {
		return nil
	}
	f, err := os.Create(v.cfg.GuestProfile)
	if err != nil {
		return fmt.Errorf("guest profile: %w", err)
	}
	if err := v.sampler.write(f, v.cfg.Kernel); err != nil {
		f.Close()
		return fmt.Errorf("guest profile: %w", err)
	}
	return f.Close()
}
