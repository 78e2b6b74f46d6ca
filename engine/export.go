package engine

// Export and release for a hitless upgrade, phase 2 (upgrade/doc.go): what
// a frozen server hands over, and how it then lets go of the sockets
// without ending their connections.

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/router"
	"github.com/mlesd/mlesd/upgrade"
)

// reasonMoved is the close reason of a connection handed to a new
// process: its socket lives on there, so nothing is counted or logged.
const reasonMoved = "moved"

// moving is the part of a conn only a handover touches. Loop-owned.
type moving struct {
	// Old process: id is the connection's ConnState.ID once exported (0:
	// not), exportedIn the inbound bytes its ConnState carried.
	id         uint64
	exportedIn int
	// New process: paused holds its reading until every connection of the
	// handover is a member again (import.go); pre is the inbound bytes the
	// old process had read and not parsed, read before the socket's.
	paused bool
	pre    []byte
}

// Moved is one exported connection: its state, the bytes owed to it, and
// which socket it is (Socket gives a descriptor of it, one at a time: a
// descriptor per connection at once would need twice the connections'
// descriptors, past the limit of a busy server).
type Moved struct {
	State upgrade.ConnState
	Owed  []byte
	fd    int    // the engine's descriptor of its socket at the export
	ino   uint64 // the socket's inode then: fd may since name another
}

// ErrGone is returned by Moved.Socket for a connection that closed after
// the export (its client went): there is nothing to hand over.
var ErrGone = errors.New("engine: the connection closed after the export")

// SocketFD returns a descriptor of m's socket to send, which the caller
// closes once sent (unix.Close; a bare descriptor, without an *os.File's
// registration with Go's poller). If the connection closed since the
// export (its event loop, frozen, still closes a connection whose client
// went), its descriptor number may name another file by now: the inode
// tells, and ErrGone says so. Any other error (out of descriptors) fails
// the handover.
func (m *Moved) SocketFD() (int, error) {
	fd, err := dupCloseOnExec(m.fd)
	if err == unix.EBADF {
		return -1, ErrGone
	}
	if err != nil {
		return -1, fmt.Errorf("duplicating a connection's socket: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Ino != m.ino {
		_ = unix.Close(fd)
		return -1, ErrGone
	}
	return fd, nil
}

// MovedChannel is one exported channel and its history, concatenated.
type MovedChannel struct {
	State   upgrade.ChannelState
	History []byte
}

// Export is what a frozen server hands over.
type Export struct {
	Conns    []*Moved
	Channels []*MovedChannel
	Totals   map[string]uint64
}

// Export reads the state of every plain-TCP connection (joined or awaiting
// its join) and every channel's history of the round frozen (FreezeRound;
// all of them after Freeze). TLS and
// WebSocket pairs and uplinks are not exported: they stay and drain.
func (s *Server) Export(timeout time.Duration) (*Export, error) {
	r := s.up.round
	if !s.up.frozen.Load() || s.up.between.Load() || r == nil {
		return nil, errors.New("engine: Export needs a frozen server")
	}
	ex := &Export{}
	var mu sync.Mutex
	var failed error
	err := s.onLoops(time.Now().Add(timeout), func(l *loop) {
		now := s.now()
		for c := range l.conns {
			if !movable(c) || !r.holds(c) {
				continue
			}
			m, err := s.exportConn(c, now)
			mu.Lock()
			if err != nil {
				failed = errors.Join(failed, err)
			} else {
				ex.Conns = append(ex.Conns, m)
			}
			mu.Unlock()
		}
	})
	if err == nil {
		err = failed
	}
	if err != nil {
		s.unmark()
		return nil, err
	}
	s.router.ForEachChannel(func(ch *router.Channel) {
		if !r.hasChannel(ch.Name()) {
			return
		}
		hist := ch.History(nil)
		mc := &MovedChannel{State: upgrade.ChannelState{Name: ch.Name(), FirstJoin: s.firstJoin(ch.Name())}}
		for _, f := range hist {
			mc.History = append(mc.History, f.Bytes()...)
			f.Release()
		}
		ex.Channels = append(ex.Channels, mc)
	})
	ex.Totals = s.totals()
	return ex, nil
}

// joinKeeper is a MemberObserver that keeps the join frame a channel's
// uplinks replay (package peering's Manager): a handover carries it, so
// that the new process opens the same uplinks for the members it takes.
type joinKeeper interface {
	FirstJoin(channel string) []byte
}

// maxMovedJoin bounds the first join a ChannelState carries (it travels in
// one message): a longer one goes without its message, as peering itself
// keeps a long one.
const maxMovedJoin = 16 << 10

// firstJoin is the join frame the peering uplinks of channel replay, or nil.
func (s *Server) firstJoin(channel string) []byte {
	jk, ok := s.cfg.Members.(joinKeeper)
	if !ok {
		return nil
	}
	join := jk.FirstJoin(channel)
	if len(join) <= maxMovedJoin {
		return join
	}
	h, err := codec.ParseHeader(join)
	t, terr := codec.DecodeTriplet(join[codec.HeaderLen:])
	if err != nil || terr != nil {
		return nil
	}
	t.Message = nil
	return codec.AppendTriplet(codec.AppendHeader(nil, codec.Header{Len: codec.TripletLen(t), CID: h.CID, Key: h.Key}), t)
}

// unmark forgets which connections were exported (a failed export).
func (s *Server) unmark() {
	_ = s.onLoops(time.Now().Add(thawTimeout), func(l *loop) {
		for c := range l.conns {
			if c.mv != nil {
				c.mv.id, c.mv.exportedIn = 0, 0
			}
		}
	})
}

// movable reports whether c moves to the new process: an open plain-TCP
// client connection, or an uplink over plain TCP. An adopted client (TLS,
// WebSocket: c.local is set) is one end of a socketpair whose other end is
// a Go session that cannot move, as is an uplink over TLS.
func movable(c *conn) bool {
	if c.state > joined || c.reason != "" {
		return false
	}
	if c.up != nil {
		_, named := c.up.u.(peerNamer)
		return named && sockName(c.gc.Fd()).IsValid() // a TCP socket, not a pair bridged to TLS
	}
	return !c.local.IsValid()
}

// peerNamer is an Uplink that names its peer (package peering's): only
// such an uplink moves, so that the new process's owner can adopt it.
type peerNamer interface{ Peer() string }

// exportConn writes c's ConnState. Loop-owned, frozen.
func (s *Server) exportConn(c *conn, now int64) (*Moved, error) {
	var fst unix.Stat_t
	if err := unix.Fstat(c.gc.Fd(), &fst); err != nil {
		return nil, fmt.Errorf("a connection's socket: %w", err)
	}
	if c.mv == nil {
		c.mv = &moving{}
	}
	c.mv.id = s.up.nextID.Add(1)
	in := inboundBytes(c)
	c.mv.exportedIn = len(in)
	st := upgrade.ConnState{ID: c.mv.id, Remote: c.remote.String(), Local: sockName(c.gc.Fd()).String(),
		Partial: in, IdleNs: max(now-c.lastRead, 0), Dropped: c.dropped, PeerLink: c.peerLink}
	if c.frameStart != 0 {
		st.PartialAgeNs = max(now-c.frameStart, 0)
	}
	if c.stallSince != 0 {
		st.StallNs = max(now-c.stallSince, 1)
	}
	if c.state == joined {
		st.Phase, st.UID, st.Channel, st.CID = upgrade.PhaseJoined, c.uid, c.ch.Name(), c.cid
		if c.dupKey != uint64(c.cid) {
			st.DupKey = c.dupKey
		}
		if c.up != nil {
			st.Uplink = &upgrade.UplinkState{Peer: c.up.u.(peerNamer).Peer(), Resynced: true}
			key, seen := c.up.seen.Export()
			st.Uplink.SeenKey, st.Uplink.Seen = key, seen[max(len(seen)-upgrade.MaxSeen, 0):]
			if c.up.replayLeft > 0 { // the peer's replay may still be coming down
				st.Uplink.ReplayLeft = uint32(c.up.replayLeft)
				for fp, n := range c.up.replay {
					for range min(int(n), upgrade.MaxSeen-len(st.Uplink.Replay)) {
						st.Uplink.Replay = append(st.Uplink.Replay, fp)
					}
				}
			}
			st.Local, st.Remote = c.up.ends.local.String(), c.up.ends.remote.String()
		}
	} else {
		st.PartialAgeNs = max(now-c.opened, 0) // its join timer runs from its open
	}
	m := &Moved{State: st, fd: c.gc.Fd(), ino: fst.Ino}
	m.Owed, m.State.OwedWhole = owedBytes(c)
	return m, nil
}

// inboundBytes is what c has read and not parsed, in order: the frame
// being assembled in its owned buffer, what an earlier handover left it,
// then gnet's buffer. Loop-owned.
func inboundBytes(c *conn) []byte {
	var b []byte
	if c.rd.want != 0 {
		b = append(b, c.rd.own.b...)
	}
	if c.mv != nil {
		b = append(b, c.mv.pre...)
	}
	if n := c.gc.InboundBuffered(); n > 0 {
		p, _ := c.gc.Peek(n)
		b = append(b, p...)
	}
	return b
}

// owedBytes is every byte still owed to c, in order: the rest of the frame
// being written (its length is whole), the queued frames, and for a
// lagger the entries of its set's log it has still to read (as refill
// would take them). Loop-owned, frozen.
func owedBytes(c *conn) (owed []byte, whole uint32) {
	if c.state != joined {
		return nil, 0
	}
	for i := 0; i < c.q.len(); i++ {
		b := c.q.at(i).Bytes()
		if i == 0 && c.headOff > 0 {
			b = b[c.headOff:]
			whole = uint32(len(b))
		}
		owed = append(owed, b...)
	}
	if c.lagging {
		log := &c.set.Log
		self := router.Subscriber(c)
		for seq := max(c.cursor, log.Base()); seq < log.Head(); seq++ {
			e := log.At(seq)
			if e.From == self {
				continue
			}
			if fs := e.F.Seq(); fs != 0 && fs <= c.joinSeq {
				continue
			}
			owed = append(owed, e.F.Bytes()...)
		}
	}
	return owed, whole
}

// Release lets go of the exported connections that were sent (by
// ConnState.ID) after the new process has imported them: on each loop, it takes the inbound bytes read since the
// export (returned by ConnState.ID) and closes this process's descriptor
// only. close(2) of one descriptor of a socket another process holds
// sends nothing; shutdown(2), which acts on the socket, is never called.
// Then it thaws the loops for what stays (TLS and WebSocket pairs,
// uplinks), which drains as in phase 1; the acceptors stay parked until
// StopAccepting.
func (s *Server) Release(sent map[uint64]bool, timeout time.Duration) (map[uint64][]byte, error) {
	return s.ReleaseRound(sent, false, timeout)
}

// ReleaseRound is Release for a round of a handover: with more, another
// round follows (FreezeRound), and the server stays marked as handing
// over (no connection moves between its loops meanwhile).
func (s *Server) ReleaseRound(sent map[uint64]bool, more bool, timeout time.Duration) (map[uint64][]byte, error) {
	late := map[uint64][]byte{}
	var mu sync.Mutex
	err := s.onLoops(time.Now().Add(timeout), func(l *loop) {
		for c := range l.conns {
			if c.mv == nil || c.mv.id == 0 {
				continue
			}
			if !sent[c.mv.id] { // not handed over after all: it stays
				c.mv.id, c.mv.exportedIn = 0, 0
				if !c.mv.paused && c.mv.pre == nil {
					c.mv = nil
				}
				continue
			}
			if in := inboundBytes(c); len(in) > c.mv.exportedIn {
				mu.Lock()
				late[c.mv.id] = in[c.mv.exportedIn:]
				mu.Unlock()
			}
			c.mv = nil
			c.reason = reasonMoved
			_ = l.el.Close(c.gc) // OnClose runs now: c leaves this process's state
		}
		l.thaw()
	})
	s.up.round = nil
	if more {
		s.up.between.Store(true)
	} else {
		s.up.frozen.Store(false)
	}
	return late, err
}
