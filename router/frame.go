package router

import (
	"math/bits"
	"sync"
	"sync/atomic"
)

// Frame is one whole Mles frame (16-byte header and payload) as it came off the
// wire, shared by every receiver, the history and the sender. It is reference
// counted: whoever holds it calls Ref before keeping it and Release when done;
// the last Release returns its memory to the pool.
//
// Frame is safe to Ref and Release from any goroutine; its bytes are immutable
// from NewFrame until the last Release.
type Frame struct {
	refs  atomic.Int32
	b     []byte // cap is the frame's size class
	class int8
	seq   uint64 // the channel's sequence, set when history stores it; 0 = not stored
}

// Size classes: a frame's buffer is the smallest power of two from
// minClassSize that holds it, so the memory a frame holds is under twice its
// length (or minClassSize), and limits that count Size bound real memory. A
// pool of any-size buffers would not: after large frames were released a
// small frame could pin a large buffer. Frames past the largest power-of-two
// class (the protocol's largest frames, 16 bytes over 16 MiB) get a buffer of
// exactly maxFrameLen.
const (
	minClassShift = 6 // 64 B
	maxClassShift = 24
	maxFrameLen   = 16 + 0xFFFFFF
	numClasses    = maxClassShift - minClassShift + 2 // the last one is maxFrameLen
)

var framePools [numClasses]sync.Pool

// classOf returns the size class of a frame of n bytes and its capacity.
func classOf(n int) (int, int) {
	if n <= 1<<minClassShift {
		return 0, 1 << minClassShift
	}
	shift := bits.Len(uint(n - 1)) // smallest power of two ≥ n
	if shift > maxClassShift {
		return numClasses - 1, max(n, maxFrameLen)
	}
	return shift - minClassShift, 1 << shift
}

// NewFrame returns a frame holding a copy of b with one reference, the caller's.
// Hot path: no allocation in steady state (frames and their buffers are
// pooled by size class).
func NewFrame(b []byte) *Frame {
	class, size := classOf(len(b))
	f, _ := framePools[class].Get().(*Frame)
	if f == nil || cap(f.b) < len(b) {
		f = &Frame{b: make([]byte, 0, size), class: int8(class)}
	}
	f.b = append(f.b[:0], b...)
	f.seq = 0
	f.refs.Store(1)
	return f
}

// CopyFrame returns a new frame holding a copy of f's bytes (b) and its
// sequence seq (f.Seq()): the engine carries small frames to another event
// loop as bytes and makes them anew there, so that a frame's reference
// count and pooled buffer stay on the core that uses them.
func CopyFrame(b []byte, seq uint64) *Frame {
	f := NewFrame(b)
	f.seq = seq
	return f
}

// Seq is the sequence number the channel's history gave the frame when it
// stored it (under the channel's lock, before the frame is fanned out), or 0
// if it was not stored. See Subscriber.Joined.
func (f *Frame) Seq() uint64 { return f.seq }

// Bytes returns the frame's bytes. Callers must not modify them.
func (f *Frame) Bytes() []byte { return f.b }

// Len returns the frame's length in bytes, header included.
func (f *Frame) Len() int { return len(f.b) }

// Size returns the memory the frame holds: its buffer's capacity, under
// twice Len (see the size classes). Byte limits count this.
func (f *Frame) Size() int { return cap(f.b) }

// Ref adds a reference.
func (f *Frame) Ref() { f.refs.Add(1) }

// Release drops a reference; the last one recycles the frame. Using a frame
// after releasing one's reference to it is a bug.
func (f *Frame) Release() {
	switch n := f.refs.Add(-1); {
	case n == 0:
		f.b = f.b[:0]
		framePools[f.class].Put(f)
	case n < 0:
		panic("router: Frame released more times than referenced")
	}
}
