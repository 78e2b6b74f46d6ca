package client

// hashRing holds the hashes of the last n frames, oldest overwritten.
type hashRing struct {
	h    []uint64
	next int
	full bool
}

func newHashRing(n int) hashRing { return hashRing{h: make([]uint64, n)} }

func (r *hashRing) add(h uint64) {
	if len(r.h) == 0 {
		return
	}
	r.h[r.next] = h
	if r.next++; r.next == len(r.h) {
		r.next, r.full = 0, true
	}
}

func (r *hashRing) len() int {
	if r.full {
		return len(r.h)
	}
	return r.next
}

func (r *hashRing) each(f func(uint64)) {
	for _, h := range r.h[:r.len()] {
		f(h)
	}
}
