package router

import (
	"sync"
	"sync/atomic"

	"github.com/valyala/bytebufferpool"
)

// Frame is one whole Mles frame (16-byte header and payload) as it came off the
// wire, shared by every receiver, the history and the sender. It is reference
// counted: whoever holds it calls Ref before keeping it and Release when done;
// the last Release returns its memory to the pool.
//
// Frame is safe to Ref and Release from any goroutine; its bytes are immutable
// from NewFrame until the last Release.
type Frame struct {
	refs atomic.Int32
	buf  *bytebufferpool.ByteBuffer
	seq  uint64 // the channel's sequence, set when history stores it; 0 = not stored
}

var framePool = sync.Pool{New: func() any { return new(Frame) }}

// NewFrame returns a frame holding a copy of b with one reference, the caller's.
// Hot path: no allocation in steady state (buffers and frames are pooled).
func NewFrame(b []byte) *Frame {
	f := framePool.Get().(*Frame)
	f.buf = bytebufferpool.Get()
	f.buf.B = append(f.buf.B[:0], b...)
	f.seq = 0
	f.refs.Store(1)
	return f
}

// Seq is the sequence number the channel's history gave the frame when it
// stored it (under the channel's lock, before the frame is fanned out), or 0
// if it was not stored. See Subscriber.Joined.
func (f *Frame) Seq() uint64 { return f.seq }

// Bytes returns the frame's bytes. Callers must not modify them.
func (f *Frame) Bytes() []byte { return f.buf.B }

// Len returns the frame's length in bytes, header included.
func (f *Frame) Len() int { return len(f.buf.B) }

// Ref adds a reference.
func (f *Frame) Ref() { f.refs.Add(1) }

// Release drops a reference; the last one recycles the frame. Using a frame
// after releasing one's reference to it is a bug.
func (f *Frame) Release() {
	switch n := f.refs.Add(-1); {
	case n == 0:
		bytebufferpool.Put(f.buf)
		f.buf = nil
		framePool.Put(f)
	case n < 0:
		panic("router: Frame released more times than referenced")
	}
}
