package router

import (
	"errors"
	"fmt"
	"testing"
)

// members lists the subscribers of snap that are still members, per the
// contract: a snapshot may list subscribers that left (at most Len of them).
func members(snap *Snapshot, left map[Subscriber]bool) []Subscriber {
	var out []Subscriber
	for _, g := range snap.Groups {
		for _, s := range g.Subs {
			if !left[s] {
				out = append(out, s)
			}
		}
	}
	return out
}

func listed(snap *Snapshot) int {
	n := 0
	for _, g := range snap.Groups {
		n += len(g.Subs)
	}
	return n
}

// Joins and leaves in any order keep every member listed exactly once,
// list at most as many gone subscribers as members, and never change a
// snapshot already taken.
func TestJoinAndLeaveKeepSnapshotsExactAndImmutable(t *testing.T) {
	r := New(Config{})
	const n = 1000
	subs := make([]*fakeSub, n)
	left := map[Subscriber]bool{}
	var ch *Channel
	for i := range subs {
		subs[i] = &fakeSub{cid: uint32(i + 1), loop: i % 3}
		c, _, err := r.Join("ch", subs[i], nil)
		if err != nil {
			t.Fatal(err)
		}
		ch = c
	}
	taken := ch.Snapshot()
	takenList := fmt.Sprint(members(taken, nil))
	for i := 0; i < n; i += 2 { // every other one leaves
		ch.Leave(subs[i])
		left[subs[i]] = true
		if snap, m := ch.Snapshot(), ch.Members(); listed(snap)-m > m {
			t.Fatalf("after %d leaves: %d listed for %d members", i/2+1, listed(snap), m)
		}
	}
	if fmt.Sprint(members(taken, nil)) != takenList || listed(taken) != n {
		t.Fatal("a snapshot taken before the leaves changed")
	}
	snap := ch.Snapshot()
	got := members(snap, left)
	if ch.Members() != n/2 || len(got) != n/2 {
		t.Fatalf("Members %d, members listed %d, want %d", ch.Members(), len(got), n/2)
	}
	seen := map[Subscriber]bool{}
	for _, s := range got {
		if seen[s] {
			t.Fatalf("member %d listed twice", s.(*fakeSub).cid)
		}
		seen[s] = true
		if s.(*fakeSub).cid%2 != 0 {
			t.Fatalf("sub %d left but is listed as a member", s.(*fakeSub).cid)
		}
	}
	// A join after the leaves lands in the right group.
	late := &fakeSub{cid: 5000, loop: 7}
	if _, _, err := r.Join("ch", late, nil); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, g := range ch.Snapshot().Groups {
		for _, s := range g.Subs {
			if s == late {
				found = g.Loop == 7
			}
		}
	}
	if !found {
		t.Fatal("late joiner not in its loop's group")
	}
}

// The duplicate-CID rule holds through the index: a CID is refused while a
// member has it and admitted again once that member has left.
func TestDuplicateCIDIndexFollowsLeaves(t *testing.T) {
	r := New(Config{})
	a := &fakeSub{cid: 9}
	ch, _, err := r.Join("ch", a, nil)
	if err != nil {
		t.Fatal(err)
	}
	keep := &fakeSub{cid: 10} // keeps the channel alive
	if _, _, err := r.Join("ch", keep, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.Join("ch", &fakeSub{cid: 9}, nil); !errors.Is(err, ErrDuplicateCID) {
		t.Fatalf("second CID 9: %v, want ErrDuplicateCID", err)
	}
	ch.Leave(a)
	ch.Leave(a) // a second Leave changes nothing
	if _, _, err := r.Join("ch", &fakeSub{cid: 9}, nil); err != nil {
		t.Fatalf("CID 9 after its member left: %v", err)
	}
	if _, _, err := r.Join("ch", &fakeSub{cid: 9}, nil); !errors.Is(err, ErrDuplicateCID) {
		t.Fatalf("CID 9 again: %v, want ErrDuplicateCID", err)
	}
	if ch.Members() != 2 {
		t.Fatalf("Members %d, want 2", ch.Members())
	}
}

// BenchmarkMillionJoinsAndLeaves joins a million members to one channel
// and removes them again; one op is the whole million (target: under 2 s).
func BenchmarkMillionJoinsAndLeaves(b *testing.B) {
	const n = 1_000_000
	subs := make([]fakeSub, n)
	for i := range subs {
		subs[i] = fakeSub{cid: uint32(i + 1), loop: i % 2}
	}
	b.ReportAllocs()
	for range b.N {
		r := New(Config{})
		var ch *Channel
		for i := range subs {
			c, _, err := r.Join("big", &subs[i], nil)
			if err != nil {
				b.Fatal(err)
			}
			ch = c
		}
		for i := range subs {
			ch.Leave(&subs[i])
		}
		if r.Channels() != 0 {
			b.Fatalf("%d channels left after every member left", r.Channels())
		}
	}
}

// BenchmarkJoinLeave measures one join and one leave on a channel that
// already has size members: the cost must not grow with size.
func BenchmarkJoinLeave(b *testing.B) {
	for _, size := range []int{10, 1000, 100_000} {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			r := New(Config{})
			var ch *Channel
			for i := 0; i < size; i++ {
				c, _, _ := r.Join("ch", &fakeSub{cid: uint32(i + 1), loop: i % 2}, nil)
				ch = c
			}
			subs := make([]fakeSub, b.N)
			for i := range subs {
				subs[i] = fakeSub{cid: uint32(size + 1 + i), loop: i % 2}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range subs {
				if _, _, err := r.Join("ch", &subs[i], nil); err != nil {
					b.Fatal(err)
				}
				ch.Leave(&subs[i])
			}
		})
	}
}
