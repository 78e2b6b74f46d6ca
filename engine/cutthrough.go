package engine

// Cut-through forwarding for small channels.
//
// Why: on a channel of a few members, all on one loop (migrate.go puts them
// there), the general path costs more than the forwarding itself: every
// frame is copied into a pooled, reference-counted Frame, queued per
// receiver, handed to writev as one iovec each, and released; in a pairs
// profile NewFrame and Release were 40 % of the server's CPU. When the
// channel keeps no history and every receiver is keeping up (an empty
// queue, not waiting for room), the frames just read are already whole,
// in order, in gnet's inbound buffer: written to each receiver with one
// write(2) straight from there, nothing is copied, allocated or counted
// per frame.
//
// What stays the same: each receiver's byte stream holds whole frames in
// the order its senders' frames were read; a short write queues the rest
// (the frame it stopped in, with the part written as headOff, then the
// following frames) as the general path would, so the receiver then lags
// and resumes as any other (lag.go, writable.go). The moment any
// condition fails (a member lags or has a queue, the channel gets a member
// on another loop or an uplink) frames take the general
// path; nothing depends on which path the frame before took.
//
// Only channels without history (--history-limit 0) take it. A version that
// also made Frames for the history and appended them per run made client
// TestSendOnlyConnectionSendsButDoesNotReceive fail in 3 of 60 runs (the
// subscriber got none of a send-only member's frames), never without it;
// the cause was not found, so it stays out.

import (
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/router"
)

// cutMaxMembers bounds the channels forwarded cut-through: one write per
// receiver per run is the general path's cost too (one writev per receiver
// per round), but the general path also coalesces several senders' frames
// into one write per receiver, which pays on bigger channels.
const cutMaxMembers = placeMaxMembers

// cutThrough forwards the whole frames at the head of c's inbound buffer
// straight to the other members of its channel, if the channel qualifies
// (see the top of this file), and consumes them. It returns how many frames
// it forwarded (0: none, the general path reads on). Loop-owned; no
// allocation, no lock.
func (s *Server) cutThrough(c *conn, in inbound) int {
	if c.up != nil || c.ch.KeepsHistory() {
		return 0
	}
	l := c.loop
	snap := c.ch.Snapshot()
	if len(snap.Groups) != 1 || snap.Groups[0].Loop != l.idx {
		return 0
	}
	set := snap.Groups[0].Set
	if len(set.Members) > cutMaxMembers || set.Log.Lagging > 0 || set.Lost.Load() != 0 {
		return 0
	}
	for _, m := range set.Members {
		if r := m.(*conn); r != c && (r.q.len() > 0 || r.wArmed || r.lagSoon || r.up != nil || r.state != joined) {
			return 0
		}
	}
	avail := in.InboundBuffered()
	if avail < codec.HeaderLen {
		return 0
	}
	buf, err := in.Peek(avail)
	if err != nil {
		return 0
	}
	end, frames := 0, 0
	for len(buf)-end >= codec.HeaderLen {
		h, err := codec.ParseHeader(buf[end:])
		if err != nil || h.Len > s.cfg.MaxFrame {
			break // the general path closes the connection with the reason
		}
		total := codec.HeaderLen + h.Len
		if total > len(buf)-end {
			break
		}
		end += total
		frames++
	}
	if frames == 0 {
		return 0
	}
	run := buf[:end]
	for _, m := range set.Members {
		if r := m.(*conn); r != c {
			l.writeRun(r, run, frames)
		}
	}
	_, _ = in.Discard(end)
	l.stats.framesIn.Add(uint64(frames))
	l.stats.bytesIn.Add(uint64(end))
	l.stats.cutFrames.Add(uint64(frames))
	return frames
}

// writeRun writes run, frames whole frames, to r, whose queue is empty, and
// queues what its socket did not take. Loop-owned.
func (l *loop) writeRun(r *conn, run []byte, frames int) {
	n, err := write(r.gc.Fd(), run)
	if err != nil {
		if err != unix.EAGAIN && err != unix.EINTR {
			l.srv.failWrite(r, err)
			return
		}
		n = 0
	}
	if n > 0 {
		l.stats.bytesOut.Add(uint64(n))
		r.sent += uint64(n)
	}
	if n == len(run) {
		l.stats.framesOut.Add(uint64(frames))
		return
	}
	// The socket is full: the rest waits in r's queue, from the frame the
	// write stopped in, as the general path would have left it.
	whole := 0
	for off := 0; off < len(run); {
		h, _ := codec.ParseHeader(run[off:]) // checked by cutThrough
		total := codec.HeaderLen + h.Len
		if off+total <= n {
			off += total
			whole++
			continue
		}
		f := router.NewFrame(run[off : off+total])
		r.deliver(f, true) // a run is at most one read: bounded
		f.Release()
		if off < n { // the head, partly written
			r.headOff = n - off
			r.queued -= n - off
		}
		off += total
	}
	l.stats.framesOut.Add(uint64(whole))
}

// write is write(2) without the os package's wrapping.
func write(fd int, b []byte) (int, error) {
	n, _, errno := unix.Syscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}
