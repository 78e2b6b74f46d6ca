package gateway

import (
	"errors"
	"runtime"
	"testing"

	"github.com/mlesd/mlesd/codec"
)

// FuzzDecodePairMatchesDecodeTriplet holds decodePair to codec.DecodeTriplet:
// the same inputs are accepted, with the same uid and channel, and every
// refusal wraps codec.ErrNotTriplet.
func FuzzDecodePairMatchesDecodeTriplet(f *testing.F) {
	for _, seed := range [][]byte{
		codec.AppendTriplet(nil, codec.Triplet{UID: "alice", Channel: "general", Message: []byte("hi")}),
		codec.AppendTriplet(nil, codec.Triplet{UID: "", Channel: "", Message: nil}),
		{0xa3, 0x67, 'm', 'e', 's', 's', 'a', 'g', 'e', 0x5f, 0x41, 'x', 0x40, 0xff, 0x63, 'u', 'i', 'd', 0x41, 'u',
			0x67, 'c', 'h', 'a', 'n', 'n', 'e', 'l', 0x61, 'c'}, // indefinite bytes, byte-string uid
		{0xa3, 0x63, 'u', 'i', 'd', 0xf6, 0x67, 'c', 'h', 'a', 'n', 'n', 'e', 'l', 0x61, 'c',
			0x67, 'm', 'e', 's', 's', 'a', 'g', 'e', 0x40}, // null uid
		{0xa3, 0x63, 'u', 'i', 'd', 0x61, 'u', 0x67, 'c', 'h', 'a', 'n', 'n', 'e', 'l', 0x61, 'c',
			0x67, 'm', 'e', 's', 's', 'a', 'g', 'e', 0xc2, 0x40}, // tagged message
		{0xa3, 0x63, 'u', 'i', 'd', 0x61, 'u', 0x67, 'c', 'h', 'a', 'n', 'n', 'e', 'l', 0x61, 'c',
			0x67, 'm', 'e', 's', 's', 'a', 'g', 'e', 0x61, 'x'}, // text message
		{0xa0}, {}, {0xff},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		want, werr := codec.DecodeTriplet(payload)
		got, gerr := decodePair(payload)
		if (werr == nil) != (gerr == nil) {
			t.Fatalf("DecodeTriplet error %v, decodePair error %v", werr, gerr)
		}
		if gerr != nil {
			if !errors.Is(gerr, codec.ErrNotTriplet) {
				t.Fatalf("decodePair error %v does not wrap ErrNotTriplet", gerr)
			}
			return
		}
		if got.uid != want.UID || got.channel != want.Channel {
			t.Fatalf("decodePair (%q, %q), DecodeTriplet (%q, %q)", got.uid, got.channel, want.UID, want.Channel)
		}
	})
}

// decodePair allocates nothing per message byte: decoding a 1 MiB message
// allocates about what a tiny one does, not a copy of it.
func TestDecodePairDoesNotCopyTheMessage(t *testing.T) {
	big := codec.AppendTriplet(nil, codec.Triplet{UID: "u", Channel: "c", Message: make([]byte, 1<<20)})
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 10 {
		if _, err := decodePair(big); err != nil {
			t.Fatal(err)
		}
	}
	runtime.ReadMemStats(&after)
	if perCall := (after.TotalAlloc - before.TotalAlloc) / 10; perCall > 4<<10 {
		t.Errorf("decodePair allocates %d bytes per 1 MiB message, want a few hundred", perCall)
	}
}
