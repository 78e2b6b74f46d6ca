package client

import (
	"bytes"
	"testing"

	"github.com/mlesd/mlesd/codec"
)

// FuzzScanTriplet: whatever scanTriplet accepts, codec.DecodeTriplet (the
// reference decoder) decodes to the same fields; and every frame our
// encoder writes is accepted.
func FuzzScanTriplet(f *testing.F) {
	for _, t := range []codec.Triplet{
		{UID: "u", Channel: "c"},
		{UID: "alice", Channel: "news", Message: []byte("hello")},
		{UID: "ü", Channel: string(bytes.Repeat([]byte("c"), 300)), Message: bytes.Repeat([]byte{0xff}, 70000)},
	} {
		f.Add(codec.AppendTriplet(nil, t))
	}
	f.Add([]byte{0xa3, 0x63, 'u', 'i', 'd', 0x78, 0x01, 'x'})
	f.Add([]byte{0xbf})
	f.Fuzz(func(t *testing.T, p []byte) {
		uid, ch, msg, ok := scanTriplet(p)
		ref, err := codec.DecodeTriplet(p)
		if ok {
			if err != nil {
				t.Fatalf("scanTriplet accepted what DecodeTriplet refuses (%v): %x", err, p)
			}
			if string(uid) != ref.UID || string(ch) != ref.Channel || !bytes.Equal(msg, ref.Message) {
				t.Fatalf("scanTriplet and DecodeTriplet disagree on %x", p)
			}
		}
		if err == nil {
			again := codec.AppendTriplet(nil, ref)
			if _, _, _, ok := scanTriplet(again); !ok {
				t.Fatalf("scanTriplet refuses the canonical encoding %x", again)
			}
		}
	})
}
