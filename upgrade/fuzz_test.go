package upgrade

import (
	"bytes"
	"testing"
)

// Each decoder takes any bytes without panicking, and what it accepts
// encodes back to a message it accepts and that encodes the same (an empty
// and an absent list are one value on the wire).

func seedMessages(f *testing.F, vs ...any) {
	for _, v := range vs {
		b, err := encMode.Marshal(v)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{0xa2, 0x00, 0x02, 0x01, 0x18, 0x63}) // {0: 2, 1: 99}
}

func roundTrip[T any](t *testing.T, v T, decode func([]byte) (T, error)) {
	b, err := encMode.Marshal(v)
	if err != nil {
		t.Fatalf("re-encoding %+v: %v", v, err)
	}
	again, err := decode(b)
	if err != nil {
		t.Fatalf("re-decoding %+v: %v", v, err)
	}
	b2, err := encMode.Marshal(again)
	if err != nil || !bytes.Equal(b, b2) {
		t.Fatalf("round trip changed %+v into %+v", v, again)
	}
}

func FuzzDecodeOffer(f *testing.F) {
	seedMessages(f, Offer{Kind: kindOffer, Format: FormatVersion, Sender: "v1", PID: 1,
		Files: []FileID{{RoleMles, "[::]:8077"}, {RolePprof, "127.0.0.1:6060"}}})
	f.Fuzz(func(t *testing.T, b []byte) {
		if o, err := DecodeOffer(b); err == nil {
			roundTrip(t, o, DecodeOffer)
		}
	})
}

func FuzzDecodeReply(f *testing.F) {
	seedMessages(f, Reply{Kind: kindReply, Format: FormatVersion, Version: "v2", PID: 2, Ready: true},
		Reply{Kind: kindReply, Format: FormatVersion, Error: "no"})
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := DecodeReply(b); err == nil {
			roundTrip(t, r, DecodeReply)
		}
	})
}

func FuzzDecodeCommit(f *testing.F) {
	seedMessages(f, Commit{Kind: kindCommit, Format: FormatVersion})
	f.Fuzz(func(t *testing.T, b []byte) {
		if c, err := DecodeCommit(b); err == nil {
			roundTrip(t, c, DecodeCommit)
		}
	})
}

func FuzzDecodeConnState(f *testing.F) {
	frame := append(make([]byte, 16), "x"...)
	seedMessages(f, ConnState{Kind: kindConn, Format: StateFormat, ID: 1, Phase: PhaseJoined, UID: "u", Channel: "c",
		CID: 9, Partial: frame[:3], Owed: frame, OwedWhole: 2, Uplink: &UplinkState{Peer: "p"}},
		ConnState{Kind: kindConn, Format: StateFormat, ID: 2, Partial: frame[:5]})
	f.Fuzz(func(t *testing.T, b []byte) {
		if c, err := DecodeConnState(b); err == nil {
			roundTrip(t, c, DecodeConnState)
		}
	})
}

func FuzzDecodeChannelState(f *testing.F) {
	frame := append(make([]byte, 16), "x"...)
	seedMessages(f, ChannelState{Kind: kindChannel, Format: StateFormat, Name: "c", History: [][]byte{frame},
		Members: []uint64{1}, CIDs: []uint32{9}, FirstJoin: frame})
	f.Fuzz(func(t *testing.T, b []byte) {
		if c, err := DecodeChannelState(b); err == nil {
			roundTrip(t, c, DecodeChannelState)
		}
	})
}

func FuzzDecodeChunk(f *testing.F) {
	seedMessages(f, Chunk{Kind: kindChunk, Format: StateFormat, Conn: 1, Owed: []byte("abc")},
		Chunk{Kind: kindChunk, Format: StateFormat, Chan: "c", Seq: 1, Frames: [][]byte{[]byte("f")}})
	f.Fuzz(func(t *testing.T, b []byte) {
		if c, err := DecodeChunk(b); err == nil {
			roundTrip(t, c, DecodeChunk)
		}
	})
}

func FuzzDecodeConnBatch(f *testing.F) {
	frame := append(make([]byte, 16), "x"...)
	for _, cb := range []ConnBatch{
		{Kind: kindConns, Format: StateFormat, Conns: []ConnState{
			{ID: 1, FD: 1, Phase: PhaseJoined, UID: "u", Channel: "c", CID: 9, Owed: frame, OwedWhole: 2},
			{ID: 2, FD: 0, Partial: frame[:5]}}},
		{Kind: kindConns, Format: StateFormat, Conns: []ConnState{{ID: 3, Uplink: nil}}},
	} {
		b, err := encMode.Marshal(cb)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, uint8(len(cb.Conns)))
	}
	f.Add([]byte{}, uint8(0))
	f.Fuzz(func(t *testing.T, b []byte, files uint8) {
		cb, err := DecodeConnBatch(b, int(files))
		if err != nil {
			return
		}
		roundTrip(t, cb, func(b []byte) (ConnBatch, error) { return DecodeConnBatch(b, int(files)) })
	})
}

func FuzzDecodeChannelBatch(f *testing.F) {
	frame := append(make([]byte, 16), "x"...)
	seedMessages(f, ChannelBatch{Kind: kindChans, Format: StateFormat, Chans: []ChannelState{
		{Name: "a", History: [][]byte{frame, frame}, FirstJoin: frame}, {Name: "b"}}})
	f.Fuzz(func(t *testing.T, b []byte) {
		if c, err := DecodeChannelBatch(b); err == nil {
			roundTrip(t, c, DecodeChannelBatch)
		}
	})
}

func FuzzDecodeTotals(f *testing.F) {
	seedMessages(f, Totals{Kind: kindTotals, Format: StateFormat, Counters: map[string]uint64{"a": 1}})
	f.Fuzz(func(t *testing.T, b []byte) {
		if c, err := DecodeTotals(b); err == nil {
			roundTrip(t, c, DecodeTotals)
		}
	})
}

// The state stream's reader (Transfer.add, then finish) takes any sequence
// of messages without panicking or growing past its bounds; messages are
// fed split where the input has a 0xff byte (descriptors cannot be fuzzed:
// a ConnState is refused without its one).
func FuzzTransferStream(f *testing.F) {
	frame := []byte{0x80, 0, 0, 1, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 1, 'x'}
	var seed []byte
	for _, v := range []any{
		&ChannelState{Name: "c", HistoryChunks: 1},
		&Chunk{Chan: "c", History: frame},
		&Chunk{Conn: 1, Partial: []byte("late")},
		&Totals{Counters: map[string]uint64{"mlesd_joins_total": 3}},
	} {
		b, err := EncodeState(v)
		if err != nil {
			f.Fatal(err)
		}
		seed = append(append(seed, b...), 0xff)
	}
	f.Add(seed)
	f.Add([]byte{0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		tr := &Transfer{byConn: map[uint64]*ConnIn{}, byChan: map[string]*ChannelIn{}, seq: map[any]uint32{}}
		for _, msg := range bytes.Split(b, []byte{0xff}) {
			done, err := tr.add(msg, nil)
			if err != nil {
				return
			}
			if done {
				_ = tr.finish()
				return
			}
		}
	})
}

// SplitFrames cuts any bytes into frames that are exactly their headers'
// lengths, or refuses them.
func FuzzSplitFrames(f *testing.F) {
	f.Add([]byte{0x80, 0, 0, 1, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 1, 'x'})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		frames, err := SplitFrames(b)
		if err != nil {
			return
		}
		var again []byte
		for _, fr := range frames {
			again = append(again, fr...)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("frames %x do not add up to %x", again, b)
		}
	})
}
