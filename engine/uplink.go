package engine

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/router"
)

// Uplink is a connection this server opens to a peer server as a member of
// one channel (package peering makes them). To the engine it is a joined
// connection like any other: local frames go up it, frames coming down it go
// to the channel's other members, never back up. Only its first frame and
// its join differ: it joins without sending a join of its own to us, and its
// first frame to the peer is the Hello.
type Uplink interface {
	// Channel is the channel the uplink is a member of.
	Channel() string
	// CID is the CID in the uplink's join frame; DupKey is its key for the
	// duplicate-CID rule (see router.Subscriber).
	CID() uint32
	DupKey() uint64
	// Hello returns the uplink's first frame for the peer, given the
	// uplink socket's own local address (for address keys) and the
	// channel's history when it joined (oldest first; do not keep them).
	// Called once, on the uplink's event loop.
	Hello(local netip.AddrPort, hist []*router.Frame) ([]byte, error)
	// Up is called once the uplink is a member and its Hello is queued.
	// closeFn closes it from any goroutine (Down follows).
	Up(closeFn func())
	// Down is called once when the connection has ended: reason is why
	// the server closed it ("" when the peer did or the socket failed),
	// received the number of frames that came down it.
	Down(reason string, err error, received uint64)
	// Seen is the log of frames that crossed the uplink, kept by its owner
	// across reconnections; only the engine touches it, on the event loop
	// of the uplink's current connection.
	Seen() *router.SeenLog
}

// MemberObserver learns when a connection joins or leaves a channel
// (uplinks excepted). Package peering uses it to open a channel's uplinks
// with its first member and close them after its last. Both are called on
// the member's event loop and must not block.
type MemberObserver interface {
	// MemberJoined: join is the member's join frame (for a resync, its
	// first inner frame), valid only during the call.
	MemberJoined(ch *router.Channel, join []byte)
	MemberLeft(ch *router.Channel)
}

// uplinkState is the part of a conn only uplinks have.
type uplinkState struct {
	u        Uplink
	seen     *router.SeenLog // frames that crossed this uplink, across its connections
	received uint64
	// replay counts, by fingerprint, the frames this server knows the peer
	// may replay from its history when the uplink (re)joins: those that
	// crossed the uplink before (either way) and those this server holds in
	// its own history. They must not reach members twice. Each absorbs one
	// equal frame, and only within the first replayLeft frames that come
	// down.
	replay     map[uint64]int32
	replayLeft int
	// here is the uids of the channel's members on this server, taken when
	// the first frame comes down: within the replay window, frames of these
	// senders are the peer's history of them (older than what they sent
	// here since, after this server restarted, say) and are not forwarded,
	// as in mergeCatchUp. hereTaken says it was taken.
	here      map[string]bool
	hereTaken bool
	ends      socketEnds // the uplink socket's addresses; valid once joined
}

// socketEnds is a TCP connection's two addresses, unmapped.
type socketEnds struct{ local, remote netip.AddrPort }

// unmapped turns an IPv4-mapped IPv6 address into plain IPv4.
func unmapped(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// isOwnUplink reports whether c is one of this server's own uplinks come
// back to it (a --peer that names this server): such a loop is refused
// whatever the keys and CIDs. Both ends must match, reversed: Linux lets
// connections to different destinations share a source port, so a client
// may have the source address of an uplink to another server.
func (s *Server) isOwnUplink(c *conn) bool {
	if s.uplinksOpen.Load() == 0 || c.gc == nil {
		return false
	}
	reached := unmapped(c.local)
	if !reached.IsValid() {
		reached = sockName(c.gc.Fd())
	}
	_, own := s.uplinkEnds.Load(socketEnds{local: unmapped(c.remote), remote: reached})
	return own
}

// sockName is a socket's own address, unmapped (gnet's LocalAddr of an
// accepted connection is its listener's, [::]:8077 say, not the address the
// client reached).
func sockName(fd int) netip.AddrPort {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return netip.AddrPort{}
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return unmapped(netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)))
	}
	return netip.AddrPort{}
}

// closeUplink forgets an uplink's addresses and tells its owner it ended.
func (s *Server) closeUplink(c *conn, err error) {
	if c.up.ends.local.IsValid() {
		s.uplinkEnds.Delete(c.up.ends)
		s.uplinksOpen.Add(-1)
	}
	c.up.replay = nil
	c.up.u.Down(c.reason, err, c.up.received)
}

// AdoptUplink hands a dialled connection to a peer to the engine as the
// uplink u. local and remote are the addresses of the TCP connection to the
// peer (local is what address keys hash): nc's own, or, when nc is one end
// of a socketpair bridged to a TLS connection, the TLS connection's. Like
// Adopt, the engine takes a duplicate of nc's descriptor and closes nc.
// Safe from any goroutine once a client connection has been served
// (uplinks exist only for channels that have members).
func (s *Server) AdoptUplink(nc net.Conn, local, remote netip.AddrPort, u Uplink) error {
	if s.stopping.Load() {
		return errors.New("engine: shutting down")
	}
	return s.adopt(nc, &adopted{remote: remote, local: local, uplink: u})
}

// openUplink joins an adopted uplink to its channel and queues its Hello,
// built from the history taken in the same step as the join, so that no
// local frame falls between the resync and the live stream.
func (s *Server) openUplink(c *conn, a *adopted) gnet.Action {
	u := a.uplink
	c.cid, c.dupKey = u.CID(), u.DupKey()
	c.up = &uplinkState{u: u, seen: u.Seen()}
	ch, hist, err := s.router.JoinUplink(u.Channel(), c, nil)
	if err != nil {
		c.reason = "too-many-channels"
		return gnet.Close
	}
	c.ch, c.uid, c.state = ch, "(uplink)", joined
	c.up.ends = socketEnds{local: unmapped(a.local), remote: unmapped(a.remote)}
	s.uplinkEnds.Store(c.up.ends, struct{}{})
	s.uplinksOpen.Add(1)
	hello, err := u.Hello(a.local, hist)
	if err != nil {
		for _, f := range hist {
			f.Release()
		}
		c.reason = "uplink-hello"
		s.rlog.Log(levelWarn, "uplink-hello", "cannot build an uplink's first frame", slog.String("channel", ch.Name()),
			slog.String("error", err.Error()))
		return gnet.Close
	}
	f := router.NewFrame(hello)
	c.deliver(f, true)
	f.Release()
	c.up.expectReplay(hist, max(s.router.HistoryLimit(), router.DefaultHistoryLimit))
	for _, f := range hist {
		f.Release()
	}
	gc := c.gc
	u.Up(func() { _ = gc.Close() })
	c.loop.flush()
	return gnet.None
}

// expectReplay prepares the replay filter of a new connection: what crossed
// the uplink before and what this server holds (hist), and records hist as
// crossed, since the Hello carries it and the peer will hold it. window is
// the most frames the peer may replay.
func (up *uplinkState) expectReplay(hist []*router.Frame, window int) {
	// The peer's last window frames and the last ones that crossed here
	// are the same frames in nearly the same order; twice the window
	// covers what was in flight either way when the link broke.
	up.seen.Init(2 * window)
	up.replayLeft = window // for the members' own frames (see here), at least
	if up.seen.Len() == 0 && len(hist) == 0 {
		return
	}
	up.replay = make(map[uint64]int32, up.seen.Len()+len(hist))
	up.seen.Count(up.replay)
	for _, f := range hist {
		fp := up.seen.Fingerprint(f.Bytes())
		if up.replay[fp] == 0 {
			up.seen.AddFingerprint(fp)
			up.replay[fp] = 1
		}
	}
}

// skipReplayed reports whether frame data, with fingerprint fp, come down
// the uplink c within the replay window, is the peer's replay of one this
// server already had, or of a sender who is a member here (see here); it
// then must not be forwarded. Loop-owned. Only the first replayLeft frames
// after each (re)connection take this path: it decodes their uid
// (allocating), so it is not the steady state.
func (up *uplinkState) skipReplayed(c *conn, fp uint64, data []byte) bool {
	up.replayLeft--
	skip := false
	if n := up.replay[fp]; n > 0 {
		up.replay[fp] = n - 1
		skip = true
	} else {
		if !up.hereTaken {
			up.hereTaken = true
			up.here = memberUIDs(c)
		}
		if len(up.here) > 0 {
			t, err := codec.DecodeTriplet(data[codec.HeaderLen:])
			skip = err == nil && up.here[t.UID]
		}
	}
	if up.replayLeft <= 0 {
		up.replay, up.here = nil, nil
	}
	return skip
}

// memberUIDs returns the uids of c's channel's members on this server:
// the senders whose frames come here directly. Left out: c, our own
// uplinks, and other servers' uplinks with a static group CID (their uid is
// their first member's, who may be anywhere in the group, and the group may
// reach us by several routes over time). Another server's uplink without a
// static CID cannot be told from a client; it carries the uid of a sender
// on its side, whose frames, in the trees such uplinks may form, come here
// only through it. A member's uid is set before the router publishes it,
// so reading it from another loop is safe.
func memberUIDs(c *conn) map[string]bool {
	here := map[string]bool{}
	// Members, not a snapshot: a snapshot may still list connections that
	// have left, such as the peer's previous link that this one replaces,
	// whose uid would make that peer's senders look local.
	c.ch.ForEachMember(func(sub router.Subscriber) {
		if m := sub.(*conn); m != c && m.up == nil && !m.peerLink {
			here[m.uid] = true
		}
	})
	return here
}

// adopt hands nc to an event loop, round robin, and waits until it is there.
func (s *Server) adopt(nc net.Conn, a *adopted) error {
	return s.register(nc, a, true)
}

// mergeCatchUp merges the inner frames of c's resync (its own join first
// when ownJoin) into the channel's history and returns those to forward,
// with the snapshot to forward them to.
//
// A resync is its sender's history, and some of it may be older than what
// this server's members have: after this server restarted, a peer's resync
// brings back the frames its reconnected clients sent before the crash,
// while they may have sent newer ones here since. So a frame of the resync
// that this server does not hold is forwarded only when its sender is not
// a member of the channel here (c aside: its own frames come through it):
// a member's frames come here directly, so those of them that reach this
// server again in a peer's resync are older than what the other members
// have. Those go to nobody (each member keeps seeing every sender's frames
// in order, and never its own); they only refill the history, in front of
// the frames it holds and only into the room left, so that a resync never
// evicts this server's own newer frames. Not the per-frame path: it decodes
// the uid of every frame of the resync.
func (s *Server) mergeCatchUp(c *conn, frames []*router.Frame, ownJoin bool) ([]*router.Frame, *router.Snapshot) {
	here := memberUIDs(c)
	news := make([]*router.Frame, 0, len(frames))
	var older []*router.Frame
	for i, f := range frames {
		t, err := codec.DecodeTriplet(f.Bytes()[codec.HeaderLen:])
		if (i == 0 && ownJoin) || err != nil || !here[t.UID] {
			news = append(news, f)
		} else {
			older = append(older, f)
		}
	}
	fresh, snap := c.ch.MergeResync(news, nil)
	c.ch.AddOlder(older)
	return fresh, snap
}
