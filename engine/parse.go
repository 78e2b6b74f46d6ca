package engine

import "github.com/mlesd/mlesd/codec"

// inbound is the part of a connection's receive buffer the frame parser
// needs; gnet.Conn provides it.
type inbound interface {
	InboundBuffered() int
	Peek(n int) ([]byte, error)
}

// nextFrame looks at the buffered bytes without consuming them. It returns the
// header and length of the whole frame at the head (header included) when all
// of it is buffered, total 0 when more bytes are needed, or a reason to close
// the connection.
// It never reserves memory from a declared length: a frame costs only the
// bytes that have arrived. Hot path: no allocation.
func nextFrame(in inbound, maxFrame int) (h codec.Header, total int, reason string) {
	avail := in.InboundBuffered()
	if avail < codec.HeaderLen {
		return h, 0, ""
	}
	hb, err := in.Peek(codec.HeaderLen)
	if err != nil {
		return h, 0, ""
	}
	if h, err = codec.ParseHeader(hb); err != nil {
		return h, 0, headerReason(err)
	}
	if h.Len > maxFrame {
		return h, 0, "frame-too-large"
	}
	if total = codec.HeaderLen + h.Len; avail < total {
		return h, 0, ""
	}
	return h, total, ""
}
