package peering_test

import (
	"fmt"
	"testing"
	"time"
)

// Rings longer than three with one static CID: whatever links the members
// end up with, they never form a cycle, so no client ever receives a
// duplicate or its own frame, and each sender's frames arrive in order
// (some pairs may not reach each other: see the package doc). Several
// rounds, with one member killed in between, so that links come and go.
func TestPeeringLongRingsNeverLoop(t *testing.T) {
	for _, n := range []int{4, 5} {
		t.Run(fmt.Sprintf("ring of %d", n), func(t *testing.T) {
			addrs := make([]string, n)
			for i := range addrs {
				addrs[i] = staticAddr(t, "127.0.0.1")
			}
			servers := make([]*server, n)
			clients := make([]*client, n)
			for i := range servers {
				servers[i] = startServer(t, fmt.Sprintf("M%d", i), sharedEnv, "--listen", addrs[i],
					"--peer", addrs[(i+1)%n], "--cid", "0badc0de", "--history-limit", "1000")
			}
			for i, s := range servers {
				clients[i] = join(t, s.Addr, fmt.Sprintf("m%d", i), "longring")
			}
			sent := ledger{}
			round := func(from, to uint32, live []*client) {
				time.Sleep(5 * backoffMax) // links form, are refused, retried
				sent.send(t, from, to, live...)
				time.Sleep(2 * time.Second)
				checkNoLoop(t, sent, live)
			}
			round(0, 100, clients)
			servers[1].kill(t)
			live := append(append([]*client(nil), clients[:1]...), clients[2:]...)
			round(100, 200, live)
		})
	}
}

// checkNoLoop requires that no receiver got a duplicate, an echo or a
// malformed frame, and that each sender's frames came in order without
// gaps beyond what never arrived.
func checkNoLoop(t *testing.T, l ledger, receivers []*client) {
	t.Helper()
	live := map[string]bool{}
	for _, r := range receivers {
		live[r.UID] = true
	}
	complete := 0
	for _, r := range receivers {
		r.mu.Lock()
		if len(r.problems) > 0 {
			t.Errorf("%s: %v", r.UID, r.problems)
		}
		for uid, seqs := range r.data {
			for i := 1; i < len(seqs); i++ {
				if seqs[i] <= seqs[i-1] {
					t.Errorf("%s: frames from %s out of order at %d: %v", r.UID, uid, i, around(seqs, l[uid], i))
					break
				}
			}
			if live[uid] && len(seqs) == len(l[uid]) {
				complete++
			}
		}
		r.mu.Unlock()
	}
	t.Logf("%d of %d sender→receiver pairs got every frame", complete, len(receivers)*(len(receivers)-1))
}
