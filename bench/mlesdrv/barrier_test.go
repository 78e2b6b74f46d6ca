package mlesdrv

import "testing"

func done(b *barrier) bool {
	select {
	case <-b.done:
		return true
	default:
		return false
	}
}

func TestBarrierOpensWhenEveryMemberIsSeenFromEitherSide(t *testing.T) {
	b := newBarrier("pub-0", 3)
	b.sawJoin("pub-0", "sub-1") // the anchor saw sub-1 join
	b.sawJoin("sub-2", "pub-0") // sub-2 joined first and saw the anchor join
	b.sawJoin("sub-1", "sub-3") // members seeing each other prove nothing about the anchor
	if done(b) {
		t.Fatal("open before sub-3 is known joined")
	}
	b.sawJoin("pub-0", "sub-1") // twice counts once
	if done(b) || b.count() != 2 {
		t.Fatalf("count %d after a repeat", b.count())
	}
	b.sawJoin("pub-0", "sub-3")
	if !done(b) {
		t.Fatal("still closed with every member known joined")
	}
	b.sawJoin("pub-0", "late") // no panic on a closed barrier
}

func TestBarrierOfOneMemberIsOpen(t *testing.T) {
	if !done(newBarrier("pub-0", 0)) {
		t.Fatal("closed")
	}
}
