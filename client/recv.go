package client

import (
	"bufio"
	"context"
	"errors"
	"io"
	"iter"
	"os"

	"github.com/mlesd/mlesd/codec"
)

// Msg is one received frame. Its byte slices alias the Conn's receive
// buffer: they are valid until the next receive on the Conn (the next
// Next call, or the next step of a Msgs loop). Clone keeps a copy.
type Msg struct {
	// CID and Key are the frame header's. Over WebSocket they are 0: the
	// gateway strips the header.
	CID uint32
	Key uint64
	// UID, Channel and Message are the triplet's fields. An empty Message
	// is another client's join.
	UID, Channel, Message []byte
	// Frame is the whole frame as received, header included (over
	// WebSocket, with a synthesized header).
	Frame []byte
}

// Payload is the frame's CBOR triplet, without the header.
func (m *Msg) Payload() []byte { return m.Frame[codec.HeaderLen:] }

// IsJoin reports whether the frame is a plain join (empty message).
func (m *Msg) IsJoin() bool { return len(m.Message) == 0 }

// Clone returns a copy of m that does not alias the receive buffer.
func (m *Msg) Clone() *Msg {
	c := &Msg{CID: m.CID, Key: m.Key, Frame: append([]byte(nil), m.Frame...)}
	if uid, ch, msg, ok := scanTriplet(c.Frame[codec.HeaderLen:]); ok {
		c.UID, c.Channel, c.Message = uid, ch, msg
	} else {
		c.UID = append([]byte(nil), m.UID...)
		c.Channel = append([]byte(nil), m.Channel...)
		c.Message = append([]byte(nil), m.Message...)
	}
	return c
}

// reader is the receive side's state; it belongs to the one goroutine that
// holds Conn.readBusy.
type reader struct {
	tr       *transport
	gen      uint64 // the connection generation tr belongs to
	br       *bufio.Reader
	consumed int // bytes of the last in-place frame still to discard

	big    []byte // frame larger than the read buffer, kept for the next
	bigN   int    // its length, while it is being read
	bigOff int    // bytes of it read so far

	msg Msg

	// After a reconnect: remembered frames the replay may repeat.
	skipping bool
	seen     map[uint64]int
	recv     hashRing // hashes of the last frames delivered
}

// ErrSendOnly is returned by Next and Msgs on a send-only Conn.
var ErrSendOnly = errors.New("mles client: connection is send-only")

// ErrConcurrentRead is returned when a second goroutine tries to receive
// while another one is receiving.
var ErrConcurrentRead = errors.New("mles client: receive already in progress on another goroutine")

// ErrBadFrame wraps a frame header from the server that is not valid. The
// stream cannot be resynchronized: the connection is dropped.
var ErrBadFrame = errors.New("mles client: bad frame from server")

// ErrNotTriplet is wrapped by the error given with a frame whose payload
// is not a triplet (the server forwards later frames without looking at
// them). The Msg then has Frame, CID and Key only; receiving may go on.
var ErrNotTriplet = codec.ErrNotTriplet

// Next waits for the next frame and returns it. The Msg is valid until the
// next receive. Only one goroutine may receive at a time (others get
// ErrConcurrentRead). A context that can be cancelled costs one small
// allocation per call; Msgs registers it once for the whole loop.
//
// Errors: ctx's error when it ends (over WebSocket that also closes the
// connection); ErrClosed after Close; io.EOF or the network error when the
// server closed the connection and the Conn does not (or no longer)
// reconnect; an error wrapping ErrNotTriplet together with a Msg for a
// frame that is not a triplet, after which receiving may go on.
func (c *Conn) Next(ctx context.Context) (*Msg, error) {
	if !c.readBusy.CompareAndSwap(false, true) {
		return nil, ErrConcurrentRead
	}
	defer c.readBusy.Store(false)
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, c.interruptRead)
		defer stop()
	}
	return c.next(ctx)
}

// Msgs returns the received frames as a sequence, for a range loop:
//
//	for m, err := range conn.Msgs(ctx) {
//		if err != nil { ... }
//		use(m.UID, m.Message)
//	}
//
// A yielded Msg is valid until the loop's next step. An error wrapping
// ErrNotTriplet comes with its Msg and the sequence goes on; any other error
// is the last element. Breaking out of the loop leaves the Conn open. Only
// one goroutine may receive at a time. In steady state no step allocates.
func (c *Conn) Msgs(ctx context.Context) iter.Seq2[*Msg, error] {
	return func(yield func(*Msg, error) bool) {
		if !c.readBusy.CompareAndSwap(false, true) {
			yield(nil, ErrConcurrentRead)
			return
		}
		defer c.readBusy.Store(false)
		if ctx.Done() != nil {
			stop := context.AfterFunc(ctx, c.interruptRead)
			defer stop()
		}
		for {
			m, err := c.next(ctx)
			if err != nil && !errors.Is(err, ErrNotTriplet) {
				yield(nil, err)
				return
			}
			if !yield(m, err) {
				return
			}
		}
	}
}

// interruptRead unblocks a read for a context that ended.
func (c *Conn) interruptRead() {
	if tr := c.trp.Load(); tr != nil {
		tr.interruptRead()
	}
}

// next is the receive loop behind Next and Msgs. Hot path: in steady state
// it never allocates and takes no lock.
func (c *Conn) next(ctx context.Context) (*Msg, error) {
	if c.opts.SendOnly {
		return nil, ErrSendOnly
	}
	rd := &c.rd
	for {
		if rd.consumed > 0 {
			rd.br.Discard(rd.consumed)
			rd.consumed = 0
		}
		if rd.tr == nil {
			if err := c.attach(ctx); err != nil {
				return nil, err
			}
		}
		h, frame, err := rd.readFrame()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if err := ctx.Err(); err != nil {
					return nil, err
				}
				if c.isClosing() {
					return nil, ErrClosed
				}
				rd.tr.clearReadDeadline() // a stale interrupt from an earlier context
				continue
			}
			if ctx.Err() != nil && rd.tr.ws != nil {
				c.lost(rd.gen, err)
				rd.tr = nil
				return nil, ctx.Err()
			}
			c.lost(rd.gen, err)
			rd.tr = nil
			continue
		}
		c.stats.received.Add(1)
		m := &rd.msg
		*m = Msg{CID: h.CID, Key: h.Key, Frame: frame}
		payload := frame[codec.HeaderLen:]
		var perr error
		if uid, ch, msg, ok := scanTriplet(payload); ok {
			m.UID, m.Channel, m.Message = uid, ch, msg
		} else if t, err := codec.DecodeTriplet(payload); err == nil {
			m.UID, m.Channel, m.Message = []byte(t.UID), []byte(t.Channel), t.Message
		} else {
			perr = err
		}
		if c.remember() && perr == nil && len(m.Message) > 0 {
			hash := c.hash(frame)
			if rd.skipping {
				if rd.seen[hash] > 0 {
					rd.seen[hash]--
					c.stats.skipped.Add(1)
					continue
				}
				rd.skipping, rd.seen = false, nil
			}
			rd.recv.add(hash)
		}
		return m, perr
	}
}

// attach points the reader at the current connection, waiting while the
// Conn reconnects. After a reconnect it arms the history filter.
func (c *Conn) attach(ctx context.Context) error {
	for {
		c.mu.Lock()
		switch {
		case c.closingLocked():
			c.mu.Unlock()
			return ErrClosed
		case c.state == stateUp:
			rd := &c.rd
			rd.tr, rd.gen = c.tr, c.gen
			rd.tr.clearReadDeadline()
			if rd.br == nil {
				rd.br = bufio.NewReaderSize(rd.tr.r, c.opts.ReadBufferSize)
			} else {
				rd.br.Reset(rd.tr.r)
			}
			rd.bigN, rd.bigOff, rd.consumed = 0, 0, 0
			rd.skipping, rd.seen = false, nil
			if rd.gen > 1 && c.remember() {
				rd.seen = make(map[uint64]int, rd.recv.len()+c.sent.len())
				rd.recv.each(func(h uint64) { rd.seen[h]++ })
				c.sent.each(func(h uint64) { rd.seen[h]++ })
				rd.skipping = len(rd.seen) > 0
			}
			c.mu.Unlock()
			return nil
		case c.state == stateClosed:
			err := c.err
			c.mu.Unlock()
			return err
		}
		up := c.up
		c.mu.Unlock()
		select {
		case <-up:
		case <-c.closing:
			return ErrClosed
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// readFrame reads one whole frame. A frame that fits the read buffer is
// returned in place (discarded on the next call); a larger one is read
// into rd.big. A timeout leaves a half-read frame to be resumed.
func (rd *reader) readFrame() (codec.Header, []byte, error) {
	if rd.bigN == 0 {
		hb, err := rd.br.Peek(codec.HeaderLen)
		if err != nil {
			if err == io.EOF && len(hb) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return codec.Header{}, nil, err
		}
		h, err := codec.ParseHeader(hb)
		if err != nil {
			return codec.Header{}, nil, errors.Join(ErrBadFrame, err)
		}
		n := codec.HeaderLen + h.Len
		if n <= rd.br.Size() {
			f, err := rd.br.Peek(n)
			if err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return codec.Header{}, nil, err
			}
			rd.consumed = n
			return h, f, nil
		}
		if cap(rd.big) < n {
			rd.big = make([]byte, n)
		}
		rd.bigN, rd.bigOff = n, 0
	}
	for rd.bigOff < rd.bigN {
		k, err := rd.br.Read(rd.big[rd.bigOff:rd.bigN])
		rd.bigOff += k
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return codec.Header{}, nil, err
		}
	}
	f := rd.big[:rd.bigN]
	rd.bigN, rd.bigOff = 0, 0
	h, _ := codec.ParseHeader(f) // checked when the frame began
	return h, f, nil
}
