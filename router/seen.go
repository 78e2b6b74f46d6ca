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
	ring []uint64
	next int // where the next fingerprint goes
	n    int // fingerprints held
}

// Init sizes the log for the last n frames (once; later calls do nothing).
func (l *SeenLog) Init(n int) {
	if l.ring == nil && n > 0 {
		l.ring = make([]uint64, n)
	}
}

// Add records a frame that crossed the link. No allocation.
func (l *SeenLog) Add(b []byte) { l.AddFingerprint(Fingerprint(b)) }

// AddFingerprint records a frame by its fingerprint.
func (l *SeenLog) AddFingerprint(fp uint64) {
	if len(l.ring) == 0 {
		return
	}
	l.ring[l.next] = fp
	l.next = (l.next + 1) % len(l.ring)
	l.n = min(l.n+1, len(l.ring))
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
