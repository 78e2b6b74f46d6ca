package gateway

import (
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// memBudget bounds the bytes held by unfinished WebSocket messages over all
// sessions (Config.MaxUnfinishedBytes). Reserving while there is room is
// one atomic add; only a full budget takes the lock, to choose whom to shed.
type memBudget struct {
	limit   int64
	used    atomic.Int64 // bytes reserved by sessions' message buffers
	waiters atomic.Int64 // sessions waiting for room

	mu   sync.Mutex    // guards wake; serialises choosing whom to shed
	wake chan struct{} // closed (and replaced) when bytes come back while someone waits
}

func (b *memBudget) init(limit int64) {
	b.limit = limit
	b.wake = make(chan struct{})
}

var (
	// errBudget: the budget is full and the asking session holds the most,
	// so it is the one to go.
	errBudget = errors.New("gateway: memory for unfinished messages is full")
	// errShed: another session shed this one to make room.
	errShed = errors.New("gateway: session shed to make room")
)

// reserve counts n more bytes for s's message buffer. When the budget is
// full it sheds the session holding the most unfinished bytes (the one
// whose message began first among equals) and waits for it to let go; if
// that session is s itself, or room does not come within shedWait, it
// returns errBudget. It never waits holding a lock: the session it waits
// for may itself be waiting here when it is shed.
func (g *Gateway) reserve(s *session, n int64) error {
	b := &g.mem
	if b.used.Add(n) <= b.limit {
		s.held.Add(n)
		return nil
	}
	b.used.Add(-n)
	timeout := time.NewTimer(shedWait)
	defer timeout.Stop()
	for {
		if s.shed.Load() {
			return errShed
		}
		b.waiters.Add(1) // before looking at used: a release after this wakes us
		if b.used.Add(n) <= b.limit {
			b.waiters.Add(-1)
			s.held.Add(n)
			return nil
		}
		b.used.Add(-n)
		b.mu.Lock()
		victim, leaving := g.largestHolder()
		if b.limit-b.used.Load()+leaving < n {
			// Not enough is on its way out: shed one more.
			b.mu.Unlock()
			b.waiters.Add(-1)
			if victim == nil || victim == s {
				return errBudget
			}
			g.shed(victim)
			continue
		}
		wake := b.wake
		b.mu.Unlock()
		select {
		case <-wake:
			b.waiters.Add(-1)
		case <-s.done:
			b.waiters.Add(-1)
			return errShed
		case <-timeout.C:
			b.waiters.Add(-1)
			return errBudget
		}
	}
}

// release gives back n bytes of s's and wakes the sessions waiting for room.
func (g *Gateway) release(s *session, n int64) {
	b := &g.mem
	s.held.Add(-n)
	b.used.Add(-n)
	if b.waiters.Load() > 0 {
		b.mu.Lock()
		close(b.wake)
		b.wake = make(chan struct{})
		b.mu.Unlock()
	}
}

// largestHolder returns the session not yet shed that holds the most
// unfinished bytes (among equals, the one whose message began first), and
// the bytes still held by sessions already shed.
func (g *Gateway) largestHolder() (victim *session, leaving int64) {
	var most, since int64
	g.mu.Lock()
	defer g.mu.Unlock()
	for x := range g.sessions {
		h := x.held.Load()
		if h == 0 {
			continue
		}
		if x.shed.Load() {
			leaving += h
			continue
		}
		t := x.msgStart.Load()
		if h > most || h == most && t < since {
			victim, most, since = x, h, t
		}
	}
	return victim, leaving
}

// shed closes v (1013, try again later) to take back its memory: its
// reader lets go as soon as it sees the flag or its connection is cut,
// closeFrameGrace after the close frame was queued.
func (g *Gateway) shed(v *session) {
	if v.shed.Swap(true) {
		return
	}
	g.count(limitShed)
	g.shedLog(v)
	v.shutdown(websocket.StatusTryAgainLater, "the gateway's memory for unfinished messages is full; try again later")
	time.AfterFunc(closeFrameGrace, func() { _ = v.cut() })
}

func (g *Gateway) shedLog(s *session) {
	g.rlog.Log(slog.LevelWarn, limitShed, "websocket session shed: memory for unfinished messages is full",
		slog.String("remote", s.remote.String()), slog.Int64("held", s.held.Load()),
		slog.Int64("max_unfinished_bytes", g.mem.limit))
}
