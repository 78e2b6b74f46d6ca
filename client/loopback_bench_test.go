package client_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"testing"

	"github.com/mlesd/mlesd/client"
	"github.com/mlesd/mlesd/codec"
)

// blaster is a fake server on loopback: it reads the join and then writes
// the same frame over and over, as fast as the client takes it. It measures
// the client's own per-frame cost, without mlesd's.
func blaster(b *testing.B, frame []byte) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	go func() {
		nc, err := l.Accept()
		if err != nil {
			return
		}
		defer nc.Close()
		go io.Copy(io.Discard, nc)
		chunk := make([]byte, 0, 256<<10)
		for len(chunk)+len(frame) <= cap(chunk) {
			chunk = append(chunk, frame...)
		}
		for {
			if _, err := nc.Write(chunk); err != nil {
				return
			}
		}
	}()
	return l.Addr().String()
}

func benchFrame(b *testing.B) []byte {
	f, err := codec.AppendFrame(nil, 1, codec.Triplet{UID: "pub-0", Channel: "bench-channel", Message: make([]byte, 128)})
	if err != nil {
		b.Fatal(err)
	}
	return f
}

// BenchmarkClientReceiveLoop: Msgs over loopback from the fake server.
func BenchmarkClientReceiveLoop(b *testing.B) {
	addr := blaster(b, benchFrame(b))
	c, err := client.Connect(addr, "sub", "bench-channel", client.BufferSizes(256<<10, 0))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.ReportAllocs()
	b.ResetTimer()
	n := 0
	for m, err := range c.Msgs(context.Background()) {
		if err != nil || len(m.Message) != 128 {
			b.Fatal(err)
		}
		if n++; n == b.N {
			break
		}
	}
}

// BenchmarkRawReceiveLoop is the floor: bufio.Peek, parse the header,
// look at the payload's end, discard (what bench/mlesdrv does).
func BenchmarkRawReceiveLoop(b *testing.B) {
	addr := blaster(b, benchFrame(b))
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	nc.Write(benchFrame(b))
	br := bufio.NewReaderSize(nc, 256<<10)
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

// sink is a fake server on loopback that reads and discards everything.
func sink(b *testing.B) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer nc.Close()
				io.Copy(io.Discard, nc)
			}()
		}
	}()
	return l.Addr().String()
}

// flushEvery is how many frames a publisher benchmark buffers between
// flushes (the bench harness flushes once per window's worth).
const flushEvery = 64

// BenchmarkClientSendPayload: SendPayload of a pre-encoded 128-byte
// message's triplet, flushed every flushEvery frames, as bench/mlesdrv's
// publishers send.
func BenchmarkClientSendPayload(b *testing.B) {
	c, err := client.Connect(sink(b), "pub-0", "bench-channel", client.ManualFlush(), client.BufferSizes(256<<10, 256<<10))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	payload := benchFrame(b)[codec.HeaderLen:]
	b.ReportAllocs()
	b.SetBytes(int64(codec.HeaderLen + len(payload)))
	b.ResetTimer()
	for i := range b.N {
		if err := c.SendPayload(payload); err != nil {
			b.Fatal(err)
		}
		if i%flushEvery == flushEvery-1 {
			c.Flush()
		}
	}
	c.Flush()
}

// BenchmarkRawSend is the floor: one pre-encoded frame copied into a
// bufio.Writer, flushed every flushEvery frames.
func BenchmarkRawSend(b *testing.B) {
	nc, err := net.Dial("tcp", sink(b))
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	frame := benchFrame(b)
	w := bufio.NewWriterSize(nc, 256<<10)
	b.ReportAllocs()
	b.SetBytes(int64(len(frame)))
	b.ResetTimer()
	for i := range b.N {
		if _, err := w.Write(frame); err != nil {
			b.Fatal(err)
		}
		if i%flushEvery == flushEvery-1 {
			w.Flush()
		}
	}
	w.Flush()
}
