package router

import "hash/maphash"

// seenSeed fingerprints frames for SeenLog; per process, like the shard seed.
var seenSeed = maphash.MakeSeed()

// Fingerprint is a 64-bit hash of a frame's bytes, for SeenLog. Equal
// frames have equal fingerprints; different ones collide with probability
// 2^-64.
func Fingerprint(b []byte) uint64 { return maphash.Bytes(seenSeed, b) }

// SeenLog remembers the fingerprints of the last frames that crossed one
// uplink, in either direction, across its reconnections. Those are what the
// peer holds in its history and replays to the uplink when it reconnects,
// so they tell the replay apart from new frames even when this server keeps
// no history of its own.
//
// Not safe for concurrent use: it belongs to one connection at a time (the
// uplink's current one, on its event loop).
type SeenLog struct {
	ring []uint64 // grows to limit as frames cross: a quiet channel's uplink costs little
	next int      // where the next fingerprint goes
	n    int      // fingerprints held
	max  int      // the most held
}

// Init sets how many of the last frames the log keeps (once; later calls
// do nothing).
func (l *SeenLog) Init(n int) {
	if l.max == 0 && n > 0 {
		l.max = n
	}
}

// Add records a frame that crossed the link. No allocation once the log
// has grown to its size.
func (l *SeenLog) Add(b []byte) { l.AddFingerprint(Fingerprint(b)) }

// AddFingerprint records a frame by its fingerprint.
func (l *SeenLog) AddFingerprint(fp uint64) {
	if l.n == len(l.ring) && len(l.ring) < l.max {
		l.grow()
	}
	if len(l.ring) == 0 {
		return
	}
	l.ring[l.next] = fp
	l.next = (l.next + 1) % len(l.ring)
	l.n = min(l.n+1, len(l.ring))
}

// grow doubles the full ring (from 16, up to max), oldest first.
func (l *SeenLog) grow() {
	bigger := make([]uint64, min(l.max, max(16, 2*len(l.ring))))
	for i := range l.n {
		bigger[i] = l.ring[(l.next+i)%len(l.ring)]
	}
	l.ring, l.next = bigger, l.n
}

// Len is how many fingerprints the log holds.
func (l *SeenLog) Len() int { return l.n }

// Count adds one to counts[fp] for every fingerprint held (a frame that
// crossed twice counts twice).
func (l *SeenLog) Count(counts map[uint64]int32) {
	for i := range l.n {
		counts[l.ring[(l.next-1-i+len(l.ring))%len(l.ring)]]++
	}
}
