package engine

import (
	"net"
	"net/netip"

	"github.com/panjf2000/gnet/v2"

	"github.com/mlesd/mlesd/router"
)

type connState uint8

const (
	awaitingJoin connState = iota
	joined
	closing // a write failed; gnet closes it soon
	closed
)

// conn is one client connection (or uplink) owned by one event loop. Every
// field is owned by that loop: only its goroutine reads or writes them, except
// cid, uid, peerLink, up and loop.idx, which are set before the conn is
// published to the router and never change.
type conn struct {
	gc     gnet.Conn
	loop   *loop
	remote netip.AddrPort
	local  netip.AddrPort // for an adopted connection, the address its client reached (else zero: read from the socket)
	state  connState
	cid    uint32
	dupKey uint64       // router.Subscriber.DupKey
	up     *uplinkState // nil unless an uplink to a peer
	ch     *router.Channel
	uid    string
	// peerLink: joined with a CID that is not its key's, as another
	// server's uplink with a static group CID does; its uid is not a
	// sender here (see memberUIDs).
	peerLink bool

	// Backlog: references to shared frames not yet handed to the socket layer.
	q       frameQueue
	headOff int // bytes of q's head already handed over
	queued  int // bytes in q not yet handed over
	dirty   bool
	backlog bool
	sent    uint64 // bytes written to the socket
	// retryAt and retryGap pace writes to a receiver whose socket is full:
	// each write that makes no progress doubles the wait before the next
	// (up to maxRetryGap), so a thousand stalled receivers do not cost a
	// thousand failing syscalls per inbound batch.
	retryAt    int64 // coarse clock, ns
	retryGap   int64
	stuckSince int64 // coarse clock, ns: first write without progress since the last with; 0 = none

	opened     int64 // coarse clock, ns
	lastRead   int64 // coarse clock, ns
	stallSince int64 // coarse clock, ns; 0 = not dropping
	dropped    uint64
	reason     string // why the server closed it; "" = the peer did
	partial    int    // memory of the incomplete frame at the head, counted in Server.partialBytes
	held       int    // bytes of that frame that have arrived
	holder     int    // 1 + index in its loop's partialLoop.holders; 0 = not one
	frameStart int64  // coarse clock, ns: when that frame began; 0 = no incomplete frame
	rateMark   int64  // coarse clock, ns: start of its current minimum-rate window
	rateHeld   int    // held at rateMark
	rd         frameReader
	perIP      bool // counted in Server.perIP
	member     bool // Config.Members was told of its join: tell it of the leave
}

// DupKey implements router.Subscriber.
func (c *conn) DupKey() uint64 { return c.dupKey }

// Loop implements router.Subscriber.
func (c *conn) Loop() int { return c.loop.idx }

func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		return netip.AddrPortFrom(ip, uint16(ta.Port))
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// pending is the bytes the receiver has waiting. They are all queued
// references: the engine never hands gnet more than the socket takes.
func (c *conn) pending() int { return c.queued }

// deliver queues f for the receiver, or drops it for this receiver alone when
// its backlog is full. Must run on c's loop. Never blocks; allocates only when
// the ring grows.
func (c *conn) deliver(f *router.Frame, force bool) {
	if c.state != joined {
		return
	}
	cfg := &c.loop.srv.cfg
	frameLimit := cfg.MaxPendingFrames
	if c.stalled() {
		frameLimit = min(frameLimit, stalledPendingFrames)
	}
	if p := c.pending(); !force && p > 0 && (p+f.Len() > cfg.MaxPending || c.q.len() >= frameLimit) {
		c.dropped++
		c.loop.stats.dropped.Add(1)
		if c.stallSince == 0 {
			c.stallSince = c.loop.srv.now()
			c.loop.srv.rlog.Log(levelWarn, "receiver-stalled", "receiver is not keeping up; dropping frames for it alone",
				connAttrs(c)...)
		}
		return
	}
	f.Ref()
	c.q.push(f)
	c.queued += f.Len()
	if c.up != nil && !force {
		c.up.seen.Add(f.Bytes()) // the peer will hold it: recognise its replay later
	}
	if !c.dirty && !c.backlog { // a backlogged receiver is written by the poll
		c.dirty = true
		c.loop.dirty = append(c.loop.dirty, c)
	}
}

// stalled reports whether c's writes have made no progress for stalledAfter.
func (c *conn) stalled() bool {
	return c.stuckSince != 0 && c.loop.srv.now()-c.stuckSince >= int64(stalledAfter)
}
