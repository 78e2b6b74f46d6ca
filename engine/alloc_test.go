//go:build !race

// The race detector makes sync.Pool drop items at random, so allocation
// counts are only meaningful without it; make test runs this file without -race.

package engine

import (
	"context"
	"testing"
)

func TestFanoutPathDoesNotAllocate(t *testing.T) {
	for _, loops := range []int{1, 2} {
		step, check, _ := fanoutRig(t, loops, 100, 128, 100)
		for i := 0; i < 200; i++ { // warm up pools and queue rings
			step()
		}
		if a := testing.AllocsPerRun(1000, step); a != 0 {
			t.Errorf("loops=%d: %.2f allocations per forwarded frame, want 0", loops, a)
		}
		check(200 + 1001)
	}
}

// Parked receivers cost nothing per frame: no allocation, and nothing of
// theirs is touched; what they miss is counted when they are folded.
func TestParkedReceiversAreNotTouchedPerFrameAndTheirDropsAreCounted(t *testing.T) {
	const listed, parked, frames = 10, 1000, 1000
	step, check, srv, pc := parkedRig(t, 2, listed, parked, 128, 0)
	for i := 0; i < 200; i++ {
		step()
	}
	if a := testing.AllocsPerRun(frames, step); a != 0 {
		t.Errorf("%.2f allocations per frame with %d parked receivers, want 0", a, parked)
	}
	check(200 + frames + 1)
	for _, c := range pc {
		if c.q.len() != 1 || !c.parked || c.dropped != 0 {
			t.Fatalf("a parked receiver was touched: %d queued, parked %v, %d counted", c.q.len(), c.parked, c.dropped)
		}
	}
	for i := range srv.loops {
		l := srv.loops[i].Load()
		_ = l.foldAllParked(context.Background())
	}
	want := uint64(200 + frames + 1)
	for _, c := range pc {
		if c.dropped != want {
			t.Fatalf("parked receiver counted %d missed frames, want %d", c.dropped, want)
		}
	}
	if got := srv.Stats().Dropped; got != want*parked {
		t.Fatalf("Stats.Dropped %d, want %d", got, want*parked)
	}
}
