package virtiotest

// Batched posting, for drivers that move many buffers (the in-process
// virtio-net harness and its benchmarks): chains are written without
// publishing the avail index, which is then published once per batch, and
// the driver decides whether to notify the way Linux does.

// AddQuiet writes a chain of buffers and puts its head in the next avail
// slot without publishing the avail index (see PublishAvail). It returns
// false if there are not enough free descriptors. Unlike Add it allocates
// nothing once the ring has been used for a while.
func (r *Ring) AddQuiet(bufs ...Buf) (uint16, bool) {
	if len(bufs) == 0 || len(bufs) > len(r.free) {
		return 0, false
	}
	ids := r.free[len(r.free)-len(bufs):]
	for i, b := range bufs {
		var flags, next uint16
		if b.Write {
			flags |= DescWrite
		}
		if i+1 < len(bufs) {
			flags |= DescNext
			next = ids[i+1]
		}
		r.PutDesc(ids[i], b.Addr, b.Len, flags, next)
	}
	head := ids[0]
	r.free = r.free[:len(r.free)-len(bufs)]
	r.chainLen[head] = len(bufs)
	slot := uint64(r.availIdx % r.Size)
	if err := r.Mem.PutUint16(r.Avail+4+2*slot, head); err != nil {
		panic(err)
	}
	r.availIdx++
	return head, true
}

// PublishAvail publishes the avail index (release ordering, a full barrier)
// and returns the index published before and the one published now, for
// NeedNotify. prev is the value the previous PublishAvail returned as now.
func (r *Ring) PublishAvail(prev uint16) (old, now uint16) {
	r.SetAvailIdx(r.availIdx)
	return prev, r.availIdx
}

// NeedNotify reports whether the driver must notify the device after
// publishing avail entries from old to now: with EVENT_IDX when avail_event
// lies in [old, now), otherwise when the device has not set
// VRING_USED_F_NO_NOTIFY.
func (r *Ring) NeedNotify(old, now uint16, eventIdx bool) bool {
	if old == now {
		return false
	}
	if !eventIdx {
		return r.UsedFlags()&1 == 0
	}
	ev := r.AvailEvent()
	return now-ev-1 < now-old
}

// Consumed returns how many used elements PopUsed has returned: the used
// index up to which the driver has processed the ring.
func (r *Ring) Consumed() uint16 { return r.lastUsed }

// ArmUsedEvent asks for an interrupt at the next used element (EVENT_IDX:
// used_event = Consumed(), stored with a full barrier) and reports whether
// used elements arrived meanwhile, in which case the driver must not wait.
func (r *Ring) ArmUsedEvent() (pending bool) {
	if err := r.Mem.StoreUint16Release(r.Avail+4+2*uint64(r.Size), r.lastUsed); err != nil {
		panic(err)
	}
	return r.UsedIdx() != r.lastUsed
}
