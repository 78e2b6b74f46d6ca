package engine

// Freezing for a hitless upgrade, phase 2 (upgrade/doc.go).
//
// Why: to hand a live connection to another process, its state must stop
// changing: no byte parsed from it, none written to it, no frame for it in
// flight between event loops. Freeze gets there in bounded steps and Thaw
// undoes it, so a failed handover costs a pause and nothing else.
//
// How: the acceptors park (a deadline in the past wakes each from Accept;
// it then waits for Thaw), and the connections they accepted reach their
// loops first. Then every loop, in a task, flushes what it has for others
// and sets frozen: from then on OnTraffic parses nothing (gnet may still
// take bytes off the socket into its buffer; they are exported as read),
// write writes nothing, the sweep closes nothing. Once every loop is
// frozen nobody can post a batch any more, so a second task per loop
// drains what was posted to it: every frame read before the freeze is then
// in a receiver's queue or its set's log, where the export finds it.

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mlesd/mlesd/router"
)

// upgradeState is the server's part of a handover.
type upgradeState struct {
	hold     atomic.Pointer[chan struct{}] // set while the acceptors park; closed by Thaw
	parked   atomic.Int32                  // acceptors parked on hold
	inflight atomic.Int64                  // accepted connections not yet opened on their loop
	frozen   atomic.Bool                   // between the first Freeze and Thaw or the last Release
	between  atomic.Bool                   // frozen, but between two rounds (Release with more)
	round    *Round                        // the round frozen now; set by Freeze for Export
	nextID   atomic.Uint64                 // ConnState.ID of the next exported connection
	base     baseTotals                    // the counts a handover brought (import.go)
	// holdJoins, in a new process taking a handover in rounds: no join is
	// parsed until the last round is in (HoldJoins), so that nobody joins
	// a channel whose members and history are still on their way.
	holdJoins atomic.Bool
}

// ErrFrozen is returned by Freeze when the server is frozen already.
var ErrFrozen = errors.New("engine: already frozen")

// Round is the part of the server one round of a handover freezes and
// exports: the connections joined to its channels (their uplinks, TLS and
// WebSocket members too, which stay, so that nothing reaches the channel
// while its members move), every connection awaiting its join (a join
// during a round could reach a channel being exported), and its channels'
// history. Why rounds: forwarding pauses only for the channels of one
// round, so the pause no longer grows with the server (issue 13: 10,000
// connections frozen at once paused every channel for about 0.45 s).
type Round struct {
	Channels map[string]bool // the round's channels (a rest round: unused)
	Conns    int             // joined members when planned
	all      bool            // everything: a handover in one round
	rest     bool            // every channel not in done: the last round
	done     map[string]bool // a rest round's: the channels of the rounds before
}

// holds reports whether r freezes c.
func (r *Round) holds(c *conn) bool {
	switch {
	case r.all || c.state == awaitingJoin:
		return true
	case c.state != joined || c.ch == nil:
		return false
	}
	return r.hasChannel(c.ch.Name())
}

// hasChannel reports whether r exports channel name's history.
func (r *Round) hasChannel(name string) bool {
	switch {
	case r.all:
		return true
	case r.rest:
		return !r.done[name]
	default:
		return r.Channels[name]
	}
}

// holds reports whether the round frozen on l holds c. Loop-owned.
func (l *loop) holds(c *conn) bool { return l.freeze != nil && l.freeze.holds(c) }

// PlanRounds cuts the server into rounds of whole channels with about
// maxConns joined members each (a bigger channel is a round alone); the
// first round also takes every connection awaiting its join, the last
// every channel not planned (one made meanwhile). One round, of
// everything, when the server is small or maxConns is 0.
func (s *Server) PlanRounds(maxConns int) []*Round {
	var rounds []*Round
	cur := &Round{Channels: map[string]bool{}}
	s.router.ForEachChannel(func(ch *router.Channel) {
		n := ch.Members()
		if maxConns > 0 && cur.Conns > 0 && cur.Conns+n > maxConns {
			rounds = append(rounds, cur)
			cur = &Round{Channels: map[string]bool{}}
		}
		cur.Channels[ch.Name()] = true
		cur.Conns += n
	})
	if len(rounds) == 0 {
		return []*Round{{all: true, Channels: cur.Channels, Conns: cur.Conns}}
	}
	last := &Round{Channels: cur.Channels, Conns: cur.Conns, rest: true, done: map[string]bool{}}
	for _, r := range rounds {
		for name := range r.Channels {
			last.done[name] = true
		}
	}
	return append(rounds, last)
}

// Freeze stops the whole server for a handover in one round (FreezeRound).
func (s *Server) Freeze(timeout time.Duration) error {
	return s.FreezeRound(nil, timeout)
}

// FreezeRound stops round r of a handover (nil: the whole server) within
// timeout: the acceptors park (the first round; they stay parked until
// Thaw or StopAccepting), and every event loop stops reading and writing
// the connections r holds once the frames read before have reached their
// receivers' queues. The rest of the server serves on. On error the
// server is thawed again. Safe from any goroutine once Ready.
func (s *Server) FreezeRound(r *Round, timeout time.Duration) error {
	if r == nil {
		r = &Round{all: true}
	}
	if !s.up.frozen.CompareAndSwap(false, true) && !s.up.between.CompareAndSwap(true, false) {
		return ErrFrozen
	}
	s.up.round = r
	deadline := time.Now().Add(timeout)
	var err error
	if s.up.hold.Load() == nil {
		err = s.parkAcceptors(deadline)
	}
	if err == nil {
		err = s.onLoops(deadline, func(l *loop) {
			l.flush()
			l.freeze = r
		})
	}
	if err == nil {
		err = s.onLoops(deadline, (*loop).drainAll)
	}
	if err != nil {
		s.Thaw()
		return err
	}
	return nil
}

// Thaw undoes Freeze: the loops read and write again (what arrived
// meanwhile is parsed at once), exported marks are forgotten, and the
// acceptors accept again (unless the listeners have been closed since).
func (s *Server) Thaw() {
	_ = s.onLoops(time.Now().Add(thawTimeout), (*loop).thaw)
	s.unparkAcceptors()
	s.up.round = nil
	s.up.between.Store(false)
	s.up.frozen.Store(false)
}

// thaw lets l read and write again: what is owed is written, what arrived
// while frozen is parsed. Loop-owned.
func (l *loop) thaw() {
	r := l.freeze
	l.freeze = nil
	if r == nil {
		return
	}
	for c := range l.conns {
		if c.mv != nil && c.mv.id != 0 {
			c.mv.id, c.mv.exportedIn = 0, 0
			if !c.mv.paused && c.mv.pre == nil {
				c.mv = nil
			}
		}
		if c.state >= closing || !r.holds(c) {
			continue
		}
		if c.state == joined && !c.wArmed && (c.q.len() > 0 || c.lagging) {
			l.write(c)
		}
		if c.gc.InboundBuffered() > 0 {
			_ = c.gc.Wake(nil) // bytes that came while frozen
		}
	}
	l.flushSoon()
}

// HoldJoins, in a new process taking a handover in rounds, holds (on) or
// parses (off) the join of every connection awaiting one: until the last
// round, a channel's members and history may still be on their way, and a
// joiner would miss them. Off wakes the connections held.
func (s *Server) HoldJoins(on bool) {
	s.up.holdJoins.Store(on)
	if on {
		return
	}
	_ = s.onLoops(time.Now().Add(thawTimeout), func(l *loop) {
		for c := range l.conns {
			if c.state == awaitingJoin && (c.gc.InboundBuffered() > 0 || (c.mv != nil && c.mv.pre != nil)) {
				_ = c.gc.Wake(nil)
			}
		}
	})
}

// thawTimeout bounds Thaw's wait for the loops.
const thawTimeout = 5 * time.Second

// onLoops runs fn on every event loop that has been used and waits for
// all of them, until deadline.
func (s *Server) onLoops(deadline time.Time, fn func(*loop)) error {
	var wg sync.WaitGroup
	for i := range s.loops {
		l := s.loops[i].Load()
		if l == nil {
			continue // never had a connection: nothing to freeze or export
		}
		wg.Add(1)
		err := l.el.Execute(context.Background(), runnable(func() {
			defer wg.Done()
			fn(l)
		}))
		if err != nil {
			wg.Done()
			return err
		}
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-time.After(time.Until(deadline)):
		return errors.New("engine: an event loop did not answer in time")
	case <-s.shutdown:
		return errors.New("engine: shutting down")
	}
}

// runnable adapts a function to gnet.Runnable.
type runnable func()

func (r runnable) Run(context.Context) error { r(); return nil }

// parkAcceptors stops the accept loops without closing their listeners
// (a handover that fails accepts again on them) and waits until every
// connection they accepted has been opened on its loop.
func (s *Server) parkAcceptors(deadline time.Time) error {
	hold := make(chan struct{})
	s.up.hold.Store(&hold)
	s.lnMu.Lock()
	want := int32(0)
	for _, ln := range s.listeners {
		if d, ok := ln.(interface{ SetDeadline(time.Time) error }); ok && d.SetDeadline(time.Unix(1, 0)) == nil {
			want++
		}
	}
	s.lnMu.Unlock()
	for s.up.parked.Load() < want || s.up.inflight.Load() > 0 {
		if time.Now().After(deadline) {
			return errors.New("engine: the acceptors did not stop in time")
		}
		time.Sleep(parkPoll)
	}
	return nil
}

// parkPoll is how often parkAcceptors looks whether the acceptors have
// parked: they park within one Accept's return, so a few polls at most.
const parkPoll = 200 * time.Microsecond

// unparkAcceptors lets parked acceptors accept again.
func (s *Server) unparkAcceptors() {
	if h := s.up.hold.Swap(nil); h != nil {
		close(*h)
	}
}

// parkAcceptor runs in an acceptor whose Accept failed with a deadline:
// while a freeze holds it, it waits; then it clears the deadline and the
// caller accepts again.
func (s *Server) parkAcceptor(ln net.Listener, err error) bool {
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	for {
		if h := s.up.hold.Load(); h != nil {
			s.up.parked.Add(1)
			<-*h
			s.up.parked.Add(-1)
			continue // a later freeze may hold it again at once
		}
		if d, ok := ln.(interface{ SetDeadline(time.Time) error }); ok {
			_ = d.SetDeadline(time.Time{})
		}
		// A freeze that began meanwhile may have set its deadline before
		// this cleared it: it has set its hold before that, so look again.
		if s.up.hold.Load() == nil {
			return true
		}
	}
}
