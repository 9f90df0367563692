package acpi

import "sync"

// PM1 status bits (write 1 to clear) and the matching enable bits.
const (
	pm1TmrSts    = 1 << 0
	pm1GblSts    = 1 << 5
	pm1PwrBtnSts = 1 << 8
	pm1SlpBtnSts = 1 << 9
	pm1RTCSts    = 1 << 10

	// pm1EnMask are the enable bits the guest may set: timer, global,
	// power button, sleep button, RTC, PCIe wake disable.
	pm1EnMask = 1<<0 | 1<<5 | 1<<8 | 1<<9 | 1<<10 | 1<<14
)

// PM1 control bits.
const (
	pm1SCIEn     = 1 << 0 // reads as 1: ACPI mode is always on
	pm1BmRld     = 1 << 1
	pm1GblRls    = 1 << 2 // write only
	pm1SlpTypShf = 10
	pm1SlpTyp    = 7 << pm1SlpTypShf
	pm1SlpEn     = 1 << 13 // write only
	// pm1CntStored are the control bits kept between accesses.
	pm1CntStored = pm1BmRld | pm1SlpTyp
)

// PM is the ACPI PM1a event and control register blocks. Register
// EventBlock (4 bytes) and ControlBlock (2 bytes) on the port I/O bus at
// the FADT's PM1aEvt and PM1aCnt.
//
// A guest write with SLP_EN set calls OnSleep with SLP_TYP; the VMM powers
// off on SleepTypeS5. SCI, if set, is called with the new level of the SCI
// line whenever it changes (an enabled status bit is set). Both callbacks
// may be nil. OnSleep is called without the PM lock held; SCI is called
// with it held (so levels arrive in order) and must not call PM methods.
// PM is safe for concurrent use; set the callbacks before registering it.
type PM struct {
	OnSleep func(slpTyp int)
	SCI     func(asserted bool)

	mu  sync.Mutex
	sts uint16
	en  uint16
	cnt uint16
	sci bool
}

// EventBlock returns the bus handler of the PM1a event block: status at
// offset 0 (write 1 to clear), enable at offset 2.
func (p *PM) EventBlock() *PMEventBlock { return &PMEventBlock{p} }

// ControlBlock returns the bus handler of the PM1a control block.
func (p *PM) ControlBlock() *PMControlBlock { return &PMControlBlock{p} }

// PressPowerButton sets PWRBTN_STS, raising the SCI if the guest enabled
// the power button event. It is only meaningful with Config.PowerButton.
func (p *PM) PressPowerButton() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sts |= pm1PwrBtnSts
	p.updateSCI()
}

// updateSCI recomputes the SCI level. Called with p.mu held.
func (p *PM) updateSCI() {
	level := p.sts&p.en&(pm1TmrSts|pm1GblSts|pm1PwrBtnSts|pm1SlpBtnSts|pm1RTCSts) != 0
	if level == p.sci {
		return
	}
	p.sci = level
	if p.SCI != nil {
		p.SCI(level)
	}
}

// PMEventBlock is the PM1a event block: PM1_STS (offset 0) and PM1_EN
// (offset 2). Any access size at any offset is accepted byte-wise; bytes
// outside the block read as zero and are ignored.
type PMEventBlock struct{ p *PM }

// Read implements bus.Handler.
func (e *PMEventBlock) Read(off uint64, data []byte) {
	p := e.p
	p.mu.Lock()
	regs := uint32(p.sts) | uint32(p.en)<<16
	p.mu.Unlock()
	for i := range data {
		data[i] = 0
		if o := off + uint64(i); o >= off && o < pm1EvtLen {
			data[i] = byte(regs >> (8 * o))
		}
	}
}

// Write implements bus.Handler.
func (e *PMEventBlock) Write(off uint64, data []byte) {
	p := e.p
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, v := range data {
		o := off + uint64(i)
		if o < off || o >= pm1EvtLen {
			continue
		}
		switch o {
		case 0, 1: // status: write 1 to clear
			p.sts &^= uint16(v) << (8 * o)
		case 2, 3:
			sh := 8 * (o - 2)
			p.en = p.en&^(0xff<<sh) | uint16(v)<<sh&pm1EnMask
		}
	}
	p.updateSCI()
}

// PMControlBlock is the PM1a control block (PM1_CNT, 16 bits). SCI_EN
// reads as 1; SLP_EN and GBL_RLS read as 0.
type PMControlBlock struct{ p *PM }

// Read implements bus.Handler.
func (c *PMControlBlock) Read(off uint64, data []byte) {
	p := c.p
	p.mu.Lock()
	v := p.cnt | pm1SCIEn
	p.mu.Unlock()
	for i := range data {
		data[i] = 0
		if o := off + uint64(i); o >= off && o < pm1CntLen {
			data[i] = byte(v >> (8 * o))
		}
	}
}

// Write implements bus.Handler. The written bytes are merged into the
// register; if the result has SLP_EN set, OnSleep gets SLP_TYP.
func (c *PMControlBlock) Write(off uint64, data []byte) {
	p := c.p
	p.mu.Lock()
	v := p.cnt
	touched := false
	for i, b := range data {
		o := off + uint64(i)
		if o < off || o >= pm1CntLen {
			continue
		}
		v = v&^(0xff<<(8*o)) | uint16(b)<<(8*o)
		touched = true
	}
	if !touched {
		p.mu.Unlock()
		return
	}
	p.cnt = v & pm1CntStored
	sleep := v&pm1SlpEn != 0
	typ := int(v&pm1SlpTyp) >> pm1SlpTypShf
	cb := p.OnSleep
	p.mu.Unlock()
	if sleep && cb != nil {
		cb(typ)
	}
}
