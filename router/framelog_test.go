package router

import (
	"fmt"
	"testing"
)

type logSub struct {
	id int
	Membership
}

func (s *logSub) DupKey() uint64          { return uint64(s.id) }
func (s *logSub) Loop() int               { return 0 }
func (s *logSub) Joined(*LoopSet, uint64) {}
func (s *logSub) String() string          { return fmt.Sprint(s.id) }

// The log keeps entries by sequence across wrap-around and growth, counts
// the memory its frames hold, and lets go of every reference it took.
func TestFrameLogKeepsEntriesBySequenceThroughWrapAndGrowth(t *testing.T) {
	var l FrameLog
	sender := &logSub{id: 1}
	var frames []*Frame
	push := func(i int) {
		f := NewFrame([]byte(fmt.Sprintf("frame-%04d", i)))
		frames = append(frames, f)
		if seq := l.Push(f, sender); seq != uint64(i) {
			t.Fatalf("push %d got sequence %d", i, seq)
		}
		f.Release() // the log holds the only reference now
	}
	check := func() {
		t.Helper()
		size := 0
		for seq := l.Base(); seq < l.Head(); seq++ {
			e := l.At(seq)
			if want := fmt.Sprintf("frame-%04d", seq); string(e.F.Bytes()) != want || e.From != Subscriber(sender) {
				t.Fatalf("entry %d holds %q from %v, want %q", seq, e.F.Bytes(), e.From, want)
			}
			size += e.F.Size()
		}
		if size != l.Size() || int(l.Head()-l.Base()) != l.Len() {
			t.Fatalf("size %d len %d, want %d and %d", l.Size(), l.Len(), size, l.Head()-l.Base())
		}
	}
	for i := 0; i < 50; i++ {
		push(i)
	}
	l.TrimTo(40) // the ring's start moves past the middle
	check()
	for i := 50; i < 300; i++ { // wraps, then grows twice with the start inside
		push(i)
		if i%7 == 0 {
			l.Evict()
		}
	}
	check()
	if l.Base() == 0 || l.Len() == 0 {
		t.Fatalf("base %d len %d: the test did not evict", l.Base(), l.Len())
	}
	l.Reset()
	if l.Len() != 0 || l.Size() != 0 || l.Base() != 300 || l.Head() != 300 {
		t.Fatalf("after Reset: len %d size %d base %d head %d", l.Len(), l.Size(), l.Base(), l.Head())
	}
	for _, f := range frames {
		if n := f.refs.Load(); n != 0 {
			t.Fatalf("a frame still has %d references after Reset", n)
		}
	}
}
