package gateway

import (
	"time"

	"github.com/mlesd/mlesd/codec"
)

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

	// DefaultMaxChannels is the most (uid, channel) pairs, hence TCP
	// connections to the Mles server, one WebSocket connection may open.
	DefaultMaxChannels = 64

	// DefaultDialTimeout bounds opening a TCP connection to the Mles server.
	DefaultDialTimeout = 10 * time.Second

	// MaxMessage is the largest WebSocket message accepted: one whole
	// Mles payload (the protocol's 24-bit length field).
	MaxMessage = codec.MaxPayloadLen

	// maxCloseReason is the longest close reason a close frame can carry.
	maxCloseReason = 123
)
