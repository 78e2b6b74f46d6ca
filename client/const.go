package client

import (
	"time"

	"github.com/mlesd/mlesd/codec"
)

// Off, given to an option that can be off, turns it off: DialTimeout(Off)
// leaves connecting to the context, HistoryWindow(Off) remembers nothing,
// MaxReconnects(Off) takes the limit off (reconnects forever). Any
// negative value means the same. As in every Config of the project, 0
// keeps the default.
const Off = -1

// Every default of the package, in one place.
const (
	// DefaultPort is the port used when an address names none: Mles's IANA
	// port, for plain TCP and for TLS alike.
	DefaultPort = codec.DefaultPort

	// DefaultWebSocketPort is the port of ws:// and wss:// addresses that
	// name none: where the original WebSocket gateway listened.
	DefaultWebSocketPort = 8076

	// Subprotocol is the WebSocket subprotocol the gateway requires.
	Subprotocol = "mles-websocket"

	// DefaultDialTimeout bounds connecting (TCP, TLS handshake, WebSocket
	// handshake) when the context given to Connect has no earlier deadline.
	DefaultDialTimeout = 10 * time.Second

	// DefaultReadBufferSize is the receive buffer. A frame that fits is
	// handed out in place; a larger one is read into a buffer kept for
	// the next large frame.
	DefaultReadBufferSize = 64 << 10

	// DefaultWriteBufferSize is the send buffer: Send appends a frame and
	// a background flusher writes what has piled up with one system call.
	// A Send that finds the buffer full writes it itself (back-pressure).
	DefaultWriteBufferSize = 64 << 10

	// DefaultMaxReconnects is 0: a Conn does not reconnect unless asked
	// (MaxReconnects). A rejoin replays the channel's history, which a
	// caller must expect; see the package documentation.
	DefaultMaxReconnects = 0

	// DefaultReconnectWait is the wait before the first reconnect attempt;
	// each failed attempt doubles it, up to DefaultMaxReconnectWait.
	DefaultReconnectWait = 250 * time.Millisecond

	// DefaultMaxReconnectWait caps the growing wait between attempts.
	DefaultMaxReconnectWait = 30 * time.Second

	// DefaultHistoryWindow is how many of the last frames delivered and
	// sent a reconnecting Conn remembers (as 64-bit hashes) to skip them
	// when the server replays its history: the server's default
	// --history-limit.
	DefaultHistoryWindow = 100

	// drainTimeout bounds Close's goodbye when the caller gave no context.
	closeFlushTimeout = 5 * time.Second
)
