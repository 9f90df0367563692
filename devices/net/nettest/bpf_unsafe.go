package nettest

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A few eBPF instructions, enough for the VLAN tagging programs (no
// library: the harness only needs two three-line programs).
const (
	bpfMovImm = 0xb7 // BPF_ALU64 | BPF_MOV | BPF_K
	bpfCall   = 0x85 // BPF_JMP | BPF_CALL
	bpfExit   = 0x95 // BPF_JMP | BPF_EXIT

	bpfFuncSkbVlanPush = 18
	bpfFuncSkbVlanPop  = 19

	bpfProgLoad         = 5
	bpfProgTypeSchedCls = 3
	tcActOK             = 0
	bpfLogSize          = 4096
)

type bpfInsn struct {
	code uint8
	dst  uint8
	imm  int32
}

func encodeInsns(insns []bpfInsn) []byte {
	b := make([]byte, 8*len(insns))
	for i, in := range insns {
		b[8*i] = in.code
		b[8*i+1] = in.dst & 0xf // src register 0
		binary.LittleEndian.PutUint32(b[8*i+4:], uint32(in.imm))
	}
	return b
}

// vlanPushProgram pushes an 802.1Q tag with VLAN id on every packet;
// vlanPopProgram pops it. Both return TC_ACT_OK (direct action).
func vlanPushProgram(id int) []bpfInsn {
	return []bpfInsn{
		{code: bpfMovImm, dst: 2, imm: int32(htons(unix.ETH_P_8021Q))}, // vlan_proto, big-endian
		{code: bpfMovImm, dst: 3, imm: int32(id)},                      // vlan_tci
		{code: bpfCall, imm: bpfFuncSkbVlanPush},                       // r1 is still the skb
		{code: bpfMovImm, dst: 0, imm: tcActOK},
		{code: bpfExit},
	}
}

func vlanPopProgram() []bpfInsn {
	return []bpfInsn{
		{code: bpfCall, imm: bpfFuncSkbVlanPop},
		{code: bpfMovImm, dst: 0, imm: tcActOK},
		{code: bpfExit},
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// bpfProgLoadAttr is the BPF_PROG_LOAD part of union bpf_attr, up to
// prog_name; the kernel zero-fills the rest.
type bpfProgLoadAttr struct {
	progType    uint32
	insnCnt     uint32
	insns       uint64
	license     uint64
	logLevel    uint32
	logSize     uint32
	logBuf      uint64
	kernVersion uint32
	progFlags   uint32
	progName    [16]byte
}

// loadTCProgram loads a SCHED_CLS program and returns its descriptor.
func loadTCProgram(name string, insns []bpfInsn) (int, error) {
	code := encodeInsns(insns)
	license := []byte("MIT\x00")
	log := make([]byte, bpfLogSize)
	attr := bpfProgLoadAttr{
		progType: bpfProgTypeSchedCls,
		insnCnt:  uint32(len(insns)),
		insns:    uint64(uintptr(unsafe.Pointer(&code[0]))),
		license:  uint64(uintptr(unsafe.Pointer(&license[0]))),
		logLevel: 1,
		logSize:  bpfLogSize,
		logBuf:   uint64(uintptr(unsafe.Pointer(&log[0]))),
	}
	copy(attr.progName[:15], name)
	fd, _, errno := unix.Syscall(unix.SYS_BPF, bpfProgLoad, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	runtime.KeepAlive(code)
	runtime.KeepAlive(license)
	runtime.KeepAlive(log)
	if errno != 0 {
		return -1, fmt.Errorf("BPF_PROG_LOAD %s: %w: %s", name, errno, unix.ByteSliceToString(log))
	}
	return int(fd), nil
}
