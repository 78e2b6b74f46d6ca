package peering

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/router"
)

// Uplink is one channel's connection to one peer, across reconnects. It
// implements engine.Uplink; the engine calls Hello, Up and Down on an event
// loop, never at the same time for one Uplink.
type Uplink struct {
	m    *Manager
	cl   *channelLinks
	peer string

	// Lock: m.mu
	state   State
	gen     uint64        // bumps with each dial, so a stale dial knows it
	wait    time.Duration // the next back-off
	retry   *time.Timer
	closeFn func() // closes the connection; set while Up
	upSince time.Time
	key     uint64 // the join key for the current connection
	cid     uint32
	helloed bool // a first frame was sent on some connection
	// local is the current (or last) connection's local address;
	// reuseFrom is set to it when that connection failed rather than
	// being closed by either side: the peer may then still hold its end
	// (a partition, a middlebox that forgot the connection), and, with it,
	// the uplink's CID, refusing the next connection as a duplicate until
	// its own end times out, which for a peer with nothing to send takes
	// its keepalive, minutes. The next dial comes from the same address:
	// the peer's stack then answers the SYN on the old connection, which
	// this side's resets, so the stale end goes at once (RFC 5961's
	// challenge ACK) and the SYN's retransmission connects.
	local, reuseFrom netip.AddrPort

	// Not locked: the engine's, on the current connection's event loop
	// (see engine.Uplink.Seen).
	seen router.SeenLog
}

// setKeyLocked computes the join key and CID for a connection whose local
// address is local. Lock: m.mu.
func (u *Uplink) setKeyLocked(local netip.AddrPort) {
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	u.key = u.m.cfg.Keys.ClientKey(local, u.cl.first.UID, u.cl.first.Channel)
	u.cid = codec.CIDOf(u.key)
	if c := u.m.cfg.StaticCID; c != nil {
		u.cid = *c
	}
}

// Peer is the --peer this uplink connects to (a handover names it, so the
// new process's manager adopts the connection: AdoptMoved).
func (u *Uplink) Peer() string { return u.peer }

// Channel implements engine.Uplink.
func (u *Uplink) Channel() string { return u.cl.name }

// Seen implements engine.Uplink.
func (u *Uplink) Seen() *router.SeenLog { return &u.seen }

// CID implements engine.Uplink: the CID of the current connection's join.
func (u *Uplink) CID() uint32 {
	u.m.mu.Lock()
	defer u.m.mu.Unlock()
	return u.cid
}

// DupKey implements engine.Uplink: a static group CID is held as itself, so
// that it refuses other group links while this one is open; otherwise the
// CID with bit 32 set, which refuses nobody (the original's cid|1<<32).
func (u *Uplink) DupKey() uint64 {
	u.m.mu.Lock()
	defer u.m.mu.Unlock()
	if u.m.cfg.StaticCID != nil {
		return uint64(u.cid)
	}
	return uint64(u.cid) | 1<<32
}

// Hello implements engine.Uplink: the uplink's first frame (see the package
// doc). hist is the channel's history as the uplink joined.
func (u *Uplink) Hello(local netip.AddrPort, hist []*router.Frame) ([]byte, error) {
	u.m.mu.Lock()
	key, cid, helloed := u.key, u.cid, u.helloed
	u.helloed = true
	u.m.mu.Unlock()
	return hello(u.cl.join, u.cl.first, key, cid, helloed, hist, u.m.log)
}

// hello builds an uplink's first frame: a resync of [fresh empty join,
// history...] when there is history (the oldest frames left out when it
// would not fit one frame), else the first member's join rekeyed (first
// connection) or a fresh empty join (later ones, whose first member's
// message the peer already had).
func hello(join []byte, first codec.Triplet, key uint64, cid uint32, helloed bool, hist []*router.Frame, log *slog.Logger) ([]byte, error) {
	fresh := codec.Triplet{UID: first.UID, Channel: first.Channel}
	h := codec.Header{CID: cid, Key: key}
	if len(hist) > 0 {
		joinFrame := appendFrame(nil, h, fresh)
		frames := make([][]byte, 0, 1+len(hist))
		frames = append(frames, joinFrame)
		for _, f := range hist {
			frames = append(frames, f.Bytes())
		}
		dropped := 0
		for len(frames) > 1 && codec.ResyncLen(frames) > codec.MaxPayloadLen {
			frames = append(frames[:1], frames[2:]...)
			dropped++
		}
		if dropped > 0 {
			log.Warn("peer resync too large for one frame; oldest history left out",
				slog.String("channel", first.Channel), slog.Int("left_out", dropped))
		}
		if len(frames) > 1 {
			h.Len = codec.ResyncLen(frames)
			out := codec.AppendHeader(make([]byte, 0, codec.HeaderLen+h.Len), h)
			return codec.AppendResync(out, frames), nil
		}
		return joinFrame, nil
	}
	if !helloed {
		// The first member's join as it came, with this uplink's key and CID.
		out := append([]byte(nil), join...)
		h.Len = len(join) - codec.HeaderLen
		h.Put(out)
		return out, nil
	}
	return appendFrame(nil, h, fresh), nil
}

func appendFrame(dst []byte, h codec.Header, t codec.Triplet) []byte {
	h.Len = codec.TripletLen(t)
	dst = codec.AppendHeader(dst, h)
	return codec.AppendTriplet(dst, t)
}

// Up implements engine.Uplink.
func (u *Uplink) Up(closeFn func()) {
	m := u.m
	m.mu.Lock()
	if u.state != Connecting || m.stopped {
		m.mu.Unlock()
		closeFn()
		return
	}
	u.state, u.closeFn, u.upSince = Up, closeFn, time.Now()
	m.totals.Ups++
	m.mu.Unlock()
	m.log.Info("peer uplink up", slog.String("peer", u.peer), slog.String("channel", u.cl.name),
		slog.String("cid", fmt.Sprintf("%08x", u.cid)))
}

// ReasonMoved is the reason Down is given for a connection the engine
// handed to a new process on an upgrade (engine/export.go).
const ReasonMoved = "moved"

// Down implements engine.Uplink: the connection ended. Unless the channel
// is gone, the uplink dials again after its back-off.
func (u *Uplink) Down(reason string, err error, received uint64) {
	m := u.m
	m.mu.Lock()
	defer m.mu.Unlock()
	wasUp := u.state == Up
	u.closeFn = nil
	if reason == ReasonMoved {
		// Handed to a new process on an upgrade: the connection lives on
		// there; here the link is done and never dials again.
		u.state = Closed
		u.gen++
		return
	}
	if (u.state != Up && u.state != Connecting) || m.stopped {
		return // closed for good, or its failure was already handled
	}
	m.totals.Downs++
	up := time.Duration(0)
	if wasUp {
		up = time.Since(u.upSince)
	}
	if received > 0 || up >= stableAfter {
		u.wait = m.cfg.Backoff // it worked: start the back-off over
	}
	if reason == "" && err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		u.reuseFrom = u.local // failed, not closed: see reuseFrom
	}
	why := reason
	switch {
	case why != "":
	case err != nil && !errors.Is(err, net.ErrClosed):
		why = err.Error()
	case received == 0 && up < stableAfter:
		why = "closed by the peer at once: refused? (wrong key, or a connection with this CID is already on the channel there)"
	default:
		why = "closed by the peer"
	}
	m.rlog.Log(slog.LevelWarn, "peer-down", "peer uplink down", slog.String("peer", u.peer), slog.String("channel", u.cl.name),
		slog.String("why", why), slog.Duration("was_up", up.Round(time.Millisecond)), slog.Uint64("frames_received", received))
	m.failedLocked(u, "reconnect", nil)
}

// closeLocked ends u for good: no more dials, its connection closed.
// Lock: m.mu.
func (u *Uplink) closeLocked() {
	u.state = Closed
	u.gen++
	if u.retry != nil {
		u.retry.Stop()
	}
	if u.closeFn != nil {
		go u.closeFn() // asynchronous in the engine; Down follows and is ignored
		u.closeFn = nil
	}
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
