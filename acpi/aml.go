package acpi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// AML opcodes used by the encoder (ACPI 6.x, section 20.3).
const (
	amlZero         = 0x00
	amlOne          = 0x01
	amlName         = 0x08
	amlBytePrefix   = 0x0a
	amlWordPrefix   = 0x0b
	amlDWordPrefix  = 0x0c
	amlStringPrefix = 0x0d
	amlQWordPrefix  = 0x0e
	amlScope        = 0x10
	amlBuffer       = 0x11
	amlPackage      = 0x12
	amlExtPrefix    = 0x5b
	amlDevice       = 0x82 // after amlExtPrefix

	amlRootChar      = '\\'
	amlParentPrefix  = '^'
	amlDualPrefix    = 0x2e
	amlMultiPrefix   = 0x2f
	amlNullName      = 0x00
	amlMaxPkgElement = 255
)

// errAML is wrapped by every encoding error.
var errAML = errors.New("acpi: AML encoding")

// pkgLength encodes the PkgLength of a package whose contents after the
// PkgLength are n bytes. The encoded value counts its own bytes: one byte
// holds up to 63, two bytes up to 4095, three up to 2^20-1, four up to
// 2^28-1.
func pkgLength(n int) ([]byte, error) {
	if n < 0 {
		return nil, fmt.Errorf("%w: negative package length", errAML)
	}
	if n+1 <= 0x3f {
		return []byte{byte(n + 1)}, nil
	}
	for extra := 1; extra <= 3; extra++ {
		total := n + 1 + extra
		if total >= 1<<(4+8*extra) {
			continue
		}
		b := make([]byte, 1+extra)
		b[0] = byte(extra<<6) | byte(total&0x0f)
		for i := 1; i <= extra; i++ {
			b[i] = byte(total >> (4 + 8*(i-1)))
		}
		return b, nil
	}
	return nil, fmt.Errorf("%w: package of %d bytes exceeds the PkgLength limit", errAML, n)
}

// nameSeg encodes one name segment: up to four characters from [A-Z0-9_],
// the first not a digit, padded with '_'.
func nameSeg(s string) ([]byte, error) {
	if len(s) == 0 || len(s) > 4 {
		return nil, fmt.Errorf("%w: name segment %q must be 1-4 characters", errAML, s)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'A' && c <= 'Z' || c == '_' || i > 0 && c >= '0' && c <= '9'
		if !ok {
			return nil, fmt.Errorf("%w: invalid character %q in name segment %q", errAML, c, s)
		}
	}
	return []byte(s + strings.Repeat("_", 4-len(s))), nil
}

// nameString encodes a name path such as `\_SB.PCI0`, `_HID` or `^COM1`.
func nameString(path string) ([]byte, error) {
	var b []byte
	rest := path
	switch {
	case strings.HasPrefix(rest, `\`):
		b = append(b, amlRootChar)
		rest = rest[1:]
	default:
		for strings.HasPrefix(rest, "^") {
			b = append(b, amlParentPrefix)
			rest = rest[1:]
		}
	}
	if rest == "" {
		return append(b, amlNullName), nil
	}
	segs := strings.Split(rest, ".")
	switch {
	case len(segs) == 2:
		b = append(b, amlDualPrefix)
	case len(segs) > 2:
		if len(segs) > 255 {
			return nil, fmt.Errorf("%w: name path %q too long", errAML, path)
		}
		b = append(b, amlMultiPrefix, byte(len(segs)))
	}
	for _, s := range segs {
		e, err := nameSeg(s)
		if err != nil {
			return nil, err
		}
		b = append(b, e...)
	}
	return b, nil
}

// eisaID compresses a seven-character PNP ID such as "PNP0A03" into the
// 32-bit EISA ID integer AML uses: three letters of five bits each and four
// hex digits, stored big endian, so "PNP0A03" is 0x030ad041.
func eisaID(id string) (uint32, error) {
	if len(id) != 7 {
		return 0, fmt.Errorf("%w: EISA ID %q is not 7 characters", errAML, id)
	}
	var v uint32
	for i := 0; i < 3; i++ {
		c := id[i]
		if c < 'A' || c > 'Z' {
			return 0, fmt.Errorf("%w: EISA ID %q: %q is not an upper-case letter", errAML, id, c)
		}
		v = v<<5 | uint32(c-'@')
	}
	for i := 3; i < 7; i++ {
		var d byte
		switch c := id[i]; {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, fmt.Errorf("%w: EISA ID %q: %q is not a hex digit", errAML, id, c)
		}
		v = v<<4 | uint32(d)
	}
	// v holds the 32-bit ID in reading order; AML stores its bytes in that
	// order, which is the byte swap of v as a little-endian integer.
	var be [4]byte
	binary.BigEndian.PutUint32(be[:], v)
	return binary.LittleEndian.Uint32(be[:]), nil
}

// aml builds AML byte code. Encoding errors are sticky: the first one is
// kept in err and later calls still return (possibly empty) bytes, so a
// whole tree can be built before checking once.
type aml struct {
	err error
}

func (a *aml) fail(err error) {
	if a.err == nil {
		a.err = err
	}
}

// integer encodes v with the shortest constant form.
func (a *aml) integer(v uint64) []byte {
	switch {
	case v == 0:
		return []byte{amlZero}
	case v == 1:
		return []byte{amlOne}
	case v <= 0xff:
		return []byte{amlBytePrefix, byte(v)}
	case v <= 0xffff:
		return binary.LittleEndian.AppendUint16([]byte{amlWordPrefix}, uint16(v))
	case v <= 0xffffffff:
		return binary.LittleEndian.AppendUint32([]byte{amlDWordPrefix}, uint32(v))
	}
	return binary.LittleEndian.AppendUint64([]byte{amlQWordPrefix}, v)
}

// dword encodes v as a DWordConst even when it is small (addresses in _PRT
// read better that way and iasl prints them as such).
func (a *aml) dword(v uint32) []byte {
	return binary.LittleEndian.AppendUint32([]byte{amlDWordPrefix}, v)
}

// str encodes an ASCII string constant.
func (a *aml) str(s string) []byte {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 || s[i] > 0x7f {
			a.fail(fmt.Errorf("%w: string %q is not NUL-free ASCII", errAML, s))
			return nil
		}
	}
	b := append([]byte{amlStringPrefix}, s...)
	return append(b, 0)
}

// eisa encodes an EISA ID as a DWordConst.
func (a *aml) eisa(id string) []byte {
	v, err := eisaID(id)
	if err != nil {
		a.fail(err)
		return nil
	}
	return a.dword(v)
}

func (a *aml) nameString(path string) []byte {
	b, err := nameString(path)
	if err != nil {
		a.fail(err)
	}
	return b
}

// pkg wraps contents after op (one or two opcode bytes) with a PkgLength.
func (a *aml) pkg(op []byte, contents ...[]byte) []byte {
	n := 0
	for _, c := range contents {
		n += len(c)
	}
	pl, err := pkgLength(n)
	if err != nil {
		a.fail(err)
		return nil
	}
	b := make([]byte, 0, len(op)+len(pl)+n)
	b = append(b, op...)
	b = append(b, pl...)
	for _, c := range contents {
		b = append(b, c...)
	}
	return b
}

// name encodes Name(path, value).
func (a *aml) name(path string, value []byte) []byte {
	b := append([]byte{amlName}, a.nameString(path)...)
	return append(b, value...)
}

// scope encodes Scope(path) { terms }.
func (a *aml) scope(path string, terms ...[]byte) []byte {
	return a.pkg([]byte{amlScope}, append([][]byte{a.nameString(path)}, terms...)...)
}

// device encodes Device(path) { terms }.
func (a *aml) device(path string, terms ...[]byte) []byte {
	return a.pkg([]byte{amlExtPrefix, amlDevice}, append([][]byte{a.nameString(path)}, terms...)...)
}

// pack encodes Package() { elements } with at most 255 elements.
func (a *aml) pack(elements ...[]byte) []byte {
	if len(elements) > amlMaxPkgElement {
		a.fail(fmt.Errorf("%w: package of %d elements (max %d)", errAML, len(elements), amlMaxPkgElement))
		return nil
	}
	return a.pkg([]byte{amlPackage}, append([][]byte{{byte(len(elements))}}, elements...)...)
}

// buffer encodes Buffer() { data } with its size as the BufferSize.
func (a *aml) buffer(data []byte) []byte {
	return a.pkg([]byte{amlBuffer}, a.integer(uint64(len(data))), data)
}
