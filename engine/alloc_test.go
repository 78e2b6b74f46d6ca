//go:build !race

// The race detector makes sync.Pool drop items at random, so allocation
// counts are only meaningful without it; make test runs this file without -race.

package engine

import "testing"

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
