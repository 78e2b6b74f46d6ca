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

// Laggers cost nothing per frame: no allocation, and nothing of theirs is
// touched; the frames their set's log evicted before they read them are
// counted as dropped when they are folded, and the ones it still holds are
// not.
func TestLaggersAreNotTouchedPerFrameAndTheirDropsAreCounted(t *testing.T) {
	const listed, lagging, frames, logBound = 10, 1000, 1000, 100
	step, check, srv, lc := laggerRig(t, 2, listed, lagging, 128, 0)
	srv.cfg.MaxPendingFrames = logBound
	for i := 0; i < 200; i++ {
		step()
	}
	if a := testing.AllocsPerRun(frames, step); a != 0 {
		t.Errorf("%.2f allocations per frame with %d laggers, want 0", a, lagging)
	}
	check(200 + frames + 1)
	for _, c := range lc {
		if c.q.len() != 1 || !c.lagging || c.dropped != 0 || c.cursor != 0 {
			t.Fatalf("a lagger was touched: %d queued, lagging %v, %d counted, cursor %d", c.q.len(), c.lagging, c.dropped, c.cursor)
		}
	}
	for _, c := range lc {
		if n := c.set.Log.Len(); n != logBound {
			t.Fatalf("loop %d: the log holds %d frames, want its bound %d", c.loop.idx, n, logBound)
		}
	}
	for i := range srv.loops {
		_ = srv.loops[i].Load().foldAllLaggers(context.Background())
	}
	want := uint64(200 + frames + 1 - logBound)
	for _, c := range lc {
		if c.dropped != want {
			t.Fatalf("lagger counted %d missed frames, want %d", c.dropped, want)
		}
	}
	if got := srv.Stats().Dropped; got != want*lagging {
		t.Fatalf("Stats.Dropped %d, want %d", got, want*lagging)
	}
}
