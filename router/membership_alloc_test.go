//go:build !race

package router

import "testing"

// A join and a leave allocate the same on a channel of 10 members as on
// one of 100,000: nothing is copied per member.
func TestJoinAndLeaveAllocationsDoNotGrowWithTheChannel(t *testing.T) {
	perOp := func(size int) float64 {
		r := New(Config{HistoryLimit: Off})
		var ch *Channel
		for i := 0; i < size; i++ {
			ch, _, _ = r.Join("ch", &fakeSub{cid: uint32(i + 1), loop: i % 2}, nil)
		}
		next := uint32(size + 1)
		return testing.AllocsPerRun(2000, func() {
			s := &fakeSub{cid: next, loop: int(next % 2)}
			next++
			if _, _, err := r.Join("ch", s, nil); err != nil {
				t.Fatal(err)
			}
			leave(ch, s)
		})
	}
	small, big := perOp(10), perOp(100_000)
	t.Logf("allocations per join+leave: %.1f at 10 members, %.1f at 100,000", small, big)
	if big > small+1 {
		t.Fatalf("a join+leave allocates %.1f at 100,000 members against %.1f at 10", big, small)
	}
}
