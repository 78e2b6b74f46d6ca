package engine

import (
	"log/slog"
	"time"

	"github.com/mlesd/mlesd/codec"
)

// Defaults. Every limit of the engine lives here with the reason for its value.
const (
	// DefaultListen is dual stack: IPv4 clients arrive as IPv4-mapped IPv6.
	DefaultListen = "[::]:8077"
	// DefaultMaxFrame is the protocol maximum payload (24-bit length).
	DefaultMaxFrame = codec.MaxPayloadLen
	// DefaultMaxPending bounds the memory one receiver's waiting frames hold
	// (references to shared frames, each counted by its size class, under
	// twice its length: nothing is copied per receiver). A frame that would
	// pass it makes the receiver a lagger, reading its channel's shared log
	// (engine/lag.go), which MaxPending bounds as well: frames are dropped
	// for a receiver only when that log evicts what it still needed. A frame
	// is always accepted into an empty backlog, so any frame up to MaxFrame
	// passes. 32 MiB, as Redis's pub/sub hard limit (NATS: 64 MB): a
	// collector on a loaded machine can fall 0.4 s behind a fan-in of
	// 100,000 frames/s when its publishers' first frames arrive together
	// (bench fanin-rate), and 8 MiB, 33,000 such frames by size class, lost
	// it frames. What it costs is per channel and loop with a lagger (the
	// shared log), not per receiver: a receiver's own queue stays small
	// (earlyWriteBytes, refillBytes).
	DefaultMaxPending = 32 << 20
	// DefaultSendBuffer is each client socket's kernel send buffer
	// (SO_SNDBUF; Linux doubles it for its bookkeeping). Left to the
	// kernel's autotuning, the send buffer of a client that stops reading
	// grows to net.ipv4.tcp_wmem's maximum (4 MiB by default; 3.2 MB
	// measured with ss -tm): kernel memory per stalled receiver that no
	// limit of ours counts, and 3 GB of writes before a thousand
	// send-only devices are known to be full, while their collector waits.
	// 256 KiB keeps a loopback receiver of 1.6 MB frames at full speed
	// (BENCHMARKS.md, bigfan) and is 60 ms of a 32 Mbit/s link.
	DefaultSendBuffer = 256 << 10
	// DefaultMaxPendingFrames bounds the frames waiting per receiver, next to
	// the byte bound, for a receiver's own backlog (8-byte references) and a
	// channel's log on one loop (24-byte entries: 1.5 MiB at the bound,
	// shared by all its laggers: 6 MiB at the bound). It must stay well
	// above what a healthy fan-in collector has in flight (1,000 publishers
	// × 16 frames measured lossless only above 16,000) and hold the same
	// 0.4 s burst as DefaultMaxPending with room to spare: 2.6 s of 100,000
	// frames/s.
	DefaultMaxPendingFrames = 262144
	// DefaultStallTimeout: a receiver that is dropping frames and has sent
	// nothing for this long is closed. Send-only clients keep sending, so they
	// are not closed by it; it is long so that devices reporting every few
	// minutes are not either. A stalled receiver costs its share of its
	// channel's log (at most MaxPending of shared frames) meanwhile.
	DefaultStallTimeout = 10 * time.Minute
	// DefaultJoinTimeout: a connection that has not sent a whole join frame by
	// then is closed (stops idle sockets from holding a connection slot).
	DefaultJoinTimeout = 10 * time.Second
	// DefaultMaxConns bounds open connections (each costs an fd and a few KiB).
	DefaultMaxConns = 100_000
	// DefaultMaxConnsPerIP bounds connections from one address. One IP can
	// open at most about 64,000 connections to one listen address anyway
	// (its ephemeral ports), so a fleet behind one carrier NAT fits; at half
	// of DefaultMaxConns one host still cannot take every slot. Loopback
	// clients (the operator's own processes, benchmarks) are exempt unless
	// Config.LimitLoopback is set; TLS and WebSocket clients are counted by
	// their real address, not the loopback bridge's.
	DefaultMaxConnsPerIP = 50_000
	// DefaultMaxNameLen bounds uid and channel names in bytes.
	DefaultMaxNameLen = 4096
	// DefaultMaxPartialBytes bounds the bytes of frames still arriving, summed
	// over all connections (a frame costs only what has arrived, never its
	// declared length). When it is full, the connection holding the most is
	// closed, so that a few hoarders cannot lock out honest large frames.
	DefaultMaxPartialBytes = 256 << 20
	// DefaultFrameMinRate is the slowest a frame may arrive, in bytes per
	// second, measured over each FrameRateWindow once the frame has begun
	// (as nginx's client_body_timeout measures the gap between reads).
	// 2 KiB/s is 16 kbit/s, slower than GPRS, the slowest mobile data link
	// still in service: an honest client on any real link keeps it, while a
	// client that sends part of a frame and stops is closed within two windows.
	DefaultFrameMinRate = 2 << 10
	// DefaultFrameRateWindow is the span the minimum rate is measured over,
	// and so the grace a frame gets before the first check. A minute (nginx's
	// default) lets a mobile client ride out a radio handover or a tunnel.
	DefaultFrameRateWindow = time.Minute
	// DefaultFrameTimeout bounds how long one frame may take, however it
	// arrives. A full-size frame (16 MiB) at exactly DefaultFrameMinRate takes
	// 2 h 17 min, so this deadline never closes a client that keeps the
	// minimum rate; it caps how long any one frame can hold memory.
	DefaultFrameTimeout = 150 * time.Minute
	// DefaultDrainTimeout is how long a shutdown waits for receivers that can
	// take their backlog.
	DefaultDrainTimeout = 5 * time.Second
	// DefaultMaxResyncEntries bounds the inner frames of a resync (a first
	// frame that refills history). A peer's resync holds its own join plus
	// at most its history: 101 frames at the original's and this server's
	// default --history-limit of 100. 10,000 leaves room for peers with a
	// hundred times that history, and bounds what one resync costs its event
	// loop (about 0.4 µs per entry plus 1.5 ms per MiB, so under 50 ms even
	// at a 16 MiB payload), where a 16 MiB resync can hold 1.2 million tiny
	// entries (issue 11).
	DefaultMaxResyncEntries = 10_000
	// DefaultIdleTimeout is off: a joined receiver may stay silent forever
	// (Mles has no keepalive of its own; TCP keepalive finds dead peers).
	DefaultIdleTimeout = 0
	// DefaultKeepAlive is the TCP keepalive period set on every connection.
	DefaultKeepAlive = 60 * time.Second

	// maxBatchFrames and maxBatchBytes cap one batch of frames read from one
	// connection before it is fanned out, keeping latency and memory in check
	// when a client sends a long burst.
	maxBatchFrames = 256
	maxBatchBytes  = 1 << 20
	// earlyWriteBytes: a receiver with this much queued is written to at
	// once rather than at the end of the round (conn.deliver), so that a
	// socket that is full is found after this much, not after a whole
	// round of frames from every sender.
	earlyWriteBytes = 64 << 10
	// bigSetMembers, flushStepBigWrites and drainStepDeliveries bound one
	// step of an event loop (resume.go): a flush writes to at most
	// flushStepBigWrites receivers in sets of bigSetMembers or more on the
	// loop; a drain of the cross-loop inbox stops after about
	// drainStepDeliveries deliveries, and so do a round's walks of its own
	// frames to such sets; the rest is done after the loop has read its
	// ready sockets. Measured (joinstorm, 5,000 joins to one
	// channel, 2 loops): single steps took up to 130 ms, and a pair on
	// another channel had p99 207-408 ms; with these bounds a step takes a
	// few ms and that pair's p99 is 43-68 ms (BENCHMARKS.md). Small sets are never
	// deferred, so ordinary traffic is written in the round it arrives.
	bigSetMembers       = 256
	flushStepBigWrites  = 256
	drainStepDeliveries = 64 << 10
	// maxDeferredDeliveries bounds the walks of a loop's own frames left
	// for later steps (fanout defers a big set's walks once a round has
	// made drainStepDeliveries): past it the loop does them at once, as a
	// busy loop did before, so its reads slow and TCP holds its senders
	// back rather than the loop queueing without bound.
	maxDeferredDeliveries = 4 * drainStepDeliveries
	// copyFrameMax: frames up to this length travel to another loop as a
	// copy in the batch rather than by reference (loop.go, item).
	copyFrameMax = 1024
	// batchBufSize is the room for copied frames in one batch: a full
	// batch is posted at once and the next one started, so a batch's
	// buffer never grows (64 KiB: about 450 frames of 144 bytes).
	batchBufSize = 64 << 10
	// maxInboxFrames and maxInboxBytes bound what other loops may have
	// queued for one loop (references to shared frames, bytes by size
	// class). Past either, frames for that loop's members are dropped and
	// counted, never blocking the sender's loop. They must sit above what a
	// busy loop legitimately has in flight, or healthy receivers lose frames:
	// the pairs benchmark (500 publishers, a 4,096-frame window each) keeps
	// 2M frames (512 MiB of size classes) in flight, and a first bound of
	// 65,536 frames lost 1.1M of them. So they catch a stuck loop, at a
	// memory cost of at most 1 GiB of frames plus 16 bytes per reference.
	maxInboxFrames = 4 << 20
	maxInboxBytes  = 1 << 30
	// sweepInterval is the ticker's period: how often each loop checks
	// timeouts and folds its laggers' drop counts. Nothing is polled on it
	// (a receiver with a backlog is woken by its socket, writable.go) and
	// times are read from the clock when used, not kept by the tick, so an
	// idle server wakes only this often.
	sweepInterval = 250 * time.Millisecond
	// ownedFrameMin: a frame longer than this, once this much of it has
	// arrived, is moved out of gnet's inbound buffer into memory the engine
	// owns (see ownedBuf). It is gnet's read size (one read), so a small frame
	// never pays for the move, and at most MaxPartialBytes/ownedFrameMin
	// connections hold an owned buffer at once (4,096 at the default, well
	// under the kernel's 65,530 mappings per process).
	ownedFrameMin = 64 << 10
	// spareBufsLen and spareBufMax bound the owned buffers each loop keeps
	// for reuse (see spareBufs): 2 × 2 MiB per loop at most. Reuse makes a
	// stream of frames up to 2 MiB (a 1 MiB message with its header and CBOR
	// is just over 1 MiB) cost about what gnet's own buffer cost; larger
	// frames pay their page faults afresh, the price of giving memory back.
	spareBufsLen = 2
	spareBufMax  = 2 << 20
	// partialSlackDiv: while the connection holding the most partial bytes
	// is being closed on its own loop, the others may pass MaxPartialBytes by
	// at most MaxPartialBytes/partialSlackDiv (plus one read per loop); a
	// connection that would pass that is closed itself.
	partialSlackDiv = 8
)

// Off, given to a setting that can be off, turns it off: no bound for a
// limit, never for a timeout. Any negative value means the same.
const Off = -1

// Config is every setting of the engine. One rule for every field, as in
// every Config of this project (router, gateway, peering, client): zero
// means the package's default (the Default constants above), and a
// negative value (Off) turns the setting off where it can be off (no
// bound, never, at once). Bounds that keep memory and names in check
// cannot be off: a negative value gives them their default too.
type Config struct {
	// Listen holds the addresses to listen on, host:port. "[::]:port" and
	// ":port" are dual stack.
	Listen []string
	// Loops is the number of event loops; 0 (or negative) = one per CPU.
	Loops int
	// Keys is the first-level authentication setting (MLES_KEY, MLES_ADDR_KEY).
	Keys codec.KeyConfig
	// MaxFrame is the largest payload accepted, 1..0xFFFFFF; 0 (or out of
	// range) = DefaultMaxFrame, the protocol's maximum.
	MaxFrame int
	// MaxPending bounds each receiver's waiting bytes (see DefaultMaxPending;
	// cannot be off).
	MaxPending int
	// MaxPendingFrames bounds each receiver's waiting frames (cannot be off).
	MaxPendingFrames int
	// SendBuffer is the kernel send buffer (SO_SNDBUF) of each client
	// socket, in bytes (see DefaultSendBuffer); Off = the kernel's
	// autotuning. Uplinks to peers keep the kernel's.
	SendBuffer int
	// StallTimeout closes receivers that are stalled and silent; Off = never.
	StallTimeout time.Duration
	// JoinTimeout closes connections that have not joined; Off = never.
	JoinTimeout time.Duration
	// IdleTimeout closes joined connections that have sent nothing for this
	// long. Its default (DefaultIdleTimeout) is off: receivers may be silent
	// forever; so both 0 and Off mean never.
	IdleTimeout time.Duration
	// MaxConns bounds open connections; Off = no bound.
	MaxConns int
	// MaxConnsPerIP bounds open connections per client IP; Off = no bound.
	MaxConnsPerIP int
	// LimitLoopback applies MaxConnsPerIP to loopback clients too (by
	// default they are exempt: they are processes on this host).
	LimitLoopback bool
	// MaxUIDLen and MaxChannelLen bound the names in a join, in bytes
	// (cannot be off).
	MaxUIDLen     int
	MaxChannelLen int
	// MaxPartialBytes bounds bytes of incomplete frames over all connections;
	// when it is full, the connection holding the most is closed (cannot be
	// off).
	MaxPartialBytes int
	// MaxResyncEntries bounds the inner frames of a resync; a resync with
	// more is closed ("resync-too-large"; cannot be off).
	MaxResyncEntries int
	// FrameTimeout closes a connection whose frame has been arriving for this
	// long (the join frame too); Off = never.
	FrameTimeout time.Duration
	// FrameMinRate closes a connection whose frame arrives slower than this
	// many bytes per second over a FrameRateWindow; Off = no minimum.
	FrameMinRate int
	// FrameRateWindow is the span FrameMinRate is measured over (cannot be
	// off).
	FrameRateWindow time.Duration
	// DrainTimeout bounds how long Stop flushes backlogs before closing;
	// Off = close at once.
	DrainTimeout time.Duration
	// Members, when set, learns of every member's join and leave (package
	// peering opens and closes uplinks with it).
	Members MemberObserver
	// Logger receives the server's log; nil = slog.Default().
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if len(c.Listen) == 0 {
		c.Listen = []string{DefaultListen}
	}
	if c.MaxFrame <= 0 || c.MaxFrame > codec.MaxPayloadLen {
		c.MaxFrame = DefaultMaxFrame
	}
	if c.MaxPending <= 0 {
		c.MaxPending = DefaultMaxPending
	}
	if c.MaxPendingFrames <= 0 {
		c.MaxPendingFrames = DefaultMaxPendingFrames
	}
	if c.SendBuffer == 0 {
		c.SendBuffer = DefaultSendBuffer
	}
	if c.StallTimeout == 0 {
		c.StallTimeout = DefaultStallTimeout
	}
	if c.JoinTimeout == 0 {
		c.JoinTimeout = DefaultJoinTimeout
	}
	if c.MaxConns == 0 {
		c.MaxConns = DefaultMaxConns
	}
	if c.MaxConnsPerIP == 0 {
		c.MaxConnsPerIP = DefaultMaxConnsPerIP
	}
	if c.MaxUIDLen <= 0 {
		c.MaxUIDLen = DefaultMaxNameLen
	}
	if c.MaxChannelLen <= 0 {
		c.MaxChannelLen = DefaultMaxNameLen
	}
	if c.MaxPartialBytes <= 0 {
		c.MaxPartialBytes = DefaultMaxPartialBytes
	}
	if c.MaxResyncEntries <= 0 {
		c.MaxResyncEntries = DefaultMaxResyncEntries
	}
	if c.FrameTimeout == 0 {
		c.FrameTimeout = DefaultFrameTimeout
	}
	if c.FrameMinRate == 0 {
		c.FrameMinRate = DefaultFrameMinRate
	}
	if c.FrameRateWindow <= 0 {
		c.FrameRateWindow = DefaultFrameRateWindow
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.IdleTimeout < 0 {
		c.IdleTimeout = DefaultIdleTimeout // off, as 0
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}
