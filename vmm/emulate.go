package vmm

import (
	"math/bits"

	"github.com/govmd/govmd/kvm"
)

// When KVM's instruction emulator gives up (KVM_EXIT_INTERNAL_ERROR,
// suberror emulation, with the instruction bytes) the vCPU can be resumed
// after the VMM has carried out the instruction itself. On hardware KVM
// this exit is rare (real-mode corner cases); on a software-nested PVM host
// every guest instruction goes through the emulator, and these few are
// missing from it. emulateFailed handles the ones a VMM can do exactly from
// the registers alone; everything else is reported.

// RFLAGS bits.
const (
	flagCF = 1 << 0
	flagPF = 1 << 2
	flagAF = 1 << 4
	flagZF = 1 << 6
	flagSF = 1 << 7
	flagOF = 1 << 11
	flagAC = 1 << 18
)

// emulation is what emulateFailed did.
type emulation struct {
	name string // mnemonic, for logs and counters
	// injectBP asks the caller to inject #BP (vector 3) after RIP was
	// advanced: an int3 the emulator cannot deliver at CPL0.
	injectBP bool
}

// errNotEmulated is returned for an instruction the VMM does not emulate.
type errNotEmulated struct{ why string }

func (e errNotEmulated) Error() string { return e.why }

// emulateFailed carries out the instruction at regs.RIP whose bytes are
// insn (KVM's fetch window, possibly longer than the instruction) for a
// vCPU at privilege level cpl, updating regs (RIP, RFLAGS, destination).
// long reports 64-bit mode (REX prefixes exist only there).
func emulateFailed(insn []byte, regs *kvm.Regs, cpl int, long bool) (emulation, error) {
	if len(insn) == 0 {
		return emulation{}, errNotEmulated{"no instruction bytes"}
	}
	switch {
	case hasPrefix(insn, 0x0f, 0x01, 0xca): // clac
		if cpl != 0 {
			return emulation{}, errNotEmulated{"clac outside ring 0 (#UD)"}
		}
		regs.RFLAGS &^= flagAC
		regs.RIP += 3
		return emulation{name: "clac"}, nil
	case hasPrefix(insn, 0x0f, 0x01, 0xcb): // stac
		if cpl != 0 {
			return emulation{}, errNotEmulated{"stac outside ring 0 (#UD)"}
		}
		regs.RFLAGS |= flagAC
		regs.RIP += 3
		return emulation{name: "stac"}, nil
	case insn[0] == 0x9b: // fwait: no unmasked x87 exception is pending (assumed)
		regs.RIP++
		return emulation{name: "fwait"}, nil
	case insn[0] == 0xcc: // int3
		if cpl != 0 {
			return emulation{}, errNotEmulated{"int3 outside ring 0"}
		}
		regs.RIP++
		return emulation{name: "int3", injectBP: true}, nil
	}
	if n, ok := popcnt(insn, regs, long); ok {
		regs.RIP += uint64(n)
		return emulation{name: "popcnt"}, nil
	}
	return emulation{}, errNotEmulated{"instruction not emulated by govmd"}
}

func hasPrefix(b []byte, p ...byte) bool {
	if len(b) < len(p) {
		return false
	}
	for i := range p {
		if b[i] != p[i] {
			return false
		}
	}
	return true
}

// gpr returns a pointer to general register n&15 (the x86 encoding: 0 RAX,
// 1 RCX, 2 RDX, 3 RBX, 4 RSP, 5 RBP, 6 RSI, 7 RDI, 8-15 R8-R15).
func gpr(r *kvm.Regs, n int) *uint64 {
	return [16]*uint64{
		&r.RAX, &r.RCX, &r.RDX, &r.RBX, &r.RSP, &r.RBP, &r.RSI, &r.RDI,
		&r.R8, &r.R9, &r.R10, &r.R11, &r.R12, &r.R13, &r.R14, &r.R15,
	}[n&15]
}

// popcnt emulates "popcnt reg, reg" ([66] f3 [REX] 0f b8 /r with mod 3)
// and returns the instruction length. A memory source is not emulated.
func popcnt(insn []byte, regs *kvm.Regs, long bool) (int, bool) {
	i := 0
	opsize := 32
	if i < len(insn) && insn[i] == 0x66 {
		opsize = 16
		i++
	}
	if i >= len(insn) || insn[i] != 0xf3 {
		return 0, false
	}
	i++
	var rex byte
	if long && i < len(insn) && insn[i]&0xf0 == 0x40 {
		rex = insn[i]
		i++
	}
	if !hasPrefix(insn[i:], 0x0f, 0xb8) || len(insn) < i+3 {
		return 0, false
	}
	modrm := insn[i+2]
	if modrm>>6 != 3 {
		return 0, false
	}
	if rex&8 != 0 {
		opsize = 64
	}
	dst := int(modrm>>3&7) | int(rex>>2&1)<<3
	src := int(modrm&7) | int(rex&1)<<3
	v := *gpr(regs, src)
	var count uint64
	switch opsize {
	case 16:
		count = uint64(bits.OnesCount16(uint16(v)))
		d := gpr(regs, dst)
		*d = *d&^0xffff | count
	case 32:
		count = uint64(bits.OnesCount32(uint32(v)))
		*gpr(regs, dst) = count // 32-bit results zero-extend
	default:
		count = uint64(bits.OnesCount64(v))
		*gpr(regs, dst) = count
	}
	regs.RFLAGS &^= flagCF | flagPF | flagAF | flagZF | flagSF | flagOF
	if count == 0 {
		regs.RFLAGS |= flagZF
	}
	return i + 3, true
}
