//go:build !race

// sync.Pool drops items at random under the race detector; make test runs
// this file without -race.

package router

import (
	"bytes"
	"testing"
)

func TestAppendAndSnapshotWalkDoNotAllocate(t *testing.T) {
	for _, limit := range []int{Off, 100} {
		r := New(Config{HistoryLimit: limit})
		var ch *Channel
		for i := 0; i < 100; i++ {
			ch, _, _ = r.Join("ch", &fakeSub{cid: uint32(i), loop: i % 2}, nil)
		}
		data := bytes.Repeat([]byte{1}, 256)
		step := func() {
			f := NewFrame(data)
			snap := ch.Append(f)
			for gi := range snap.Groups {
				for _, s := range snap.Groups[gi].Set.Members {
					s.(*fakeSub).got++
				}
			}
			f.Release()
		}
		for i := 0; i < 200; i++ {
			step()
		}
		if a := testing.AllocsPerRun(1000, step); a != 0 {
			t.Errorf("history=%d: %.2f allocations per frame, want 0", limit, a)
		}
	}
}
