package engine

import (
	"testing"

	"github.com/mlesd/mlesd/router"
)

func TestFrameQueueFIFOAcrossGrowthPopBackAndCompact(t *testing.T) {
	var q frameQueue
	frames := make([]*router.Frame, 5000)
	first := 0 // frames popped so far: the oldest held is frames[first]
	for i := range frames {
		frames[i] = router.NewFrame([]byte{byte(i), byte(i >> 8)})
		q.push(frames[i])
		if i%3 == 0 { // move the head so the ring wraps
			if got := q.pop(); got != frames[first] {
				t.Fatalf("pop %d: wrong frame", i)
			}
			first++
		}
	}
	for q.len() > 100 {
		if got, want := q.popBack(), frames[first+q.len()]; got != want {
			t.Fatal("popBack returned the wrong frame")
		}
	}
	q.compact()
	if len(q.buf) > 256 {
		t.Fatalf("compact left a ring of %d for %d frames", len(q.buf), q.len())
	}
	for i := 0; q.len() > 0; i++ {
		if got := q.pop(); got != frames[first+i] {
			t.Fatalf("after compact, frame %d out of order", i)
		}
	}
	for _, f := range frames {
		f.Release()
	}
}
