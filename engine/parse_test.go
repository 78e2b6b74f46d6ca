package engine

import (
	"bytes"
	"io"
	"testing"

	"github.com/mlesd/mlesd/codec"
)

// chunkedInbound is a receive buffer that bytes arrive into in chunks, like
// gnet's inbound buffer between reads.
type chunkedInbound struct{ buf []byte }

func (c *chunkedInbound) InboundBuffered() int { return len(c.buf) }
func (c *chunkedInbound) Peek(n int) ([]byte, error) {
	if n > len(c.buf) {
		return nil, io.ErrShortBuffer
	}
	return c.buf[:n], nil
}

// parseChunked feeds stream in chunks whose sizes come from sizes (cycled),
// extracting frames as they complete, and returns the frames and the close
// reason, if any.
func parseChunked(stream, sizes []byte, maxFrame int) (frames [][]byte, reason string) {
	in := &chunkedInbound{}
	for i, pos := 0, 0; pos < len(stream); i++ {
		n := 1
		if len(sizes) > 0 {
			n = int(sizes[i%len(sizes)]) + 1
		}
		n = min(n, len(stream)-pos)
		in.buf = append(in.buf, stream[pos:pos+n]...)
		pos += n
		for {
			_, total, r := nextFrame(in, maxFrame)
			if r != "" {
				return frames, r
			}
			if total == 0 {
				break
			}
			frames = append(frames, bytes.Clone(in.buf[:total]))
			in.buf = in.buf[total:]
		}
	}
	return frames, ""
}

func TestParserIsIndependentOfChunking(t *testing.T) {
	var stream []byte
	var want [][]byte
	for i := 0; i < 20; i++ {
		f, _ := codec.AppendFrame(nil, uint64(i), codec.Triplet{UID: "u", Channel: "c", Message: bytes.Repeat([]byte{byte(i)}, i*37)})
		want = append(want, f)
		stream = append(stream, f...)
	}
	for _, sizes := range [][]byte{nil, {0}, {15}, {16}, {200}, {3, 250, 0, 17}} {
		got, reason := parseChunked(stream, sizes, codec.MaxPayloadLen)
		if reason != "" || len(got) != len(want) {
			t.Fatalf("sizes %v: %d frames, reason %q; want %d", sizes, len(got), reason, len(want))
		}
		for i := range got {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("sizes %v: frame %d differs", sizes, i)
			}
		}
	}
}

func TestParserReasons(t *testing.T) {
	for _, tc := range []struct {
		stream []byte
		max    int
		reason string
	}{
		{rawHeader('X', 1, 0), 100, "bad-magic"},
		{rawHeader('M', 0, 0), 100, "zero-length"},
		{rawHeader('M', 101, 0), 100, "frame-too-large"},
		{rawHeader('M', 100, 0), 100, ""}, // waits for the payload, reserves nothing
	} {
		_, reason := parseChunked(tc.stream, nil, tc.max)
		if reason != tc.reason {
			t.Errorf("%x: reason %q, want %q", tc.stream[:4], reason, tc.reason)
		}
	}
}

// FuzzStreamParser: any bytes, in any chunking, parse to the same frames and
// the same verdict as 256-byte reads of the stream, never panic, and never yield
// a frame over the limit.
func FuzzStreamParser(f *testing.F) {
	j, _ := codec.AppendFrame(nil, 42, codec.Triplet{UID: "u", Channel: "c"})
	m, _ := codec.AppendFrame(nil, 42, codec.Triplet{UID: "u", Channel: "c", Message: []byte("hello")})
	f.Add(append(j, m...), []byte{0})
	f.Add(append(j, m[:20]...), []byte{5, 1})
	f.Add(rawHeader('M', 0, 0), []byte{})
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"), []byte{2})
	f.Fuzz(func(t *testing.T, stream, sizes []byte) {
		const maxFrame = 4096
		ref, refReason := parseChunked(stream, []byte{255, 255, 255, 255}, maxFrame)
		got, reason := parseChunked(stream, sizes, maxFrame)
		if reason != refReason || len(got) != len(ref) {
			t.Fatalf("chunking changed the result: %d frames %q vs %d frames %q", len(got), reason, len(ref), refReason)
		}
		for i := range got {
			if !bytes.Equal(got[i], ref[i]) {
				t.Fatalf("frame %d differs between chunkings", i)
			}
			if len(got[i]) > codec.HeaderLen+maxFrame {
				t.Fatalf("frame %d is %d bytes, over the limit", i, len(got[i]))
			}
		}
	})
}
