package engine

import (
	"bytes"
	"io"
	"log/slog"
	"testing"

	"github.com/mlesd/mlesd/router"
)

// The queue from one loop to another is bounded: a loop that stops
// draining makes the others drop what they would post to it, counted for
// each member there, while the sender's loop goes on at once; once it
// drains again its members get the live stream.
func TestCrossLoopQueueIsBoundedAndItsDropsAreCountedPerMember(t *testing.T) {
	srv, _ := New(Config{Loops: 2, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, router.New(router.Config{HistoryLimit: router.Off}))
	els := []*manualLoop{{}, {}}
	for i := range els {
		srv.loops[i].Store(newLoop(i, srv, els[i], 2))
	}
	l0, l1 := srv.loops[0].Load(), srv.loops[1].Load()
	l1.inboxMax = 100
	mk := func(i, loop int) *conn {
		c := &conn{gc: &sinkConn{fd: devNull}, loop: srv.loops[loop].Load(), cid: uint32(i), dupKey: uint64(i), state: joined}
		ch, _, err := srv.router.Join("ch", c, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.ch = ch
		return c
	}
	sender := mk(1, 0)
	near := mk(2, 0)
	far := []*conn{mk(3, 1), mk(4, 1), mk(5, 1)}
	data := bytes.Repeat([]byte{0xa5}, 128)
	send := func(n int) {
		for i := 0; i < n; i++ {
			l0.frames = append(l0.frames, router.NewFrame(data))
			srv.dispatch(sender, l0)
			l0.flush()
			els[0].run()
		}
	}
	send(250) // loop 1 runs nothing meanwhile: 100 queue, 150 are dropped
	if got := l1.inboxFrames.Load(); got != 100 {
		t.Fatalf("loop 1's inbox holds %d frames, want its bound 100", got)
	}
	if near.sent != 250*128 {
		t.Fatalf("the sender's own loop delivered %d bytes, want all 250 frames", near.sent)
	}
	els[1].run() // loop 1 drains the 100 it was given
	send(10)     // live again; the first walk there counts what was lost
	els[1].run()
	for _, c := range far {
		if c.sent != 110*128 || c.dropped != 150 {
			t.Fatalf("member on the slow loop: %d frames, %d counted dropped; want 110 and 150", c.sent/128, c.dropped)
		}
	}
	st := srv.Stats()
	if st.Dropped != 150*3 || st.LoopQueueDropped != 150 {
		t.Fatalf("Stats: %d dropped, %d lost between loops; want 450 and 150", st.Dropped, st.LoopQueueDropped)
	}
	if l1.inboxFrames.Load() != 0 || l1.inboxBytes.Load() != 0 {
		t.Fatalf("after draining, the inbox still counts %d frames, %d bytes", l1.inboxFrames.Load(), l1.inboxBytes.Load())
	}
}
