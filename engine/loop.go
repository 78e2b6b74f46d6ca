package engine

import (
	"context"
	"log/slog"
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
	laggers []*conn         // receivers out of their sets' walks, reading their logs (lag.go)
	toLag   []lagRequest    // scratch: receivers to make laggers after the walk in progress
	walking *router.LoopSet // the set whose walk is in progress, or nil
	// minCursor is foldAllLaggers' scratch: the oldest entry any lagger of
	// a set still needs.
	minCursor map[*router.LoopSet]uint64
	outbox    []*batch        // per target loop: frames for that loop's subscribers
	frames    []*router.Frame // scratch: one batch read from one connection
	iov       []unix.Iovec    // scratch for vectored writes
	conns     map[*conn]struct{}
	// flushArmed: a flush task is queued (flushSoon): everything read in
	// this round of events is written with one writev per receiver.
	flushArmed bool
	// Work left for later steps (resume.go): pend is the inbox's batches
	// not yet delivered, oldest first, from item pendAt of the first;
	// resumer wakes the loop for them after its next epoll round; later is
	// flush's scratch for the receivers it leaves dirty.
	pend, pendTail *batch
	pendAt         int
	// deferred is the walks of this loop's own frames left for a later
	// step, oldest from deferredAt; stepLeft the deliveries this round's
	// own walks may still make before big sets' walks are deferred (reset
	// by flush, at the end of each round).
	deferred     []deferredWalk
	deferredAt   int
	deferredCost int // deliveries those walks will make (members then)
	stepLeft     int
	resumer      *resumer
	resumeArmed  bool // a resume is due (a byte written, or a task queued)
	later        []*conn
	// freeze: a handover round is under way (freeze.go): the connections
	// it holds (holds) are neither parsed nor written, nor closed by the
	// sweep. nil: none.
	freeze *Round

	// any goroutine
	inbox         atomic.Pointer[batch] // LIFO of batches from other loops
	inboxArmed    atomic.Bool           // a drain task is queued on this loop
	inboxFrames   atomic.Int64          // frames posted and not yet drained
	inboxBytes    atomic.Int64          // their memory (Frame.Size)
	inboxMax      int64                 // bound on inboxFrames (maxInboxFrames; tests lower it)
	inboxMaxBytes int64                 // bound on inboxBytes (maxInboxBytes)
	drainRunnable gnet.Runnable
	sweepRunnable gnet.Runnable
	foldRunnable  gnet.Runnable // foldAllLaggers
	flushRunnable gnet.Runnable
	// resumeRunnable is resume as a task, for when the resume pair is
	// missing (a task does not yield to epoll, resume.go).
	resumeRunnable gnet.Runnable
	stats          loopStats

	// sweepIdle: the last sweep found nothing a later one could close (no
	// connection awaiting its join, none with a frame arriving, none
	// dropping under a stall timeout, no idle timeout), and nothing has
	// changed that since; foldDue: frames were logged or lost for laggers
	// since the last fold. The ticker skips the task when there is nothing
	// to do: an idle loop is not woken at all. Written on the loop, read by
	// the ticker.
	sweepIdle atomic.Bool
	foldDue   atomic.Bool

	// writable holds the receivers with a backlog, each woken once when
	// its socket has room (writable.go); its run task is writableRunnable.
	writable         writableSet
	writableRunnable gnet.Runnable
	// pressured: receivers whose socket took nothing on a writable wake-up
	// (TCP memory exhausted), re-armed by the next sweep (deferWatch).
	pressured []*conn
}

// loopStats are counters summed at read time; each is written by one loop.
type loopStats struct {
	framesIn  atomic.Uint64
	bytesIn   atomic.Uint64
	framesOut atomic.Uint64
	bytesOut  atomic.Uint64
	dropped   atomic.Uint64
	// inboxDropped counts frames other loops could not post to this one
	// (its inbox was full); each also counts in dropped, once per member.
	inboxDropped atomic.Uint64
	busyNanos    atomic.Uint64
	joins        atomic.Uint64
	// members is how many client connections are joined on the loop now;
	// moved counts connections moved from here to another loop to join
	// (migrate.go).
	members atomic.Int64
	moved   atomic.Uint64
	// cutFrames counts frames forwarded cut-through (cutthrough.go).
	cutFrames atomic.Uint64
	_         [64]byte // keep the next loop's counters off this cache line
}

// addBusy adds the time since began to the loop's busy time.
func (s *loopStats) addBusy(began time.Time) { s.busyNanos.Add(uint64(time.Since(began))) }

// item is one frame for the members of one channel on one loop: the
// receiving loop walks set as it is when the item arrives. A frame of at
// most copyFrameMax bytes travels as a copy in its batch's buf (f nil, the
// bytes at buf[off:off+n], its history sequence in seq) and is made anew on
// the receiving loop: sharing it would bounce its reference count and its
// pooled buffer between cores, which cost a pairs workload a quarter of
// its CPU in cache misses (profile in BENCHMARKS.md).
type item struct {
	f   *router.Frame
	set *router.LoopSet
	off int32
	n   int32
	seq uint64
}

// batch carries items from one loop to another in one task.
type batch struct {
	next  *batch
	items []item
	buf   []byte // the copied frames' bytes
	bytes int64  // memory of the items' frames (Frame.Size, or the copy's length)
}

// frame returns the item's frame: the shared one, or a new one made from the copy
// in b (the caller releases either).
func (it *item) frame(b *batch) *router.Frame {
	if it.f != nil {
		return it.f
	}
	return router.CopyFrame(b.buf[it.off:it.off+it.n], it.seq)
}

// release drops the item's reference to a shared frame (a copy holds none).
func (it *item) release() {
	if it.f != nil {
		it.f.Release()
	}
}

var batchPool = sync.Pool{New: func() any {
	return &batch{items: make([]item, 0, 64), buf: make([]byte, 0, batchBufSize)}
}}

func newLoop(idx int, srv *Server, el gnet.EventLoop, nloops int) *loop {
	l := &loop{idx: idx, srv: srv, el: el, outbox: make([]*batch, nloops), conns: make(map[*conn]struct{}),
		minCursor: make(map[*router.LoopSet]uint64),
		inboxMax:  maxInboxFrames, inboxMaxBytes: maxInboxBytes, stepLeft: drainStepDeliveries}
	l.drainRunnable = gnet.RunnableFunc(l.drainInbox)
	l.writableRunnable = gnet.RunnableFunc(l.writeReady)
	l.sweepRunnable = gnet.RunnableFunc(l.sweep)
	l.foldRunnable = gnet.RunnableFunc(l.foldAllLaggers)
	l.flushRunnable = gnet.RunnableFunc(func(context.Context) error {
		l.flushArmed = false
		l.flush()
		return nil
	})
	l.resumeRunnable = gnet.RunnableFunc(func(context.Context) error {
		l.resume()
		return nil
	})
	return l
}

// fanout hands f to every member of snap except sender: walking this
// loop's set at once, through the outbox for the other loops. Loop-owned; no
// lock, no allocation in steady state.
func (l *loop) fanout(f *router.Frame, snap *router.Snapshot, sender *conn) {
	for gi := range snap.Groups {
		g := &snap.Groups[gi]
		if g.Loop == l.idx {
			set := g.Set
			if set.Deferred > 0 || (l.stepLeft <= 0 && len(set.Members) >= bigSetMembers) {
				if l.deferredCost < maxDeferredDeliveries {
					l.deferWalk(f, set, sender) // after the sockets ready now (resume.go)
					continue
				}
				// As much is deferred as a loop may hold: do it now, as
				// the loop did before, which slows its reads and so its
				// senders (TCP's back-pressure) instead of queueing more.
				l.walkDeferred(l.deferredCost)
			}
			l.stepLeft -= len(set.Members)
			l.walk(f, set, sender)
			continue
		}
		b := l.outbox[g.Loop]
		if b == nil {
			b = batchPool.Get().(*batch)
			l.outbox[g.Loop] = b
		}
		if n := f.Len(); n <= copyFrameMax {
			if len(b.buf)+n > cap(b.buf) {
				// Full: send it now rather than grow it (a grown buffer
				// would be copied, and kept by the pool or collected).
				l.srv.loops[g.Loop].Load().post(b)
				b = batchPool.Get().(*batch)
				l.outbox[g.Loop] = b
			}
			off := len(b.buf)
			b.buf = append(b.buf, f.Bytes()...)
			b.items = append(b.items, item{set: g.Set, off: int32(off), n: int32(n), seq: f.Seq()})
			b.bytes += int64(n)
			continue
		}
		f.Ref()
		b.items = append(b.items, item{f: f, set: g.Set})
		b.bytes += int64(f.Size())
	}
}

// walk hands f to every listed member of set (this loop's) except sender,
// and except those whose history replay held it already (Frame.Seq), and
// logs it once in set.Log while any member lags (lag.go). A listed member
// whose socket is full becomes a lagger after the walk: laggers are not
// listed, so they cost nothing here; they read the log at their sockets'
// pace. Loop-owned; no lock, no allocation in steady state.
func (l *loop) walk(f *router.Frame, set *router.LoopSet, sender *conn) {
	if set.Lost.Load() != 0 {
		l.countLost(set)
	}
	var at uint64 // f's sequence in set.Log, once logged
	logged := set.Log.Lagging > 0
	if logged {
		at = l.logFrame(set, f, sender)
	}
	seq := f.Seq()
	l.walking = set
	for _, s := range set.Members {
		c := s.(*conn)
		if c == sender || (seq != 0 && seq <= c.joinSeq) {
			continue
		}
		ok := c.deliver(f, false)
		if !ok && !logged { // c reads f from the log
			at, logged = l.logFrame(set, f, sender), true
		}
		if !ok || c.lagSoon {
			c.lagSoon = false
			l.toLag = append(l.toLag, lagRequest{c: c, fromF: !ok})
		}
	}
	l.walking = nil
	if len(l.toLag) > 0 {
		for i, r := range l.toLag {
			from := set.Log.Head() // after f: c has it queued
			if r.fromF {
				from = at
			}
			l.lag(r.c, from)
			l.toLag[i] = lagRequest{}
		}
		l.toLag = l.toLag[:0]
	}
}

// deferredWalk is a walk of one of this loop's own frames to one of its
// sets, left for a later step (fanout); it holds a reference to f.
type deferredWalk struct {
	f      *router.Frame
	set    *router.LoopSet
	sender *conn
	cost   int // its share of loop.deferredCost
}

// deferWalk queues the walk of f to set for a later step: this round has
// made stepLeft's deliveries already, or earlier frames for set wait
// (set.Deferred), which f must not pass. Loop-owned.
func (l *loop) deferWalk(f *router.Frame, set *router.LoopSet, sender *conn) {
	f.Ref()
	l.deferred = append(l.deferred, deferredWalk{f: f, set: set, sender: sender, cost: len(set.Members) + 1})
	l.deferredCost += len(set.Members) + 1
	set.Deferred++
	l.resumeSoon()
}

// countLost counts, for every member of set, the frames another loop could
// not post here (post). Laggers count them from set.Log.Lost.
func (l *loop) countLost(set *router.LoopSet) {
	n := set.Lost.Swap(0)
	set.Log.Lost += n
	if set.Log.Lagging > 0 {
		l.foldDue.Store(true)
	}
	for _, s := range set.Members {
		s.(*conn).dropped += n
	}
	l.stats.dropped.Add(n * uint64(len(set.Members)))
}

// leaveSet takes c out of its set, or off the laggers, at its leave.
func (l *loop) leaveSet(c *conn) {
	switch {
	case c.lagging:
		l.unlistLagger(c)
	case c.set != nil && c.setIdx >= 0:
		if moved := c.set.Remove(c.setIdx); moved != nil {
			moved.(*conn).setIdx = c.setIdx
		}
		c.setIdx = -1
	}
}

// flush sends every outbox to its loop (one task per loop, and none when
// that loop already has a drain queued) and writes to every dirty receiver,
// but to at most flushStepBigWrites members of big sets (bigSetMembers): the
// rest stay dirty for the next step (resumeSoon), after the loop has read
// its ready sockets, so a storm on a big channel does not hold a pair on
// another channel for thousands of writes. Loop-owned.
func (l *loop) flush() {
	for i, b := range l.outbox {
		if b == nil {
			continue
		}
		l.outbox[i] = nil
		l.srv.loops[i].Load().post(b)
	}
	big := 0
	later := l.later[:0]
	for i := 0; i < len(l.dirty); i++ { // a write may make others dirty
		c := l.dirty[i]
		l.dirty[i] = nil
		if c.set != nil && len(c.set.Members) >= bigSetMembers {
			if big >= flushStepBigWrites {
				later = append(later, c) // stays dirty
				continue
			}
			big++
		}
		c.dirty = false
		l.write(c)
	}
	l.later = l.dirty[:0]
	l.dirty = later
	l.stepLeft = drainStepDeliveries // the round is over
	if len(later) > 0 {
		l.resumeSoon()
	}
	if l.writable.armed.Load() {
		// Sockets that drained while this loop was busy: write to them
		// now rather than after every other ready event of this round
		// (gnet runs tasks only then), so a busy loop does not let a
		// healthy reader's backlog overflow. The queued task finds none.
		l.writeReadyNow()
	}
}

// flushSoon flushes once this round of events is handled: gnet runs tasks
// after every ready connection of a wake-up has been read, so each
// receiver gets one writev (and each other loop one batch) for all the
// frames of the round, not one per sender. A join storm or a fan-in of a
// thousand publishers costs one write per receiver per round. Loop-owned.
func (l *loop) flushSoon() {
	if l.flushArmed || (len(l.dirty) == 0 && !l.outboxFull() && !l.writable.armed.Load()) {
		return
	}
	l.flushArmed = true
	if err := l.el.Execute(context.Background(), l.flushRunnable); err != nil {
		l.flushArmed = false // the engine is stopping: write now
		l.flush()
	}
}

// outboxFull reports whether any other loop has frames waiting here.
func (l *loop) outboxFull() bool {
	for _, b := range l.outbox {
		if b != nil {
			return true
		}
	}
	return false
}

// post queues b for this loop and makes sure a drain task will run. When
// this loop's inbox already holds inboxMax frames or inboxMaxBytes of them
// (it is far behind), b is dropped instead: the sender's loop never waits,
// and every member the frames were for counts them as dropped when its
// loop next walks that channel (LoopSet.Lost). Safe from any goroutine.
func (l *loop) post(b *batch) {
	n := int64(len(b.items))
	frames, bytes := l.inboxFrames.Add(n), l.inboxBytes.Add(b.bytes)
	if frames > l.inboxMax || bytes > l.inboxMaxBytes {
		l.inboxFrames.Add(-n)
		l.inboxBytes.Add(-b.bytes)
		for i := range b.items {
			b.items[i].set.Lost.Add(1)
			b.items[i].release()
		}
		l.stats.inboxDropped.Add(uint64(n))
		l.srv.rlog.Log(levelWarn, "loop-queue-full", "an event loop is far behind; frames for its members are dropped",
			slog.Int("loop", l.idx), slog.Int64("queued_frames", l.inboxFrames.Load()))
		recycle(b)
		return
	}
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
		for i := range b.items {
			b.items[i].release()
		}
		recycle(b)
		b = next
	}
}

func recycle(b *batch) {
	clear(b.items)
	b.items = b.items[:0]
	b.buf = b.buf[:0]
	b.next = nil
	b.bytes = 0
	batchPool.Put(b)
}

// drainInbox runs on this loop: takes every posted batch, in the order
// posted, and delivers them in steps (drainSome). Per source loop, order is
// preserved.
func (l *loop) drainInbox(context.Context) error {
	defer l.stats.addBusy(time.Now())
	l.takeInbox()
	l.drainSome(drainStepDeliveries)
	return nil
}

// takeInbox moves the posted batches to the end of l.pend, in posting
// order. Loop-owned.
func (l *loop) takeInbox() {
	l.inboxArmed.Store(false)
	head := l.inbox.Swap(nil)
	var prev, last *batch
	for head != nil { // reverse the LIFO into posting order
		next := head.next
		head.next = prev
		prev, head = head, next
		if last == nil {
			last = prev
		}
	}
	if prev == nil {
		return
	}
	if l.pend == nil {
		l.pend = prev
	} else {
		l.pendTail.next = prev
	}
	l.pendTail = last
}

// drainSome does the walks left for later: this loop's own deferred ones
// (deferWalk), then l.pend's frames, oldest first, until about budget
// deliveries (a frame walked to a set of n members costs n) are done, then
// flushes. What is left waits for the next step (resumeSoon), after the
// loop has read its ready sockets: one task never walks thousands of
// frames to a channel of thousands. Loop-owned.
func (l *loop) drainSome(budget int) {
	budget -= l.walkDeferred(budget)
	for l.pend != nil && budget > 0 {
		b := l.pend
		for l.pendAt < len(b.items) && budget > 0 {
			it := &b.items[l.pendAt]
			l.pendAt++
			budget -= len(it.set.Members) + 1
			f := it.frame(b)
			l.walk(f, it.set, nil)
			f.Release()
		}
		if l.pendAt < len(b.items) {
			break
		}
		l.pend, l.pendAt = b.next, 0
		if l.pend == nil {
			l.pendTail = nil
		}
		// Counted until delivered, so that post's bound covers what
		// waits here as well as what waits in the inbox.
		l.inboxFrames.Add(-int64(len(b.items)))
		l.inboxBytes.Add(-b.bytes)
		recycle(b)
	}
	l.flush()
	if l.pending() {
		l.resumeSoon()
	}
}

// walkDeferred does this loop's own deferred walks, oldest first, until
// about budget deliveries are made, and returns how many were. Loop-owned.
func (l *loop) walkDeferred(budget int) (done int) {
	for l.deferredAt < len(l.deferred) && done < budget {
		d := l.deferred[l.deferredAt]
		l.deferred[l.deferredAt] = deferredWalk{}
		l.deferredAt++
		done += d.cost
		l.deferredCost -= d.cost
		d.set.Deferred--
		l.walk(d.f, d.set, d.sender)
		d.f.Release()
	}
	if l.deferredAt == len(l.deferred) {
		l.deferred, l.deferredAt = l.deferred[:0], 0
	}
	return done
}

// pending reports whether walks are left for a later step. Loop-owned.
func (l *loop) pending() bool { return l.pend != nil || l.deferredAt < len(l.deferred) }

// drainAll delivers everything posted to this loop in one step (a
// handover's freeze needs every frame read before it in its receivers'
// queues). Loop-owned.
func (l *loop) drainAll() {
	l.takeInbox()
	for l.pending() {
		l.drainSome(drainStepDeliveries)
	}
}

// write writes as much of c's backlog as its socket takes now, with
// writev straight from the shared frames (a lagger's backlog is refilled
// from its set's log as it goes). What the socket does not take stays queued
// as references, never copied (gnet's own write would copy the rest into a
// per-connection buffer); c then becomes a lagger, if it was not one, and
// waits in the loop's writable set until its socket has room. A lagger that
// catches up is listed again. At most maxWriteRounds writes and maxWriteBytes per call, so one
// fast receiver far behind does not hold the loop: the rest is written on
// its next writable event. A write error (the receiver reset or went away)
// closes c. Loop-owned; no allocation.
func (l *loop) write(c *conn) {
	woken := c.woken
	c.woken = false
	if c.state != joined || c.wArmed || l.holds(c) {
		return
	}
	sent := c.sent
	for round := 0; ; round++ {
		if c.lagging && c.q.len() < iovMax/2 {
			l.refill(c)
		}
		if c.q.len() == 0 {
			c.q.shrinkIfIdle()
			if c.lagging && l.walking != c.set {
				l.unlag(c)
				return
			}
			if !c.lagging {
				return
			}
			break // cannot be listed during its set's walk: come back
		}
		if !l.writeQueue(c) {
			if c.state != joined {
				return // failed and closing
			}
			break // the socket is full
		}
		if round+1 >= maxWriteRounds || c.sent-sent >= maxWriteBytes {
			break
		}
	}
	if !c.lagging {
		if l.walking == c.set {
			c.lagSoon = true // the walk makes it a lagger at the right frame
		} else {
			l.lag(c, c.set.Log.Head())
		}
	}
	if c.sent != sent {
		c.pressureLevel = 0
	}
	if woken && c.sent == sent {
		// The kernel said the socket had room and then took nothing: TCP
		// memory as a whole is exhausted (net.ipv4.tcp_mem), which epoll
		// does not see, so re-arming now would wake again at once, and
		// busy-loop (measured: 10,000 send-only members, 80 s of CPU). Try
		// again at a later sweep instead (deferWatch backs off).
		l.deferWatch(c)
		return
	}
	l.watch(c)
}

// watch arms c's writable notification. Without one there is no way to
// learn when its socket drains (out of descriptors for the epoll set, or
// max_user_watches): c is closed rather than hold its backlog forever.
// Loop-owned.
func (l *loop) watch(c *conn) {
	if err := l.writable.watch(c); err != nil {
		c.reason = "no-writable-watch"
		l.srv.failWrite(c, err)
	}
}

// writeQueue writes c's queue with one writev and reports whether the
// socket took all of it (false: it is full, or the write failed and c is
// closing).
func (l *loop) writeQueue(c *conn) bool {
	iov := l.iov[:0]
	total := 0
	for i := 0; i < c.q.len() && len(iov) < iovMax; i++ {
		b := c.q.at(i).Bytes()
		if i == 0 {
			b = b[c.headOff:]
		}
		iov = append(iov, unix.Iovec{Base: &b[0]})
		iov[len(iov)-1].SetLen(len(b))
		total += len(b)
	}
	n, err := writev(c.gc.Fd(), iov)
	clear(iov) // keep no pointers into frames
	l.iov = iov[:0]
	if err != nil {
		if err != unix.EAGAIN && err != unix.EINTR {
			l.srv.failWrite(c, err)
			return false
		}
		n = 0
	}
	if n > 0 {
		l.stats.bytesOut.Add(uint64(n))
		c.sent += uint64(n)
		c.queued -= n
		for m := n; m > 0; {
			rest := c.q.at(0).Len() - c.headOff
			if m < rest {
				c.headOff += m
				break
			}
			m -= rest
			c.headOff = 0
			c.q.pop().Release()
			l.stats.framesOut.Add(1)
		}
	}
	return n == total
}

// writeReady runs on this loop, queued by the writable set: writes to every
// receiver whose socket has room again.
func (l *loop) writeReady(context.Context) error {
	defer l.stats.addBusy(time.Now())
	l.writeReadyNow()
	return nil
}

func (l *loop) writeReadyNow() {
	for _, t := range l.writable.take() {
		if c := l.writable.fired(t); c != nil {
			c.woken = true
			l.write(c)
		}
	}
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

// sweepDue tells the ticker that a sweep has something to check again.
// Loop-owned.
func (l *loop) sweepDue() {
	if l.sweepIdle.Load() {
		l.sweepIdle.Store(false)
	}
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
	if l.freeze != nil && l.freeze.all {
		return nil // its clocks are handed over as ages, or run on after a thaw
	}
	now := l.srv.now()
	cfg := &l.srv.cfg
	frameRulesOn := cfg.FrameTimeout > 0 || cfg.FrameMinRate > 0
	busy := cfg.IdleTimeout > 0 && len(l.conns) > 0 // something a later sweep may close
	for c := range l.conns {
		if c.state >= closing {
			continue
		}
		if heldBack(c) {
			busy = true // held by a handover: its clocks run on once it is let go
			continue
		}
		if c.state == awaitingJoin || c.frameStart != 0 || (c.stallSince != 0 && cfg.StallTimeout > 0) {
			busy = true
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
	if len(l.pressured) > 0 {
		l.rewatchPressured()
		busy = true
	}
	l.sweepIdle.Store(!busy)
	return nil
}

// deferWatch puts c, whose socket took nothing although the kernel said it
// had room, on the list a later sweep re-arms (see write). Loop-owned.
func (l *loop) deferWatch(c *conn) {
	if !c.pressured {
		c.pressured = true
		l.pressured = append(l.pressured, c)
		// Each wake-up in a row that writes nothing doubles the wait, up
		// to maxPressureLevel: retrying thousands of receivers every sweep
		// cost a core while the kernel's memory stayed full.
		c.pressureWait = 1 << c.pressureLevel
		if c.pressureLevel < maxPressureLevel {
			c.pressureLevel++
		}
	}
	l.sweepDue()
	if len(l.pressured) > 1 {
		return // logged when the list began
	}
	l.srv.rlog.Log(levelWarn, "tcp-memory", "the kernel takes no more bytes although sockets have room: TCP memory is exhausted "+
		"(net.ipv4.tcp_mem); writes to the receivers concerned are retried after 0.25 s, backing off to 4 s",
		slog.Int("loop", l.idx))
}

// rewatchPressured re-arms the writable watch of every receiver deferWatch
// put aside. Loop-owned.
func (l *loop) rewatchPressured() {
	kept := l.pressured[:0]
	for _, c := range l.pressured {
		if c.state == joined && c.pressureWait > 1 {
			c.pressureWait--
			kept = append(kept, c)
			continue
		}
		c.pressured = false
		if c.state != joined || c.wArmed {
			continue
		}
		l.watch(c)
	}
	clear(l.pressured[len(kept):])
	l.pressured = kept
}

// maxPressureLevel caps the back-off of deferWatch: at most 2^4 sweeps (4 s).
const maxPressureLevel = 4
