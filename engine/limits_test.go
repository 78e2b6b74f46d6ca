package engine

import (
	"strings"
	"testing"
	"time"

	"github.com/mlesd/mlesd/router"
)

// Each limit: hitting it closes only the offending connection, logs the
// reason, counts it, and leaves well-behaved clients working.

func checkOthersWork(t *testing.T, ts *testServer) {
	t.Helper()
	ch := "probe-" + t.Name()
	a := ts.join(t, sharedKeys, "probe-a", ch, nil)
	b := ts.join(t, sharedKeys, "probe-b", ch, nil)
	a.expect(b.frame(nil))
	b.expect(a.send([]byte("still served")))
}

// waitAccepted waits until the server has accepted n connections.
func (ts *testServer) waitAccepted(t *testing.T, n uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for ts.srv.Stats().Accepted < n {
		if time.Now().After(deadline) {
			t.Fatalf("server accepted %d connections, want %d", ts.srv.Stats().Accepted, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestMaxConnsRefusesTheConnectionOverTheLimit(t *testing.T) {
	ts := startServer(t, Config{Keys: sharedKeys, MaxConns: 3}, router.Config{HistoryLimit: router.Off})
	a := ts.join(t, sharedKeys, "a", "ch", nil)
	b := ts.join(t, sharedKeys, "b", "ch", nil)
	a.expect(b.frame(nil))
	dialRaw(t, ts.addr)         // third: allowed
	ts.waitAccepted(t, 3)       // the server counted it before the fourth arrives
	over := dialRaw(t, ts.addr) // fourth: over the limit
	expectClosed(t, over)
	ts.log.waitFor(t, "reason=max-conns")
	b.expect(a.send([]byte("existing clients unaffected")))
	if ts.srv.Stats().ClosedByRule["max-conns"] != 1 {
		t.Fatal("max-conns refusal not counted")
	}
}

func TestMaxConnsPerIP(t *testing.T) {
	ts := startServer(t, Config{Keys: sharedKeys, MaxConnsPerIP: 2, LimitLoopback: true}, router.Config{HistoryLimit: router.Off})
	dialRaw(t, ts.addr)
	dialRaw(t, ts.addr)
	ts.waitAccepted(t, 2) // the server saw both before the third arrives
	over := dialRaw(t, ts.addr)
	expectClosed(t, over)
	ts.log.waitFor(t, "reason=max-conns-per-ip")
}

func TestJoinTimeoutClosesASilentConnection(t *testing.T) {
	ts := startServer(t, Config{Keys: sharedKeys, JoinTimeout: 300 * time.Millisecond}, router.Config{HistoryLimit: router.Off})
	nc := dialRaw(t, ts.addr) // sends nothing at all
	expectClosed(t, nc)
	ts.log.waitFor(t, "reason=join-timeout")
	checkOthersWork(t, ts)
}

func TestIdleTimeoutClosesJoinedConnectionsThatSendNothing(t *testing.T) {
	ts := startServer(t, Config{Keys: sharedKeys, IdleTimeout: 300 * time.Millisecond}, router.Config{HistoryLimit: router.Off})
	idle := ts.join(t, sharedKeys, "idle", "ch", nil)
	expectClosed(t, idle.nc)
	ts.log.waitFor(t, "reason=idle-timeout")
}

func TestNameLengthLimits(t *testing.T) {
	ts := startServer(t, Config{Keys: sharedKeys, MaxUIDLen: 8, MaxChannelLen: 8}, router.Config{HistoryLimit: router.Off})
	long := strings.Repeat("x", 9)
	u := ts.join(t, sharedKeys, long, "ch", nil)
	expectClosed(t, u.nc)
	ts.log.waitFor(t, "reason=uid-too-long")
	c := ts.join(t, sharedKeys, "u", long, nil)
	expectClosed(t, c.nc)
	ts.log.waitFor(t, "reason=channel-too-long")
	ok := ts.join(t, sharedKeys, "eightchr", "eightchr", nil)
	ok.expectNothing(100 * time.Millisecond) // joined and open
}

func TestMaxChannels(t *testing.T) {
	ts := startServer(t, Config{Keys: sharedKeys}, router.Config{MaxChannels: 1, HistoryLimit: router.Off})
	a := ts.join(t, sharedKeys, "a", "one", nil)
	b := ts.join(t, sharedKeys, "b", "two", nil)
	expectClosed(t, b.nc)
	ts.log.waitFor(t, "reason=too-many-channels")
	c := ts.join(t, sharedKeys, "c", "one", nil) // the existing channel still takes joins
	a.expect(c.frame(nil))
}

func TestPartialBudgetWithOnlySmallHoldersClosesTheConnectionThatPassesIt(t *testing.T) {
	ts := startServer(t, Config{Keys: sharedKeys, MaxPartialBytes: 64 << 10, JoinTimeout: -1}, router.Config{HistoryLimit: router.Off})
	// One client declares a 16 MiB frame and sends 48 KiB of it: within budget.
	first := dialRaw(t, ts.addr)
	first.Write(append(rawHeader('M', 0xFFFFFF, 1), make([]byte, 48<<10)...))
	time.Sleep(100 * time.Millisecond)
	// A second one pushes the total past 64 KiB: it is closed, the first is not.
	second := dialRaw(t, ts.addr)
	second.Write(append(rawHeader('M', 0xFFFFFF, 1), make([]byte, 32<<10)...))
	expectClosed(t, second)
	ts.log.waitFor(t, "reason=partial-budget")
	if n := ts.srv.partialBytes.Load(); n < 48<<10 || n > 64<<10 {
		t.Fatalf("partial bytes counted %d, want the first client's ~48 KiB", n)
	}
	first.Close()
	deadline := time.Now().Add(5 * time.Second)
	for ts.srv.partialBytes.Load() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := ts.srv.partialBytes.Load(); n != 0 {
		t.Fatalf("partial bytes %d after every sender left, want 0", n)
	}
	checkOthersWork(t, ts)
}

// The frame-count bound holds even when the byte bound is far away: a
// receiver that does not read costs at most MaxPendingFrames references.
func TestPendingFrameCountBoundsAStalledReceiver(t *testing.T) {
	ts := startServer(t, Config{Keys: sharedKeys, MaxPendingFrames: 64, MaxPending: 64 << 20}, router.Config{HistoryLimit: router.Off})
	staller := ts.join(t, sharedKeys, "staller", "ch", nil)
	_ = staller.nc.(interface{ SetReadBuffer(int) error }).SetReadBuffer(4096)
	pub := ts.join(t, sharedKeys, "pub", "ch", nil)
	msg := make([]byte, 64)
	// Far more than the socket buffers hold: 64-byte frames, 60,000 of them.
	var burst []byte
	for i := 0; i < 60_000; i++ {
		burst = append(burst, pub.frame(msg)...)
		if len(burst) > 256<<10 {
			pub.write(burst)
			burst = burst[:0]
		}
	}
	pub.write(burst)
	ts.log.waitFor(t, "receiver is not keeping up")
	deadline := time.Now().Add(5 * time.Second)
	for ts.srv.Stats().Dropped == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if ts.srv.Stats().Dropped == 0 {
		t.Fatal("no frames dropped although the staller's backlog passed 64 frames")
	}
}
