package router

import (
	"hash/maphash"
	"math/rand/v2"

	"github.com/dchest/siphash"
)

// seenSeed fingerprints frames for the sets a process builds and drops
// (AddOlder); per process, like the shard seed.
var seenSeed = maphash.MakeSeed()

// Fingerprint is a 64-bit hash of a frame's bytes, for sets that live in
// one process. Equal frames have equal fingerprints; different ones collide
// with probability 2^-64. A SeenLog's fingerprints are its own (see there).
func Fingerprint(b []byte) uint64 { return maphash.Bytes(seenSeed, b) }

// SeenLog remembers the fingerprints of the last frames that crossed one
// uplink, in either direction, across its reconnections. Those are what the
// peer holds in its history and replays to the uplink when it reconnects,
// so they tell the replay apart from new frames even when this server keeps
// no history of its own.
//
// Its fingerprints are SipHash-2-4 under a key of its own, not Fingerprint,
// whose seed cannot leave its process: the log moves with its uplink to a
// new process in a hitless upgrade (Export, Restore), and must still match
// the frames the peer replays there. SipHash is slower than maphash (88 ns
// against 17 ns for 128 bytes, 9 µs against 2 µs for 16 KiB on the test
// machine), paid once per frame that crosses an uplink.
//
// Not safe for concurrent use: it belongs to one connection at a time (the
// uplink's current one, on its event loop).
type SeenLog struct {
	ring []uint64 // grows to limit as frames cross: a quiet channel's uplink costs little
	next int      // where the next fingerprint goes
	n    int      // fingerprints held
	max  int      // the most held
	key  [2]uint64
}

// Init sets how many of the last frames the log keeps, and its key (once;
// later calls do nothing).
func (l *SeenLog) Init(n int) {
	if l.max == 0 && n > 0 {
		l.max = n
		if l.key == ([2]uint64{}) {
			l.key = [2]uint64{rand.Uint64(), rand.Uint64()}
		}
	}
}

// Fingerprint is b's fingerprint in this log: equal frames have equal
// ones, different ones collide with probability 2^-64.
func (l *SeenLog) Fingerprint(b []byte) uint64 { return siphash.Hash(l.key[0], l.key[1], b) }

// Export returns the log's key and its fingerprints, oldest first, for
// Restore in another process.
func (l *SeenLog) Export() (key [2]uint64, fps []uint64) {
	fps = make([]uint64, l.n)
	for i := range l.n {
		fps[i] = l.ring[(l.next-l.n+i+len(l.ring))%len(l.ring)]
	}
	return l.key, fps
}

// Restore makes an initialised log that holds nothing yet the one Export
// returned key and fps (oldest first) for: its newest fps, as many as it
// keeps. It reports whether it did: a log that holds fingerprints already
// keeps them and its key.
func (l *SeenLog) Restore(key [2]uint64, fps []uint64) bool {
	if l.n != 0 || l.max == 0 || key == ([2]uint64{}) {
		return false
	}
	l.key = key
	for _, fp := range fps[max(len(fps)-l.max, 0):] {
		l.AddFingerprint(fp)
	}
	return true
}

// Add records a frame that crossed the link. No allocation once the log
// has grown to its size.
func (l *SeenLog) Add(b []byte) { l.AddFingerprint(l.Fingerprint(b)) }

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
