package engine

// Bounded steps: returning to epoll between slices of a big job.
//
// Why: a join storm on a channel of thousands is N²/2 deliveries, and one
// task that drains another loop's inbox or writes to every dirty member can
// take 50-130 ms (measured: 5,000 joins, 2 loops). Everything else on that
// loop (a pair on another channel) waits for it, so the engine does such
// work in slices (drainSome, flush) and lets the loop read its ready
// sockets between them. A gnet task cannot do that by queueing itself
// again: gnet runs the tasks queued during its task pass in that same pass,
// before its next epoll_wait. gnet calls OnTraffic for a readable socket
// after that epoll_wait, so each loop enrolls one end of a socket pair of its
// own (resumer) and writes a byte to the other end to be called back once
// the sockets ready by then have been handled.
//
// The pair is two descriptors per loop, made with the loop (its first
// connection), like the writable set's. It is not a client: OnOpen, OnTraffic
// and OnClose recognise it by its context and it is never in loop.conns.

import (
	"context"
	"log/slog"
	"net"
	"os"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"
)

// resumer is one loop's socket pair. Loop-owned once enrolled.
type resumer struct {
	l      *loop
	wfd    int    // the end written to; gnet polls the other
	opened bool   // gnet has opened the enrolled end (OnOpen)
	wakes  uint64 // resumes it has made (for tests, read on the loop)
}

var resumeByte = []byte{1}

// startResumer makes l's socket pair and enrolls one end in l's event loop.
// Until gnet has opened it (or if that fails), resumeSoon falls back to a
// task, which is correct but does not yield to epoll.
func (l *loop) startResumer() {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		l.warnNoResumer(err)
		return
	}
	f := os.NewFile(uintptr(fds[0]), "mlesd-resume")
	nc, err := net.FileConn(f) // a duplicate: Enroll wants a net.Conn, and closes it once registered
	_ = f.Close()
	if err != nil {
		_ = unix.Close(fds[1])
		l.warnNoResumer(err)
		return
	}
	r := &resumer{l: l, wfd: fds[1]}
	res, err := l.el.Enroll(gnet.NewContext(context.Background(), r), nc)
	if err != nil {
		_ = nc.Close()
		_ = unix.Close(fds[1])
		l.warnNoResumer(err)
		return
	}
	l.resumer = r
	go func() { // gnet registers it on its worker pool; OnOpen sets r.opened
		if rr := <-res; rr.Err != nil {
			l.warnNoResumer(rr.Err)
		}
	}()
}

// warnNoResumer logs why l has no resume pair: its big jobs then continue
// in tasks, which gnet runs before it reads again.
func (l *loop) warnNoResumer(err error) {
	l.srv.log.Warn("no resume socket pair: this loop's big jobs are not interleaved with its reads",
		slog.Int("loop", l.idx), slog.Any("err", err))
}

// resumeSoon makes the loop call resume once, after the sockets ready now
// have been handled. Loop-owned.
func (l *loop) resumeSoon() {
	if l.resumeArmed {
		return
	}
	l.resumeArmed = true
	if r := l.resumer; r != nil && r.opened {
		if _, err := unix.Write(r.wfd, resumeByte); err == nil {
			return
		}
	}
	if err := l.el.Execute(context.Background(), l.resumeRunnable); err != nil {
		l.resume() // the engine is stopping: finish now
	}
}

// resume does the next slice of the loop's deferred work: its own deferred
// walks and the rest of the inbox, then the dirty receivers left by the
// last flush. Loop-owned.
func (l *loop) resume() {
	l.resumeArmed = false
	if l.pending() {
		l.drainSome(drainStepDeliveries)
		return
	}
	l.flush()
}

// onTraffic is OnTraffic for the resume pair. Loop-owned.
func (r *resumer) onTraffic(gc gnet.Conn) gnet.Action {
	_, _ = gc.Discard(-1)
	r.wakes++
	r.l.resume()
	return gnet.None
}

// onClose is OnClose for the resume pair (the engine stopping).
func (r *resumer) onClose() {
	if r.l.resumer == r {
		r.l.resumer = nil
	}
	_ = unix.Close(r.wfd)
}
