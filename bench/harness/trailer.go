package harness

import (
	"encoding/binary"
	"time"
)

// TrailerLen is the size of the Trailer at the end of every benchmark message.
const TrailerLen = 24

// trailerMagic marks a message as one of ours; join frames and anything else
// without it are counted as foreign, never as data.
const trailerMagic uint32 = 0xB34EC701

// Trailer is what a receiver needs to check a delivery: who sent it, its place in
// that publisher's sequence, and when it was sent (Now() of the sender).
// Layout, big-endian, in the last 24 bytes of the message:
// magic u32 | pub u32 | seq u64 | sent-at ns i64.
type Trailer struct {
	Pub uint32
	Seq uint64
	TS  int64
}

// PutTrailer writes t into the last TrailerLen bytes of msg (len(msg) >= TrailerLen).
// Hot path: must not allocate.
func PutTrailer(msg []byte, t Trailer) {
	b := msg[len(msg)-TrailerLen:]
	binary.BigEndian.PutUint32(b[0:], trailerMagic)
	binary.BigEndian.PutUint32(b[4:], t.Pub)
	binary.BigEndian.PutUint64(b[8:], t.Seq)
	binary.BigEndian.PutUint64(b[16:], uint64(t.TS))
}

// ReadTrailer reads the Trailer at the end of msg; ok is false when msg is too
// short or does not carry one. Hot path: must not allocate.
func ReadTrailer(msg []byte) (t Trailer, ok bool) {
	if len(msg) < TrailerLen {
		return t, false
	}
	b := msg[len(msg)-TrailerLen:]
	if binary.BigEndian.Uint32(b[0:]) != trailerMagic {
		return t, false
	}
	t.Pub = binary.BigEndian.Uint32(b[4:])
	t.Seq = binary.BigEndian.Uint64(b[8:])
	t.TS = int64(binary.BigEndian.Uint64(b[16:]))
	return t, true
}

var epoch = time.Now()

// Now is a monotonic clock in nanoseconds, shared by senders and receivers of
// this process (all of them are in this process).
func Now() int64 { return int64(time.Since(epoch)) }
