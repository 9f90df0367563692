package kvm

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// runPage builds a synthetic kvm_run mapping of three pages with the given
// exit reason; fill sets the union.
func runPage(reason ExitReason, fill func(u []byte)) []byte {
	run := make([]byte, 3*pageSize)
	le.PutUint32(run[runExitReason:], uint32(reason))
	if fill != nil {
		fill(run[runUnion : runUnion+runUnionSize])
	}
	return run
}

func ioPage(dir IODirection, size uint8, port uint16, count uint32, off uint64) []byte {
	return runPage(ExitIO, func(u []byte) {
		u[ioDirection] = byte(dir)
		u[ioSize] = size
		le.PutUint16(u[ioPort:], port)
		le.PutUint32(u[ioCount:], count)
		le.PutUint64(u[ioDataOffset:], off)
	})
}

func TestDecodeIO(t *testing.T) {
	tests := []struct {
		name    string
		run     []byte
		wantLen int
		wantErr bool
	}{
		{"out byte", ioPage(IOOut, 1, 0x3f8, 1, pageSize), 1, false},
		{"in dword", ioPage(IOIn, 4, 0xcfc, 1, pageSize), 4, false},
		{"rep outsw", ioPage(IOOut, 2, 0x1f0, 256, pageSize), 512, false},
		{"whole last page", ioPage(IOOut, 4, 0x10, 2048, pageSize), 8192, false},
		{"size 3", ioPage(IOOut, 3, 0x10, 1, pageSize), 0, true},
		{"size 8", ioPage(IOOut, 8, 0x10, 1, pageSize), 0, true},
		{"count 0", ioPage(IOOut, 1, 0x10, 0, pageSize), 0, true},
		{"direction 2", ioPage(2, 1, 0x10, 1, pageSize), 0, true},
		{"data past the mapping", ioPage(IOOut, 4, 0x10, 2049, pageSize), 0, true},
		{"offset past the mapping", ioPage(IOOut, 1, 0x10, 1, 3*pageSize), 0, true},
		{"offset overflow", ioPage(IOOut, 4, 0x10, 0xffffffff, 1<<63), 0, true},
		{"offset inside kvm_run", ioPage(IOOut, 1, 0x10, 1, 8), 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := exitFromRun(tc.run)
			if e.Reason != ExitIO {
				t.Fatalf("reason %v", e.Reason)
			}
			io, err := e.IO()
			if tc.wantErr {
				if !errors.Is(err, ErrBadExit) {
					t.Fatalf("IO() error = %v, want ErrBadExit", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(io.Data) != tc.wantLen || cap(io.Data) != tc.wantLen {
				t.Fatalf("len(Data) = %d (cap %d), want %d", len(io.Data), cap(io.Data), tc.wantLen)
			}
			// Data aliases the run page.
			io.Data[0] = 0xab
			if tc.run[pageSize] != 0xab {
				t.Error("Data does not alias the run page")
			}
		})
	}
}

func mmioPage(addr uint64, n uint32, write bool, data ...byte) []byte {
	return runPage(ExitMMIO, func(u []byte) {
		le.PutUint64(u[mmioPhysAddr:], addr)
		copy(u[mmioData:mmioData+8], data)
		le.PutUint32(u[mmioLen:], n)
		if write {
			u[mmioIsWrite] = 1
		}
	})
}

func TestDecodeMMIO(t *testing.T) {
	tests := []struct {
		name    string
		run     []byte
		want    MMIOExit
		wantErr bool
	}{
		{"write 4", mmioPage(0xfeb00000, 4, true, 1, 2, 3, 4), MMIOExit{Addr: 0xfeb00000, IsWrite: true, Data: []byte{1, 2, 3, 4}}, false},
		{"read 8", mmioPage(0xd0000000, 8, false), MMIOExit{Addr: 0xd0000000, Data: make([]byte, 8)}, false},
		{"len 0", mmioPage(0x1000, 0, true), MMIOExit{}, true},
		{"len 9", mmioPage(0x1000, 9, true), MMIOExit{}, true},
		{"len huge", mmioPage(0x1000, 0xffffffff, false), MMIOExit{}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := exitFromRun(tc.run).MMIO()
			if tc.wantErr {
				if !errors.Is(err, ErrBadExit) {
					t.Fatalf("MMIO() error = %v, want ErrBadExit", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(m, tc.want) {
				t.Fatalf("MMIO() = %+v, want %+v", m, tc.want)
			}
		})
	}
	// A read is completed by writing Data.
	run := mmioPage(0x1000, 2, false)
	m, _ := exitFromRun(run).MMIO()
	copy(m.Data, []byte{0x34, 0x12})
	if le.Uint16(run[runUnion+mmioData:]) != 0x1234 {
		t.Error("MMIO Data does not alias kvm_run.mmio.data")
	}
}

func internalPage(suberror, ndata uint32, words ...uint64) []byte {
	return runPage(ExitInternalError, func(u []byte) {
		le.PutUint32(u[internalSuberror:], suberror)
		le.PutUint32(u[internalNData:], ndata)
		for i, w := range words {
			le.PutUint64(u[internalData+8*i:], w)
		}
	})
}

// emulationPage is what KVM writes for an emulation failure with
// instruction bytes: flags, insn_size, insn_bytes[15], then exit info.
func emulationPage(insn []byte, extra ...uint64) []byte {
	return runPage(ExitInternalError, func(u []byte) {
		le.PutUint32(u[internalSuberror:], InternalErrorEmulation)
		le.PutUint32(u[internalNData:], uint32(3+len(extra)))
		le.PutUint64(u[emulFlags:], emulationFlagInsnBytes)
		u[emulInsnSize] = byte(len(insn))
		copy(u[emulInsnBytes:emulInsnBytes+emulMaxInsnBytes], insn)
		for i, w := range extra {
			le.PutUint64(u[internalData+8*(3+i):], w)
		}
	})
}

func TestDecodeInternalError(t *testing.T) {
	popcnt := []byte{0xf3, 0x0f, 0xb8, 0xc0}
	tests := []struct {
		name     string
		run      []byte
		suberror uint32
		ndata    int
		insn     []byte
	}{
		{"emulation with bytes", emulationPage(popcnt, 0x1000, 0), InternalErrorEmulation, 5, popcnt},
		{"emulation, 15 bytes", emulationPage([]byte("0123456789abcde")), InternalErrorEmulation, 3, []byte("0123456789abcde")},
		{"emulation, insn_size too big", runPage(ExitInternalError, func(u []byte) {
			le.PutUint32(u[internalSuberror:], InternalErrorEmulation)
			le.PutUint32(u[internalNData:], 3)
			le.PutUint64(u[emulFlags:], emulationFlagInsnBytes)
			u[emulInsnSize] = 200
		}), InternalErrorEmulation, 3, make([]byte, 15)},
		{"emulation without bytes", internalPage(InternalErrorEmulation, 1, 0), InternalErrorEmulation, 1, nil},
		{"emulation, flag but ndata 1", internalPage(InternalErrorEmulation, 1, 1), InternalErrorEmulation, 1, nil},
		{"delivery event", internalPage(InternalErrorDeliveryEv, 4, 1, 2, 3, 4), InternalErrorDeliveryEv, 4, nil},
		{"ndata too big", internalPage(InternalErrorSimulEx, 1000), InternalErrorSimulEx, 16, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ie := exitFromRun(tc.run).InternalError()
			if ie.Suberror != tc.suberror || len(ie.Data) != tc.ndata {
				t.Fatalf("got suberror %d with %d words, want %d with %d", ie.Suberror, len(ie.Data), tc.suberror, tc.ndata)
			}
			if string(ie.InsnBytes) != string(tc.insn) || (ie.InsnBytes == nil) != (tc.insn == nil) {
				t.Fatalf("InsnBytes = % x, want % x", ie.InsnBytes, tc.insn)
			}
		})
	}
}

func TestDecodeOthers(t *testing.T) {
	sys := exitFromRun(runPage(ExitSystemEvent, func(u []byte) {
		le.PutUint32(u[0:], uint32(SystemEventReset))
		le.PutUint32(u[4:], 2)
		le.PutUint64(u[8:], 7)
		le.PutUint64(u[16:], 9)
	})).SystemEvent()
	if sys.Type != SystemEventReset || !reflect.DeepEqual(sys.Data, []uint64{7, 9}) {
		t.Errorf("SystemEvent = %+v", sys)
	}

	fe := exitFromRun(runPage(ExitFailEntry, func(u []byte) {
		le.PutUint64(u[0:], 0x80000021)
		le.PutUint32(u[8:], 3)
	})).FailEntry()
	if fe != (FailEntryExit{HardwareReason: 0x80000021, CPU: 3}) {
		t.Errorf("FailEntry = %+v", fe)
	}

	ex := exitFromRun(runPage(ExitException, func(u []byte) {
		le.PutUint32(u[0:], 14)
		le.PutUint32(u[4:], 2)
	})).Exception()
	if ex != (ExceptionExit{Vector: 14, ErrorCode: 2}) {
		t.Errorf("Exception = %+v", ex)
	}

	dbg := exitFromRun(runPage(ExitDebug, func(u []byte) {
		le.PutUint32(u[0:], 1)
		le.PutUint64(u[8:], 0x1000)
		le.PutUint64(u[16:], 0xffff4ff0)
		le.PutUint64(u[24:], 0x400)
	})).Debug()
	if dbg != (DebugExit{Exception: 1, PC: 0x1000, DR6: 0xffff4ff0, DR7: 0x400}) {
		t.Errorf("Debug = %+v", dbg)
	}

	run := runPage(ExitX86RDMSR, func(u []byte) {
		le.PutUint32(u[msrReason:], MSRExitReasonUnknown)
		le.PutUint32(u[msrIndex:], 0xc0011029)
	})
	e := exitFromRun(run)
	if m := e.MSR(); m.Index != 0xc0011029 || m.Reason != MSRExitReasonUnknown {
		t.Errorf("MSR = %+v", m)
	}
	e.SetMSRResult(0x1234, true)
	if le.Uint64(run[runUnion+msrData:]) != 0x1234 || run[runUnion+msrError] != 1 {
		t.Error("SetMSRResult did not write kvm_run.msr")
	}

	run = runPage(ExitHypercall, func(u []byte) {
		le.PutUint64(u[0:], 12)
		le.PutUint64(u[8:], 0xa)
		le.PutUint64(u[48:], 0xf)
		le.PutUint32(u[64:], 1)
	})
	e = exitFromRun(run)
	if h := e.Hypercall(); h.Nr != 12 || h.Args != [6]uint64{0xa, 0, 0, 0, 0, 0xf} || h.LongMode != 1 {
		t.Errorf("Hypercall = %+v", h)
	}
	e.SetHypercallResult(5)
	if le.Uint64(run[runUnion+56:]) != 5 {
		t.Error("SetHypercallResult did not write kvm_run.hypercall.ret")
	}

	if v := exitFromRun(runPage(ExitUnknown, func(u []byte) { le.PutUint64(u, 0x30) })).HardwareExitReason(); v != 0x30 {
		t.Errorf("HardwareExitReason = %#x", v)
	}
}

func TestExitString(t *testing.T) {
	tests := []struct {
		run  []byte
		want string
	}{
		{func() []byte {
			r := ioPage(IOOut, 1, 0x3f8, 1, pageSize)
			r[pageSize] = 'A'
			return r
		}(), "KVM_EXIT_IO out port=0x3f8 size=1 count=1 data=[41]"},
		{ioPage(IOIn, 2, 0x60, 1, pageSize), "KVM_EXIT_IO in port=0x60 size=2 count=1"},
		{ioPage(IOIn, 7, 0x60, 1, pageSize), "KVM_EXIT_IO in port=0x60 size=7 count=1 (malformed)"},
		{mmioPage(0xfee00000, 4, true, 0xb0, 0, 0, 0), "KVM_EXIT_MMIO write addr=0xfee00000 len=4 data=[b0 00 00 00]"},
		{mmioPage(0xd0000000, 2, false), "KVM_EXIT_MMIO read addr=0xd0000000 len=2"},
		{emulationPage([]byte{0x0f, 0x01, 0xca}), "KVM_EXIT_INTERNAL_ERROR emulation failure insn=[0f 01 ca] data=[0x1 0xca010f03 0x0]"},
		{runPage(ExitHLT, nil), "KVM_EXIT_HLT"},
		{runPage(ExitShutdown, nil), "KVM_EXIT_SHUTDOWN"},
		{runPage(ExitReason(999), nil), "KVM_EXIT(999)"},
		{runPage(ExitSystemEvent, func(u []byte) { u[0] = 1 }), "KVM_EXIT_SYSTEM_EVENT shutdown data=[]"},
	}
	for _, tc := range tests {
		if got := exitFromRun(tc.run).String(); got != tc.want {
			t.Errorf("String() = %q, want %q", got, tc.want)
		}
	}
	for r := ExitReason(0); r < numNamedExitReasons; r++ {
		if s := r.String(); !strings.HasPrefix(s, "KVM_EXIT_") || strings.Contains(s, "(") {
			t.Errorf("ExitReason(%d).String() = %q", r, s)
		}
	}
}

// FuzzExit decodes arbitrary kvm_run contents, of any length, through every
// accessor: none may panic, and accepted data must lie inside the page.
func FuzzExit(f *testing.F) {
	f.Add(ioPage(IOOut, 1, 0x3f8, 1, pageSize))
	f.Add(ioPage(IOOut, 4, 0x10, 2048, pageSize))
	f.Add(mmioPage(0xfeb00000, 4, true, 1, 2, 3, 4))
	f.Add(emulationPage([]byte{0xf3, 0x0f, 0xb8, 0xc0}, 1, 2))
	f.Add(internalPage(InternalErrorSimulEx, 1000))
	f.Add(runPage(ExitSystemEvent, func(u []byte) { u[4] = 20 })[:300])
	f.Add([]byte{})
	f.Add(make([]byte, 40))
	f.Fuzz(func(t *testing.T, run []byte) {
		e := exitFromRun(run)
		_ = e.String()
		for r := ExitReason(0); r <= numNamedExitReasons; r++ {
			e.Reason = r
			_ = e.String()
		}
		if io, err := e.IO(); err == nil {
			if len(io.Data) != int(io.Size)*int(io.Count) || len(io.Data) == 0 {
				t.Fatalf("IO data %d bytes for %d*%d", len(io.Data), io.Size, io.Count)
			}
		}
		if m, err := e.MMIO(); err == nil && (len(m.Data) == 0 || len(m.Data) > 8) {
			t.Fatalf("MMIO data %d bytes", len(m.Data))
		}
		if ie := e.InternalError(); len(ie.Data) > 16 || len(ie.InsnBytes) > 15 {
			t.Fatalf("InternalError %d words, %d bytes", len(ie.Data), len(ie.InsnBytes))
		}
		if s := e.SystemEvent(); len(s.Data) > 16 {
			t.Fatalf("SystemEvent %d words", len(s.Data))
		}
		_ = e.FailEntry()
		_ = e.Exception()
		_ = e.Debug()
		_ = e.Hypercall()
		_ = e.MSR()
		_ = e.TPRAccess()
		_ = e.MemoryFault()
		_ = e.IOAPICEOIVector()
		_ = e.NotifyFlags()
		_ = e.HardwareExitReason()
		e.SetMSRResult(1, true)
		e.SetHypercallResult(1)
	})
}
