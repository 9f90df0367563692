package kvm

import (
	"encoding/binary"
	"fmt"
)

// Variable-length ioctl arguments (a header followed by an array) are
// encoded into byte buffers with encoding/binary at the kernel's offsets.
// The sizes below are the kernel's; layout_unsafe_test.go checks them
// against the C structures.

const (
	cpuid2HeaderSize  = 8  // struct kvm_cpuid2: nent, padding
	cpuidEntrySize    = 40 // struct kvm_cpuid_entry2
	msrsHeaderSize    = 8  // struct kvm_msrs: nmsrs, pad
	msrEntrySize      = 16 // struct kvm_msr_entry
	msrListHeaderSize = 4  // struct kvm_msr_list: nmsrs
	routingHeaderSize = 8  // struct kvm_irq_routing: nr, flags
	routingEntrySize  = 48 // struct kvm_irq_routing_entry

	// maxCPUIDEntries bounds the buffer grown for KVM_GET_SUPPORTED_CPUID;
	// the kernel's KVM_MAX_CPUID_ENTRIES is 256.
	maxCPUIDEntries = 4096
	// maxMSRs bounds MSR lists (the kernel's KVM_MAX_MSR_ENTRIES is 255
	// per KVM_GET/SET_MSRS call; index lists are a few hundred).
	maxMSRs = 4096
	// maxRoutes is KVM_MAX_IRQ_ROUTES.
	maxRoutes = 4096
)

var le = binary.LittleEndian

func encodeCPUID2(entries []CPUIDEntry) []byte {
	b := make([]byte, cpuid2HeaderSize+len(entries)*cpuidEntrySize)
	le.PutUint32(b[0:], uint32(len(entries)))
	for i, e := range entries {
		p := b[cpuid2HeaderSize+i*cpuidEntrySize:]
		le.PutUint32(p[0:], e.Function)
		le.PutUint32(p[4:], e.Index)
		le.PutUint32(p[8:], e.Flags)
		le.PutUint32(p[12:], e.EAX)
		le.PutUint32(p[16:], e.EBX)
		le.PutUint32(p[20:], e.ECX)
		le.PutUint32(p[24:], e.EDX)
	}
	return b
}

// decodeCPUID2 decodes a struct kvm_cpuid2 buffer. It trusts nent only as
// far as the buffer reaches.
func decodeCPUID2(b []byte) ([]CPUIDEntry, error) {
	if len(b) < cpuid2HeaderSize {
		return nil, fmt.Errorf("kvm: cpuid buffer of %d bytes too short", len(b))
	}
	n := int(le.Uint32(b[0:]))
	if n > (len(b)-cpuid2HeaderSize)/cpuidEntrySize {
		return nil, fmt.Errorf("kvm: cpuid buffer holds fewer than %d entries", n)
	}
	out := make([]CPUIDEntry, n)
	for i := range out {
		p := b[cpuid2HeaderSize+i*cpuidEntrySize:]
		out[i] = CPUIDEntry{
			Function: le.Uint32(p[0:]),
			Index:    le.Uint32(p[4:]),
			Flags:    le.Uint32(p[8:]),
			EAX:      le.Uint32(p[12:]),
			EBX:      le.Uint32(p[16:]),
			ECX:      le.Uint32(p[20:]),
			EDX:      le.Uint32(p[24:]),
		}
	}
	return out, nil
}

func encodeMSRs(entries []MSREntry) []byte {
	b := make([]byte, msrsHeaderSize+len(entries)*msrEntrySize)
	le.PutUint32(b[0:], uint32(len(entries)))
	for i, e := range entries {
		p := b[msrsHeaderSize+i*msrEntrySize:]
		le.PutUint32(p[0:], e.Index)
		le.PutUint64(p[8:], e.Data)
	}
	return b
}

// decodeMSRData copies the data fields of the first n entries of a struct
// kvm_msrs buffer back into entries.
func decodeMSRData(b []byte, entries []MSREntry, n int) {
	for i := 0; i < n && i < len(entries); i++ {
		off := msrsHeaderSize + i*msrEntrySize
		if off+msrEntrySize > len(b) {
			return
		}
		entries[i].Data = le.Uint64(b[off+8:])
	}
}

func encodeMSRList(n int) []byte {
	b := make([]byte, msrListHeaderSize+4*n)
	le.PutUint32(b[0:], uint32(n))
	return b
}

func decodeMSRList(b []byte) ([]uint32, error) {
	if len(b) < msrListHeaderSize {
		return nil, fmt.Errorf("kvm: msr list buffer of %d bytes too short", len(b))
	}
	n := int(le.Uint32(b[0:]))
	if n > (len(b)-msrListHeaderSize)/4 {
		return nil, fmt.Errorf("kvm: msr list buffer holds fewer than %d entries", n)
	}
	out := make([]uint32, n)
	for i := range out {
		out[i] = le.Uint32(b[msrListHeaderSize+4*i:])
	}
	return out, nil
}

func encodeRouting(entries []RoutingEntry) ([]byte, error) {
	if len(entries) > maxRoutes {
		return nil, fmt.Errorf("kvm: %d GSI routes, at most %d allowed", len(entries), maxRoutes)
	}
	b := make([]byte, routingHeaderSize+len(entries)*routingEntrySize)
	le.PutUint32(b[0:], uint32(len(entries)))
	for i, e := range entries {
		p := b[routingHeaderSize+i*routingEntrySize:]
		le.PutUint32(p[0:], e.GSI)
		le.PutUint32(p[4:], uint32(e.Kind))
		// p[8:12] flags and p[12:16] pad stay zero; the union starts at 16.
		switch e.Kind {
		case RouteIRQChip:
			le.PutUint32(p[16:], uint32(e.Chip))
			le.PutUint32(p[20:], e.Pin)
		case RouteMSI:
			le.PutUint32(p[16:], uint32(e.MSI.Address))
			le.PutUint32(p[20:], uint32(e.MSI.Address>>32))
			le.PutUint32(p[24:], e.MSI.Data)
		default:
			return nil, fmt.Errorf("kvm: GSI %d: unknown route kind %d", e.GSI, e.Kind)
		}
	}
	return b, nil
}
