package engine

// Laggers: receivers that read behind the live walk.
//
// Why: a receiver whose socket is full (it reads slowly, is descheduled, or
// never reads, as a send-only device) would otherwise be handed every frame
// of its channel: one reference pushed onto its own queue per frame, per
// receiver, until its backlog limit, and then one drop counted per frame.
// With a thousand send-only members that is a thousand pushes per frame,
// gigabytes of queue memory and a garbage collector scanning it, all before
// the first frame is dropped. Instead, the first time a write leaves bytes
// behind, the receiver leaves its set's walk and becomes a lagger: the set
// logs each frame once (router.FrameLog, one reference however many members
// lag), each lagger keeps the sequence of the next entry it needs, and when
// its socket has room (writable.go) it refills its own short queue from the
// log and writes. A lagger that catches up is listed again. A frame costs a
// lagger nothing; the walk is as long as the listed members only.
//
// Bounds: the log of a set holds at most Config.MaxPending bytes
// (Frame.Size) and Config.MaxPendingFrames frames, the same bound a single
// receiver's backlog has; past it the oldest entry is evicted. A lagger
// loses frames only when the entries it still needed are evicted, that is
// when its backlog would pass the limit: exactly those are counted as
// dropped (its own frames, which it never gets, are not), once, when it
// next refills or when the ticker folds the counts (foldAllLaggers).
// Its byte stream only ever holds whole frames, in order: what it missed
// is a gap between frames, never inside one.

import (
	"context"
	"log/slog"

	"github.com/mlesd/mlesd/router"
)

// lagRequest is a listed member to make a lagger once the walk in progress
// ends: from the walked frame on (fromF: its backlog had no room for it), or
// from the next one (it queued the frame, but its socket is full).
type lagRequest struct {
	c     *conn
	fromF bool
}

// maxWriteRounds and maxWriteBytes bound one write call for a receiver
// whose socket keeps taking everything (a lagger refilled from its log):
// past either, the rest waits for its next writable event, after the loop
// has served its other ready connections. They are high enough that a
// reader which keeps up catches up in one call (4 MiB is a quarter second
// of a 100,000 frames/s fan-in): with 4 writevs of 1,024 frames per
// writable event, a collector that once lagged behind a thousand send-only
// publishers got 40,000 frames/s and fell out of the log.
const (
	maxWriteRounds = 64
	maxWriteBytes  = 4 << 20
)

// refillBytes bounds the memory a lagger's own queue takes when refilled
// from the log (past what iovMax frames take), so that a lagger costs its
// share of the log, not a copy of it.
const refillBytes = 1 << 20

// logFrame logs f on set (sender is its sender, when a member of set) and
// evicts the oldest entries past the log's bound. It returns f's sequence.
func (l *loop) logFrame(set *router.LoopSet, f *router.Frame, sender *conn) uint64 {
	log := &set.Log
	var from router.Subscriber
	if sender != nil && sender.set == set {
		from = sender
	}
	at := log.Push(f, from)
	if !l.foldDue.Load() {
		l.foldDue.Store(true)
	}
	cfg := &l.srv.cfg
	for log.Len() > 1 && (log.Size() > cfg.MaxPending || log.Len() > cfg.MaxPendingFrames) {
		if c, ok := log.Oldest().From.(*conn); ok && c.lagging && c.cursor <= log.Base() {
			c.ownEvicted++ // never c's to get: not a drop
		}
		log.Evict()
	}
	return at
}

// lag takes c, whose socket is full, out of its set's walk: from now on it
// reads its set's log from sequence from. Loop-owned; never during a walk of
// c's set.
func (l *loop) lag(c *conn, from uint64) {
	if c.lagging || c.setIdx < 0 || c.state != joined {
		return
	}
	if moved := c.set.Remove(c.setIdx); moved != nil {
		moved.(*conn).setIdx = c.setIdx
	}
	c.setIdx = -1
	c.lagging = true
	c.cursor, c.ownEvicted, c.lostMark = from, 0, c.set.Log.Lost
	c.set.Log.Lagging++
	l.srv.debug("receiver lags: its socket is full", c, slog.Uint64("from", from), slog.Uint64("log_head", c.set.Log.Head()),
		slog.Int("queued_frames", c.q.len()))
	c.lagIdx = len(l.laggers)
	l.laggers = append(l.laggers, c)
}

// unlag lists c in its set again: it has caught up with the log and its
// socket took everything. Loop-owned; never during a walk of c's set.
func (l *loop) unlag(c *conn) {
	l.unlistLagger(c)
	c.setIdx = c.set.Add(c)
	c.stallSince = 0 // the next drop is a new episode, logged again
	l.srv.debug("receiver caught up", c)
}

// unlistLagger counts what lagger c missed and takes it off l.laggers; the
// last lagger of a set empties the set's log.
func (l *loop) unlistLagger(c *conn) {
	l.foldLagger(c)
	last := len(l.laggers) - 1
	if m := l.laggers[last]; m != c {
		l.laggers[c.lagIdx] = m
		m.lagIdx = c.lagIdx
	}
	l.laggers[last] = nil
	l.laggers = l.laggers[:last]
	c.lagging = false
	log := &c.set.Log
	if log.Lagging--; log.Lagging == 0 {
		log.Reset()
	}
}

// foldLagger counts as dropped what lagger c missed since last counted: the
// log entries evicted before it read them (not its own) and the frames that
// never reached this loop. Exact, because every walk, log and eviction of
// c's set runs on this loop.
func (l *loop) foldLagger(c *conn) {
	log := &c.set.Log
	var missed uint64
	if base := log.Base(); c.cursor < base {
		missed = base - c.cursor - c.ownEvicted
		c.cursor, c.ownEvicted = base, 0
	}
	missed += log.Lost - c.lostMark
	c.lostMark = log.Lost
	if missed == 0 {
		return
	}
	c.dropped += missed
	l.stats.dropped.Add(missed)
	if c.stallSince == 0 {
		c.stallSince = l.srv.now()
		l.sweepDue() // the stall timeout now applies to c
		l.srv.rlog.Log(levelWarn, "receiver-stalled", "receiver is not keeping up; dropping frames for it alone",
			connAttrs(c)...)
	}
}

// refill moves the log entries lagger c needs next onto its own queue, up to
// iovMax frames or refillBytes: skipping its own frames and those its
// history replay held. Loop-owned.
func (l *loop) refill(c *conn) {
	l.foldLagger(c)
	if !l.foldDue.Load() {
		l.foldDue.Store(true) // c moves on: the next fold may trim its set's log
	}
	log := &c.set.Log
	head := log.Head()
	self := router.Subscriber(c)
	for c.cursor < head && c.q.len() < iovMax && c.q.size < refillBytes {
		e := log.At(c.cursor)
		c.cursor++
		if e.From == self {
			continue
		}
		if seq := e.F.Seq(); seq != 0 && seq <= c.joinSeq {
			continue
		}
		e.F.Ref()
		c.q.push(e.F)
		c.queued += e.F.Len()
		if c.up != nil {
			c.up.seen.Add(e.F.Bytes()) // the peer will hold it: recognise its replay later
		}
	}
}

// foldAllLaggers runs on this loop, queued by the ticker: it counts what
// every lagger missed, so that mlesd_frames_dropped_total follows receivers
// that stay behind, and lets each log go of the entries every lagger of its
// set has passed.
func (l *loop) foldAllLaggers(context.Context) error {
	clear(l.minCursor)
	for _, c := range l.laggers {
		l.foldLagger(c)
		if m, ok := l.minCursor[c.set]; !ok || c.cursor < m {
			l.minCursor[c.set] = c.cursor
		}
	}
	for set, m := range l.minCursor {
		set.Log.TrimTo(m)
	}
	return nil
}
