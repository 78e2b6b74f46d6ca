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
	// pass it is dropped for that receiver alone, which is then parked until
	// its socket has taken half; a frame is always accepted into an empty
	// backlog, so any frame up to MaxFrame passes.
	DefaultMaxPending = 8 << 20
	// DefaultMaxPendingFrames bounds the frames waiting per receiver, next to
	// the byte bound: the backlog holds one 8-byte reference per frame, so a
	// stalled receiver costs at most 512 KiB of references besides the shared
	// frames. It must stay well above what a healthy fan-in collector has in
	// flight (1,000 publishers × 16 frames measured lossless only above
	// 16,000), so it follows NATS's pending-message default.
	DefaultMaxPendingFrames = 65536
	// DefaultStallTimeout: a receiver that is dropping frames and has sent
	// nothing for this long is closed. Send-only clients keep sending, so they
	// are not closed by it; it is long so that devices reporting every few
	// minutes are not either. A stalled receiver costs at most MaxPending of
	// shared frames plus maxHandover copied bytes meanwhile.
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
	// declared length).
	DefaultMaxPartialBytes = 256 << 20
	// DefaultDrainTimeout is how long a shutdown waits for receivers that can
	// take their backlog.
	DefaultDrainTimeout = 5 * time.Second
	// DefaultKeepAlive is the TCP keepalive period set on every connection.
	DefaultKeepAlive = 60 * time.Second

	// maxBatchFrames and maxBatchBytes cap one batch of frames read from one
	// connection before it is fanned out, keeping latency and memory in check
	// when a client sends a long burst.
	maxBatchFrames = 256
	maxBatchBytes  = 1 << 20
	// maxInboxFrames and maxInboxBytes bound what other loops may have
	// queued for one loop (references to shared frames). A loop that far
	// behind is stuck, not busy: past either bound, frames for its members
	// are dropped and counted (never blocking the sender's loop). 65,536
	// frames are a quarter of a second of the fastest fan-in measured.
	maxInboxFrames = 65536
	maxInboxBytes  = 512 << 20
	// tickInterval is the ticker's period: the resolution of the coarse
	// clock that timeouts are measured with. Nothing is polled on it (a
	// receiver with a backlog is woken by its socket, writable.go), so an
	// idle server wakes only this often.
	tickInterval = 50 * time.Millisecond
	// sweepInterval is how often each loop checks timeouts.
	sweepInterval = 250 * time.Millisecond
)

// Config is every setting of the engine. The zero value of a field means its
// default, except where noted.
type Config struct {
	// Listen holds the addresses to listen on, host:port. "[::]:port" and
	// ":port" are dual stack.
	Listen []string
	// Loops is the number of event loops; 0 = one per CPU.
	Loops int
	// Keys is the first-level authentication setting (MLES_KEY, MLES_ADDR_KEY).
	Keys codec.KeyConfig
	// MaxFrame is the largest payload accepted, 1..0xFFFFFF.
	MaxFrame int
	// MaxPending bounds each receiver's waiting bytes (see DefaultMaxPending).
	MaxPending int
	// MaxPendingFrames bounds each receiver's waiting frames.
	MaxPendingFrames int
	// StallTimeout closes receivers that are stalled and silent; negative = never.
	StallTimeout time.Duration
	// JoinTimeout closes connections that have not joined; negative = never.
	JoinTimeout time.Duration
	// IdleTimeout closes joined connections that have sent nothing for this
	// long; 0 = never (the default: receivers may be silent forever).
	IdleTimeout time.Duration
	// MaxConns bounds open connections; negative = no bound.
	MaxConns int
	// MaxConnsPerIP bounds open connections per client IP; negative = no bound.
	MaxConnsPerIP int
	// LimitLoopback applies MaxConnsPerIP to loopback clients too (by
	// default they are exempt: they are processes on this host).
	LimitLoopback bool
	// MaxUIDLen and MaxChannelLen bound the names in a join, in bytes.
	MaxUIDLen     int
	MaxChannelLen int
	// MaxPartialBytes bounds bytes of incomplete frames over all connections;
	// the connection whose bytes pass it is closed.
	MaxPartialBytes int
	// DrainTimeout bounds how long Stop flushes backlogs before closing.
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
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}
