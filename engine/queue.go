package engine

import "github.com/mlesd/mlesd/router"

// frameQueue is a FIFO ring of frame references: a receiver's backlog. It holds
// references to shared frames, never copies. Owned by one event loop.
type frameQueue struct {
	buf  []*router.Frame // len is a power of two, or 0
	head int
	n    int
	size int // memory the queued frames hold (Frame.Size), shared or not
}

func (q *frameQueue) len() int { return q.n }

func (q *frameQueue) at(i int) *router.Frame { return q.buf[(q.head+i)&(len(q.buf)-1)] }

// push appends f; the caller has already taken a reference for the queue.
func (q *frameQueue) push(f *router.Frame) {
	if q.n == len(q.buf) {
		q.grow()
	}
	q.buf[(q.head+q.n)&(len(q.buf)-1)] = f
	q.n++
	q.size += f.Size()
}

// pop removes the head and returns it (the caller inherits its reference).
func (q *frameQueue) pop() *router.Frame {
	f := q.buf[q.head]
	q.buf[q.head] = nil
	q.head = (q.head + 1) & (len(q.buf) - 1)
	q.n--
	q.size -= f.Size()
	return f
}

func (q *frameQueue) grow() {
	size := len(q.buf) * 2
	if size == 0 {
		size = 8
	}
	nb := make([]*router.Frame, size)
	for i := 0; i < q.n; i++ {
		nb[i] = q.at(i)
	}
	q.buf, q.head = nb, 0
}

// shrinkIfIdle frees a ring that a past backlog grew large, once it is empty,
// so a receiver that caught up does not keep its peak. Small rings stay: a
// receiver in steady state never reallocates.
func (q *frameQueue) shrinkIfIdle() {
	if q.n == 0 && len(q.buf) > 4096 {
		q.buf, q.head = nil, 0
	}
}

// releaseAll drops every reference the queue holds.
func (q *frameQueue) releaseAll() {
	for q.n > 0 {
		q.pop().Release()
	}
}
