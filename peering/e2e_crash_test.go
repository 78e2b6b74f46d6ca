package peering_test

// A server that crashes and restarts empty while its peer keeps running
// (issue 11): its peer's resync then brings back frames the restarted
// server no longer holds, some older than frames its clients have sent it
// since. What a client on the restarted server may see: each sender's
// frames at most once and in the sender's order, never its own; the
// frames sent on the peer's side during the outage, once; and a late
// joiner gets what the restarted server's own clients sent it (see the
// package doc, "Restarts").

import (
	"testing"
	"time"

	"github.com/mlesd/mlesd/internal/mlestest"
)

// crashedPair starts A (history limit hist) and B --peer A through a relay,
// joins a1, a2 on A and b1 on B to channel ch, has each send 0..sent and
// checks delivery; then cuts the relay, SIGKILLs A, lets b1 send
// sent..sent+outage while A is down, and restarts A empty on the same
// address with the relay still cut, so that the test decides when B's
// uplink (and its resync) come back.
func crashedPair(t *testing.T, ch, hist string, sent, outage uint32) (A *server, r *mlestest.Relay, b1 *client, l ledger) {
	t.Helper()
	addrA := staticAddr(t, "127.0.0.1")
	argsA := []string{"--listen", addrA, "--history-limit", hist}
	A = startServer(t, "A", sharedEnv, argsA...)
	r = mlestest.StartRelay(t, addrA)
	B := startServer(t, "B", sharedEnv, "--peer", r.Addr(), "--history-limit", hist)
	a1, a2 := join(t, addrA, "a1", ch), join(t, addrA, "a2", ch)
	b1 = join(t, B.Addr, "b1", ch)
	meshSync(t, a1, a2, b1)
	l = ledger{}
	l.send(t, 0, sent, a1, a2, b1)
	l.deliver(t, 10*time.Second, a1, a2, b1)

	r.Sever(true)
	B.waitUp(t, 0)
	A.kill(t)
	l.send(t, sent, sent+outage, b1) // B holds them; A is down
	A = startServer(t, "A (restarted)", sharedEnv, argsA...)
	return A, r, b1, l
}

// seqs returns from, from+1, ..., to-1.
func seqs(from, to uint32) []uint32 {
	s := make([]uint32, 0, to-from)
	for i := from; i < to; i++ {
		s = append(s, i)
	}
	return s
}

// B --peer A; A is SIGKILLed and restarted. a1 and a2 reconnect to the
// restarted A and a1 sends on before B's uplink is back. When it is, B's
// resync holds a1's and a2's frames from before the crash: they are older
// than what a1 has sent since, so they go to no one (they only refill A's
// history); b1's frames, which A's clients had none of, reach them once and
// in order, those sent during the outage included. Then every link works
// both ways, exactly once.
func TestPeeringRestartedServerKeepsEverySendersOrder(t *testing.T) {
	const sent, outage = 200, 50
	A, r, b1, l := crashedPair(t, "crash", "1000", sent, outage)
	a1, a2 := join(t, A.Addr, "a1", "crash"), join(t, A.Addr, "a2", "crash")
	newA1 := seqs(sent, sent+5)
	ledger{}.send(t, sent, sent+5, a1)
	waitArrived(t, ledger{"a1": newA1}, a2)
	r.HealAndWaitPiped(t)

	// B's history held all of b1's frames (1000 is room enough): A's
	// clients get them all, once, in order; of a1 and a2 nothing more.
	onA2 := ledger{"a1": newA1, "b1": l["b1"]}
	onA1 := ledger{"b1": l["b1"]}
	onA2.deliver(t, 10*time.Second, a2)
	onA1.deliver(t, 10*time.Second, a1)
	// b1 gets what a1 sent to the restarted A (A's history, replayed down
	// B's new uplink), once.
	l["a1"] = append(l["a1"], newA1...)
	l.deliver(t, 10*time.Second, b1)

	// Live, every way.
	live := ledger{}
	live.send(t, 1000, 1100, a1, a2, b1)
	for _, x := range []ledger{onA2, onA1, l} {
		for uid, s := range live {
			x[uid] = append(x[uid], s...)
		}
	}
	onA1["a2"] = live["a2"]
	onA2.deliver(t, 10*time.Second, a2)
	onA1.deliver(t, 10*time.Second, a1)
	l.deliver(t, 10*time.Second, b1)
}

// As above with the default history of 100 frames, which B's resync alone
// fills: a client that joins the restarted A after the resync still gets
// the frames a1 sent to A before it (history keeps a server's own newest
// frames; a resync's older frames only fill the room left), and b1's
// frames from the outage, each once and in order.
func TestPeeringRestartedServerKeepsItsNewestFramesInHistory(t *testing.T) {
	const sent, outage = 60, 20
	A, r, b1, l := crashedPair(t, "crash100", "100", sent, outage)
	a1, a2 := join(t, A.Addr, "a1", "crash100"), join(t, A.Addr, "a2", "crash100")
	newA1 := seqs(sent, sent+5)
	ledger{}.send(t, sent, sent+5, a1)
	waitArrived(t, ledger{"a1": newA1}, a2)
	r.HealAndWaitPiped(t)
	// b1 gets a1's new frames once A's history came down B's new uplink;
	// by then A has merged B's resync.
	l["a1"] = append(l["a1"], newA1...)
	l.deliver(t, 10*time.Second, b1)
	waitArrived(t, ledger{"b1": seqs(sent, sent+outage)}, a2)

	late := join(t, A.Addr, "late", "crash100")
	// The history replay is done when a frame sent after the join arrives.
	ledger{}.send(t, 2000, 2001, a2)
	late.waitFrame(t, "a2", 2000)
	late.mu.Lock()
	gotA1, gotB1 := append([]uint32(nil), late.data["a1"]...), append([]uint32(nil), late.data["b1"]...)
	late.mu.Unlock()
	if !hasSuffix(gotA1, newA1) {
		t.Errorf("late joiner got %v from a1: want it to end with what a1 sent to the restarted A, %v", gotA1, newA1)
	}
	if !increasing(gotA1) || !increasing(gotB1) {
		t.Errorf("late joiner's history is out of order: from a1 %v, from b1 %v", gotA1, gotB1)
	}
	if !hasSuffix(gotB1, seqs(sent, sent+outage)) {
		t.Errorf("late joiner got %v from b1: want it to end with b1's frames from the outage", gotB1)
	}
	late.mu.Lock()
	for _, p := range late.problems {
		t.Errorf("late: %s", p)
	}
	late.mu.Unlock()
}

func hasSuffix(got, want []uint32) bool {
	return len(got) >= len(want) && firstDiff(got[len(got)-len(want):], want) < 0
}

func increasing(s []uint32) bool {
	for i := 1; i < len(s); i++ {
		if s[i] <= s[i-1] {
			return false
		}
	}
	return true
}

// waitFrame waits (10 s) until c has received uid's data frame seq.
func (c *client) waitFrame(t *testing.T, uid string, seq uint32) {
	t.Helper()
	k := uid + "\x00" + string(dataMsg(uid, seq))
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.mu.Lock()
		n := c.seen[k]
		c.mu.Unlock()
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never got %s's frame %d", c.UID, uid, seq)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The other way round: A --peer B (through a relay), and A, the server
// with the uplink, is SIGKILLed and restarted. When its new uplink joins B,
// B replays its history down it: a1's and a2's frames from before the
// crash, older than what a1 has sent the restarted A since. They must not
// reach a1 or a2 (the replay is history, and its senders are here); b1's
// frames, which they had none of since the restart, reach them once and
// in order.
func TestPeeringRestartedUplinkServerKeepsEverySendersOrder(t *testing.T) {
	const sent, outage = 200, 50
	addrA := staticAddr(t, "127.0.0.1")
	B := startServer(t, "B", sharedEnv, "--history-limit", "1000")
	r := mlestest.StartRelay(t, B.Addr)
	argsA := []string{"--listen", addrA, "--peer", r.Addr(), "--history-limit", "1000"}
	A := startServer(t, "A", sharedEnv, argsA...)
	a1, a2 := join(t, addrA, "a1", "upcrash"), join(t, addrA, "a2", "upcrash")
	b1 := join(t, B.Addr, "b1", "upcrash")
	meshSync(t, a1, a2, b1)
	l := ledger{}
	l.send(t, 0, sent, a1, a2, b1)
	l.deliver(t, 10*time.Second, a1, a2, b1)

	r.Sever(true)
	A.waitUp(t, 0)
	A.kill(t)
	l.send(t, sent, sent+outage, b1)
	A = startServer(t, "A (restarted)", sharedEnv, argsA...)
	a1, a2 = join(t, A.Addr, "a1", "upcrash"), join(t, A.Addr, "a2", "upcrash")
	newA1 := seqs(sent, sent+5)
	ledger{}.send(t, sent, sent+5, a1)
	waitArrived(t, ledger{"a1": newA1}, a2)
	r.HealAndWaitPiped(t)

	onA2 := ledger{"a1": newA1, "b1": l["b1"]}
	onA1 := ledger{"b1": l["b1"]}
	onA2.deliver(t, 10*time.Second, a2)
	onA1.deliver(t, 10*time.Second, a1)
	l["a1"] = append(l["a1"], newA1...)
	l.deliver(t, 10*time.Second, b1)

	live := ledger{}
	live.send(t, 1000, 1100, a1, a2, b1)
	for _, x := range []ledger{onA2, onA1, l} {
		for uid, s := range live {
			x[uid] = append(x[uid], s...)
		}
	}
	onA1["a2"] = live["a2"]
	onA2.deliver(t, 10*time.Second, a2)
	onA1.deliver(t, 10*time.Second, a1)
	l.deliver(t, 10*time.Second, b1)
}
