package engine

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/mlesd/mlesd/router"
	"github.com/mlesd/mlesd/upgrade"
)

// transferOf is what the new process would receive for ex (the wire is
// package upgrade's; here the two servers share a process).
func transferOf(t *testing.T, ex *Export) *upgrade.Transfer {
	t.Helper()
	tr := &upgrade.Transfer{Totals: ex.Totals}
	for _, m := range ex.Conns {
		fd, err := m.SocketFD()
		if err != nil {
			t.Fatal(err)
		}
		f := os.NewFile(uintptr(fd), "moved-conn")
		tr.Conns = append(tr.Conns, &upgrade.ConnIn{State: m.State, File: f, Owed: m.Owed, Partial: m.State.Partial})
	}
	for _, ch := range ex.Channels {
		frames, err := upgrade.SplitFrames(ch.History)
		if err != nil {
			t.Fatal(err)
		}
		tr.Channels = append(tr.Channels, &upgrade.ChannelIn{State: ch.State, History: frames})
	}
	return tr
}

// handOver moves what old exported (ex) to nw as an upgrade does: old
// releases it, the bytes that arrived meanwhile are appended, and nw
// imports it (adopt: its uplinks' owner). It returns how many connections
// nw took.
func handOver(t *testing.T, old, nw *testServer, ex *Export, adopt AdoptUplinks) int {
	t.Helper()
	tr := transferOf(t, ex)
	sent := map[uint64]bool{}
	for _, c := range tr.Conns {
		sent[c.State.ID] = true
	}
	late, err := old.srv.Release(sent, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range tr.Conns {
		c.Partial = append(c.Partial, late[c.State.ID]...)
	}
	n, err := nw.srv.Import(tr, 5*time.Second, adopt)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// One server hands its connections to another in the same process:
// members keep exchanging frames, a half frame is finished whole, a
// joiner gets the history, and every frame arrives once. Run with
// -race, it covers the freeze, export, release and import paths.
func TestExportAndImportBetweenTwoServers(t *testing.T) {
	old := startServer(t, Config{Keys: sharedKeys}, router.Config{})
	nw := startServer(t, Config{Keys: sharedKeys}, router.Config{})
	a := old.join(t, sharedKeys, "a", "moving", nil)
	b := old.join(t, sharedKeys, "b", "moving", nil)
	a.expect(b.frame(nil))
	kept := a.send([]byte("kept in history"))
	b.expect(kept)
	// A frame sent just before the freeze reaches a once: by the old
	// server, or as owed bytes by the new one.
	owed := b.send([]byte("in flight"))
	half := b.frame([]byte("half before, half after"))
	b.write(half[:20])

	if err := old.srv.Freeze(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	ex, err := old.srv.Export(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(ex.Conns) != 2 {
		t.Fatalf("exported %d connections, want 2", len(ex.Conns))
	}
	if n := handOver(t, old, nw, ex, nil); n != 2 {
		t.Fatalf("imported %d of 2", n)
	}

	a.expect(owed)
	b.write(half[20:])
	a.expect(half)
	after := a.send([]byte("after"))
	b.expect(after)
	c := nw.join(t, sharedKeys, "c", "moving", nil)
	c.expect(kept) // the history moved
	c.expect(owed)
	c.expect(half)
	c.expect(after)
	if st := old.srv.Stats(); st.OpenConns != 0 || sum(st.ClosedByRule) != 0 {
		t.Fatalf("old server after the release: %d open, closed by rule %v", st.OpenConns, st.ClosedByRule)
	}
	if st := nw.srv.Stats(); st.Joins < 3 || st.FramesIn < 3 {
		t.Fatalf("new server's totals did not carry over: %+v", st)
	}
}

// A freeze that is thawed leaves everything as it was: what arrived
// meanwhile is forwarded at once.
func TestFreezeThenThawServesOn(t *testing.T) {
	ts := startServer(t, Config{Keys: sharedKeys}, router.Config{})
	a := ts.join(t, sharedKeys, "a", "thawed", nil)
	b := ts.join(t, sharedKeys, "b", "thawed", nil)
	a.expect(b.frame(nil))
	if err := ts.srv.Freeze(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.srv.Export(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	f := b.send([]byte("sent while frozen"))
	a.expectNothing(50 * time.Millisecond)
	ts.srv.Thaw()
	a.expect(f)
	b.expect(a.send([]byte("after the thaw")))
	ts.join(t, sharedKeys, "c", "thawed", nil) // the acceptors accept again
}

// The members of a small channel come back on one event loop in the new
// process (as placement put them in the old one), and the channels spread
// over both loops: imported pairs do not cross loops for every frame.
func TestImportedSmallChannelsKeepTheirMembersOnOneLoop(t *testing.T) {
	old := startServer(t, Config{Keys: sharedKeys, Loops: 2}, router.Config{})
	nw := startServer(t, Config{Keys: sharedKeys, Loops: 2}, router.Config{})
	nw.join(t, sharedKeys, "warm", "warm", nil) // the new server's loops have served
	const pairs = 8
	type pair struct{ a, b *client }
	var ps []pair
	for i := 0; i < pairs; i++ {
		ch := fmt.Sprintf("pair%d", i)
		a := old.join(t, sharedKeys, "a"+ch, ch, nil)
		b := old.join(t, sharedKeys, "b"+ch, ch, nil)
		a.expect(b.frame(nil))
		ps = append(ps, pair{a, b})
	}
	if err := old.srv.Freeze(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	ex, err := old.srv.Export(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	tr := transferOf(t, ex)
	sent := map[uint64]bool{}
	for _, c := range tr.Conns {
		sent[c.State.ID] = true
	}
	if _, err := old.srv.Release(sent, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if n, err := nw.srv.Import(tr, 5*time.Second, nil); err != nil || n != 2*pairs {
		t.Fatalf("imported %d of %d: %v", n, 2*pairs, err)
	}
	used := map[int]int{}
	for i, p := range ps {
		la, lb := nw.loopOf(t, p.a.uid), nw.loopOf(t, p.b.uid)
		if la < 0 || la != lb {
			t.Fatalf("pair %d: members on loops %d and %d after the import, want one", i, la, lb)
		}
		used[la]++
		p.b.expect(p.a.send([]byte("after")))
	}
	if len(used) != 2 {
		t.Fatalf("every imported pair on one loop: %v", used)
	}
}

// A handover in rounds: while one round's channel is frozen, exported and
// handed over, the other channel forwards as usual; the second round takes
// the rest; in the new server every member exchanges frames again and a
// joiner gets each channel's history. A joiner while the new server holds
// joins (HoldJoins) is joined only once they are let go.
func TestARoundFreezesItsChannelsWhileTheOthersForward(t *testing.T) {
	old := startServer(t, Config{Keys: sharedKeys, Loops: 2}, router.Config{})
	nw := startServer(t, Config{Keys: sharedKeys, Loops: 2}, router.Config{})
	nw.join(t, sharedKeys, "warm", "warm", nil)
	nw.waitJoins(t, 1)
	members := map[string][2]*client{}
	kept := map[string][]byte{}
	for _, ch := range []string{"one", "two"} {
		a := old.join(t, sharedKeys, ch+"-a", ch, nil)
		b := old.join(t, sharedKeys, ch+"-b", ch, nil)
		a.expect(b.frame(nil))
		kept[ch] = a.send([]byte("history of " + ch))
		b.expect(kept[ch])
		members[ch] = [2]*client{a, b}
	}
	rounds := old.srv.PlanRounds(2)
	if len(rounds) != 2 || len(rounds[0].Channels) != 1 || rounds[0].Conns != 2 {
		t.Fatalf("planned %d rounds, the first of %v (%d members), want 2 of one channel each", len(rounds), rounds[0].Channels, rounds[0].Conns)
	}
	first, second := "one", "two"
	if rounds[0].Channels["two"] {
		first, second = "two", "one"
	}
	nw.srv.HoldJoins(true)
	var joiner *client
	for i, r := range rounds {
		frozen, other := first, second
		if i == 1 {
			frozen = second
		}
		if err := old.srv.FreezeRound(r, 5*time.Second); err != nil {
			t.Fatalf("round %d: %v", i+1, err)
		}
		if err := old.srv.FreezeRound(r, time.Second); err != ErrFrozen {
			t.Fatalf("a second freeze during round %d: %v, want ErrFrozen", i+1, err)
		}
		held := members[frozen][1].send([]byte(fmt.Sprintf("sent in round %d", i+1)))
		members[frozen][0].expectNothing(50 * time.Millisecond)
		if i == 0 {
			// The channel of the next round forwards meanwhile.
			members[other][1].expect(members[other][0].send([]byte("during round 1")))
		}
		ex, err := old.srv.Export(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if len(ex.Conns) != 2 || len(ex.Channels) != 1 || ex.Channels[0].State.Name != frozen {
			t.Fatalf("round %d exported %d connections and %d channels, want 2 and %q alone", i+1, len(ex.Conns), len(ex.Channels), frozen)
		}
		tr := transferOf(t, ex)
		sent := map[uint64]bool{}
		for _, c := range tr.Conns {
			sent[c.State.ID] = true
		}
		late, err := old.srv.ReleaseRound(sent, i == 0, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range tr.Conns {
			c.Partial = append(c.Partial, late[c.State.ID]...)
		}
		if n, err := nw.srv.Import(tr, 5*time.Second, nil); err != nil || n != 2 {
			t.Fatalf("round %d: imported %d of 2: %v", i+1, n, err)
		}
		members[frozen][0].expect(held) // the frame read before the freeze, forwarded by the new server
		if i == 0 {
			// Held: a joiner to the channel still in the old server.
			joinsBefore := nw.srv.Stats().Joins
			joiner = join(t, nw.addr, sharedKeys, "joiner", second, nil)
			members[first][0].expect(members[first][1].send([]byte("moved")))
			joiner.expectNothing(50 * time.Millisecond)
			if n := nw.srv.Stats().Joins; n != joinsBefore {
				t.Fatalf("the new server joined a connection while holding joins (%d joins, %d before)", n, joinsBefore)
			}
			members[second][0].expect(members[second][1].send([]byte("still in the old server")))
		}
	}
	if st := old.srv.Stats(); st.OpenConns != 0 {
		t.Fatalf("old server after both rounds: %d open", st.OpenConns)
	}
	nw.srv.HoldJoins(false)
	joiner.expect(kept[second]) // its channel's history, moved in the second round
	joinerFrame := joiner.frame(nil)
	members[second][0].expect(joinerFrame)
	members[second][1].expect(joinerFrame)
	for _, ch := range []string{"one", "two"} {
		a, b := members[ch][0], members[ch][1]
		b.expect(a.send([]byte("after both rounds")))
		a.expect(b.send([]byte("and back")))
		c := nw.join(t, sharedKeys, "late-"+ch, ch, nil)
		c.expect(kept[ch]) // the history moved with its round
	}
}
