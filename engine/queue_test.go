package engine

import (
	"testing"

	"github.com/mlesd/mlesd/router"
)

func TestFrameQueueIsFIFOAcrossGrowthAndWrapAndShrinksWhenEmpty(t *testing.T) {
	var q frameQueue
	frames := make([]*router.Frame, 15000) // grows past what an empty queue keeps
	first := 0                             // frames popped so far: the oldest held is frames[first]
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
	for i := 0; q.len() > 0; i++ {
		if got := q.pop(); got != frames[first+i] {
			t.Fatalf("frame %d out of order", first+i)
		}
	}
	q.shrinkIfIdle()
	if q.buf != nil {
		t.Fatalf("an empty queue kept a ring of %d", len(q.buf))
	}
	for _, f := range frames {
		f.Release()
	}
}
