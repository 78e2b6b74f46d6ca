package router

import "bytes"

// history is a ring of the last limit frames of a channel, oldest first.
// Lock: the owning Channel's mu must be held for every method.
type history struct {
	ring  []*Frame
	start int // index of the oldest frame
	n     int // frames held
	bytes int // total bytes held, for metrics
}

func (h *history) limit() int { return len(h.ring) }

// add stores f (taking a reference) and evicts the oldest frame when full.
func (h *history) add(f *Frame) {
	if len(h.ring) == 0 {
		return
	}
	f.Ref()
	h.bytes += f.Len()
	if h.n < len(h.ring) {
		h.ring[(h.start+h.n)%len(h.ring)] = f
		h.n++
		return
	}
	old := h.ring[h.start]
	h.ring[h.start] = f
	h.start = (h.start + 1) % len(h.ring)
	h.bytes -= old.Len()
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
	for i := 0; i < h.n; i++ {
		idx := (h.start + i) % len(h.ring)
		h.ring[idx].Release()
		h.ring[idx] = nil
	}
	h.start, h.n, h.bytes = 0, 0, 0
}
