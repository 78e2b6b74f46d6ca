package engine

import "github.com/mlesd/mlesd/codec"

// inbound is the part of a connection's receive buffer the frame parser
// needs; gnet.Conn provides it.
type inbound interface {
	InboundBuffered() int
	Peek(n int) ([]byte, error)
	Read(p []byte) (int, error)
	Discard(n int) (int, error)
}

// peekHeader parses the header at the head of in, if all of it has arrived,
// without consuming anything. total is the whole frame's declared length
// (header included; 0 while the header is incomplete or bad), avail the
// bytes buffered, reason a reason to close the connection. It never reserves
// memory from a declared length. Hot path: no allocation.
func peekHeader(in inbound, maxFrame int) (h codec.Header, total, avail int, reason string) {
	avail = in.InboundBuffered()
	if avail < codec.HeaderLen {
		return h, 0, avail, ""
	}
	hb, err := in.Peek(codec.HeaderLen)
	if err != nil {
		return h, 0, avail, ""
	}
	if h, err = codec.ParseHeader(hb); err != nil {
		return h, 0, avail, headerReason(err)
	}
	if h.Len > maxFrame {
		return h, 0, avail, "frame-too-large"
	}
	return h, codec.HeaderLen + h.Len, avail, ""
}

// frameReader takes whole frames off a connection's inbound buffer. Small
// frames are parsed in place, as gnet buffered them. A frame longer than
// ownFrom whose first ownFrom bytes have arrived is moved out of gnet's buffer
// (which would grow by doubling and keep its size in a pool) into an ownedBuf,
// and the rest of it is read straight into that as it arrives: what it costs
// is what has arrived, and it is given back when the frame is done.
//
// Use: next until it returns no frame; after each frame, handle data (valid
// only until done) and call done. Loop-owned; spare is the loop's cache of
// owned buffers (may be nil).
type frameReader struct {
	own   ownedBuf
	want  int // length of the frame being assembled in own; 0 = none
	inBuf int // length of the frame next returned from in; 0 = none
}

// next returns the next whole frame at the head of in (data, its bytes,
// header included), data nil when more bytes are needed, or a reason to close
// the connection. No allocation for small frames; for large ones, a few
// system calls per frame and none per read.
func (r *frameReader) next(in inbound, maxFrame, ownFrom int, spare *spareBufs) (h codec.Header, data []byte, reason string) {
	if r.want == 0 {
		var total, avail int
		h, total, avail, reason = peekHeader(in, maxFrame)
		switch {
		case reason != "" || total == 0:
			return h, nil, reason
		case avail >= total:
			data, _ = in.Peek(total)
			r.inBuf = total
			return h, data, ""
		case total <= ownFrom || avail < ownFrom:
			return h, nil, "" // stays in gnet's buffer until it is worth moving
		}
		r.want = total
		if r.own.b == nil {
			r.own = spare.get()
		}
	}
	n := min(in.InboundBuffered(), r.want-len(r.own.b))
	if n > 0 {
		if err := r.own.reserve(len(r.own.b)+n, r.want); err != nil {
			return h, nil, "out-of-memory"
		}
		at := len(r.own.b)
		r.own.b = r.own.b[:at+n]
		got, _ := in.Read(r.own.b[at:])
		r.own.b = r.own.b[:at+got]
		r.own.touch()
		if got != n { // cannot happen: n bytes are buffered
			return h, nil, "read-failed"
		}
	}
	if len(r.own.b) < r.want {
		return h, nil, ""
	}
	h, _ = codec.ParseHeader(r.own.b) // checked when the frame began
	return h, r.own.b, ""
}

// done consumes the frame next returned.
func (r *frameReader) done(in inbound, spare *spareBufs) {
	if r.want != 0 {
		r.want = 0
		if !spare.put(r.own) {
			r.own.free()
		}
		r.own = ownedBuf{}
		return
	}
	_, _ = in.Discard(r.inBuf)
	r.inBuf = 0
}

// held is the bytes of the incomplete frame at the head: what is buffered in
// gnet plus what the owned buffer holds.
func (r *frameReader) held(in inbound) int { return in.InboundBuffered() + len(r.own.b) }

// resident is the memory the incomplete frame occupies, what the partial
// budget is charged: gnet's buffered bytes plus the owned pages.
func (r *frameReader) resident(in inbound) int { return in.InboundBuffered() + r.own.resident() }

// release gives back the owned buffer of a closing connection.
func (r *frameReader) release(spare *spareBufs) {
	r.want, r.inBuf = 0, 0
	if !spare.put(r.own) {
		r.own.free()
	}
	r.own = ownedBuf{}
}

// spareBufs keeps a few smaller owned buffers of finished frames for the next
// large frames on the same loop: their pages are already resident, so a
// stream of large frames does not pay a page fault per 4 KiB and an unmap per
// frame. What it keeps is bounded (spareBufsLen buffers of at most
// spareBufMax bytes per loop) and is not counted in the partial budget while
// kept; a connection that takes one is charged all the pages it ever
// touched, so reuse never lets a connection hold more than it is charged.
// Buffers over spareBufMax, such as a hoarder's, are always given back to
// the kernel. Loop-owned.
type spareBufs struct {
	bufs [spareBufsLen]ownedBuf
	n    int
}

// get returns a kept buffer, empty, or the zero ownedBuf.
func (s *spareBufs) get() ownedBuf {
	if s == nil || s.n == 0 {
		return ownedBuf{}
	}
	s.n--
	o := s.bufs[s.n]
	s.bufs[s.n] = ownedBuf{}
	o.b = o.b[:0]
	return o
}

// put keeps o if it is small and there is room, and reports whether it did.
func (s *spareBufs) put(o ownedBuf) bool {
	if s == nil || o.b == nil || cap(o.b) > spareBufMax || s.n == len(s.bufs) {
		return false
	}
	o.b = o.b[:0]
	s.bufs[s.n] = o
	s.n++
	return true
}
