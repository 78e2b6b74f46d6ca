package engine

import (
	"bytes"
	"fmt"
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
func (c *chunkedInbound) Read(p []byte) (int, error) {
	n := copy(p, c.buf)
	c.buf = c.buf[n:]
	return n, nil
}
func (c *chunkedInbound) Discard(n int) (int, error) {
	n = min(n, len(c.buf))
	c.buf = c.buf[n:]
	return n, nil
}

// parseChunked feeds stream in chunks whose sizes come from sizes (cycled)
// to a frameReader that moves frames longer than ownFrom (once that much has
// arrived) into an owned buffer, extracting frames as they complete, and
// returns the frames and the close reason, if any. It fails t if the bytes
// the reader says it holds are not exactly those fed and not yet returned.
func parseChunked(t testing.TB, stream, sizes []byte, maxFrame, ownFrom int) (frames [][]byte, reason string) {
	in := &chunkedInbound{}
	var rd frameReader
	spare := &spareBufs{}
	defer rd.release(spare)
	defer func() {
		for o := spare.get(); o.b != nil; o = spare.get() {
			o.free()
		}
	}()
	fed, taken := 0, 0
	for i, pos := 0, 0; pos < len(stream); i++ {
		n := 1
		if len(sizes) > 0 {
			n = int(sizes[i%len(sizes)]) + 1
		}
		n = min(n, len(stream)-pos)
		in.buf = append(in.buf, stream[pos:pos+n]...)
		pos += n
		fed += n
		for {
			h, data, r := rd.next(in, maxFrame, ownFrom, spare)
			if r != "" {
				return frames, r
			}
			if data == nil {
				break
			}
			if len(data) != codec.HeaderLen+h.Len {
				t.Fatalf("frame of %d bytes has a header saying %d", len(data), h.Len)
			}
			frames = append(frames, bytes.Clone(data))
			taken += len(data)
			rd.done(in, spare)
		}
		if held := rd.held(in); held != fed-taken {
			t.Fatalf("reader holds %d bytes, want %d", held, fed-taken)
		}
		if rd.resident(in) < rd.held(in) {
			t.Fatalf("resident %d below held %d", rd.resident(in), rd.held(in))
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
		for _, ownFrom := range []int{ownedFrameMin, 1, 100} {
			got, reason := parseChunked(t, stream, sizes, codec.MaxPayloadLen, ownFrom)
			if reason != "" || len(got) != len(want) {
				t.Fatalf("sizes %v own from %d: %d frames, reason %q; want %d", sizes, ownFrom, len(got), reason, len(want))
			}
			for i := range got {
				if !bytes.Equal(got[i], want[i]) {
					t.Fatalf("sizes %v own from %d: frame %d differs", sizes, ownFrom, i)
				}
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
		_, reason := parseChunked(t, tc.stream, nil, tc.max, 1)
		if reason != tc.reason {
			t.Errorf("%x: reason %q, want %q", tc.stream[:4], reason, tc.reason)
		}
	}
}

// FuzzStreamParser: any bytes, in any chunking, parse to the same frames and
// the same verdict as 256-byte reads of the stream parsed in place, whether
// or not frames are moved into an owned buffer on the way (ownFrom), never
// panic, never yield a frame over the limit, and account held bytes exactly.
func FuzzStreamParser(f *testing.F) {
	j, _ := codec.AppendFrame(nil, 42, codec.Triplet{UID: "u", Channel: "c"})
	m, _ := codec.AppendFrame(nil, 42, codec.Triplet{UID: "u", Channel: "c", Message: []byte("hello")})
	big, _ := codec.AppendFrame(nil, 42, codec.Triplet{UID: "u", Channel: "c", Message: bytes.Repeat([]byte("x"), 3000)})
	f.Add(append(j, m...), []byte{0}, uint16(0))
	f.Add(append(j, m[:20]...), []byte{5, 1}, uint16(17))
	f.Add(append(big, m...), []byte{200, 7}, uint16(100))
	f.Add(append(m, big[:2000]...), []byte{255}, uint16(16))
	f.Add(rawHeader('M', 0, 0), []byte{}, uint16(1))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"), []byte{2}, uint16(3))
	f.Fuzz(func(t *testing.T, stream, sizes []byte, ownFrom uint16) {
		const maxFrame = 4096
		ref, refReason := parseChunked(t, stream, []byte{255, 255, 255, 255}, maxFrame, 1<<30)
		got, reason := parseChunked(t, stream, sizes, maxFrame, int(ownFrom))
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

// flatInbound is an inbound buffer with a fixed backing array, for
// benchmarks: it allocates nothing itself.
type flatInbound struct {
	buf  []byte
	r, w int
}

func (f *flatInbound) InboundBuffered() int { return f.w - f.r }
func (f *flatInbound) Peek(n int) ([]byte, error) {
	if n > f.w-f.r {
		return nil, io.ErrShortBuffer
	}
	return f.buf[f.r : f.r+n], nil
}
func (f *flatInbound) Read(p []byte) (int, error) {
	n := copy(p, f.buf[f.r:f.w])
	f.Discard(n)
	return n, nil
}
func (f *flatInbound) Discard(n int) (int, error) {
	if f.r += n; f.r == f.w {
		f.r, f.w = 0, 0
	}
	return n, nil
}
func (f *flatInbound) fill(b []byte) { f.w += copy(f.buf[f.w:], b) }

// BenchmarkFrameReader parses frames arriving in 64 KiB reads (gnet's read
// size): in place (as small frames are), and moved into an owned buffer (as
// frames over ownedFrameMin are). The owned path costs its mapping's system
// calls per frame and the copy out of the read buffer (which gnet's own
// buffer would make too); it must not allocate.
func BenchmarkFrameReader(b *testing.B) {
	for _, size := range []int{256 << 10, 4 << 20} {
		for _, tc := range []struct {
			name    string
			ownFrom int
		}{{"in-place", 1 << 30}, {"owned", ownedFrameMin}} {
			b.Run(fmt.Sprintf("%dKiB/%s", size>>10, tc.name), func(b *testing.B) {
				frame, _ := codec.AppendFrame(nil, 1, codec.Triplet{UID: "u", Channel: "c", Message: make([]byte, size)})
				in := &flatInbound{buf: make([]byte, len(frame))}
				var rd frameReader
				spare := &spareBufs{}
				defer func() {
					rd.release(nil)
					for o := spare.get(); o.b != nil; o = spare.get() {
						o.free()
					}
				}()
				b.SetBytes(int64(len(frame)))
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					for pos := 0; pos < len(frame); pos += 64 << 10 {
						in.fill(frame[pos:min(pos+64<<10, len(frame))])
						if _, data, _ := rd.next(in, codec.MaxPayloadLen, tc.ownFrom, spare); data != nil {
							rd.done(in, spare)
						}
					}
				}
			})
		}
	}
}
