package engine

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
)

// The partial-frame budget (Config.MaxPartialBytes) bounds the memory of
// frames still arriving, over all connections. When it is full, the
// connection holding the most is closed, not the one whose bytes happened to
// arrive last: a few connections that send most of a large frame and stop
// must not lock out honest large frames.
//
// Connections live on different loops and may only be closed on their own.
// Each loop keeps its holders (connections with at least ownedFrameMin of an
// incomplete frame) and publishes the largest one's size; a loop whose
// connection overflows the budget reads every loop's published size and asks
// the owner of the largest to close it (one task, at most one queued per
// loop), which it does if the budget is still within the slack of full when
// the task runs. Until then the others may pass the budget by that slack
// (partialSlackDiv); a connection that would pass it is closed itself.
// Connections holding less than ownedFrameMin are not tracked: when no
// tracked one is bigger, the connection that overflowed is closed.

// partialLoop is one loop's share of that bookkeeping.
type partialLoop struct {
	holders      []*conn      // loop-owned
	biggest      atomic.Int64 // any goroutine: the most one of holders has; written on its loop
	shedArmed    atomic.Bool  // a shed task is queued on the loop
	shedRunnable gnet.Runnable
	spare        spareBufs // loop-owned
	_            [64]byte  // keep the next loop's fields off this cache line
}

func (s *Server) newPartialLoops(n int) []partialLoop {
	pls := make([]partialLoop, n)
	for i := range pls {
		pls[i].shedRunnable = gnet.RunnableFunc(func(context.Context) error {
			pls[i].shedArmed.Store(false)
			// Still nearly full: the frame that overflowed may have completed
			// meanwhile, but the next one would overflow again.
			if budget := int64(s.cfg.MaxPartialBytes); s.partialBytes.Load() > budget-budget/partialSlackDiv {
				s.shedLocal(i, nil)
			}
			return nil
		})
	}
	return pls
}

// accountPartial brings c's share of the budget and its frame clock up to
// date after OnTraffic has taken every whole frame; newFrame says whether a
// frame was completed (so what is left is the beginning of a new one). It
// returns Close when c must go. Loop-owned; no allocation.
func (s *Server) accountPartial(c *conn, in inbound, newFrame bool) gnet.Action {
	held := c.rd.held(in)
	switch {
	case held == 0:
		c.frameStart = 0
	case c.frameStart == 0 || newFrame:
		now := s.now()
		c.frameStart, c.rateMark, c.rateHeld = max(now, 1), now, 0
		c.loop.sweepDue()
	}
	c.held = held
	res := c.rd.resident(in)
	if res == c.partial {
		return gnet.None
	}
	old := c.partial
	total := s.partialBytes.Add(int64(res - old))
	c.partial = res
	s.trackHolder(c, old)
	if res > old && total > int64(s.cfg.MaxPartialBytes) && s.shed(c) {
		c.reason = "partial-budget"
		return gnet.Close
	}
	return gnet.None
}

// dropPartial gives back what a closing connection held. Loop-owned.
func (s *Server) dropPartial(c *conn) {
	c.rd.release(&s.partial[c.loop.idx].spare)
	c.held, c.frameStart = 0, 0
	if c.partial != 0 {
		old := c.partial
		s.partialBytes.Add(-int64(old))
		c.partial = 0
		s.trackHolder(c, old)
	}
}

// trackHolder keeps c's loop's holders and their published maximum right
// after c.partial changed from old. Loop-owned.
func (s *Server) trackHolder(c *conn, old int) {
	pl := &s.partial[c.loop.idx]
	switch {
	case c.partial >= ownedFrameMin && c.holder == 0:
		pl.holders = append(pl.holders, c)
		c.holder = len(pl.holders)
	case c.partial < ownedFrameMin && c.holder != 0:
		last := pl.holders[len(pl.holders)-1]
		pl.holders[c.holder-1] = last
		last.holder = c.holder
		pl.holders[len(pl.holders)-1] = nil
		pl.holders = pl.holders[:len(pl.holders)-1]
		c.holder = 0
	}
	big := pl.biggest.Load()
	switch {
	case c.holder != 0 && int64(c.partial) > big:
		pl.biggest.Store(int64(c.partial))
	case int64(old) == big && c.partial < old: // the biggest shrank: find the new one
		var m int64
		for _, h := range pl.holders {
			m = max(m, int64(h.partial))
		}
		pl.biggest.Store(m)
	}
}

// shed frees budget for c, which has just taken the total past it: it closes
// the biggest holder if that is on c's loop, or asks its loop to. It reports
// whether c itself must be closed: because c holds the most, or because the
// total would pass the slack while another loop sheds. Loop-owned.
func (s *Server) shed(c *conn) bool {
	best, bestSize := -1, int64(c.partial)
	for i := range s.partial {
		if v := s.partial[i].biggest.Load(); v > bestSize {
			best, bestSize = i, v
		}
	}
	switch {
	case best < 0:
		return true
	case best == c.loop.idx:
		if s.shedLocal(best, c) {
			return true
		}
	default:
		s.requestShed(best)
	}
	budget := int64(s.cfg.MaxPartialBytes)
	return s.partialBytes.Load() > budget+budget/partialSlackDiv
}

// shedLocal closes loop idx's biggest holder, unless that is self, which it
// reports instead (the caller closes it). Must run on loop idx.
func (s *Server) shedLocal(idx int, self *conn) bool {
	var victim *conn
	for _, h := range s.partial[idx].holders {
		if victim == nil || h.partial > victim.partial {
			victim = h
		}
	}
	switch victim {
	case nil:
		return false
	case self:
		return true
	}
	s.closeConn(victim, "partial-budget") // OnClose runs now and gives its bytes back
	return false
}

// requestShed queues one shed task on loop idx unless one is queued already.
// Safe from any goroutine.
func (s *Server) requestShed(idx int) {
	pl := &s.partial[idx]
	if !pl.shedArmed.CompareAndSwap(false, true) {
		return
	}
	if l := s.loops[idx].Load(); l == nil || l.el.Execute(context.Background(), pl.shedRunnable) != nil {
		pl.shedArmed.Store(false)
	}
}

// frameVerdict is the reason to close c, whose frame has been arriving since
// c.frameStart, or "". A client whose next bytes wait unread in the kernel
// is not blamed for the server being behind. Loop-owned.
func (s *Server) frameVerdict(c *conn, now int64) string {
	cfg := &s.cfg
	reason := ""
	switch {
	case cfg.FrameTimeout > 0 && now-c.frameStart > int64(cfg.FrameTimeout):
		reason = "frame-timeout"
	case cfg.FrameMinRate > 0 && now-c.rateMark >= int64(cfg.FrameRateWindow):
		need := int64(cfg.FrameMinRate) * (now - c.rateMark) / int64(time.Second)
		if int64(c.held-c.rateHeld) < need {
			reason = "frame-too-slow"
		} else {
			c.rateMark, c.rateHeld = now, c.held
		}
	}
	if reason != "" && unreadBytes(c.gc.Fd()) > 0 {
		c.rateMark, c.rateHeld = now, c.held
		return ""
	}
	return reason
}
