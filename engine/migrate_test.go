package engine

import (
	"fmt"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mlesd/mlesd/router"
)

// The members of small channels end up on one loop whichever loop accepted
// them, small channels are spread over both loops, and frames, history and
// joins flow between members exactly as without the move.
func TestSmallChannelMembersShareALoopAndFramesFlow(t *testing.T) {
	ts := startServer(t, Config{Keys: sharedKeys, Loops: 2}, router.Config{HistoryLimit: 10})
	const pairs = 6
	used := map[int]bool{}
	for i := 0; i < pairs; i++ {
		ch := fmt.Sprintf("pair%d", i)
		a := ts.join(t, sharedKeys, "a"+ch, ch, nil)
		b := ts.join(t, sharedKeys, "b"+ch, ch, nil)
		a.expect(b.frame(nil)) // b's join, forwarded to a
		la, lb := ts.loopOf(t, a.uid), ts.loopOf(t, b.uid)
		if la < 0 || la != lb {
			t.Fatalf("%s: members on loops %d and %d, want one loop", ch, la, lb)
		}
		used[la] = true
		var sent [][]byte
		for k := 0; k < 50; k++ {
			sent = append(sent, a.send([]byte(fmt.Sprintf("%s-%d", ch, k))))
		}
		for _, f := range sent {
			b.expect(f)
		}
		back := b.send([]byte("back"))
		a.expect(back)
		sent = append(sent, back)
		// A third member joins late: it gets the history, in order, then
		// live frames, wherever it was accepted.
		c := ts.join(t, sharedKeys, "c"+ch, ch, nil)
		for _, f := range sent[len(sent)-10:] {
			c.expect(f)
		}
		b.expect(c.frame(nil))
		if lc := ts.loopOf(t, c.uid); lc != la {
			t.Fatalf("%s: third member on loop %d, the others on %d", ch, lc, la)
		}
		f := a.send([]byte("live"))
		b.expect(f)
		c.expect(f)
	}
	if len(used) != 2 {
		t.Fatalf("%d small channels all on one loop: they should spread over both", pairs)
	}
	st := ts.srv.Stats()
	if st.Moved == 0 {
		t.Fatal("no connection was moved, though round robin put every second one on the other loop")
	}
	if st.Joins != 3*pairs || st.OpenConns != 3*pairs || st.Accepted != 3*pairs {
		t.Fatalf("joins %d, open %d, accepted %d: want %d each (a move is not a new connection)",
			st.Joins, st.OpenConns, st.Accepted, 3*pairs)
	}
}

// Past placeMaxMembers a channel's joiners stay where they were accepted,
// so a big channel's fan-out uses both loops.
func TestBigChannelMembersStayOnBothLoops(t *testing.T) {
	ts := startServer(t, Config{Keys: sharedKeys, Loops: 2}, router.Config{HistoryLimit: router.Off})
	var members []*client
	for i := 0; i < 3*placeMaxMembers; i++ {
		members = append(members, ts.join(t, sharedKeys, fmt.Sprintf("m%d", i), "big", nil))
	}
	loops := map[int]int{}
	for _, m := range members {
		loops[ts.loopOf(t, m.uid)]++
	}
	if len(loops) != 2 {
		t.Fatalf("members per loop %v: a big channel should use both loops", loops)
	}
	f := members[0].send([]byte("to all"))
	for _, m := range members[1:] {
		for { // skip the joins of later members
			got, err := m.readFrame(5 * time.Second)
			if err != nil {
				t.Fatalf("%s: %v", m.uid, err)
			}
			if string(got) == string(f) {
				break
			}
		}
	}
}

// A moved connection keeps its place in the per-address limit: while two are
// open a third is refused, and once they close two more are let in (the
// count neither leaked nor went twice).
func TestMovedConnectionsKeepTheirPerAddressCount(t *testing.T) {
	ts := startServer(t, Config{Keys: sharedKeys, Loops: 2, MaxConnsPerIP: 2, LimitLoopback: true}, router.Config{HistoryLimit: router.Off})
	for round := 0; round < 3; round++ {
		a := ts.join(t, sharedKeys, "a", "limited", nil)
		b := ts.join(t, sharedKeys, "b", "limited", nil)
		a.expect(b.frame(nil))
		over := dialRaw(t, ts.addr)
		expectClosed(t, over)
		a.conn.CloseNow()
		b.conn.CloseNow()
		deadline := time.Now().Add(5 * time.Second)
		for ts.srv.Stats().OpenConns != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: %d connections still open", round, ts.srv.Stats().OpenConns)
			}
			time.Sleep(time.Millisecond)
		}
	}
	if n := ts.srv.Stats().ClosedByRule["max-conns-per-ip"]; n != 3 {
		t.Fatalf("%d refused for the per-address limit, want 3 (one a round)", n)
	}
	if ts.srv.Stats().Moved == 0 {
		t.Fatal("no connection moved in three rounds")
	}
}

// A joiner moved to its channel's loop is still refused there for a CID a
// member already has.
func TestAMovedJoinerWithADuplicateCIDIsRefused(t *testing.T) {
	ts := startServer(t, Config{Keys: sharedKeys, Loops: 2}, router.Config{HistoryLimit: router.Off})
	first := ts.join(t, sharedKeys, "same", "dup", nil)
	for i := 0; i < 2; i++ { // one of the two was accepted on the other loop
		again := ts.join(t, sharedKeys, "same", "dup", nil)
		expectClosed(t, again.nc)
	}
	if n := ts.srv.Stats().ClosedByRule["duplicate-cid"]; n != 2 {
		t.Fatalf("%d refused as duplicate CIDs, want 2", n)
	}
	if ts.srv.Stats().Moved == 0 {
		t.Fatal("neither duplicate was moved: the test did not test a move")
	}
	other := ts.join(t, sharedKeys, "other", "dup", nil)
	first.expect(other.frame(nil))
}

// The descriptor a move (and an export) takes of a socket is close-on-exec
// from the start: one made while the upgrade execs the new binary would be
// inherited by it and keep the socket open after the connection's close.
func TestSocketDuplicatesAreCloseOnExec(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd, err := dupCloseOnExec(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil {
		t.Fatal(err)
	}
	if flags&unix.FD_CLOEXEC == 0 {
		t.Fatalf("descriptor %d of a duplicated socket lacks FD_CLOEXEC (flags %#x)", fd, flags)
	}
}
