package router

import (
	"bytes"
	"sync/atomic"
)

// history is a ring of the last limit frames of a channel, oldest first,
// bounded also in bytes of memory held (Frame.Size): per channel (maxBytes)
// and across all channels (budget, shared).
// Lock: the owning Channel's mu must be held for every method.
type history struct {
	ring     []*Frame
	start    int // index of the oldest frame
	n        int // frames held
	bytes    int // total bytes held
	maxBytes int // per-channel cap; 0 = none
	budget   *budget
	seq      uint64 // sequence of the last frame stored (Frame.Seq)
}

// budget is the byte budget for the history of all channels. Safe for
// concurrent use.
type budget struct {
	max  int64 // 0 = none
	used atomic.Int64
}

func (h *history) limit() int { return len(h.ring) }

// add stores f (taking a reference), evicting the oldest frames while the
// ring is full or a byte cap is passed. A frame larger than the channel's cap,
// or one that does not fit the global budget even after this channel gave up
// all its older frames, is not kept. It reports whether f was taken (it may
// then have been evicted again at once, by the global budget).
func (h *history) add(f *Frame) bool {
	if len(h.ring) == 0 || (h.maxBytes > 0 && f.Size() > h.maxBytes) {
		return false
	}
	if h.n == len(h.ring) {
		h.evictOldest()
	}
	f.Ref()
	h.seq++
	f.seq = h.seq
	h.ring[(h.start+h.n)%len(h.ring)] = f
	h.n++
	h.bytes += f.Size()
	used := h.budget.used.Add(int64(f.Size()))
	for h.n > 0 && ((h.maxBytes > 0 && h.bytes > h.maxBytes) || (h.budget.max > 0 && used > h.budget.max)) {
		h.evictOldest()
		used = h.budget.used.Load()
	}
	return true
}

// evictOldest drops the oldest frame.
func (h *history) evictOldest() {
	old := h.ring[h.start]
	h.ring[h.start] = nil
	h.start = (h.start + 1) % len(h.ring)
	h.n--
	h.bytes -= old.Size()
	h.budget.used.Add(-int64(old.Size()))
	old.Release()
}

// contains reports whether a frame with exactly these bytes is held.
func (h *history) contains(b []byte) bool {
	for i := 0; i < h.n; i++ {
		if bytes.Equal(h.ring[(h.start+i)%len(h.ring)].Bytes(), b) {
			return true
		}
	}
	return false
}

// appendTo appends the held frames, oldest first, each with a new reference.
func (h *history) appendTo(dst []*Frame) []*Frame {
	for i := 0; i < h.n; i++ {
		f := h.ring[(h.start+i)%len(h.ring)]
		f.Ref()
		dst = append(dst, f)
	}
	return dst
}

// clear releases every held frame.
func (h *history) clear() {
	for h.n > 0 {
		h.evictOldest()
	}
	h.start = 0
}
