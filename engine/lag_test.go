package engine

import (
	"context"
	"encoding/binary"
	"testing"
	"time"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/router"
)

// onLoops runs f on every loop of ts (in order) and waits for it.
func (ts *testServer) onLoops(t testing.TB, f func(l *loop)) {
	t.Helper()
	for i := range ts.srv.loops {
		l := ts.srv.loops[i].Load()
		if l == nil {
			continue
		}
		done := make(chan struct{})
		if err := l.el.Execute(context.Background(), runnable(func() { f(l); close(done) })); err != nil {
			t.Fatal(err)
		}
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("loop task did not run")
		}
	}
}

func (ts *testServer) laggerCount(t testing.TB) int {
	n := 0
	ts.onLoops(t, func(l *loop) { n += len(l.laggers) })
	return n
}

// A receiver whose socket filled lags, and loses frames once its set's log
// evicts what it still needed; when it reads again it gets whole frames, in
// order, then the live stream, and the frames it missed are counted
// exactly: received + dropped = published.
func TestLaggingReceiverResumesWithWholeFramesAndAnExactDropCount(t *testing.T) {
	ts := startServer(t, Config{Keys: sharedKeys, MaxPendingFrames: 64, MaxPending: 64 << 20}, router.Config{HistoryLimit: router.Off})
	rx := ts.joinSmall(t, "rx", "ch", 4<<10, 1400) // a small MSS keeps the server's send buffer small too
	pub := ts.join(t, sharedKeys, "pub", "ch", nil)
	rx.expect(pub.frame(nil))
	const n, size = 5000, 300
	var burst []byte
	for i := 0; i < n; i++ {
		burst = append(burst, pub.frame(seqMessage(uint32(i), size))...)
		if len(burst) > 64<<10 {
			pub.write(burst)
			burst = burst[:0]
		}
	}
	pub.write(burst)
	waitUntil(t, "frames to be dropped for the receiver", 5*time.Second, func() bool { return ts.srv.Stats().Dropped > 0 })
	waitUntil(t, "every frame to be dispatched", 5*time.Second, func() bool { return ts.srv.Stats().FramesIn == n })
	// A task on every loop after that one runs after every batch those
	// frames were posted in: from here only rx's reading changes anything.
	ts.onLoops(t, func(*loop) {})
	// Read until the publisher's marker frame arrives: it is published
	// after rx has drained, so rx must be listed again by then.
	got, last := 0, -1
	marker := []byte("after the backlog")
	drained := false
	for {
		if !drained && ts.waiting() == 0 && ts.laggerCount(t) == 0 {
			// The server holds nothing more for rx and it is listed
			// again: the marker comes after everything rx was sent.
			pub.send(marker)
			drained = true
		}
		f, err := rx.readFrame(5 * time.Second)
		if err != nil {
			ts.onLoops(t, func(l *loop) {
				for c := range l.conns {
					t.Logf("loop %d %s: q %d pending %d lagging %v cursor %d armed %v dirty %v setIdx %d dropped %d sent %d", l.idx, c.uid, c.q.len(), c.pending(), c.lagging, c.cursor, c.wArmed, c.dirty, c.setIdx, c.dropped, c.sent)
				}
			})
			t.Fatalf("after %d frames (marker sent %v): %v", got, drained, err)
		}
		tr, err := codec.DecodeTriplet(f[codec.HeaderLen:])
		if err != nil {
			t.Fatalf("frame %d is not a whole frame: %v", got, err)
		}
		if string(tr.Message) == string(marker) {
			break
		}
		seq := int(binary.BigEndian.Uint32(tr.Message))
		if seq <= last || len(tr.Message) != size {
			t.Fatalf("frame %d: sequence %d after %d", got, seq, last)
		}
		last = seq
		got++
	}
	dropped := ts.srv.Stats().Dropped
	t.Logf("received %d of %d, dropped %d", got, n, dropped)
	if dropped == 0 || got == n {
		t.Fatal("nothing was dropped: the receiver never filled its backlog, the test proves nothing")
	}
	if uint64(got)+dropped != n {
		t.Fatalf("received %d + dropped %d = %d, want %d published", got, dropped, uint64(got)+dropped, n)
	}
	// And it is a member like any other again.
	rx.expect(pub.send([]byte("live again")))
}
