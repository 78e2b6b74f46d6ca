package engine

import "github.com/mlesd/mlesd/codec"

// inbound is the part of a connection's receive buffer the frame parser
// needs; gnet.Conn provides it.
type inbound interface {
	InboundBuffered() int
	Peek(n int) ([]byte, error)
}

// nextFrame looks at the buffered bytes without consuming them. It returns the
// length of the whole frame at the head (header included) when all of it is
// buffered, 0 when more bytes are needed, or a reason to close the connection.
// It never reserves memory from a declared length: a frame costs only the
// bytes that have arrived. Hot path: no allocation.
func nextFrame(in inbound, maxFrame int) (total int, reason string) {
	avail := in.InboundBuffered()
	if avail < codec.HeaderLen {
		return 0, ""
	}
	hb, err := in.Peek(codec.HeaderLen)
	if err != nil {
		return 0, ""
	}
	h, err := codec.ParseHeader(hb)
	if err != nil {
		return 0, headerReason(err)
	}
	if h.Len > maxFrame {
		return 0, "frame-too-large"
	}
	total = codec.HeaderLen + h.Len
	if avail < total {
		return 0, ""
	}
	return total, ""
}
