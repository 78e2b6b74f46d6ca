package engine

import (
	"fmt"
	"testing"
	"time"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/router"
)

// cutFrames is how many frames the server forwarded cut-through.
func (ts *testServer) cutFrames() uint64 {
	var n uint64
	for i := range ts.srv.loops {
		if l := ts.srv.loops[i].Load(); l != nil {
			n += l.stats.cutFrames.Load()
		}
	}
	return n
}

// On a small channel frames are forwarded cut-through; a receiver whose
// socket fills in the middle of a run (a small receive buffer, not reading)
// gets the rest queued at the frame it stopped in, so that when it reads
// again every frame arrives whole and in order, of every size, while a
// receiver that reads all along gets all of them too; and a late joiner
// gets live frames after them.
func TestCutThroughKeepsFramesWholeAndInOrderAcrossShortWrites(t *testing.T) {
	type load struct {
		name  string
		sizes []int
		n     int // frames; their size classes stay within the 8 MiB MaxPending
	}
	loads := []load{
		// All small: the slow receiver's socket fills in the middle of a
		// cut-through run, usually in the middle of a frame.
		{"small frames", []int{17, 900, 3000, 24, 64, 2500, 333}, 2000},
		// Large frames take the general path (they are assembled outside
		// gnet's buffer), so the channel switches between the two.
		{"mixed sizes", []int{17, 900, 40_000, 24, 200_000, 3000, 64, 120_000}, 96},
	}
	for _, ld := range loads {
		t.Run(ld.name, func(t *testing.T) {
			// No history: cut-through is for channels without it.
			ts := startServer(t, Config{Keys: sharedKeys}, router.Config{HistoryLimit: router.Off})
			slow := ts.joinSmall(t, "slow", "ch", 8<<10, 0)
			fast := ts.join(t, sharedKeys, "fast", "ch", nil)
			slow.expect(fast.frame(nil))
			pub := ts.join(t, sharedKeys, "pub", "ch", nil)
			slow.expect(pub.frame(nil))
			fast.expect(pub.frame(nil))

			sizes, n := ld.sizes, ld.n
			sizeOf := func(i int) int { return max(sizes[i%len(sizes)], 8) }
			var sent [][]byte
			for i := 0; i < n; i++ {
				sent = append(sent, pub.frame(seqMessage(uint32(i), sizeOf(i))))
			}
			got := make(chan error, 1)
			go func() { // the fast receiver reads all along
				for i := 0; i < n; i++ {
					f, err := fast.readFrame(10 * time.Second)
					if err == nil && string(f) != string(sent[i]) {
						err = fmt.Errorf("frame %d is not the one sent (%d bytes, want %d)", i, len(f), len(sent[i]))
					}
					if err != nil {
						got <- err
						return
					}
				}
				got <- nil
			}()
			for i := 0; i < n; i++ {
				pub.send(seqMessage(uint32(i), sizeOf(i)))
			}
			if err := <-got; err != nil {
				t.Fatalf("fast: %v", err)
			}
			if ts.cutFrames() == 0 {
				t.Fatal("no frame was forwarded cut-through: the test did not test it")
			}
			waitUntil(t, "the slow receiver to have a backlog", 5*time.Second, func() bool { return ts.waiting() == 1 })
			for i := 0; i < n; i++ {
				f, err := slow.readFrame(10 * time.Second)
				if err != nil {
					t.Fatalf("slow, frame %d: %v", i, err)
				}
				tr, err := codec.DecodeTriplet(f[codec.HeaderLen:])
				if err != nil || tr.UID != "pub" || len(tr.Message) != sizeOf(i) || seqOf(tr.Message) != uint32(i) {
					t.Fatalf("slow, frame %d: not the whole frame %d (%d bytes, err %v)", i, i, len(f), err)
				}
			}
			if d := ts.srv.Stats().Dropped; d != 0 {
				t.Fatalf("%d frames dropped, want none (the backlog fits MaxPending)", d)
			}
			late := ts.join(t, sharedKeys, "late", "ch", nil)
			f := pub.send([]byte("after"))
			late.expect(f)
			fast.expect(late.frame(nil))
			fast.expect(f)
		})
	}
}
