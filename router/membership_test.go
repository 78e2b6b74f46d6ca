package router

import (
	"errors"
	"fmt"
	"testing"
)

// members lists the subscribers listed in snap's sets.
func members(snap *Snapshot) []Subscriber {
	var out []Subscriber
	for _, g := range snap.Groups {
		out = append(out, g.Set.Members...)
	}
	return out
}

// Joins and leaves in any order keep every member listed exactly once, in
// its own loop's set; the snapshot changes only when a loop gets its first
// member or loses its last, and a snapshot already taken never changes.
func TestJoinAndLeaveKeepMembersExactAndSnapshotsImmutable(t *testing.T) {
	r := New(Config{HistoryLimit: Off})
	const n = 1000
	subs := make([]*fakeSub, n)
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
	if len(taken.Groups) != 3 {
		t.Fatalf("%d groups for 3 loops", len(taken.Groups))
	}
	for i := 0; i < n; i += 2 { // every other one leaves
		leave(ch, subs[i])
		if ch.Snapshot() != taken {
			t.Fatalf("leave %d republished although every loop still has members", i/2+1)
		}
	}
	got := members(ch.Snapshot())
	if ch.Members() != n/2 || len(got) != n/2 {
		t.Fatalf("Members %d, members listed %d, want %d", ch.Members(), len(got), n/2)
	}
	seen := map[Subscriber]bool{}
	for _, g := range ch.Snapshot().Groups {
		for _, s := range g.Set.Members {
			if seen[s] {
				t.Fatalf("member %d listed twice", s.(*fakeSub).cid)
			}
			seen[s] = true
			if s.(*fakeSub).cid%2 != 0 {
				t.Fatalf("sub %d left but is listed as a member", s.(*fakeSub).cid)
			}
			if s.Loop() != g.Loop {
				t.Fatalf("sub of loop %d in loop %d's set", s.Loop(), g.Loop)
			}
		}
	}
	// A join on a new loop republishes, with that loop's set.
	late := &fakeSub{cid: 5000, loop: 7}
	if _, _, err := r.Join("ch", late, nil); err != nil {
		t.Fatal(err)
	}
	if len(taken.Groups) != 3 {
		t.Fatal("a snapshot taken before the join changed")
	}
	found := false
	for _, g := range ch.Snapshot().Groups {
		for _, s := range g.Set.Members {
			if s == late {
				found = g.Loop == 7
			}
		}
	}
	if !found {
		t.Fatal("late joiner not in its loop's set")
	}
}

// A joiner learns the sequence of the last frame its history holds; frames
// stored later have higher sequences.
func TestJoinerLearnsTheLastSequenceOfItsHistory(t *testing.T) {
	r := New(Config{HistoryLimit: 10})
	a := &fakeSub{cid: 1}
	ch, _, _ := r.Join("ch", a, nil)
	if a.seq != 0 {
		t.Fatalf("first joiner of an empty channel: seq %d, want 0", a.seq)
	}
	f1, f2 := frameOf("one"), frameOf("two")
	ch.Append(f1, f2)
	b := &fakeSub{cid: 2}
	_, hist, _ := r.Join("ch", b, nil)
	if len(hist) != 2 || b.seq != f2.Seq() || f1.Seq() >= f2.Seq() || f1.Seq() == 0 {
		t.Fatalf("joiner seq %d, history %d frames, frame seqs %d %d", b.seq, len(hist), f1.Seq(), f2.Seq())
	}
	f3 := frameOf("three")
	ch.Append(f3)
	if f3.Seq() <= b.seq {
		t.Fatalf("a frame stored after the join has seq %d, not past the joiner's %d", f3.Seq(), b.seq)
	}
	for _, f := range append(hist, f1, f2, f3) {
		f.Release()
	}
	// Without history nothing is numbered: every live frame is for everyone.
	r0 := New(Config{HistoryLimit: Off})
	c0, _, _ := r0.Join("ch", &fakeSub{cid: 1}, nil)
	g := frameOf("x")
	c0.Append(g)
	if g.Seq() != 0 {
		t.Fatalf("history off: frame seq %d, want 0", g.Seq())
	}
	g.Release()
}

// The duplicate-CID rule holds through the index: a CID is refused while a
// member has it and admitted again once that member has left.
func TestDuplicateCIDIndexFollowsLeaves(t *testing.T) {
	r := New(Config{HistoryLimit: Off})
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
	leave(ch, a)
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
		r := New(Config{HistoryLimit: Off})
		var ch *Channel
		for i := range subs {
			c, _, err := r.Join("big", &subs[i], nil)
			if err != nil {
				b.Fatal(err)
			}
			ch = c
		}
		for i := range subs {
			leave(ch, &subs[i])
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
			r := New(Config{HistoryLimit: Off})
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
				leave(ch, &subs[i])
			}
		})
	}
}

// The router's own member list (ForEachMember, Members) stays exact
// through leaves in any order: a leave moves the last member into the
// leaver's place, and that member must still leave from its new place.
// A subscriber is a member of one channel: joining a second is refused.
func TestLeavesInAnyOrderKeepTheMemberListExact(t *testing.T) {
	r := New(Config{HistoryLimit: Off})
	const n = 500
	subs := make([]*fakeSub, n)
	var ch *Channel
	for i := range subs {
		subs[i] = &fakeSub{cid: uint32(i + 1), loop: i % 2}
		ch, _, _ = r.Join("ch", subs[i], nil)
	}
	if _, _, err := r.Join("other", subs[0], nil); !errors.Is(err, ErrOtherChannel) {
		t.Fatalf("joining a second channel: %v, want ErrOtherChannel", err)
	}
	if r.Channels() != 1 {
		t.Fatalf("%d channels after the refused join, want 1", r.Channels())
	}
	left := map[*fakeSub]bool{}
	// Leave from the front, the back and the middle in turn, so that
	// members moved by earlier leaves are among those that leave later.
	order := make([]int, 0, n)
	for lo, hi := 0, n-1; lo <= hi; lo, hi = lo+1, hi-1 {
		order = append(order, lo)
		if hi != lo {
			order = append(order, hi)
		}
	}
	for k, i := range order[:n-10] {
		leave(ch, subs[i])
		ch.Leave(subs[i]) // a second leave changes nothing
		left[subs[i]] = true
		if k%50 != 0 {
			continue
		}
		listed := map[Subscriber]int{}
		ch.ForEachMember(func(s Subscriber) { listed[s]++ })
		if ch.Members() != n-len(left) || len(listed) != n-len(left) {
			t.Fatalf("after %d leaves: Members %d, %d listed, want %d", len(left), ch.Members(), len(listed), n-len(left))
		}
		for s, times := range listed {
			if times != 1 || left[s.(*fakeSub)] {
				t.Fatalf("after %d leaves: member %d listed %d times, left %v", len(left), s.(*fakeSub).cid, times, left[s.(*fakeSub)])
			}
		}
	}
	for _, i := range order[n-10:] {
		leave(ch, subs[i])
	}
	if ch.Members() != 0 || r.Channels() != 0 {
		t.Fatalf("every member left: Members %d, channels %d", ch.Members(), r.Channels())
	}
	if _, _, err := r.Join("other", subs[0], nil); err != nil {
		t.Fatalf("joining another channel after leaving: %v", err)
	}
}
