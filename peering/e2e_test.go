package peering_test

// End-to-end tests of server peering (issue 3): several mlesd processes on
// loopback linked by --peer, with plain Mles clients on each. Every client
// sends numbered frames; each test checks that every other client gets each
// of them exactly once and in the sender's order, that no sender gets its own
// frames back, and that nothing more arrives in a short quiet window. Waits
// are bounded; the servers' uplink gauge (--metrics) and logs say when links
// are up or gone.

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mlesd/mlesd/internal/mlestest"
)

const frames = 200 // data frames per sender in the delivery tests

// Two servers, two clients on each, one channel.
func TestPeeringTwoServers(t *testing.T) {
	for _, tc := range []struct {
		name         string
		argsA, argsB func(a, b string) []string // given the other server's address
	}{
		{"B peers A", nil, func(a, _ string) []string { return []string{"--peer", a} }},
		{"A peers B", func(_, b string) []string { return []string{"--peer", b} }, nil},
		// Each peers the other: a ring of two, which only a static CID keeps
		// from looping (one of the two links is refused).
		{"each peers the other with one --cid",
			func(_, b string) []string { return []string{"--peer", b, "--cid", "0badc0de"} },
			func(a, _ string) []string { return []string{"--peer", a, "--cid", "0badc0de"} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Addresses first: a server's --peer may name one not started yet.
			addrA := staticAddr(t, "127.0.0.1")
			addrB := staticAddr(t, "127.0.0.1")
			args := func(own string, f func(a, b string) []string) []string {
				out := []string{"--listen", own}
				if f != nil {
					out = append(out, f(addrA, addrB)...)
				}
				return out
			}
			A := startServer(t, "A", sharedEnv, args(addrA, tc.argsA)...)
			B := startServer(t, "B", sharedEnv, args(addrB, tc.argsB)...)
			clients := []*client{
				join(t, A.Addr, "a1", "two"), join(t, A.Addr, "a2", "two"),
				join(t, B.Addr, "b1", "two"), join(t, B.Addr, "b2", "two"),
			}
			meshSync(t, clients...)
			sent := ledger{}
			sent.send(t, 0, frames, clients...)
			sent.deliver(t, 20*time.Second, clients...)
		})
	}
}

// Peering over IPv6 loopback, and with address-based keys (no MLES_KEY):
// the uplink must rekey its join for its own local address.
func TestPeeringIPv6AndAddressKeys(t *testing.T) {
	for _, tc := range []struct {
		name     string
		ipv6     bool
		addrKeys bool
	}{
		{"IPv6 shared key", true, false},
		{"IPv6 address keys", true, true},
		{"IPv4 address keys", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var addrA, addrB string
			if tc.ipv6 {
				addrA = staticAddr(t, "::1")
				addrB = staticAddr(t, "::1")
			} else {
				addrA = staticAddr(t, "127.0.0.1")
				addrB = staticAddr(t, "127.0.0.1")
			}
			env, joinFn := sharedEnv, join
			if tc.addrKeys {
				env, joinFn = addrEnv, joinAddrKey
			}
			startServer(t, "A", env, "--listen", addrA)
			startServer(t, "B", env, "--listen", addrB, "--peer", addrA)
			clients := []*client{
				joinFn(t, addrA, "a1", "six"), joinFn(t, addrA, "a2", "six"),
				joinFn(t, addrB, "b1", "six"), joinFn(t, addrB, "b2", "six"),
			}
			meshSync(t, clients...)
			sent := ledger{}
			sent.send(t, 0, frames, clients...)
			sent.deliver(t, 20*time.Second, clients...)
		})
	}
}

// Three and four servers: a chain A—B—C (B peers A, C peers B) and a star
// (A, B and C each peer D), one client on each server.
func TestPeeringChainAndStar(t *testing.T) {
	t.Run("chain", func(t *testing.T) {
		A := startServer(t, "A", sharedEnv)
		B := startServer(t, "B", sharedEnv, "--peer", A.Addr)
		C := startServer(t, "C", sharedEnv, "--peer", B.Addr)
		clients := []*client{join(t, A.Addr, "a", "chain"), join(t, B.Addr, "b", "chain"), join(t, C.Addr, "c", "chain")}
		meshSync(t, clients...)
		sent := ledger{}
		sent.send(t, 0, frames, clients...)
		sent.deliver(t, 20*time.Second, clients...)
	})
	t.Run("star", func(t *testing.T) {
		D := startServer(t, "D", sharedEnv)
		A := startServer(t, "A", sharedEnv, "--peer", D.Addr)
		B := startServer(t, "B", sharedEnv, "--peer", D.Addr)
		C := startServer(t, "C", sharedEnv, "--peer", D.Addr)
		clients := []*client{join(t, A.Addr, "a", "star"), join(t, B.Addr, "b", "star"),
			join(t, C.Addr, "c", "star"), join(t, D.Addr, "d", "star")}
		meshSync(t, clients...)
		sent := ledger{}
		sent.send(t, 0, frames, clients...)
		sent.deliver(t, 20*time.Second, clients...)
	})
}

// A ring of three with one static CID: A peers B, B peers C, C peers A. One
// link is refused, the others form a chain; exactly-once delivery. Then the
// middle of the chain is SIGKILLed: the refused link must now be accepted,
// and the survivors exchange frames (those sent during the outage included)
// exactly once, with no frame from before replayed to them again.
func TestPeeringRingWithStaticCID(t *testing.T) {
	names := []string{"A", "B", "C"}
	addrs := make([]string, 3)
	for i := range addrs {
		addrs[i] = staticAddr(t, "127.0.0.1")
	}
	servers := make([]*server, 3)
	for i := range servers {
		servers[i] = startServer(t, names[i], sharedEnv, "--listen", addrs[i], "--peer", addrs[(i+1)%3],
			"--cid", "0badc0de", "--history-limit", "5000")
	}
	clients := make([]*client, 3)
	for i, s := range servers {
		clients[i] = join(t, s.Addr, strings.ToLower(names[i]), "ring")
	}
	meshSync(t, clients...)
	retries := func() []int {
		n := make([]int, 3)
		for i, s := range servers {
			n[i] = s.countLog(`msg="peer uplink retry"`)
		}
		return n
	}
	before, since := retries(), time.Now()
	sent := ledger{}
	sent.send(t, 0, frames, clients...)
	sent.deliver(t, 20*time.Second, clients...)

	// The refused link is the one still retrying (at least every
	// backoffMax); the links of the chain never go down.
	for time.Since(since) < 3*backoffMax {
		time.Sleep(50 * time.Millisecond)
	}
	after := retries()
	refused := -1
	for i := range servers {
		if after[i] > before[i] {
			if refused >= 0 {
				t.Fatalf("uplinks of %s and %s both kept retrying after the chain formed (retry lines before %v, after %v): want exactly one refused link",
					names[refused], names[i], before, after)
			}
			refused = i
		}
	}
	if refused < 0 {
		t.Fatalf("no uplink retried in %v after the chain formed (retry lines %v): want exactly one refused link", time.Since(since), after)
	}
	for i, s := range servers {
		if i != refused {
			if n := s.countLog(`msg="peer uplink up"`); n == 0 {
				t.Fatalf("%s's uplink is part of the chain but %s never logged \"peer uplink up\"", names[i], names[i])
			}
		}
	}
	// The middle of the chain is the server that peers the refused one.
	middle := (refused + 2) % 3
	other := (refused + 1) % 3 // the refused one's peer; it peered the middle
	t.Logf("refused link %s→%s; chain %s→%s→%s; killing %s", names[refused], names[other],
		names[other], names[middle], names[refused], names[middle])
	upBefore := servers[refused].countLog(`msg="peer uplink up"`)
	servers[middle].kill(t)
	killed := time.Now()

	// Survivors send at once, before the refused link has been retried.
	survivors := []*client{clients[refused], clients[other]}
	sent.send(t, frames, frames+50, survivors...)
	sent.deliver(t, 10*time.Second, survivors...)
	t.Logf("survivors exchanged their frames %v after the kill (quiet window included)", time.Since(killed).Round(time.Millisecond))
	servers[refused].waitLogCount(t, upBefore+1, 5*time.Second, `msg="peer uplink up"`)
	sent.send(t, frames+50, frames+100, survivors...)
	sent.deliver(t, 10*time.Second, survivors...)
	servers[other].waitLogCount(t, 1, 5*time.Second, `msg="peer uplink down"`)
}

// A peers B. B is SIGKILLed and restarted empty on the same address while
// a1 on A keeps sending: once A's uplink is back, a new joiner on B gets the
// whole history (before and during the outage) once, in order, and A's
// clients get nothing again.
func TestPeeringRestartedPeerIsRefilled(t *testing.T) {
	addrB := staticAddr(t, "127.0.0.1")
	argsB := []string{"--listen", addrB, "--history-limit", "1000"}
	B := startServer(t, "B", sharedEnv, argsB...)
	A := startServer(t, "A", sharedEnv, "--peer", addrB, "--history-limit", "1000")
	a1, a2 := join(t, A.Addr, "a1", "restart"), join(t, A.Addr, "a2", "restart")
	b1 := join(t, B.Addr, "b1", "restart")
	meshSync(t, a1, a2, b1)
	sent := ledger{}
	sent.send(t, 0, 30, a1, b1)
	sent.deliver(t, 10*time.Second, a1, a2, b1)
	A.waitUp(t, 1)

	B.kill(t)
	A.waitUp(t, 0)
	A.waitLogCount(t, 1, 5*time.Second, `msg="peer uplink down"`)
	sent.send(t, 30, 60, a1) // while B is down
	sent.deliver(t, 10*time.Second, a2)

	startServer(t, "B (restarted)", sharedEnv, argsB...)
	A.waitLogCount(t, 2, 10*time.Second, `msg="peer uplink up"`)
	A.waitUp(t, 1)
	b2 := join(t, addrB, "b2", "restart")
	// b2 gets all of a1's 60 frames and b1's 30 from B's history, refilled
	// by A's resync; a1 and a2 get nothing they had.
	sent.deliver(t, 10*time.Second, a1, a2, b2)

	// The link works both ways after the restart.
	sent.send(t, 60, 90, a1, b2)
	sent.deliver(t, 10*time.Second, a1, a2, b2)
}

// A peers B through a relay; the relay cuts the link (both servers stay up)
// and refuses reconnects for a while. Both sides send during the cut; after
// the relay lets A's uplink reconnect, every client has every frame once.
func TestPeeringCutLinkResyncs(t *testing.T) {
	A, r, all := relayedPair(t, "cut", "1000")
	a1, a2, b1, b2 := all[0], all[1], all[2], all[3]
	sent := ledger{}
	sent.send(t, 0, 50, all...)
	sent.deliver(t, 10*time.Second, all...)

	downs := A.countLog(`msg="peer uplink down"`)
	r.Sever(true)
	A.waitLogCount(t, downs+1, 5*time.Second, `msg="peer uplink down"`)
	// Each side sends during the cut and sees its own side's frames.
	sent.send(t, 50, 100, all...)
	onA, onB := ledger{"a1": sent["a1"], "a2": sent["a2"]}, ledger{"b1": sent["b1"], "b2": sent["b2"]}
	waitArrived(t, onA, a1, a2)
	waitArrived(t, onB, b1, b2)
	// Make sure at least one reconnect was refused by the cut.
	A.waitLogCount(t, downs+2, 5*time.Second, `msg="peer uplink down"`)
	ups := A.countLog(`msg="peer uplink up"`)
	r.Heal()
	A.waitLogCount(t, ups+1, 5*time.Second, `msg="peer uplink up"`)
	sent.deliver(t, 10*time.Second, all...)
	sent.send(t, 100, 120, all...)
	sent.deliver(t, 10*time.Second, all...)
}

// relayedPair starts B and A peered to B through a relay, both with the
// given --history-limit, and joins a1, a2 on A and b1, b2 on B to channel
// ch (in that order), synced with each other.
func relayedPair(t *testing.T, ch, history string) (A *server, r *mlestest.Relay, clients []*client) {
	t.Helper()
	B := startServer(t, "B", sharedEnv, "--history-limit", history)
	r = mlestest.StartRelay(t, B.Addr)
	A = startServer(t, "A", sharedEnv, "--peer", r.Addr(), "--history-limit", history)
	clients = []*client{join(t, A.Addr, "a1", ch), join(t, A.Addr, "a2", ch),
		join(t, B.Addr, "b1", ch), join(t, B.Addr, "b2", ch)}
	meshSync(t, clients...)
	return A, r, clients
}

// waitArrived waits (10 s) until the receivers have the frames in l from
// every other sender, without checking for extras (that comes later).
func waitArrived(t *testing.T, l ledger, receivers ...*client) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !l.arrived(receivers) {
		if time.Now().After(deadline) {
			t.Fatalf("frames missing:\n%s", l.status(receivers))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// 200 channels at once: 200 uplinks up, one frame each way per channel,
// then all clients leave; the uplinks close after the linger and both
// servers' descriptors and goroutines return to where they were (idle
// workers of gnet's goroutine pool aside: they expire on their own).
func TestPeeringTwoHundredChannels(t *testing.T) {
	const channels = 200
	B := startServer(t, "B", sharedEnv)
	A := startServer(t, "A", sharedEnv, "--peer", B.Addr)
	// Warm up (the probe's channel gets an uplink too), then measure.
	mlestest.Exchange(t, A.Addr, sharedKey)
	mlestest.Exchange(t, B.Addr, sharedKey)
	A.waitNoUplinks(t)
	baseGoA, baseFDsA := goroutines(t, A), A.FDs(t) // goroutines first: its pprof connection stays open
	baseGoB, baseFDsB := goroutines(t, B), B.FDs(t)

	var as, bs []*client
	for i := range channels {
		as = append(as, join(t, A.Addr, "a", fmt.Sprintf("many-%03d", i)))
	}
	joined := time.Now()
	if m, ok := A.pollUplinks(15*time.Second, func(m map[string]int) bool { return m["up"] == channels }); !ok {
		var closed []string
		for _, c := range as {
			c.mu.Lock()
			if c.readErr != nil {
				closed = append(closed, fmt.Sprintf("%s (%v)", c.Ch, c.readErr))
			}
			c.mu.Unlock()
		}
		t.Fatalf("A's uplinks never %d up in 15 s: last scrape %v; %d of A's own clients were closed by A: %v\n"+
			"A's log lines on closed connections:\n%s", channels, m, len(closed), closed, grepLines(A.Log(), "connection closed by server"))
	}
	t.Logf("%d uplinks up %v after the first join", channels, time.Since(joined).Round(time.Millisecond))
	for i := range channels {
		bs = append(bs, join(t, B.Addr, "b", fmt.Sprintf("many-%03d", i)))
	}
	for i := range channels {
		if err := as[i].Send(dataMsg("a", 0)); err != nil {
			t.Fatal(err)
		}
		if err := bs[i].Send(dataMsg("b", 0)); err != nil {
			t.Fatal(err)
		}
	}
	sent := ledger{"a": {0}, "b": {0}}
	deadline := time.Now().Add(20 * time.Second)
	for i := range channels {
		for !sent.arrived([]*client{as[i], bs[i]}) {
			if time.Now().After(deadline) {
				t.Fatalf("channel many-%03d: frames missing:\n%s", i, sent.status([]*client{as[i], bs[i]}))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	time.Sleep(quiet)
	for i := range channels {
		sent.exact(t, as[i], bs[i])
	}
	if m, _, err := A.uplinks(); err != nil || m["up"] != channels {
		t.Fatalf("A's uplinks: %v (%v), want %d up", m, err, channels)
	}
	t.Logf("fds A %d→%d, B %d→%d; goroutines A %d→%d, B %d→%d (baseline→with %d channels)",
		baseFDsA, A.FDs(t), baseFDsB, B.FDs(t), baseGoA, goroutines(t, A), baseGoB, goroutines(t, B), channels)

	for i := range channels {
		as[i].NC.Close()
		bs[i].NC.Close()
	}
	closed := time.Now()
	A.waitNoUplinks(t)
	t.Logf("A's uplinks all gone %v after the clients left", time.Since(closed).Round(time.Millisecond))
	if got := A.countLog(`msg="peer uplink closed"`); got < channels {
		t.Errorf("A logged %d \"peer uplink closed\", want at least %d", got, channels)
	}
	mlestest.Settle(t, "A's open fds", baseFDsA+2, func() int { return A.FDs(t) })
	// gnet's worker pool keeps idle workers for 10-20 s (ants ExpiryDuration);
	// they are not counted: goroutines() leaves them out.
	mlestest.Settle(t, "A's goroutines (gnet pool workers left out)", baseGoA+2, func() int { return goroutines(t, A) })
	mlestest.Settle(t, "B's open fds", baseFDsB+2, func() int { return B.FDs(t) })
	mlestest.Settle(t, "B's goroutines (gnet pool workers left out)", baseGoB+2, func() int { return goroutines(t, B) })
	if !A.Alive() || !B.Alive() {
		t.Fatal("a server died")
	}
}

// A peers B, but B has another shared key and refuses A's uplink: A retries
// with growing waits up to the cap, stays up, and its own clients keep
// exchanging frames.
func TestPeeringRefusingPeer(t *testing.T) {
	B := startServer(t, "B", []string{"MLES_KEY=some-other-key", "MLESD_KEY="})
	A := startServer(t, "A", sharedEnv, "--peer", B.Addr)
	a1, a2 := join(t, A.Addr, "a1", "refused"), join(t, A.Addr, "a2", "refused")
	meshSync(t, a1, a2)
	sent := ledger{}
	sent.send(t, 0, 50, a1, a2)
	sent.deliver(t, 10*time.Second, a1, a2)

	// 100ms, 200ms, 400ms, 400ms, 400ms: about 1.5 s.
	A.waitLogCount(t, 5, 10*time.Second, `msg="peer uplink retry"`, "channel=refused")
	waits := A.retryWaits(t, "refused")
	t.Logf("retry waits: %v", waits)
	// The wait doubles after each failure up to the cap; peering/doc.go adds
	// ±20 % jitter (so that a group does not retry in step).
	for i, w := range waits {
		want := min(backoff<<i, backoffMax)
		lo, hi := want*8/10-time.Millisecond, want*12/10+time.Millisecond
		if w < lo || w > hi {
			t.Errorf("retry %d waited %v, want %v ±20 %% (first %v, doubled after each failure, at most %v); all: %v",
				i, w, want, backoff, backoffMax, waits)
		}
	}
	if n := A.countLog(`msg="peer uplink down"`, "reason="); n == 0 {
		t.Errorf("A never logged \"peer uplink down\" with a reason")
	}
	sent.send(t, 50, 100, a1, a2)
	sent.deliver(t, 10*time.Second, a1, a2)
	if !A.Alive() {
		t.Fatal("A died")
	}
	if m, _, err := A.uplinks(); err != nil || total(m) != 1 || m["up"] > 1 {
		t.Fatalf("A's uplinks: %v (%v), want one (for its one channel)", m, err)
	}
}

// A keeps no history (--history-limit 0), its peer B does. When A's uplink
// reconnects, B replays its history down it; A recognises the frames that
// crossed the link before from the uplink's own log, so its clients get
// nothing twice.
func TestPeeringReconnectWithoutLocalHistoryHasNoDuplicates(t *testing.T) {
	B := startServer(t, "B", sharedEnv)
	r := mlestest.StartRelay(t, B.Addr)
	A := startServer(t, "A", sharedEnv, "--peer", r.Addr(), "--history-limit", "0")
	a1, a2 := join(t, A.Addr, "a1", "nohist"), join(t, A.Addr, "a2", "nohist")
	b1 := join(t, B.Addr, "b1", "nohist")
	all := []*client{a1, a2, b1}
	meshSync(t, all...)
	sent := ledger{}
	sent.send(t, 0, 40, all...)
	sent.deliver(t, 10*time.Second, all...)

	downs, ups := A.countLog(`msg="peer uplink down"`), A.countLog(`msg="peer uplink up"`)
	r.Sever(false)
	A.waitLogCount(t, downs+1, 5*time.Second, `msg="peer uplink down"`)
	A.waitLogCount(t, ups+1, 5*time.Second, `msg="peer uplink up"`)
	// B replayed up to 100 frames of its history to the new uplink: none of
	// them may reach a1 or a2 again.
	sent.send(t, 40, 60, all...)
	sent.deliver(t, 10*time.Second, all...)
}

// The link between A and B is cut three times while clients on both sides
// keep publishing: frames in flight when a cut happens, sent during it, and
// replayed either way after it all reach every client exactly once (each
// server's history is large enough to cover the cuts).
func TestPeeringCutsUnderTraffic(t *testing.T) {
	A, r, all := relayedPair(t, "cuts", "5000")

	const n = 1200 // per sender, about one every 2 ms: 2.4 s of traffic
	var wg sync.WaitGroup
	errs := make(chan error, len(all))
	for _, c := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(2 * time.Millisecond)
			defer tick.Stop()
			for seq := uint32(0); seq < n; seq++ {
				<-tick.C
				if err := c.Send(dataMsg(c.UID, seq)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	ups := A.countLog(`msg="peer uplink up"`)
	for cut := 1; cut <= 3; cut++ {
		time.Sleep(500 * time.Millisecond)
		r.Sever(false) // reconnects are let through: the back-off decides
		A.waitLogCount(t, ups+cut, 10*time.Second, `msg="peer uplink up"`)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	sent := ledger{}
	for _, c := range all {
		for seq := uint32(0); seq < n; seq++ {
			sent[c.UID] = append(sent[c.UID], seq)
		}
	}
	sent.deliver(t, 20*time.Second, all...)
}

// Members that vanish with a reset while frames are being written to them
// (the server's write fails before it reads the reset) still count as gone:
// once the last member has left, the channel's uplink closes.
func TestPeeringUplinkClosesAfterMembersResetMidWrite(t *testing.T) {
	B := startServer(t, "B", sharedEnv)
	A := startServer(t, "A", sharedEnv, "--peer", B.Addr)
	pub := join(t, A.Addr, "pub", "resets")
	var subs []*client
	for i := range 30 {
		subs = append(subs, join(t, A.Addr, fmt.Sprintf("sub%02d", i), "resets"))
	}
	A.waitUp(t, 1)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // a steady stream, so that writes to the subscribers are in flight
		defer close(done)
		for seq := uint32(0); ; seq++ {
			select {
			case <-stop:
				return
			default:
			}
			if pub.Send(dataMsg("pub", seq)) != nil {
				return
			}
			time.Sleep(200 * time.Microsecond)
		}
	}()
	for _, s := range subs {
		time.Sleep(10 * time.Millisecond)
		_ = s.NC.(*net.TCPConn).SetLinger(0) // close sends a reset
		s.NC.Close()
	}
	close(stop)
	<-done
	pub.NC.Close()
	A.waitNoUplinks(t)
}
