package router

import "bytes"

// resyncFingerprint is Fingerprint; tests replace it to make collisions.
var resyncFingerprint = Fingerprint

// resyncIndex answers, for one MergeResync, "does the history hold a frame
// with these bytes now, or is one among the fresh frames?" in O(1) expected
// time: frames are looked up by Fingerprint and confirmed byte for byte.
//
// It mirrors the history ring (oldest first) as indices of entries, so that
// it can forget the frames the history evicts while the merge adds to it
// without a map lookup. Every frame it points at stays valid for the whole
// merge: the history's own are given an extra reference here, the others
// belong to the caller.
//
// Two different frames with one fingerprint (probability 2^-64 per pair,
// with a per-process seed) mark the fingerprint collided; its lookups then
// fall back to comparing with every frame held, which is slow but exact.
// Lock: the channel's mu, for the index's whole life.
type resyncIndex struct {
	hist    *history
	byFP    map[uint64]int32 // fingerprint → index in entries
	entries []indexEntry
	ring    []int32 // entries of the history's frames, oldest first from ringAt
	ringAt  int
	refs    []*Frame // the history's frames at the start, referenced for the merge
}

type indexEntry struct {
	f        *Frame // a frame with this fingerprint (the first one seen)
	held     int32  // how many of the history's frames have this fingerprint
	fresh    bool   // a fresh frame has it
	collided bool   // frames with different bytes have it
}

// newResyncIndex indexes h's frames, with room for n more.
func newResyncIndex(h *history, n int) *resyncIndex {
	x := &resyncIndex{hist: h, byFP: make(map[uint64]int32, h.n+n), entries: make([]indexEntry, 0, h.n+n)}
	if h.limit() == 0 {
		return x
	}
	x.ring = make([]int32, 0, h.n+min(n, h.limit()))
	x.refs = make([]*Frame, 0, h.n)
	for i := 0; i < h.n; i++ {
		f := h.ring[(h.start+i)%len(h.ring)]
		f.Ref()
		x.refs = append(x.refs, f)
		x.addHeld(x.entry(resyncFingerprint(f.Bytes()), f))
	}
	return x
}

// release drops the references taken on the history's frames.
func (x *resyncIndex) release() {
	for _, f := range x.refs {
		f.Release()
	}
	x.refs = nil
}

// lookup returns the index of fp's entry, or -1.
func (x *resyncIndex) lookup(fp uint64) int32 {
	if i, ok := x.byFP[fp]; ok {
		return i
	}
	return -1
}

// entry returns the index of fp's entry, creating it for f, and marks it
// collided when its frame's bytes differ from f's.
func (x *resyncIndex) entry(fp uint64, f *Frame) int32 {
	return x.entryAt(x.lookup(fp), fp, f)
}

// entryAt is entry given lookup(fp).
func (x *resyncIndex) entryAt(i int32, fp uint64, f *Frame) int32 {
	if i < 0 {
		i = int32(len(x.entries))
		x.entries = append(x.entries, indexEntry{f: f})
		x.byFP[fp] = i
		return i
	}
	e := &x.entries[i]
	if !e.collided && e.f != f && !bytes.Equal(e.f.Bytes(), f.Bytes()) {
		e.collided = true
	}
	return i
}

// addHeld records that the history took a frame of entry i (its newest).
func (x *resyncIndex) addHeld(i int32) {
	x.entries[i].held++
	if x.ringAt >= 1024 && 2*x.ringAt >= len(x.ring) { // keep it no bigger than twice the history
		x.ring = x.ring[:copy(x.ring, x.ring[x.ringAt:])]
		x.ringAt = 0
	}
	x.ring = append(x.ring, i)
}

// evicted forgets the history's n oldest frames, which it has just evicted.
func (x *resyncIndex) evicted(n int) {
	for ; n > 0; n-- {
		x.entries[x.ring[x.ringAt]].held--
		x.ringAt++
	}
}

// holds reports whether the history holds a frame with bytes b now, or one
// of fresh has them. i is lookup of b's fingerprint.
func (x *resyncIndex) holds(i int32, b []byte, fresh []*Frame) bool {
	if i < 0 {
		return false
	}
	e := &x.entries[i]
	switch {
	case e.collided:
		if x.hist.limit() > 0 && x.hist.contains(b) {
			return true
		}
		for _, g := range fresh {
			if bytes.Equal(g.Bytes(), b) {
				return true
			}
		}
		return false
	case !bytes.Equal(e.f.Bytes(), b):
		return false // only frames with e.f's bytes have this fingerprint so far
	}
	return e.fresh || e.held > 0
}
