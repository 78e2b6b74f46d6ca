package engine

// Writable notifications beside gnet.
//
// Why: gnet v2 tells the handler when a socket is readable, never when it
// has room to write again (its own EPOLLOUT only drains gnet's outbound
// buffer). The engine does not use that buffer: it writes to sockets itself
// so that unsent bytes stay references to the shared frames instead of
// per-receiver copies (loop.write). So a receiver with a backlog needs
// another way to learn that its socket drained, and a timer that polls every
// backlogged socket costs CPU while nothing can be written and adds its
// period to every resume.
//
// How: each event loop owns a second epoll set (writableSet) holding the
// sockets that have a backlog, armed EPOLLOUT|EPOLLONESHOT: a socket fires
// once when it has room, then stays quiet until the next write that leaves
// bytes behind arms it again. One goroutine per loop waits in epoll_wait;
// each wake-up records the ready sockets and queues one task on the loop
// (an armed flag, as for the cross-loop inbox: one task per wake-up however
// many sockets are ready), and that task writes to them. An event names its
// connection by a token unique per loop and never reused, so an event for a
// connection that has since closed, its fd maybe reused, matches nothing.
// A connection leaves the set in OnClose, before gnet closes its fd.

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"
)

// writableStopToken is the token of the eventfd that ends the waiting
// goroutine; connection tokens start above it.
const writableStopToken = 0

// writableEvents is how many ready sockets one epoll_wait returns at most
// (more are returned by the next).
const writableEvents = 256

// writableSet is one event loop's set of sockets waiting for room.
// watch, forget and run are loop-owned; the waiting goroutine only touches
// mu, ready and armed.
type writableSet struct {
	// Made with the loop's first connection (OnOpen; or by the first watch
	// if that failed); only read after that by close, once the loops have
	// ended.
	epfd    int
	stopFd  int           // eventfd: written once to end wait
	done    chan struct{} // closed when wait returns
	started bool

	mu    sync.Mutex
	ready []uint64 // Lock: mu; tokens that fired since the last run

	armed   atomic.Bool  // a run task is queued on the loop
	waiting atomic.Int32 // connections armed and not yet fired (for Stop's drain)

	// loop-owned
	byToken map[uint64]*conn
	next    uint64
	batch   []uint64 // run's scratch, swapped with ready
}

// start makes the epoll set and its stop eventfd and starts the waiting
// goroutine, which queues task on el. Loop-owned.
func (w *writableSet) start(el gnet.EventLoop, task gnet.Runnable) error {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	stopFd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		_ = unix.Close(epfd)
		return err
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	setToken(&ev, writableStopToken)
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, stopFd, &ev); err != nil {
		_ = unix.Close(epfd)
		_ = unix.Close(stopFd)
		return err
	}
	w.epfd, w.stopFd, w.started = epfd, stopFd, true
	w.byToken = make(map[uint64]*conn)
	w.done = make(chan struct{})
	go w.wait(el, task)
	return nil
}

// setToken stores a token in an event's 64 bits of user data (Fd and Pad
// in x/sys/unix's layout).
func setToken(ev *unix.EpollEvent, t uint64) {
	ev.Fd = int32(uint32(t))
	ev.Pad = int32(uint32(t >> 32))
}

func tokenOf(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

// watch arms c's socket: the set fires once when it has room. A socket that
// has room already fires at once. Loop-owned; no allocation after c's
// first watch (one map entry).
func (w *writableSet) watch(c *conn) error {
	if c.wArmed {
		return nil
	}
	if !w.started {
		if err := w.start(c.loop.el, c.loop.writableRunnable); err != nil {
			return err
		}
	}
	ev := unix.EpollEvent{Events: unix.EPOLLOUT | unix.EPOLLONESHOT}
	op := unix.EPOLL_CTL_MOD
	if c.wToken == 0 {
		w.next++
		c.wToken = w.next
		w.byToken[c.wToken] = c
		op = unix.EPOLL_CTL_ADD
	}
	setToken(&ev, c.wToken)
	if err := unix.EpollCtl(w.epfd, op, c.gc.Fd(), &ev); err != nil {
		return err
	}
	c.wArmed = true
	w.waiting.Add(1)
	return nil
}

// forget takes c's socket out of the set. It must run before the fd is
// closed (OnClose), so that a reused fd number is never in the set by
// mistake. Loop-owned.
func (w *writableSet) forget(c *conn) {
	if c.wToken == 0 {
		return
	}
	_ = unix.EpollCtl(w.epfd, unix.EPOLL_CTL_DEL, c.gc.Fd(), nil)
	delete(w.byToken, c.wToken)
	c.wToken = 0
	if c.wArmed {
		c.wArmed = false
		w.waiting.Add(-1)
	}
}

// wait runs on its own goroutine until stop: it blocks in epoll_wait and
// hands each batch of ready sockets to the loop with one task.
func (w *writableSet) wait(el gnet.EventLoop, task gnet.Runnable) {
	defer close(w.done)
	events := make([]unix.EpollEvent, writableEvents)
	for {
		n, err := unix.EpollWait(w.epfd, events, -1)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return
		}
		stop := false
		w.mu.Lock()
		for i := 0; i < n; i++ {
			t := tokenOf(&events[i])
			if t == writableStopToken {
				stop = true
				continue
			}
			w.ready = append(w.ready, t)
		}
		w.mu.Unlock()
		if stop {
			return
		}
		if n > 0 && w.armed.CompareAndSwap(false, true) {
			if el.Execute(context.Background(), task) != nil {
				w.armed.Store(false) // the engine is stopping: nothing to write to
			}
		}
	}
}

// take returns the tokens that fired since the last take. Loop-owned; the
// returned slice is valid until the next take.
func (w *writableSet) take() []uint64 {
	w.armed.Store(false)
	w.mu.Lock()
	w.ready, w.batch = w.batch[:0], w.ready
	w.mu.Unlock()
	return w.batch
}

// fired looks up the connection a token names and marks it no longer armed;
// nil for a connection that has closed since. Loop-owned.
func (w *writableSet) fired(t uint64) *conn {
	c := w.byToken[t]
	if c == nil || !c.wArmed {
		return nil
	}
	c.wArmed = false
	w.waiting.Add(-1)
	return c
}

// shutdown ends the waiting goroutine and closes the set's descriptors.
// Call once, after the event loop has ended (nothing watches or forgets
// any more).
func (w *writableSet) shutdown() {
	if !w.started {
		return
	}
	w.started = false
	one := [8]byte{1} // eventfd counters are host-endian uint64s
	_, _ = unix.Write(w.stopFd, one[:])
	<-w.done
	_ = unix.Close(w.epfd)
	_ = unix.Close(w.stopFd)
}
