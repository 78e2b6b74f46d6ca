package engine

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/panjf2000/gnet/v2"

	"github.com/mlesd/mlesd/router"
)

// loop is our state for one gnet event loop. Fields under "loop-owned" are
// touched only on that loop's goroutine (in gnet callbacks or in tasks run by
// EventLoop.Execute). The rest are safe from any goroutine.
type loop struct {
	idx int
	srv *Server
	el  gnet.EventLoop // set once when the loop is first seen, before any use elsewhere

	// loop-owned
	dirty   []*conn         // receivers with new frames to flush
	backlog []*conn         // receivers with bytes left over, offered more on each poll
	outbox  []*batch        // per target loop: frames for that loop's subscribers
	frames  []*router.Frame // scratch: one batch read from one connection
	iov     []unix.Iovec    // scratch for vectored writes
	conns   map[*conn]struct{}

	// any goroutine
	inbox         atomic.Pointer[batch] // LIFO of batches from other loops
	inboxArmed    atomic.Bool           // a drain task is queued on this loop
	pollArmed     atomic.Bool           // a backlog poll task is queued
	backlogCount  atomic.Int32          // len(backlog), for the ticker
	drainRunnable gnet.Runnable
	pollRunnable  gnet.Runnable
	sweepRunnable gnet.Runnable
	stats         loopStats
}

// loopStats are counters summed at read time; each is written by one loop.
type loopStats struct {
	framesIn  atomic.Uint64
	bytesIn   atomic.Uint64
	framesOut atomic.Uint64
	bytesOut  atomic.Uint64
	dropped   atomic.Uint64
	busyNanos atomic.Uint64
	joins     atomic.Uint64
	_         [64]byte // keep the next loop's counters off this cache line
}

// addBusy adds the time since began to the loop's busy time.
func (s *loopStats) addBusy(began time.Time) { s.busyNanos.Add(uint64(time.Since(began))) }

// item is one frame for the subscribers of one channel on one loop.
type item struct {
	f    *router.Frame
	subs []router.Subscriber
}

// batch carries items from one loop to another in one task.
type batch struct {
	next  *batch
	items []item
}

var batchPool = sync.Pool{New: func() any { return &batch{items: make([]item, 0, 64)} }}

func newLoop(idx int, srv *Server, el gnet.EventLoop, nloops int) *loop {
	l := &loop{idx: idx, srv: srv, el: el, outbox: make([]*batch, nloops), conns: make(map[*conn]struct{})}
	l.drainRunnable = gnet.RunnableFunc(l.drainInbox)
	l.pollRunnable = gnet.RunnableFunc(l.pollBacklog)
	l.sweepRunnable = gnet.RunnableFunc(l.sweep)
	return l
}

// fanout hands f to every subscriber of snap except sender: directly to those
// on this loop, through the outbox to those on other loops. Loop-owned; no
// lock, no allocation in steady state.
func (l *loop) fanout(f *router.Frame, snap *router.Snapshot, sender *conn) {
	for gi := range snap.Groups {
		g := &snap.Groups[gi]
		if g.Loop == l.idx {
			for _, s := range g.Subs {
				if c := s.(*conn); c != sender {
					c.deliver(f, false)
				}
			}
			continue
		}
		b := l.outbox[g.Loop]
		if b == nil {
			b = batchPool.Get().(*batch)
			l.outbox[g.Loop] = b
		}
		f.Ref()
		b.items = append(b.items, item{f: f, subs: g.Subs})
	}
}

// flush sends every outbox to its loop (one task per loop, and none when
// that loop already has a drain queued) and writes to every dirty receiver.
// Loop-owned.
func (l *loop) flush() {
	for i, b := range l.outbox {
		if b == nil {
			continue
		}
		l.outbox[i] = nil
		l.srv.loops[i].Load().post(b)
	}
	for i := 0; i < len(l.dirty); i++ {
		c := l.dirty[i]
		l.dirty[i] = nil
		c.dirty = false
		l.write(c)
	}
	l.dirty = l.dirty[:0]
}

// post queues b for this loop and makes sure a drain task will run. Safe from
// any goroutine.
func (l *loop) post(b *batch) {
	for {
		head := l.inbox.Load()
		b.next = head
		if l.inbox.CompareAndSwap(head, b) {
			break
		}
	}
	if l.inboxArmed.CompareAndSwap(false, true) {
		if err := l.el.Execute(context.Background(), l.drainRunnable); err != nil {
			// The engine is shutting down: nothing will drain; free the frames.
			l.inboxArmed.Store(false)
			l.discardInbox()
		}
	}
}

func (l *loop) discardInbox() {
	for b := l.inbox.Swap(nil); b != nil; {
		next := b.next
		for _, it := range b.items {
			it.f.Release()
		}
		recycle(b)
		b = next
	}
}

func recycle(b *batch) {
	clear(b.items)
	b.items = b.items[:0]
	b.next = nil
	batchPool.Put(b)
}

// drainInbox runs on this loop: delivers every posted batch, in the order
// posted, then flushes. Per source loop, order is preserved.
func (l *loop) drainInbox(context.Context) error {
	defer l.stats.addBusy(time.Now())
	l.inboxArmed.Store(false)
	head := l.inbox.Swap(nil)
	var prev *batch
	for head != nil { // reverse the LIFO into posting order
		next := head.next
		head.next = prev
		prev, head = head, next
	}
	for b := prev; b != nil; {
		next := b.next
		for _, it := range b.items {
			for _, s := range it.subs {
				s.(*conn).deliver(it.f, false)
			}
			it.f.Release()
		}
		recycle(b)
		b = next
	}
	l.flush()
	return nil
}

// write writes as much of c's backlog as its socket takes now, with one
// writev straight from the shared frames. What the socket does not take stays
// queued as references, never copied (gnet's own write would copy the rest
// into a per-connection buffer); the ticker's poll offers it again. A write
// error (the receiver reset or went away) closes c. Loop-owned; no allocation.
func (l *loop) write(c *conn) {
	if c.state != joined || c.q.len() == 0 {
		return
	}
	iov := l.iov[:0]
	for i := 0; i < c.q.len() && len(iov) < iovMax; i++ {
		b := c.q.at(i).Bytes()
		if i == 0 {
			b = b[c.headOff:]
		}
		iov = append(iov, unix.Iovec{Base: &b[0]})
		iov[len(iov)-1].SetLen(len(b))
	}
	n, err := writev(c.gc.Fd(), iov)
	clear(iov) // keep no pointers into frames
	l.iov = iov[:0]
	if err != nil {
		if err != unix.EAGAIN && err != unix.EINTR {
			l.srv.failWrite(c, err)
			return
		}
		n = 0
	}
	if n == 0 {
		now := l.srv.now()
		if c.stuckSince == 0 {
			c.stuckSince = now
		}
		if c.stalled() {
			c.retryGap = int64(stalledRetryGap)
			l.trimStalled(c)
		} else {
			c.retryGap = min(max(2*c.retryGap, int64(backlogPoll)), int64(maxRetryGap))
		}
		c.retryAt = now + c.retryGap
	} else {
		c.retryGap, c.retryAt, c.stuckSince = 0, 0, 0
		c.stallSince = 0 // the receiver is reading
		l.stats.bytesOut.Add(uint64(n))
		c.sent += uint64(n)
		c.queued -= n
		for n > 0 {
			rest := c.q.at(0).Len() - c.headOff
			if n < rest {
				c.headOff += n
				break
			}
			n -= rest
			c.headOff = 0
			c.q.pop().Release()
			l.stats.framesOut.Add(1)
		}
	}
	if c.q.len() > 0 {
		l.markBacklog(c)
	} else {
		c.q.shrinkIfIdle()
	}
}

// trimStalled cuts a stalled receiver's backlog to stalledPendingFrames,
// dropping the newest queued frames (whole: the head, which may be partly
// written, is always kept) and counting them. Loop-owned.
func (l *loop) trimStalled(c *conn) {
	for c.q.len() > stalledPendingFrames {
		f := c.q.popBack()
		c.queued -= f.Len()
		f.Release()
		c.dropped++
		l.stats.dropped.Add(1)
	}
	c.q.compact()
}

// iovMax is the most buffers one writev takes (UIO_MAXIOV on Linux).
const iovMax = 1024

// writev is writev(2) on a non-blocking socket without allocating.
func writev(fd int, iov []unix.Iovec) (int, error) {
	if len(iov) == 0 {
		return 0, nil
	}
	n, _, errno := unix.Syscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

func (l *loop) markBacklog(c *conn) {
	if c.backlog {
		return
	}
	c.backlog = true
	l.backlog = append(l.backlog, c)
	l.backlogCount.Add(1)
}

// pollBacklog runs on this loop, queued by the ticker: offers every receiver
// with a backlog more bytes.
func (l *loop) pollBacklog(context.Context) error {
	l.pollArmed.Store(false)
	list := l.backlog
	l.backlog = nil
	l.backlogCount.Store(0)
	now := l.srv.now()
	for _, c := range list {
		c.backlog = false
		if c.state == joined && c.q.len() > 0 && now < c.retryAt {
			l.markBacklog(c) // its socket was full: not yet
			continue
		}
		l.write(c)
	}
	if cap(list) <= 1024 && l.backlog == nil {
		clear(list) // do not keep closed conns reachable
		l.backlog = list[:0]
	}
	return nil
}

// sweep runs on this loop, queued by the ticker: closes connections whose
// frame is too slow or too late, connections past the join or idle timeout,
// and receivers that are stalled and silent.
// The join timeout measures the client, not the server's backlog: it closes
// a connection that has not joined and is silent, not one whose bytes wait
// unread in the kernel because this loop was busy, nor one whose join frame
// is still arriving (bytes within the last join timeout): the frame deadline
// and minimum rate govern that (when both are off, the join timeout does).
func (l *loop) sweep(context.Context) error {
	now := l.srv.now()
	cfg := &l.srv.cfg
	frameRulesOn := cfg.FrameTimeout > 0 || cfg.FrameMinRate > 0
	for c := range l.conns {
		if c.state >= closing {
			continue
		}
		if c.frameStart != 0 {
			if reason := l.srv.frameVerdict(c, now); reason != "" {
				l.srv.closeConn(c, reason)
				continue
			}
		}
		switch {
		case c.state == awaitingJoin && cfg.JoinTimeout > 0 && now-c.opened > int64(cfg.JoinTimeout):
			arriving := c.held > 0 && frameRulesOn && now-c.lastRead <= int64(cfg.JoinTimeout)
			if !arriving && unreadBytes(c.gc.Fd()) == 0 {
				l.srv.closeConn(c, "join-timeout")
			}
		case c.state == joined && cfg.IdleTimeout > 0 && now-c.lastRead > int64(cfg.IdleTimeout):
			l.srv.closeConn(c, "idle-timeout")
		case c.state == joined && cfg.StallTimeout > 0 && c.stallSince != 0 &&
			now-c.stallSince > int64(cfg.StallTimeout) && now-c.lastRead > int64(cfg.StallTimeout):
			l.srv.closeConn(c, "stalled-and-silent")
		}
	}
	return nil
}
