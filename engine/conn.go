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
	// The router's record of c's place in ch, written only by the router
	// under the channel's lock, from whichever loop joins or leaves.
	router.Membership
	// peerLink: joined with a CID that is not its key's, as another
	// server's uplink with a static group CID does; its uid is not a
	// sender here (see memberUIDs).
	peerLink bool

	// Backlog: references to shared frames not yet handed to the socket layer.
	q       frameQueue
	headOff int // bytes of q's head already handed over
	queued  int // bytes in q not yet handed over
	dirty   bool
	sent    uint64 // bytes written to the socket

	opened     int64 // Server.now, ns
	lastRead   int64 // Server.now, ns
	stallSince int64 // Server.now, ns; 0 = not dropping
	dropped    uint64
	reason     string // why the server closed it; "" = the peer did
	partial    int    // memory of the incomplete frame at the head, counted in Server.partialBytes
	held       int    // bytes of that frame that have arrived
	holder     int    // 1 + index in its loop's partialLoop.holders; 0 = not one
	frameStart int64  // Server.now, ns: when that frame began; 0 = no incomplete frame
	rateMark   int64  // Server.now, ns: start of its current minimum-rate window
	rateHeld   int    // held at rateMark
	rd         frameReader
	perIP      bool // counted in Server.perIP
	member     bool // Config.Members was told of its join: tell it of the leave
	placed     bool // joined (counted in loopStats.members), or moved here to join: never moves again
	moved      bool // moved to another loop to join there: its close here is only its descriptor's

	// Writable notification (writable.go): wToken names c in its loop's
	// writable set (0 = never added); wArmed is set while c waits there
	// for room, and then only that wake-up writes to it.
	wToken    uint64
	wArmed    bool
	woken     bool // write was called for a writable wake-up (writeReadyNow)
	pressured bool // in loop.pressured, waiting for a sweep to watch it again
	// pressureWait is the sweeps left before it is watched again;
	// pressureLevel the wake-ups in a row that wrote nothing (deferWatch).
	pressureWait  uint8
	pressureLevel uint8

	// Membership on its loop (loop.go): set is the channel's member list
	// on c's loop and setIdx c's place in it (-1 while lagging); joinSeq
	// is the last history sequence c got in its replay.
	set     *router.LoopSet
	setIdx  int
	joinSeq uint64
	// Lagging (lag.go): c's socket was full, so it is out of set's walk
	// and reads set.Log from cursor as its socket takes it.
	lagging    bool
	lagSoon    bool   // its socket filled during its set's walk: lag when the walk ends
	lagIdx     int    // c's place in loop.laggers
	cursor     uint64 // sequence of the next set.Log entry c needs
	ownEvicted uint64 // c's own entries evicted from set.Log at or past cursor
	lostMark   uint64 // set.Log.Lost when last counted

	mv *moving // a hitless upgrade's part (export.go); nil but during one
}

// Joined implements router.Subscriber: c lists itself in its loop's set.
// Called on c's loop, in its join.
func (c *conn) Joined(set *router.LoopSet, seq uint64) {
	c.set, c.joinSeq = set, seq
	c.setIdx = set.Add(c)
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

// deliver queues f for the receiver and reports true, or reports false
// when f would take its backlog past Config.MaxPending or
// Config.MaxPendingFrames even after writing what its socket takes now: the
// caller then makes it a lagger from f on (loop.walk), and it reads f from
// its set's log. Nothing is dropped here: only a lagger loses frames, when
// its set's log evicts what it still needed (lag.go). force (history
// replay at its join) queues whatever the backlog holds. Must run on c's
// loop. Never blocks; allocates only when the queue grows.
func (c *conn) deliver(f *router.Frame, force bool) bool {
	if c.state != joined {
		return true
	}
	cfg := &c.loop.srv.cfg
	if !force && c.full(f, cfg) {
		if !c.wArmed {
			// Frames may have piled up since the last write (a loop
			// drains many batches before it flushes): the socket
			// decides, not the batching.
			c.loop.write(c)
		}
		if c.full(f, cfg) {
			return false
		}
	}
	f.Ref()
	c.q.push(f)
	c.queued += f.Len()
	if c.up != nil && !force {
		c.up.seen.Add(f.Bytes()) // the peer will hold it: recognise its replay later
	}
	if !c.dirty && !c.wArmed { // one waiting for room is written when it has room
		c.dirty = true
		c.loop.dirty = append(c.loop.dirty, c)
	}
	if !force && c.queued >= earlyWriteBytes && !c.wArmed {
		// Do not wait for the end of the round: a round can hold frames
		// from hundreds of senders, and a member that never reads would
		// queue all of them (and cost a delivery each) before its full
		// socket is found. Written now, it lags at once (lag.go) and costs
		// nothing more; a reader is simply written to sooner.
		c.loop.write(c)
	}
	return true
}

// full reports whether f would take c's backlog past Config.MaxPending
// (memory the queued frames hold, Frame.Size) or Config.MaxPendingFrames.
// An empty backlog takes any frame.
func (c *conn) full(f *router.Frame, cfg *Config) bool {
	return c.q.len() > 0 && (c.q.size+f.Size() > cfg.MaxPending || c.q.len() >= cfg.MaxPendingFrames)
}
