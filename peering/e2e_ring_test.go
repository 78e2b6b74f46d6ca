package peering_test

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// Rings longer than three with one static CID (each member's --peer is
// the next). The package doc promises: the links accepted never form a
// cycle, and a member refuses another's link only while its own is up; so
// the ring may be split into arcs (chains of accepted links), each
// loop-free, but no two links in a row are refused. What that means for
// clients, which is what this test requires of every round: within an arc
// every client gets every other's frames once and in order; across arcs
// none; never a duplicate or an echo. Two rounds, with one member killed
// in between, so that links come and go.
func TestPeeringLongRingsNeverLoop(t *testing.T) {
	for _, n := range []int{4, 5} {
		t.Run(fmt.Sprintf("ring of %d", n), func(t *testing.T) {
			addrs := make([]string, n)
			for i := range addrs {
				addrs[i] = staticAddr(t, "127.0.0.1")
			}
			rg := &ring{servers: make([]*server, n), clients: make([]*client, n), alive: make([]bool, n)}
			for i := range rg.servers {
				rg.servers[i] = startServer(t, fmt.Sprintf("M%d", i), sharedEnv, "--listen", addrs[i],
					"--peer", addrs[(i+1)%n], "--cid", "0badc0de", "--history-limit", "1000")
				rg.alive[i] = true
			}
			for i, s := range rg.servers {
				rg.clients[i] = join(t, s.Addr, fmt.Sprintf("m%d", i), "longring")
			}
			rg.round(t, 0, 100)
			rg.servers[1].kill(t)
			rg.alive[1] = false
			rg.round(t, 100, 200)
		})
	}
}

// ring is the members of a ring test: a server and a client each.
type ring struct {
	servers []*server
	clients []*client
	alive   []bool
}

// links reads which members' uplinks are accepted, i.e. up and not
// reconnected over a window of 3 back-off caps (a refused link keeps
// redialling: it comes "up" and is closed at once, at least once per
// back-off cap). Dead members have none.
func (rg *ring) links(t *testing.T) []bool {
	t.Helper()
	n := len(rg.servers)
	ups := make([]int, n)
	read := func() []bool {
		up := make([]bool, n)
		for i, s := range rg.servers {
			if rg.alive[i] {
				m, _, err := s.uplinks()
				up[i] = err == nil && m["up"] == 1
			}
		}
		return up
	}
	for i, s := range rg.servers {
		ups[i] = s.countLog(`msg="peer uplink up"`)
	}
	before := read()
	time.Sleep(3 * backoffMax)
	after := read()
	for i, s := range rg.servers {
		after[i] = after[i] && before[i] && s.countLog(`msg="peer uplink up"`) == ups[i]
	}
	return after
}

// settle waits (15 s) until the links are what the design leads to: no
// two in a row refused (a link to a dead member aside, and the one after
// it), and requires that they never form a cycle.
func (rg *ring) settle(t *testing.T) []bool {
	t.Helper()
	n := len(rg.servers)
	deadline := time.Now().Add(15 * time.Second)
	for {
		up := rg.links(t)
		all, settled := true, true
		for i := range n {
			j := (i + 1) % n
			if !rg.alive[i] {
				all = false
				continue
			}
			if !up[i] {
				all = false
				// i's link is refused only while j's own is up.
				if rg.alive[j] && !up[j] {
					settled = false
				}
			}
		}
		if all {
			t.Fatalf("every link of the ring is up: a cycle (%s)", rg.describe(up))
		}
		if settled {
			t.Logf("links: %s", rg.describe(up))
			return up
		}
		if time.Now().After(deadline) {
			t.Fatalf("links never settled within 15 s: %s has two refused links in a row (a member whose own link is down refuses nobody)", rg.describe(up))
		}
	}
}

func (rg *ring) describe(up []bool) string {
	var b strings.Builder
	for i := range up {
		j := (i + 1) % len(up)
		switch {
		case !rg.alive[i]:
			fmt.Fprintf(&b, "M%d dead; ", i)
		case up[i]:
			fmt.Fprintf(&b, "M%d→M%d up; ", i, j)
		default:
			fmt.Fprintf(&b, "M%d→M%d refused; ", i, j)
		}
	}
	return b.String()
}

// arcs labels each live member with its arc: members joined by a chain of
// accepted links share a label.
func (rg *ring) arcs(up []bool) []int {
	n := len(up)
	arc := make([]int, n)
	for i := range arc {
		arc[i] = i
	}
	find := func(i int) int {
		for arc[i] != i {
			i = arc[i]
		}
		return i
	}
	for i := range n {
		if up[i] {
			arc[find(i)] = find((i + 1) % n)
		}
	}
	for i := range arc {
		arc[i] = find(i)
	}
	return arc
}

// round waits for the links to settle, has every live member's client send
// frames from..to-1, and requires, for every pair of live clients: all of
// them once and in order within an arc, none across arcs; no duplicate or
// echo at any client; and that the accepted links did not change meanwhile.
func (rg *ring) round(t *testing.T, from, to uint32) {
	t.Helper()
	up := rg.settle(t)
	arc := rg.arcs(up)
	var live []*client
	for i, c := range rg.clients {
		if rg.alive[i] {
			live = append(live, c)
		}
	}
	ups := make([]int, len(rg.servers))
	for i, s := range rg.servers {
		ups[i] = s.countLog(`msg="peer uplink up"`)
	}
	l := ledger{}
	l.send(t, from, to, live...)
	want := func(r, s int) []uint32 {
		if arc[r] == arc[s] {
			return seqs(from, to)
		}
		return nil
	}
	inRound := func(c *client, uid string) []uint32 {
		c.mu.Lock()
		defer c.mu.Unlock()
		var got []uint32
		for _, q := range c.data[uid] {
			if q >= from && q < to {
				got = append(got, q)
			}
		}
		return got
	}
	arrived := func() bool {
		for r, rc := range rg.clients {
			for s, sc := range rg.clients {
				if r != s && rg.alive[r] && rg.alive[s] && len(inRound(rc, sc.UID)) < len(want(r, s)) {
					return false
				}
			}
		}
		return true
	}
	deadline := time.Now().Add(10 * time.Second)
	for !arrived() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(quiet)
	for r, rc := range rg.clients {
		if !rg.alive[r] {
			continue
		}
		rc.mu.Lock()
		for _, p := range rc.problems {
			t.Errorf("%s: %s", rc.UID, p)
		}
		rc.mu.Unlock()
		for s, sc := range rg.clients {
			if r == s || !rg.alive[s] {
				continue
			}
			got, w := inRound(rc, sc.UID), want(r, s)
			if d := firstDiff(got, w); d >= 0 {
				how := "in its arc: want all, once, in order"
				if w == nil {
					how = "in another arc: want none"
				}
				t.Errorf("%s got %d of this round's frames from %s (%s): first difference at %d: %s",
					rc.UID, len(got), sc.UID, how, d, around(got, w, d))
			}
		}
	}
	for i, s := range rg.servers {
		if rg.alive[i] && up[i] && s.countLog(`msg="peer uplink up"`) != ups[i] {
			t.Errorf("M%d's accepted link reconnected during the round", i)
		}
	}
	if t.Failed() {
		t.Fatalf("links during the round: %s", rg.describe(up))
	}
}
