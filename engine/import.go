package engine

// Import for a hitless upgrade, phase 2 (upgrade/doc.go): the new
// process's side. Channels first (their history), then each connection:
// its socket is registered with an event loop with its state as the gnet
// context (imported), where OnOpen makes it a member again and queues
// what is owed to it before anything new; it reads nothing until every
// connection of the handover is a member (Import's resume), so no frame
// forwarded from one of them misses another. Then the bytes the old
// process had read and not parsed are parsed first (preInbound).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/mlesd/mlesd/router"
	"github.com/mlesd/mlesd/upgrade"
)

// imported is the gnet context of a handed-over connection until OnOpen.
type imported struct {
	st      upgrade.ConnState
	owed    []byte
	partial []byte
	join    []byte // the join its channel's uplinks replay (ChannelState.FirstJoin), or nil
	uplink  Uplink // for a moved uplink, its owner's Uplink (nil: it is closed)
}

// adoptUplinks asks adopt for the Uplink of each moved uplink of t.
func (s *Server) adoptUplinks(t *upgrade.Transfer, joins map[string][]byte, adopt AdoptUplinks) map[*upgrade.ConnIn]Uplink {
	var moved []MovedUplink
	var conns []*upgrade.ConnIn
	for _, c := range t.Conns {
		if c.State.Uplink == nil {
			continue
		}
		local, _ := netip.ParseAddrPort(c.State.Local)
		moved = append(moved, MovedUplink{Channel: c.State.Channel, Peer: c.State.Uplink.Peer, Join: joins[c.State.Channel], Local: local})
		conns = append(conns, c)
	}
	out := map[*upgrade.ConnIn]Uplink{}
	if len(moved) == 0 || adopt == nil {
		return out
	}
	for i, u := range adopt(moved) {
		if i < len(conns) && u != nil {
			out[conns[i]] = u
		}
	}
	return out
}

// MovedUplink is an uplink handed over by the old process, for its owner
// to adopt (AdoptUplinks).
type MovedUplink struct {
	Channel, Peer string
	Join          []byte         // the join its channel's uplinks replay
	Local         netip.AddrPort // its socket's own address, as its key was computed for
}

// AdoptUplinks gives each moved uplink the Uplink it belongs to from now
// on (nil: none; the connection is closed). Package peering's Manager has
// one (AdoptMoved).
type AdoptUplinks func([]MovedUplink) []Uplink

// Import takes the connections and channels of t (their sockets are its
// own from now on; those it cannot take are closed) and the totals, and
// returns how many connections it took; adopt takes the uplinks (nil: they
// are closed). Call it once the old process has let go (after the
// Commit): until then the old process may still read.
func (s *Server) Import(t *upgrade.Transfer, timeout time.Duration, adopt AdoptUplinks) (int, error) {
	select {
	case <-s.loopsUp:
	default:
		t.Close()
		return 0, errors.New("engine: not serving yet")
	}
	var errs error
	joins := map[string][]byte{}
	for _, ch := range t.Channels {
		if ch.State.FirstJoin != nil {
			joins[ch.State.Name] = ch.State.FirstJoin
		}
		frames := make([]*router.Frame, len(ch.History))
		for i, b := range ch.History {
			frames[i] = router.NewFrame(b)
		}
		if err := s.router.Restore(ch.State.Name, frames); err != nil {
			errs = errors.Join(errs, fmt.Errorf("channel %q: %w", ch.State.Name, err))
		}
		for _, f := range frames {
			f.Release()
		}
	}
	s.addTotals(t.Totals)
	uplinks := s.adoptUplinks(t, joins, adopt)
	deadline := time.Now().Add(timeout)
	// Making each net.Conn and handing it to gnet costs a dozen system
	// calls; clients wait for all of them, so they run on every core.
	results := make([]registration, len(t.Conns))
	units := placementUnits(t.Conns)
	var (
		next sync.WaitGroup
		mu   sync.Mutex
		at   atomic.Int64
	)
	for range importWorkers {
		next.Add(1)
		go func() {
			defer next.Done()
			for u := int(at.Add(1) - 1); u < len(units); u = int(at.Add(1) - 1) {
				var el gnet.EventLoop // the loop of the unit's first member, once known
				for k, i := range units[u] {
					c := t.Conns[i]
					res, err := s.registerImported(c, &imported{st: c.State, owed: c.Owed, partial: c.Partial,
						join: joins[c.State.Channel], uplink: uplinks[c]}, el)
					if err != nil {
						mu.Lock()
						errs = errors.Join(errs, fmt.Errorf("connection %d: %w", c.State.ID, err))
						mu.Unlock()
					}
					if k == 0 && len(units[u]) > 1 && res != nil {
						// Its loop is where the rest of its channel goes.
						r := <-res
						if r.Err == nil && r.Conn != nil {
							el = r.Conn.EventLoop()
						}
						done := make(chan gnet.RegisteredResult, 1)
						done <- r
						res = done
					}
					results[i] = res
				}
			}
		}()
	}
	next.Wait()
	took := 0
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for _, res := range results {
		if res == nil {
			continue
		}
		select {
		case r := <-res:
			if r.Err != nil {
				errs = errors.Join(errs, r.Err)
				continue
			}
			took++
		case <-timer.C:
			return took, errors.Join(errs, errors.New("engine: an event loop did not take a connection in time"))
		case <-s.shutdown:
			return took, errors.New("engine: shutting down")
		}
	}
	// Every handed-over connection is a member again: let them read.
	err := s.onLoops(time.Now().Add(thawTimeout), func(l *loop) {
		for c := range l.conns {
			if c.mv == nil || !c.mv.paused {
				continue
			}
			c.mv.paused = false
			if c.mv.pre == nil {
				c.mv = nil
			}
			_ = c.gc.Wake(nil) // parse what the old process read, and what came since
		}
	})
	return took, errors.Join(errs, err)
}

// importWorkers is how many goroutines hand moved sockets to gnet at once.
const importWorkers = 4

// placementUnits groups the indexes of conns by what must share a loop:
// the joined members of a channel with fewer than placeMaxMembers of them
// (placement put them on one loop in the old process, migrate.go), and
// every other connection alone.
func placementUnits(conns []*upgrade.ConnIn) [][]int {
	members := map[string][]int{}
	var units [][]int
	for i, c := range conns {
		if c.State.Phase == upgrade.PhaseJoined && c.State.Uplink == nil {
			members[c.State.Channel] = append(members[c.State.Channel], i)
			continue
		}
		units = append(units, []int{i})
	}
	for _, m := range members {
		if len(m) >= placeMaxMembers {
			for _, i := range m {
				units = append(units, []int{i})
			}
			continue
		}
		units = append(units, m)
	}
	return units
}

// registerImported hands c's socket to an event loop with its state im:
// to el, or where gnet's balancer puts it when el is nil.
func (s *Server) registerImported(c *upgrade.ConnIn, im *imported, el gnet.EventLoop) (registration, error) {
	nc, err := net.FileConn(c.File)
	_ = c.File.Close()
	c.File = nil
	if err != nil {
		return nil, err
	}
	var res registration
	if el != nil {
		res, err = el.Enroll(gnet.NewContext(context.Background(), im), nc)
	} else {
		ctx := gnet.NewNetConnContext(gnet.NewContext(context.Background(), im), nc)
		s.registerMu.Lock()
		res, err = s.eng.Register(ctx)
		s.registerMu.Unlock()
	}
	if err != nil {
		_ = nc.Close()
		return nil, err
	}
	return res, nil
}

// openImported makes a handed-over connection's conn on its loop: a member
// of its channel again (no history replay: it had it), with what is owed
// queued first, paused until Import resumes it. Loop-owned.
func (s *Server) openImported(gc gnet.Conn, l *loop, im *imported) gnet.Action {
	now := s.now()
	st := &im.st
	c := &conn{gc: gc, loop: l, remote: addrPortOf(gc.RemoteAddr()), opened: now, lastRead: now - st.IdleNs,
		dropped: st.Dropped}
	if ap, err := netip.ParseAddrPort(st.Remote); err == nil {
		c.remote = ap
	}
	if st.StallNs > 0 {
		c.stallSince = max(now-st.StallNs, 1)
	}
	c.mv = &moving{paused: true}
	if len(im.partial) > 0 {
		c.mv.pre = im.partial
	}
	gc.SetContext(c)
	l.conns[c] = struct{}{}
	l.sweepDue()
	s.openConns.Add(1)
	if st.Uplink != nil {
		return s.openMovedUplink(c, im)
	}
	if ip := c.remote.Addr().Unmap(); s.cfg.MaxConnsPerIP > 0 && (s.cfg.LimitLoopback || !ip.IsLoopback()) {
		// Counted, never refused: it was admitted once.
		s.ipMu.Lock()
		s.perIP[ip]++
		s.ipMu.Unlock()
		c.perIP = true
	}
	if st.Phase != upgrade.PhaseJoined {
		c.opened = now - st.PartialAgeNs // its join timer runs on
		return gnet.None
	}
	c.uid, c.cid, c.dupKey, c.peerLink = st.UID, st.CID, uint64(st.CID), st.PeerLink
	// Not refused for its CID: the duplicate rule admitted it in the old
	// process, and every member of its channel moves with it.
	ch, hist, err := s.router.JoinUplink(st.Channel, c, nil)
	for _, f := range hist {
		f.Release()
	}
	if err != nil {
		c.reason = "too-many-channels"
		return gnet.Close
	}
	c.ch, c.state = ch, joined
	if s.cfg.Members != nil && im.join != nil {
		// The channel's uplinks open with the join the old process's
		// replayed (they do not move yet: the peer sees them reconnect).
		s.cfg.Members.MemberJoined(ch, im.join)
		c.member = true
	}
	queueOwed(c, im.owed)
	return gnet.None
}

// queueOwed queues what the old process owed c, before anything new: one
// frame of bytes that are whole frames but perhaps the first, which the
// socket takes as they are. Loop-owned.
func queueOwed(c *conn, owed []byte) {
	if len(owed) == 0 {
		return
	}
	f := router.NewFrame(owed)
	c.q.push(f)
	c.queued += f.Len()
	c.dirty = true
	c.loop.dirty = append(c.loop.dirty, c)
	c.loop.flushSoon()
}

// openMovedUplink makes c, a moved uplink, a member of its channel again
// as the uplink its owner adopted: same CID and key, its first frame long
// sent (no Hello), no replay expected, so the peer sees nothing. Without
// an owner it is closed. Loop-owned.
func (s *Server) openMovedUplink(c *conn, im *imported) gnet.Action {
	st := &im.st
	u := im.uplink
	if u == nil {
		c.reason = "uplink-not-adopted"
		return gnet.Close
	}
	c.cid, c.dupKey = st.CID, st.DupKey
	if c.dupKey == 0 {
		c.dupKey = uint64(st.CID)
	}
	c.up = &uplinkState{u: u, seen: u.Seen()}
	c.up.seen.Init(2 * max(s.router.HistoryLimit(), router.DefaultHistoryLimit))
	// What crossed it in the old process: the peer replays it when the
	// link reconnects, and without its own history this server would not
	// recognise it.
	if c.up.seen.Restore(st.Uplink.SeenKey, st.Uplink.Seen) && st.Uplink.ReplayLeft > 0 {
		// Handed over within its replay window: what the old process
		// still expected of the peer's replay is skipped here (the same
		// key, so the same fingerprints). The members' uids are taken
		// anew at the next frame.
		c.up.replayLeft = int(st.Uplink.ReplayLeft)
		c.up.replay = make(map[uint64]int32, len(st.Uplink.Replay))
		for _, fp := range st.Uplink.Replay {
			c.up.replay[fp]++
		}
	}
	ch, hist, err := s.router.JoinUplink(st.Channel, c, nil)
	for _, f := range hist {
		f.Release()
	}
	if err != nil {
		c.reason = "too-many-channels"
		return gnet.Close
	}
	c.ch, c.uid, c.state = ch, "(uplink)", joined
	local, _ := netip.ParseAddrPort(st.Local)
	c.up.ends = socketEnds{local: unmapped(local), remote: unmapped(c.remote)}
	s.uplinkEnds.Store(c.up.ends, struct{}{})
	s.uplinksOpen.Add(1)
	gc := c.gc
	u.Up(func() { _ = gc.Close() })
	queueOwed(c, im.owed)
	return gnet.None
}

// preInbound reads the bytes the old process had read and not parsed
// (mv.pre), then the socket's (gnet's buffer). A Peek past pre moves what
// it needs from gnet's buffer onto pre, so a frame that began there comes
// out whole; once pre is consumed, the conn reads gnet's buffer alone.
type preInbound struct {
	mv *moving
	gc gnet.Conn
}

func (p *preInbound) InboundBuffered() int { return len(p.mv.pre) + p.gc.InboundBuffered() }

func (p *preInbound) Peek(n int) ([]byte, error) {
	if need := n - len(p.mv.pre); need > 0 {
		k := min(need, p.gc.InboundBuffered())
		at := len(p.mv.pre)
		p.mv.pre = append(p.mv.pre, make([]byte, k)...)
		got, _ := p.gc.Read(p.mv.pre[at:])
		p.mv.pre = p.mv.pre[:at+got]
	}
	if n > len(p.mv.pre) {
		return p.mv.pre, io.ErrShortBuffer
	}
	return p.mv.pre[:n], nil
}

func (p *preInbound) Read(b []byte) (int, error) {
	n := copy(b, p.mv.pre)
	p.consume(n)
	if n < len(b) {
		m, err := p.gc.Read(b[n:])
		return n + m, err
	}
	return n, nil
}

func (p *preInbound) Discard(n int) (int, error) {
	k := min(n, len(p.mv.pre))
	p.consume(k)
	if k < n {
		m, err := p.gc.Discard(n - k)
		return k + m, err
	}
	return k, nil
}

func (p *preInbound) consume(n int) {
	p.mv.pre = p.mv.pre[n:]
	if len(p.mv.pre) == 0 {
		p.mv.pre = nil
	}
}

// inboundOf is what OnTraffic parses c from: gnet's buffer, after what a
// handover left it.
func inboundOf(c *conn, gc gnet.Conn) inbound {
	if c.mv != nil && c.mv.pre != nil {
		return &preInbound{mv: c.mv, gc: gc}
	}
	return gc
}

// heldBack reports whether OnTraffic must leave c's bytes where they are:
// a handover round holds it, or c was handed over and not every
// connection of its round is a member yet, or it awaits its join while a
// handover in rounds is still coming in (HoldJoins).
func heldBack(c *conn) bool {
	return c.loop.holds(c) || (c.mv != nil && c.mv.paused) ||
		(c.state == awaitingJoin && c.loop.srv.up.holdJoins.Load())
}

// The totals behind mlesd_*_total: exported by their metric names (the
// labelled ones with the label, reason="..."), added in the new process
// to its own counts so that no rate jumps.
const (
	totalAccepted  = "mlesd_connections_accepted_total"
	totalJoins     = "mlesd_joins_total"
	totalMoved     = "mlesd_connections_moved_total"
	totalFramesIn  = "mlesd_frames_in_total"
	totalBytesIn   = "mlesd_bytes_in_total"
	totalFramesOut = "mlesd_frames_out_total"
	totalBytesOut  = "mlesd_bytes_out_total"
	totalDropped   = "mlesd_frames_dropped_total"
	totalLoopDrop  = "mlesd_loop_queue_dropped_total"
	totalBusy      = "mlesd_event_loop_busy_nanoseconds_total"
	totalClosed    = "mlesd_connections_closed_by_server_total"
	totalAcceptErr = "mlesd_accept_errors_total"
)

// baseTotals is what a handover brought: added to Stats.
type baseTotals struct {
	accepted, joins, moved, framesIn, bytesIn, framesOut, bytesOut, dropped, loopDrop, busy atomic.Uint64
}

func (b *baseTotals) fields() map[string]*atomic.Uint64 {
	return map[string]*atomic.Uint64{totalAccepted: &b.accepted, totalJoins: &b.joins, totalMoved: &b.moved, totalFramesIn: &b.framesIn,
		totalBytesIn: &b.bytesIn, totalFramesOut: &b.framesOut, totalBytesOut: &b.bytesOut, totalDropped: &b.dropped,
		totalLoopDrop: &b.loopDrop, totalBusy: &b.busy}
}

// totals is every counter of Stats by its metric name.
func (s *Server) totals() map[string]uint64 {
	st := s.Stats()
	m := map[string]uint64{totalAccepted: st.Accepted, totalJoins: st.Joins, totalMoved: st.Moved, totalFramesIn: st.FramesIn,
		totalBytesIn: st.BytesIn, totalFramesOut: st.FramesOut, totalBytesOut: st.BytesOut, totalDropped: st.Dropped,
		totalLoopDrop: st.LoopQueueDropped, totalBusy: st.BusyNanos}
	for r, n := range st.ClosedByRule {
		m[labelled(totalClosed, r)] = n
	}
	for r, n := range st.AcceptErrors {
		m[labelled(totalAcceptErr, r)] = n
	}
	return m
}

func labelled(name, reason string) string { return name + `{reason="` + reason + `"}` }

// addTotals adds a handover's totals to this server's counts. Names it
// does not know (a newer build's) are ignored.
func (s *Server) addTotals(t map[string]uint64) {
	fields := s.up.base.fields()
	for name, n := range t {
		if f := fields[name]; f != nil {
			f.Add(n)
		} else if reason, ok := reasonOf(name, totalClosed); ok {
			s.countRefusedN(reason, n)
		} else if reason, ok := reasonOf(name, totalAcceptErr); ok && n > 0 {
			addCount(&s.acceptErrs, reason, n)
		}
	}
}

// reasonOf is the reason label of name, a counter of metric, as labelled
// writes it.
func reasonOf(name, metric string) (string, bool) {
	rest, ok := strings.CutPrefix(name, metric+`{reason="`)
	if !ok || !strings.HasSuffix(rest, `"}`) {
		return "", false
	}
	return strings.TrimSuffix(rest, `"}`), true
}

// withBase adds what a handover brought to st.
func (b *baseTotals) withBase(st Stats) Stats {
	st.Accepted += b.accepted.Load()
	st.Joins += b.joins.Load()
	st.Moved += b.moved.Load()
	st.FramesIn += b.framesIn.Load()
	st.BytesIn += b.bytesIn.Load()
	st.FramesOut += b.framesOut.Load()
	st.BytesOut += b.bytesOut.Load()
	st.Dropped += b.dropped.Load()
	st.LoopQueueDropped += b.loopDrop.Load()
	st.BusyNanos += b.busy.Load()
	return st
}
