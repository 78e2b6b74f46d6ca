package engine

// Placing a small channel on one event loop.
//
// Why: gnet spreads connections over the loops round robin as they are
// accepted, before anyone knows their channel. With two loops the two ends
// of a pair land on different loops half of the time, and a bench harness
// that dials publisher, subscriber, publisher, ... puts every publisher on
// one loop and every subscriber on the other: then every frame crosses
// loops (a copy into a batch, a task, a wake-up of the other loop's
// epoll_wait), which made pairs 0.69x the goroutine-per-connection
// forwarder (BENCHMARKS.md). A channel with a few members is cheapest on
// one loop: a frame is written to its receivers by the loop that read it.
// Big channels keep being spread: their fan-out is worth two cores.
//
// How: when a connection's join frame arrives, the engine asks the router
// where the channel lives (Router.Placement). If the channel has fewer than
// placeMaxMembers members and its members are mostly on another loop (or
// the channel is new and another loop holds fewer joined members, which
// spreads small channels evenly), the connection moves there before it
// joins: its socket is duplicated and enrolled on the target loop (gnet's
// EventLoop.Enroll, which takes a net.Conn) with the join frame and its
// state, and the old loop closes only its own descriptor (gnet's close
// never calls shutdown(2), so the socket and the client see nothing). The
// target loop then processes the join as if it had read it.
//
// It moves only a connection that has sent nothing past its join frame (so
// no byte read from the socket has to travel with it) and whose join frame
// is small and not a resync; anything else joins where it is. Moving is an
// optimisation: a join that cannot move is still served, only across
// loops. The move happens before the join, so the connection has no queue,
// no membership and no history position to carry: only what OnOpen set up.

import (
	"context"
	"log/slog"
	"net"
	"os"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/mlesd/mlesd/codec"
)

const (
	// placeMaxMembers: a channel with fewer members than this has its
	// joiners moved to the loop holding most of it. A pair or a small
	// group then never crosses loops; past it, members stay where they
	// were accepted, so a big channel's fan-out uses every loop.
	placeMaxMembers = 8
	// moveJoinMax is the largest join frame a move carries (a copy);
	// larger joins (resyncs, big presence messages) join where they are.
	moveJoinMax = 4 << 10
)

// moved is what a connection brings to the loop it moves to: what OnOpen
// set up on the first loop, and its join frame, which the new loop
// processes at once.
type moved struct {
	opened int64 // Server.now when first opened: the join timeout still runs from it
	perIP  bool  // counted in Server.perIP: the count moves with it
	h      codec.Header
	join   []byte // the whole join frame, a copy
}

// placeFor returns the loop a connection joining the channel called name
// should be on, or nil to stay on l.
func (s *Server) placeFor(l *loop, name string) *loop {
	if len(s.loops) < 2 {
		return nil
	}
	home, members := s.router.Placement(name)
	if members >= placeMaxMembers {
		return nil
	}
	if members == 0 {
		// A new (or emptied) channel: start it on the loop with the fewest
		// joined members, so small channels spread over the loops.
		home = l.idx
		least := l.stats.members.Load()
		for i := range s.loops {
			if o := s.loops[i].Load(); o != nil && o.stats.members.Load() < least {
				home, least = i, o.stats.members.Load()
			}
		}
	}
	if home < 0 || home == l.idx {
		return nil
	}
	return s.loops[home].Load()
}

// reasonMovedLoop is what join returns for a connection that moved to
// another loop to join there: its connection on this loop is closed (the
// descriptor only), and nothing is counted or logged for it.
const reasonMovedLoop = "moved-to-loop"

// moveForJoin moves c, whose plain join frame data (header h, channel name)
// is at the head of its inbound buffer, to the loop its channel lives on, if
// it should and can move (see the top of this file). It reports whether c
// moved. Runs on c's loop, from join, before anything is joined.
func (s *Server) moveForJoin(c *conn, h codec.Header, data []byte, name string) bool {
	gc := c.gc
	if c.placed || c.up != nil || c.mv != nil || c.rd.want != 0 || len(data) > moveJoinMax ||
		gc.InboundBuffered() != len(data) || s.stopping.Load() {
		return false
	}
	to := s.placeFor(c.loop, name)
	if to == nil {
		return false
	}
	// In flight until the target loop has it (openMoved), as an accepted
	// connection is until its OnOpen: a freeze for an upgrade waits for it,
	// so that no connection is between loops when they are exported. The
	// count goes first, the check second: a freeze that began meanwhile
	// either sees the count or is seen here.
	s.up.inflight.Add(1)
	if s.up.frozen.Load() {
		s.up.inflight.Add(-1)
		return false
	}
	// Our own descriptor of the socket, so the socket outlives this loop's
	// close whatever order the rest happens in.
	fd, err := dupCloseOnExec(gc.Fd())
	if err != nil {
		s.up.inflight.Add(-1)
		return false // out of descriptors: join here
	}
	f := os.NewFile(uintptr(fd), "")
	nc, err := net.FileConn(f) // a further duplicate, as Enroll wants a net.Conn
	_ = f.Close()
	if err != nil {
		s.up.inflight.Add(-1)
		return false
	}
	m := &moved{opened: c.opened, perIP: c.perIP, h: h, join: append([]byte(nil), data...)}
	// local stays as it was: zero for a plain TCP connection (its socket
	// says what it reached), set only for an adopted one (TLS, WebSocket),
	// which is what tells the two apart (export.go, isOwnUplink).
	a := &adopted{remote: c.remote, local: c.local, moved: m}
	res, err := to.el.Enroll(gnet.NewContext(context.Background(), a), nc)
	if err != nil {
		_ = nc.Close()
		s.up.inflight.Add(-1)
		return false // the engine is stopping: join here (and be closed with the rest)
	}
	// Enroll closes nc once the target loop has its own descriptor. A
	// failure there loses the connection (out of descriptors, or the engine
	// stopping): count and log it; the client sees a close and may retry.
	go func() {
		if r := <-res; r.Err != nil {
			s.up.inflight.Add(-1) // never opened
			s.countRefused("move-failed")
			s.rlog.Log(levelWarn, "move-failed", "cannot move a connection to its channel's event loop; it is closed",
				slog.String("remote", c.remote.String()), slog.String("error", r.Err.Error()))
		}
	}()
	s.debug("moved to its channel's loop", c, slog.Int("from_loop", c.loop.idx), slog.Int("to_loop", to.idx))
	c.perIP = false // the count went with it
	c.moved = true
	c.loop.stats.moved.Add(1)
	return true
}

// dupCloseOnExec duplicates fd with close-on-exec set in the same call.
// Why not dup(2): a descriptor without the flag that exists while the
// upgrade starts the new binary (fork and exec on another goroutine) is
// inherited by it, and by every process after it, which never close it:
// the socket then outlives the connection's close (its client sees no
// end, the descriptor leaks). Seen in TestUpgradesUnderDialLoadRefuseNoConnection
// as a CLOSE_WAIT socket held by the last process three upgrades later.
func dupCloseOnExec(fd int) (int, error) {
	return unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
}

// openMoved sets up, on its new loop, a connection moved here for its join
// (moveForJoin), and joins it. The limits were applied when it was first
// accepted; its join timeout runs from then.
func (s *Server) openMoved(c *conn, m *moved) gnet.Action {
	c.opened, c.perIP, c.placed = m.opened, m.perIP, true
	s.up.inflight.Add(-1) // on its loop now (moveForJoin)
	s.openConns.Add(1)
	if s.stopping.Load() {
		c.reason = "shutting-down"
		return gnet.Close
	}
	if reason := s.join(c, m.h, m.join); reason != "" {
		c.reason = reason
		return gnet.Close
	}
	c.loop.flushSoon()
	return gnet.None
}
