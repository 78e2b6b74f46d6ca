package engine

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/router"
)

// hoard joins a client that then declares a maximal frame, sends n bytes of
// it and stops.
func hoard(t *testing.T, ts *testServer, uid string, n int) *client {
	t.Helper()
	c := ts.join(t, sharedKeys, uid, "hoard", nil)
	c.write(append(rawHeader('M', codec.MaxPayloadLen, c.key), make([]byte, n)...))
	return c
}

// waitPartial waits until the server counts at least n bytes of frames still
// arriving.
func (ts *testServer) waitPartial(t *testing.T, n int64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for ts.srv.partialBytes.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("server holds %d partial bytes, want %d", ts.srv.partialBytes.Load(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitPartialGone waits until the server holds no partial bytes and no loop
// publishes a holder: the bookkeeping returns to zero.
func (ts *testServer) waitPartialGone(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		biggest := int64(0)
		for i := range ts.srv.partial {
			biggest = max(biggest, ts.srv.partial[i].biggest.Load())
		}
		n := ts.srv.partialBytes.Load()
		if n == 0 && biggest == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after every holder left: %d partial bytes, biggest holder %d", n, biggest)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// expectOpen requires that the server has not closed nc (nothing arrives,
// the connection stays up).
func expectOpen(t *testing.T, nc net.Conn, what string) {
	t.Helper()
	_ = nc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	var b [1]byte
	if _, err := nc.Read(b[:]); err != nil {
		if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
			t.Fatalf("%s was closed: %v", what, err)
		}
	}
}

// With the budget full of hoarded partial frames, an honest large frame
// closes the connection holding the most, on whichever loop it lives, and
// goes through itself.
func TestPartialBudgetShedsTheConnectionHoldingTheMost(t *testing.T) {
	for _, loops := range []int{1, 4} { // the biggest on the publisher's loop; on another loop
		t.Run(itoa(loops)+"-loops", func(t *testing.T) {
			// Hoarders hold 31.5 of 32 MiB; the publisher's 1 MiB frames overflow.
			ts := startServer(t, Config{Keys: sharedKeys, Loops: loops, MaxPartialBytes: 32 << 20}, router.Config{HistoryLimit: router.Off})
			biggest := hoard(t, ts, "h0", 12<<20)
			others := []*client{hoard(t, ts, "h1", 10<<20), hoard(t, ts, "h2", 19<<19)}
			ts.waitPartial(t, 63<<19)
			sub := ts.join(t, sharedKeys, "sub", "big", nil)
			var pub *client
			for i := 0; pub == nil && i < 16; i++ {
				c := ts.join(t, sharedKeys, "pub"+itoa(i), "big", nil)
				sub.expect(c.frame(nil))
				if (ts.loopOf(t, c.uid) == ts.loopOf(t, "h0")) == (loops == 1) {
					pub = c // on the biggest hoarder's loop with one loop, on another with four
				}
			}
			if pub == nil {
				t.Fatal("setup: no publisher landed where wanted")
			}
			t.Cleanup(func() {
				if t.Failed() {
					t.Log(ts.log.String())
				}
			})
			msg := make([]byte, 1<<20)
			for i := 0; i < 20; i++ {
				msg[0] = byte(i)
				sub.expect(pub.send(msg))
			}
			expectClosed(t, biggest.nc)
			ts.log.waitFor(t, "reason=partial-budget")
			for _, h := range others {
				expectOpen(t, h.nc, h.uid)
			}
			if n := ts.srv.Stats().ClosedByRule["partial-budget"]; n != 1 {
				t.Fatalf("%d connections closed for the budget, want 1 (the biggest hoarder)", n)
			}
			if n := ts.srv.partialBytes.Load(); n > 32<<20 {
				t.Fatalf("partial bytes %d over the budget after the shed", n)
			}
			for _, h := range others {
				h.nc.Close()
			}
			ts.waitPartialGone(t)
		})
	}
}

// loopOf reports the index of the loop that owns uid's connection, asking
// each loop on its own goroutine; -1 if none does.
func (ts *testServer) loopOf(t *testing.T, uid string) int {
	t.Helper()
	found := make(chan int, len(ts.srv.loops))
	n := 0
	for i := range ts.srv.loops {
		l := ts.srv.loops[i].Load()
		if l == nil {
			continue
		}
		n++
		_ = l.el.Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
			for c := range l.conns {
				if c.uid == uid {
					found <- l.idx
					return nil
				}
			}
			found <- -1
			return nil
		}))
	}
	idx := -1
	for ; n > 0; n-- {
		if i := <-found; i >= 0 {
			idx = i
		}
	}
	return idx
}

// block keeps loop idx busy for d, as a saturated loop would be.
func (ts *testServer) block(t *testing.T, idx int, d time.Duration) {
	t.Helper()
	busy := make(chan struct{})
	err := ts.srv.loops[idx].Load().el.Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
		close(busy)
		time.Sleep(d)
		return nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	<-busy
}

// While the loop of the biggest holder is too busy to close it, another
// connection may pass the budget only by the slack; then it is closed itself.
func TestPartialBudgetOvershootIsBounded(t *testing.T) {
	ts := startServer(t, Config{Keys: sharedKeys, Loops: 2, MaxPartialBytes: 1 << 20}, router.Config{HistoryLimit: router.Off})
	a := hoard(t, ts, "a", 800<<10)
	ts.waitPartial(t, 800<<10)
	home := ts.loopOf(t, "a")
	var flood *client
	for i := 0; flood == nil && i < 8; i++ { // a connection on the other loop
		// Its own channel: a joiner of the hoarder's small channel would
		// be moved to the hoarder's loop (migrate.go).
		c := ts.join(t, sharedKeys, "flood"+itoa(i), "flood"+itoa(i), nil)
		if ts.loopOf(t, c.uid) != home {
			flood = c
		}
	}
	if flood == nil {
		t.Fatal("no connection landed on the second loop")
	}
	ts.block(t, home, 1500*time.Millisecond)
	_ = flood.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _ = flood.nc.Write(append(rawHeader('M', codec.MaxPayloadLen, flood.key), make([]byte, 2<<20)...)) // cut short by the close
	expectClosed(t, flood.nc)
	ts.log.waitFor(t, "reason=partial-budget")
	time.Sleep(1600 * time.Millisecond) // the busy loop runs its shed: the budget is no longer nearly full
	expectOpen(t, a.nc, "the hoarder, once the overflowing connection was gone")
}

func TestFrameArrivingBelowTheMinimumRateIsClosed(t *testing.T) {
	for _, joined := range []bool{false, true} { // the join frame itself; a later frame
		name := map[bool]string{false: "join-frame", true: "later-frame"}[joined]
		t.Run(name, func(t *testing.T) {
			ts := startServer(t, Config{Keys: sharedKeys, JoinTimeout: 500 * time.Millisecond,
				FrameMinRate: 4096, FrameRateWindow: 300 * time.Millisecond, FrameTimeout: -1}, router.Config{HistoryLimit: router.Off})
			var nc net.Conn
			if joined {
				nc = ts.join(t, sharedKeys, "drip", "ch", nil).nc
			} else {
				nc = dialRaw(t, ts.addr)
			}
			frame := append(rawHeader('M', 100<<10, 1), make([]byte, 100<<10)...)
			stop := make(chan struct{})
			defer close(stop)
			go func() { // about 1,300 bytes a second: a third of the minimum
				for i := 0; i < len(frame); i += 64 {
					select {
					case <-stop:
						return
					case <-time.After(50 * time.Millisecond):
					}
					if _, err := nc.Write(frame[i : i+64]); err != nil {
						return
					}
				}
			}()
			expectClosed(t, nc)
			ts.log.waitFor(t, "reason=frame-too-slow")
			if strings.Contains(ts.log.String(), "reason=join-timeout") {
				t.Fatal("a client that is sending was closed by the join timeout")
			}
			checkOthersWork(t, ts)
		})
	}
}

func TestStalledHalfFrameIsClosedAtTheFrameDeadline(t *testing.T) {
	ts := startServer(t, Config{Keys: sharedKeys, FrameTimeout: 500 * time.Millisecond, FrameMinRate: -1}, router.Config{HistoryLimit: router.Off})
	c := ts.join(t, sharedKeys, "stall", "ch", nil)
	f := c.frame(make([]byte, 200<<10))
	began := time.Now()
	c.write(f[:len(f)/2])
	expectClosed(t, c.nc)
	if d := time.Since(began); d < 400*time.Millisecond { // checked by a sweep, within a tick
		t.Fatalf("closed after %v, well before the 500 ms deadline", d)
	}
	ts.log.waitFor(t, "reason=frame-timeout")
	if ts.srv.Stats().ClosedByRule["frame-timeout"] != 1 {
		t.Fatal("frame-timeout close not counted")
	}
	checkOthersWork(t, ts)
}

func TestHonestSlowFrameWithinTheLimitsIsDeliveredWhole(t *testing.T) {
	ts := startServer(t, Config{Keys: sharedKeys, FrameMinRate: 4096, FrameRateWindow: 300 * time.Millisecond,
		FrameTimeout: 10 * time.Second}, router.Config{HistoryLimit: router.Off})
	sub := ts.join(t, sharedKeys, "sub", "slow", nil)
	pub := ts.join(t, sharedKeys, "pub", "slow", nil)
	sub.expect(pub.frame(nil))
	msg := make([]byte, 96<<10) // large enough to be moved out of gnet's buffer
	for i := range msg {
		msg[i] = byte(i * 7)
	}
	f := pub.frame(msg)
	for i := 0; i < len(f); i += 4 << 10 { // about 48 KiB/s, twelve times the minimum
		pub.write(f[i:min(i+4<<10, len(f))])
		time.Sleep(80 * time.Millisecond)
	}
	got, err := sub.readFrame(5 * time.Second)
	if err != nil || !bytes.Equal(got, f) {
		t.Fatalf("slow frame not delivered whole: %d bytes, %v", len(got), err)
	}
	sub.expect(pub.send([]byte("after")))
	if n := sum(ts.srv.Stats().ClosedByRule); n != 0 {
		t.Fatalf("%d connections closed, want none: %v", n, ts.srv.Stats().ClosedByRule)
	}
}

// A join whose bytes reached the server while its loop was busy is joined:
// the join timeout measures the client, not the server's backlog.
func TestJoinSentWhileTheLoopIsBusyIsJoined(t *testing.T) {
	ts := startServer(t, Config{Keys: sharedKeys, Loops: 1, JoinTimeout: 300 * time.Millisecond}, router.Config{HistoryLimit: router.Off})
	nc := dialRaw(t, ts.addr)
	deadline := time.Now().Add(5 * time.Second)
	for ts.srv.Stats().OpenConns < 1 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	// The loop is saturated for a second, three join timeouts; the sweeps
	// queued meanwhile run right after it, before the loop reads again.
	ts.block(t, 0, time.Second)
	c := joinOver(t, nc, sharedKeys, "patient", "ch", netip.AddrPort{}) // sent in time; the server reads it only after the busy second
	ts.waitJoins(t, 1)
	if strings.Contains(ts.log.String(), "reason=join-timeout") {
		t.Fatal("a join sent in time was closed by the join timeout")
	}
	other := ts.join(t, sharedKeys, "other", "ch", nil)
	c.expect(other.frame(nil))
}

func TestPartialJoinFrameIsTheJoinTimeoutsWhenFrameRulesAreOff(t *testing.T) {
	ts := startServer(t, Config{Keys: sharedKeys, JoinTimeout: 300 * time.Millisecond, FrameTimeout: -1, FrameMinRate: -1},
		router.Config{HistoryLimit: router.Off})
	nc := dialRaw(t, ts.addr)
	nc.Write([]byte{'M', 0, 0}) // a slowloris header that never completes
	expectClosed(t, nc)
	ts.log.waitFor(t, "reason=join-timeout")
}

// A join frame that is still arriving is not cut by the join timeout (a big
// resync on a slow link takes longer), but one that stopped arriving is.
func TestJoinFrameStillArrivingOutlivesTheJoinTimeoutOneThatStoppedDoesNot(t *testing.T) {
	ts := startServer(t, Config{Keys: sharedKeys, JoinTimeout: 300 * time.Millisecond}, router.Config{HistoryLimit: router.Off})
	slow := dialRaw(t, ts.addr)
	k := sharedKeys.ClientKey(localAddrPort(slow), "slow", "ch")
	f, _ := codec.AppendFrame(nil, k, codec.Triplet{UID: "slow", Channel: "ch", Message: make([]byte, 64<<10)})
	stopped := dialRaw(t, ts.addr)
	stopped.Write(f[:4096]) // then nothing
	began := time.Now()
	for i := 0; i < len(f); i += 4 << 10 { // 1.6 s for the whole frame, 40 KiB/s
		if _, err := slow.Write(f[i:min(i+4<<10, len(f))]); err != nil {
			t.Fatalf("the still-arriving join was closed after %v: %v\n%s", time.Since(began), err, ts.log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	ts.waitJoins(t, 1)
	expectClosed(t, stopped)
	ts.log.waitFor(t, "reason=join-timeout")
	if n := ts.srv.Stats().ClosedByRule["join-timeout"]; n != 1 {
		t.Fatalf("%d join-timeout closes, want 1 (the stopped one)", n)
	}
}
