package mlesdrv

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mlesd/mlesd/bench/harness"
	"github.com/mlesd/mlesd/codec"
)

// fakeServer accepts one connection, reads its join frame and writes back,
// with the joiner's key changed by keyDelta, a data frame carrying a harness
// trailer: keyDelta 0 is the joiner's own frame coming back.
func fakeServer(t *testing.T, keyDelta uint64) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		var hb [codec.HeaderLen]byte
		if _, err := io.ReadFull(c, hb[:]); err != nil {
			return
		}
		h, _ := codec.ParseHeader(hb[:])
		payload := make([]byte, h.Len)
		if _, err := io.ReadFull(c, payload); err != nil {
			return
		}
		join, _ := codec.DecodeTriplet(payload)
		msg := make([]byte, 64)
		harness.PutTrailer(msg, harness.Trailer{Pub: 1, Seq: 3})
		f, _ := codec.AppendFrame(nil, h.Key+keyDelta, codec.Triplet{UID: join.UID, Channel: join.Channel, Message: msg})
		c.Write(f)
		time.Sleep(time.Second) // keep the connection open while the test looks
	}()
	return ln.Addr().String()
}

func openPub(t *testing.T, addr string) *harness.Group {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	g, err := New().Open(ctx, addr, harness.GroupSpec{Channel: "echo", Pubs: []uint32{0}, Payload: 64})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	return g
}

func TestPublisherReportsItsOwnFrameComingBack(t *testing.T) {
	g := openPub(t, fakeServer(t, 0))
	for limit := time.Now().Add(3 * time.Second); len(g.Errors()) == 0 && time.Now().Before(limit); {
		time.Sleep(5 * time.Millisecond)
	}
	if errs := g.Errors(); len(errs) != 1 || !strings.Contains(errs[0], "its own frame back (publisher 1, seq 3)") {
		t.Fatalf("errors %q", errs)
	}
}

func TestPublisherAcceptsOtherMembersFrames(t *testing.T) {
	g := openPub(t, fakeServer(t, 1<<40|1)) // another CID
	time.Sleep(200 * time.Millisecond)
	if errs := g.Errors(); len(errs) != 0 {
		t.Fatalf("errors %q", errs)
	}
}
