package pci

import "sort"

// Window is a range of guest address space: [Base, Base+Size).
type Window struct {
	Base, Size uint64
}

// end returns the first address past the window (saturating).
func (w Window) end() uint64 {
	if w.Base+w.Size < w.Base {
		return ^uint64(0)
	}
	return w.Base + w.Size
}

type span struct{ start, end uint64 }

// allocator hands out naturally aligned ranges of a window, first fit. It is
// used at device-add time only and is not safe for concurrent use.
type allocator struct {
	win  Window
	used []span // sorted by start, non-overlapping
}

// alloc returns a free range of size bytes aligned to size (a power of
// two), or false if the window has no such range.
func (a *allocator) alloc(size uint64) (uint64, bool) {
	if size == 0 || a.win.Size == 0 {
		return 0, false
	}
	end := a.win.end()
	cur, ok := alignUp(a.win.Base, size)
	if !ok {
		return 0, false
	}
	i := 0
	for ; i <= len(a.used); i++ {
		limit := end
		if i < len(a.used) {
			limit = a.used[i].start
		}
		if cur <= limit && limit-cur >= size {
			break
		}
		if i == len(a.used) {
			return 0, false
		}
		if cur < a.used[i].end {
			if cur, ok = alignUp(a.used[i].end, size); !ok {
				return 0, false
			}
		}
	}
	a.used = append(a.used, span{})
	copy(a.used[i+1:], a.used[i:])
	a.used[i] = span{cur, cur + size}
	return cur, true
}

// free returns a range obtained from alloc.
func (a *allocator) free(start uint64) {
	i := sort.Search(len(a.used), func(i int) bool { return a.used[i].start >= start })
	if i < len(a.used) && a.used[i].start == start {
		a.used = append(a.used[:i], a.used[i+1:]...)
	}
}

// alignUp rounds x up to a multiple of align (a power of two); ok is false
// on overflow.
func alignUp(x, align uint64) (uint64, bool) {
	r := (x + align - 1) &^ (align - 1)
	return r, r >= x
}
