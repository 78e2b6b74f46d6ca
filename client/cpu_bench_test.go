package client_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mlesd/mlesd/client"
	"github.com/mlesd/mlesd/codec"
)

// memConn is a net.Conn without a network: writes are discarded, reads
// repeat one chunk of frames forever (after the join has been written).
// The benchmarks on it measure the client's own CPU per frame, without
// system calls or a server.
type memConn struct {
	chunk []byte
	off   int
}

func (c *memConn) Read(p []byte) (int, error) {
	if c.chunk == nil {
		select {} // a sender only: block like an idle socket
	}
	n := copy(p, c.chunk[c.off:])
	c.off = (c.off + n) % len(c.chunk)
	return n, nil
}
func (c *memConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *memConn) Close() error                     { return nil }
func (c *memConn) LocalAddr() net.Addr              { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1} }
func (c *memConn) RemoteAddr() net.Addr             { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 2} }
func (c *memConn) SetDeadline(time.Time) error      { return nil }
func (c *memConn) SetReadDeadline(time.Time) error  { return nil }
func (c *memConn) SetWriteDeadline(time.Time) error { return nil }

func memDialer(nc net.Conn) client.Option {
	return client.Dialer(func(context.Context, string, string) (net.Conn, error) { return nc, nil })
}

// repeated is frame repeated to fill 256 KiB (a whole number of frames).
func repeated(frame []byte) []byte {
	chunk := make([]byte, 0, 256<<10)
	for len(chunk)+len(frame) <= cap(chunk) {
		chunk = append(chunk, frame...)
	}
	return chunk
}

// BenchmarkCPUClientReceive: Msgs over memConn, a 128-byte message per frame.
func BenchmarkCPUClientReceive(b *testing.B) {
	c, err := client.Connect("mem", "sub", "bench-channel", memDialer(&memConn{chunk: repeated(benchFrame(b))}),
		client.BufferSizes(256<<10, 0))
	if err != nil {
		b.Fatal(err)
	}
	defer c.CloseNow()
	b.ReportAllocs()
	b.ResetTimer()
	n := 0
	var sink byte
	for m, err := range c.Msgs(context.Background()) {
		if err != nil {
			b.Fatal(err)
		}
		p := m.Payload()
		sink ^= p[len(p)-1]
		if n++; n == b.N {
			break
		}
	}
	_ = sink
}

// BenchmarkCPURawReceive is its floor: bufio.Peek, parse the header, look
// at the payload's end, discard (what bench/mlesdrv did before it used the
// client).
func BenchmarkCPURawReceive(b *testing.B) {
	br := bufio.NewReaderSize(&memConn{chunk: repeated(benchFrame(b))}, 256<<10)
	b.ReportAllocs()
	b.ResetTimer()
	var sink byte
	for range b.N {
		hb, err := br.Peek(codec.HeaderLen)
		if err != nil {
			b.Fatal(err)
		}
		h, _ := codec.ParseHeader(hb)
		f, err := br.Peek(codec.HeaderLen + h.Len)
		if err != nil {
			b.Fatal(err)
		}
		sink ^= f[len(f)-1]
		br.Discard(len(f))
	}
	_ = sink
}

// BenchmarkCPUClientSendPayload: SendPayload of a pre-encoded triplet to
// memConn, flushed every flushEvery frames (bench/mlesdrv's publishers).
func BenchmarkCPUClientSendPayload(b *testing.B) {
	c, err := client.Connect("mem", "pub-0", "bench-channel", memDialer(&memConn{}), client.ManualFlush(),
		client.BufferSizes(256<<10, 256<<10))
	if err != nil {
		b.Fatal(err)
	}
	defer c.CloseNow()
	payload := benchFrame(b)[codec.HeaderLen:]
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if err := c.SendPayload(payload); err != nil {
			b.Fatal(err)
		}
		if i%flushEvery == flushEvery-1 {
			c.Flush()
		}
	}
}

// BenchmarkCPURawSend is its floor: a pre-encoded frame copied into a
// bufio.Writer, flushed every flushEvery frames.
func BenchmarkCPURawSend(b *testing.B) {
	frame := benchFrame(b)
	w := bufio.NewWriterSize(io.Discard, 256<<10)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		w.Write(frame)
		if i%flushEvery == flushEvery-1 {
			w.Flush()
		}
	}
}

// BenchmarkCPUClientNextFrame: NextFrame over memConn, which leaves the
// triplet alone (bench/mlesdrv's and the gateway's receive).
func BenchmarkCPUClientNextFrame(b *testing.B) {
	c, err := client.Connect("mem", "sub", "bench-channel", memDialer(&memConn{chunk: repeated(benchFrame(b))}),
		client.BufferSizes(256<<10, 0))
	if err != nil {
		b.Fatal(err)
	}
	defer c.CloseNow()
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	var sink byte
	for range b.N {
		m, err := c.NextFrame(ctx)
		if err != nil {
			b.Fatal(err)
		}
		p := m.Payload()
		sink ^= p[len(p)-1]
	}
	_ = sink
}
