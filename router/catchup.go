package router

// AddOlder stores frames that are older than everything the history holds
// (oldest first) in front of it, those it does not already hold (compared
// byte for byte), and only into the room left: a full history keeps its
// own frames and takes none of these, and when only some fit, the newest
// of them are kept. It returns how many were stored. With history off it
// does nothing. For a peer's resync frames whose senders are members here
// (see engine's mergeCatchUp). Not the per-frame path: it allocates a set
// of the held frames' fingerprints.
func (c *Channel) AddOlder(frames []*Frame) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := &c.hist
	if h.limit() == 0 || len(frames) == 0 {
		return 0
	}
	held := make(map[uint64]*Frame, h.n+len(frames))
	for i := 0; i < h.n; i++ {
		f := h.ring[(h.start+i)%len(h.ring)]
		held[Fingerprint(f.Bytes())] = f
	}
	added := 0
	for i := len(frames) - 1; i >= 0 && h.n < len(h.ring); i-- {
		f := frames[i]
		fp := Fingerprint(f.Bytes())
		if g := held[fp]; g != nil && string(g.Bytes()) == string(f.Bytes()) {
			continue
		}
		if !h.prepend(f) {
			break
		}
		held[fp] = f
		added++
	}
	return added
}

// prepend stores f (taking a reference) before the oldest frame, if the
// ring has room and the byte caps allow it; older frames never evict
// newer ones.
func (h *history) prepend(f *Frame) bool {
	if h.n == len(h.ring) || (h.maxBytes > 0 && h.bytes+f.Size() > h.maxBytes) {
		return false
	}
	if used := h.budget.used.Add(int64(f.Size())); h.budget.max > 0 && used > h.budget.max {
		h.budget.used.Add(-int64(f.Size()))
		return false
	}
	f.Ref()
	h.start = (h.start - 1 + len(h.ring)) % len(h.ring)
	h.ring[h.start] = f
	h.n++
	h.bytes += f.Size()
	return true
}
