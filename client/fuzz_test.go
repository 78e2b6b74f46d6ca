package client

import (
	"bytes"
	"io"
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

// FuzzFrameReader: any byte stream, in chunks of any size, yields whole
// frames whose headers parse and whose lengths add up to the bytes read,
// then an error; frames round-trip byte for byte when the stream is made
// of frames. Never a panic.
func FuzzFrameReader(f *testing.F) {
	join, _ := codec.AppendFrame(nil, 1, codec.Triplet{UID: "u", Channel: "c"})
	f.Add(join, uint8(1), uint16(16))
	f.Add(append(append([]byte(nil), join...), join...), uint8(7), uint16(64))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"), uint8(3), uint16(16))
	f.Fuzz(func(t *testing.T, stream []byte, chunk uint8, size uint16) {
		fr := NewFrameReader(&chunked{b: stream, n: int(chunk%32) + 1}, int(size))
		total := 0
		for {
			h, frame, err := fr.ReadFrame()
			if err != nil {
				break
			}
			if len(frame) != codec.HeaderLen+h.Len || h.Len == 0 {
				t.Fatalf("frame of %d bytes with header length %d", len(frame), h.Len)
			}
			if !bytes.Equal(frame, stream[total:total+len(frame)]) {
				t.Fatalf("frame at %d is not the stream's bytes", total)
			}
			total += len(frame)
		}
		if total > len(stream) {
			t.Fatalf("%d bytes of frames from a stream of %d", total, len(stream))
		}
	})
}

// chunked reads b at most n bytes at a time.
type chunked struct {
	b []byte
	n int
}

func (c *chunked) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	k := copy(p[:min(len(p), c.n)], c.b)
	c.b = c.b[k:]
	return k, nil
}
