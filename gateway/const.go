package gateway

import (
	"time"

	"github.com/mlesd/mlesd/codec"
)

// Off, given to a Config setting that can be off, turns it off (no
// limit). Any negative value means the same.
const Off = -1

// Every default of the gateway, in one place.
const (
	// Subprotocol is the WebSocket subprotocol a client must offer in
	// Sec-WebSocket-Protocol; the gateway echoes it in its response.
	Subprotocol = "mles-websocket"

	// DefaultListen is where the original gateway listened.
	DefaultListen = ":8076"

	// DefaultQueueFrames bounds the frames waiting to be written to one
	// WebSocket connection (all its channels together).
	DefaultQueueFrames = 4096

	// DefaultQueueBytes bounds the payload bytes waiting to be written to
	// one WebSocket connection. A frame is always accepted into an empty
	// queue, so a frame of the largest size always passes.
	DefaultQueueBytes = 8 << 20

	// DefaultMaxQueuedBytes bounds the frames waiting for WebSocket
	// clients over all sessions: each client's copies are its own, so 32
	// stalled clients with full queues fill it, not a thousand. Past it a
	// frame is dropped for a client that already has one queued.
	DefaultMaxQueuedBytes = 256 << 20

	// DefaultMaxChannels is the most (uid, channel) pairs, hence
	// connections to the Mles server, one WebSocket connection may open.
	DefaultMaxChannels = 64

	// DefaultDialTimeout bounds opening a TCP connection to the Mles server.
	DefaultDialTimeout = 10 * time.Second

	// MaxMessage is the largest WebSocket message accepted: one whole
	// Mles payload (the protocol's 24-bit length field).
	MaxMessage = codec.MaxPayloadLen

	// DefaultMaxMessageBytes bounds the bytes of one session's unfinished
	// message (a session reads one message at a time): the largest Mles
	// payload, so that every valid message passes. A session past it is
	// closed with 1009 (message too big).
	DefaultMaxMessageBytes = MaxMessage

	// DefaultMaxUnfinishedBytes bounds the memory held by unfinished
	// messages over all sessions: sixteen largest messages arriving at
	// once, the same budget the engine gives frames still arriving
	// (engine.DefaultMaxPartialBytes). When it is full, the session holding
	// the most is shed (close 1013, try again later), not the newcomer.
	DefaultMaxUnfinishedBytes = 256 << 20

	// DefaultMaxSessions bounds the WebSocket sessions at once: each costs
	// a socket, two goroutines and a queue; 10,000 is well inside what one
	// process serves. The next handshake is refused with 503.
	DefaultMaxSessions = 10_000

	// DefaultMaxPairs bounds the (uid, channel) pairs over all sessions.
	// Each pair is one engine connection costing two descriptors (a
	// socketpair, or a loopback TCP connection's two ends in mlesd), so
	// this keeps the gateway within 20,000 descriptors.
	DefaultMaxPairs = 10_000

	// DefaultMaxSessionsPerClient bounds the sessions from one client IP
	// address: room for a building behind one NAT address with many tabs
	// open, while one address cannot take the whole gateway.
	DefaultMaxSessionsPerClient = 256

	// DefaultMaxPairsPerClient bounds the pairs over the sessions of one
	// client IP address, for the same reason: a tenth of DefaultMaxPairs.
	DefaultMaxPairsPerClient = 1_000

	// pairBufSize is each pair's read buffer, and its write buffer once it
	// sends more than its join: larger frames are read into a buffer of
	// their own, or written straight from the message, so it only batches
	// small frames; 4 KiB keeps ten thousand idle pairs at 40 MiB.
	pairBufSize = 4 << 10

	// shedWait bounds how long a session needing memory waits for shed
	// sessions to give theirs back before it gives up (and is shed).
	shedWait = 2 * time.Second

	// closeFrameGrace is how long a shed session's close frame gets to go
	// out before its connection is cut, so that its reader lets go of its
	// memory even when the client has stopped sending.
	closeFrameGrace = 100 * time.Millisecond

	// logBurst is how many lines per reason per second the gateway logs
	// for refusals, sheds and resource failures.
	logBurst = 5

	// maxCloseReason is the longest close reason a close frame can carry.
	maxCloseReason = 123
)
