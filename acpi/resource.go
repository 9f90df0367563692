package acpi

import "encoding/binary"

// Resource descriptor encoding (ACPI 6.x, section 6.4). Small descriptors
// carry their type and length in the first byte; large ones have a tag byte
// and a 16-bit length.

// Address space descriptor resource types.
const (
	resTypeMemory = 0
	resTypeIO     = 1
	resTypeBus    = 2
)

// General flags of address space descriptors.
const (
	resConsumer = 1 << 0 // 0: the device produces (bridges) the range
	resMinFixed = 1 << 2
	resMaxFixed = 1 << 3
)

// Type-specific flags.
const (
	memReadWrite   = 1 << 0
	memCacheable   = 1 << 1 // _MEM = 1
	ioEntireRange  = 3      // _RNG: ISA and non-ISA ranges
	largeTagWord   = 0x88
	largeTagDWord  = 0x87
	largeTagQWord  = 0x8a
	largeTagMem32F = 0x86
	smallTagIO     = 0x47 // type 0x08, length 7
	smallTagIRQ    = 0x22 // type 0x04, length 2 (no flags byte)
	smallTagEnd    = 0x79 // type 0x0f, length 1
)

// large starts a large descriptor of the given tag and body length.
func large(tag byte, n int) []byte {
	b := make([]byte, 3+n)
	b[0] = tag
	binary.LittleEndian.PutUint16(b[1:], uint16(n))
	return b
}

// wordAddress encodes a Word Address Space descriptor for [min, max].
func wordAddress(resType, general, specific byte, min, max uint16) []byte {
	b := large(largeTagWord, 13)
	b[3], b[4], b[5] = resType, general, specific
	le := binary.LittleEndian
	le.PutUint16(b[6:], 0) // granularity
	le.PutUint16(b[8:], min)
	le.PutUint16(b[10:], max)
	le.PutUint16(b[12:], 0) // translation offset
	le.PutUint16(b[14:], max-min+1)
	return b
}

// wordBusNumber is WordBusNumber(ResourceProducer, MinFixed, MaxFixed,
// PosDecode, ..., min, max, ...).
func wordBusNumber(min, max uint16) []byte {
	return wordAddress(resTypeBus, resMinFixed|resMaxFixed, 0, min, max)
}

// wordIO is WordIO(ResourceProducer, MinFixed, MaxFixed, PosDecode,
// EntireRange, ..., min, max, ...): an I/O window a bridge forwards.
func wordIO(min, max uint16) []byte {
	return wordAddress(resTypeIO, resMinFixed|resMaxFixed, ioEntireRange, min, max)
}

// dwordMemory is DWordMemory(ResourceProducer, PosDecode, MinFixed,
// MaxFixed, NonCacheable or Cacheable, ReadWrite, ..., min, max, ...).
func dwordMemory(min, max uint32, cacheable bool) []byte {
	b := large(largeTagDWord, 23)
	b[3], b[4], b[5] = resTypeMemory, resMinFixed|resMaxFixed, memReadWrite
	if cacheable {
		b[5] |= memCacheable
	}
	le := binary.LittleEndian
	le.PutUint32(b[10:], min)
	le.PutUint32(b[14:], max)
	le.PutUint32(b[22:], max-min+1)
	return b
}

// qwordMemory is the 64-bit form of dwordMemory. consumer marks a range
// the device itself uses (a motherboard resource) rather than forwards.
func qwordMemory(min, max uint64, cacheable, consumer bool) []byte {
	b := large(largeTagQWord, 43)
	b[3], b[4], b[5] = resTypeMemory, resMinFixed|resMaxFixed, memReadWrite
	if consumer {
		b[4] |= resConsumer
	}
	if cacheable {
		b[5] |= memCacheable
	}
	le := binary.LittleEndian
	le.PutUint64(b[14:], min)
	le.PutUint64(b[22:], max)
	le.PutUint64(b[38:], max-min+1)
	return b
}

// memory32Fixed is Memory32Fixed(ReadWrite, base, length).
func memory32Fixed(base, length uint32) []byte {
	b := large(largeTagMem32F, 9)
	b[3] = memReadWrite
	binary.LittleEndian.PutUint32(b[4:], base)
	binary.LittleEndian.PutUint32(b[8:], length)
	return b
}

// ioPort is IO(Decode16, min, max, align, length).
func ioPort(min, max uint16, align, length byte) []byte {
	b := []byte{smallTagIO, 1, 0, 0, 0, 0, align, length}
	binary.LittleEndian.PutUint16(b[2:], min)
	binary.LittleEndian.PutUint16(b[4:], max)
	return b
}

// irqNoFlags is IRQNoFlags() { irqs... } (edge, active high, exclusive).
// IRQs above 15 are ignored.
func irqNoFlags(irqs ...byte) []byte {
	var mask uint16
	for _, i := range irqs {
		if i < 16 {
			mask |= 1 << i
		}
	}
	return binary.LittleEndian.AppendUint16([]byte{smallTagIRQ}, mask)
}

// resourceTemplate concatenates descriptors, appends the end tag (checksum
// byte 0: "treat as correct") and wraps them in a Buffer, as the ASL
// ResourceTemplate macro does.
func (a *aml) resourceTemplate(descs ...[]byte) []byte {
	var b []byte
	for _, d := range descs {
		b = append(b, d...)
	}
	b = append(b, smallTagEnd, 0)
	return a.buffer(b)
}
