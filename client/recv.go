package client

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"iter"
	"os"
	"sync/atomic"
	"unicode/utf8"

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
	tr     *transport
	gen    uint64       // the connection generation tr belongs to
	fr     *FrameReader // stream transports
	wsHeld []byte       // WebSocket: the frame handed out, given back to the pump on the next receive

	okUID, okChannel []byte // the last names found valid UTF-8 (validNames)
	uncounted        uint64 // frames received not yet in Conn.stats.received

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
// Errors: ctx's error when it ends first, with the connection left open:
// the next receive goes on where this one stopped (a frame half read over
// TCP or TLS is resumed, a WebSocket message being read is delivered
// then); ErrClosed after Close; ErrSendOnly after CloseRead; io.EOF or the network error when the
// server closed the connection and the Conn does not (or no longer)
// reconnect; an error wrapping ErrNotTriplet together with a Msg for a
// frame that is not a triplet, after which receiving may go on.
func (c *Conn) Next(ctx context.Context) (*Msg, error) { return c.receive(ctx, true) }

// NextFrame is Next without looking at the triplet: the Msg has CID, Key
// and Frame, and its UID, Channel and Message are nil (unless the Conn
// reconnects, whose history filter decodes every frame). For proxies and
// load generators that pass frames on or read their bytes (the bench
// harness's trailer, the gateway's payloads): it saves the per-frame
// scan. A frame that is not a triplet is no error here. Otherwise as Next.
func (c *Conn) NextFrame(ctx context.Context) (*Msg, error) { return c.receive(ctx, false) }

// receive is Next (decode) or NextFrame: one receiver at a time, and a
// context that ends interrupts the read without closing the connection.
func (c *Conn) receive(ctx context.Context, decode bool) (*Msg, error) {
	if !c.readBusy.CompareAndSwap(false, true) {
		return nil, ErrConcurrentRead
	}
	defer c.readBusy.Store(false)
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, c.interruptRead)
		defer stop()
	}
	return c.next(ctx, decode)
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
func (c *Conn) Msgs(ctx context.Context) iter.Seq2[*Msg, error] { return c.seq(ctx, true) }

// Frames is NextFrame as a sequence, for a range loop, as Msgs is Next:
// each Msg has CID, Key and Frame only, and any error is the last element.
// In steady state no step allocates.
func (c *Conn) Frames(ctx context.Context) iter.Seq2[*Msg, error] { return c.seq(ctx, false) }

func (c *Conn) seq(ctx context.Context, decode bool) iter.Seq2[*Msg, error] {
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
			m, err := c.next(ctx, decode)
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

// next is the receive loop behind Next, Msgs and NextFrame (decode false:
// the triplet is not looked at). Hot path: in steady state it never
// allocates and takes no lock.
func (c *Conn) next(ctx context.Context, decode bool) (*Msg, error) {
	rd := &c.rd
	for {
		if c.opts.SendOnly || c.readShut.Load() {
			return nil, ErrSendOnly
		}
		if rd.tr == nil {
			if err := c.attach(ctx); err != nil {
				return nil, err
			}
		}
		h, frame, err := rd.readFrame(ctx, c.closing)
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
			if rd.tr.ws != nil && (err == ErrClosed || err == ctx.Err()) {
				return nil, err // the connection stays open (a cancelled receive)
			}
			if c.readShut.Load() {
				return nil, ErrSendOnly // CloseRead ended this receive
			}
			c.lost(rd.gen, err)
			rd.tr = nil
			continue
		}
		rd.countReceived(&c.stats.received)
		// Field by field: assigning a whole Msg (pointers, in the heap)
		// costs a bulk write barrier per frame.
		m := &rd.msg
		m.CID, m.Key, m.Frame = h.CID, h.Key, frame
		payload := frame[codec.HeaderLen:]
		remember := c.remember()
		if !decode && !remember {
			if m.UID != nil || m.Channel != nil || m.Message != nil {
				m.UID, m.Channel, m.Message = nil, nil, nil
			}
			return m, nil
		}
		var perr error
		if uid, ch, msg, ok := scanTripletForm(payload); ok && rd.validNames(uid, ch) {
			m.UID, m.Channel, m.Message = uid, ch, msg
		} else if t, err := codec.DecodeTriplet(payload); err == nil {
			m.UID, m.Channel, m.Message = []byte(t.UID), []byte(t.Channel), t.Message
		} else {
			m.UID, m.Channel, m.Message = nil, nil, nil
			perr = err
		}
		if remember && perr == nil && len(m.Message) > 0 {
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
		if !decode {
			perr = nil // NextFrame: not its business
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
			rd.point(c.tr, c.gen, c.opts.ReadBufferSize)
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

// countReceived counts a frame received. The shared counter (an atomic
// add costs a tenth of a frame's handling) is brought up to date once per
// receivedBatch frames, and whenever no further frame is buffered, so
// Stats lags only while frames stream in, by less than a batch.
func (rd *reader) countReceived(n *atomic.Uint64) {
	rd.uncounted++
	if rd.uncounted >= receivedBatch || rd.tr.ws != nil || rd.fr.buffered() < codec.HeaderLen {
		n.Add(rd.uncounted)
		rd.uncounted = 0
	}
}

// receivedBatch bounds how far Stats.Received may lag.
const receivedBatch = 64

// buffered is how many bytes past the frame returned last are buffered.
func (fr *FrameReader) buffered() int { return fr.br.Buffered() - fr.consumed }

// validNames reports whether uid and channel are valid UTF-8. The last
// valid pair is remembered (copied into buffers kept for it), so that a
// stream of frames from one sender costs two short comparisons per frame.
// Hot path: no allocation once the buffers have grown.
func (rd *reader) validNames(uid, channel []byte) bool {
	if bytes.Equal(uid, rd.okUID) && bytes.Equal(channel, rd.okChannel) {
		return true
	}
	if !utf8.Valid(uid) || !utf8.Valid(channel) {
		return false
	}
	if len(uid) <= maxRememberedName && len(channel) <= maxRememberedName {
		rd.okUID = append(rd.okUID[:0], uid...)
		rd.okChannel = append(rd.okChannel[:0], channel...)
	}
	return true
}

// maxRememberedName bounds the names validNames keeps a copy of.
const maxRememberedName = 256

// point makes the reader read from tr, of generation gen.
func (rd *reader) point(tr *transport, gen uint64, size int) {
	rd.tr, rd.gen, rd.wsHeld = tr, gen, nil
	if tr.ws != nil {
		return
	}
	tr.clearReadDeadline()
	if rd.fr == nil {
		rd.fr = NewFrameReader(tr.nc, size)
	} else {
		rd.fr.Reset(tr.nc)
	}
}

// readFrame reads the next whole frame from the transport. On a stream
// that is FrameReader.ReadFrame, which a deadline (interruptRead)
// interrupts. Over WebSocket it takes the pump's next frame, giving back
// the one handed out before, and returns ctx's error when ctx ends first
// or ErrClosed when closing is closed, with the connection left as it was.
// Hot path: never allocates.
func (rd *reader) readFrame(ctx context.Context, closing <-chan struct{}) (codec.Header, []byte, error) {
	if rd.tr.ws == nil {
		return rd.fr.ReadFrame()
	}
	p := rd.tr.wsr
	p.run()
	if rd.wsHeld != nil {
		p.free <- rd.wsHeld // never blocks: two buffers, and this is one
		rd.wsHeld = nil
	}
	select {
	case r := <-p.full:
		if r.err != nil {
			return codec.Header{}, nil, r.err
		}
		rd.wsHeld = r.frame
		return codec.Header{Len: len(r.frame) - codec.HeaderLen}, r.frame, nil
	case <-ctx.Done():
		return codec.Header{}, nil, ctx.Err()
	case <-closing:
		return codec.Header{}, nil, ErrClosed
	}
}

// FrameReader reads whole Mles frames from a byte stream (TCP or TLS):
// the receive side of a Conn, for code that holds a stream of its own (a
// test that must also write malformed bytes, a proxy). Not safe for
// concurrent use.
type FrameReader struct {
	br       *bufio.Reader
	consumed int // bytes of the last in-place frame still to discard

	big    []byte // frame larger than the read buffer, kept for the next
	bigN   int    // its length, while it is being read
	bigOff int    // bytes of it read so far
}

// NewFrameReader reads frames from r with a read buffer of size bytes (at
// least a header; DefaultReadBufferSize when 0). An r that is already a
// *bufio.Reader at least that large is used as it is.
func NewFrameReader(r io.Reader, size int) *FrameReader {
	if size <= 0 {
		size = DefaultReadBufferSize
	}
	return &FrameReader{br: bufio.NewReaderSize(r, max(size, codec.HeaderLen))}
}

// Reset makes fr read from r, forgetting what it had buffered.
func (fr *FrameReader) Reset(r io.Reader) {
	fr.br.Reset(r)
	fr.consumed, fr.bigN, fr.bigOff = 0, 0, 0
}

// Release lets go of the frame the last ReadFrame returned in place, so
// that the stream under fr stands right after it: for code that reads the
// stream itself between frames. ReadFrame releases the previous frame
// anyway.
func (fr *FrameReader) Release() {
	if fr.consumed > 0 {
		fr.br.Discard(fr.consumed)
		fr.consumed = 0
	}
}

// ReadFrame reads the next whole frame and returns its header and the
// frame, header included. The frame is valid until the next call: one
// that fits the read buffer is returned in place, a larger one is read
// into a buffer kept for the next large frame. An error from the stream
// inside a frame (a read deadline) leaves the part read so far buffered:
// the next call resumes it. At the end of the stream it returns io.EOF,
// or io.ErrUnexpectedEOF inside a frame; a header that is not a frame's
// is an error wrapping ErrBadFrame, after which the stream cannot be
// resynchronized. Hot path: in steady state it never allocates.
func (fr *FrameReader) ReadFrame() (codec.Header, []byte, error) {
	fr.Release()
	if fr.bigN == 0 {
		hb, err := fr.br.Peek(codec.HeaderLen)
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
		if n <= fr.br.Size() {
			f, err := fr.br.Peek(n)
			if err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return codec.Header{}, nil, err
			}
			fr.consumed = n
			return h, f, nil
		}
		if cap(fr.big) < n {
			fr.big = make([]byte, n)
		}
		fr.bigN, fr.bigOff = n, 0
	}
	for fr.bigOff < fr.bigN {
		k, err := fr.br.Read(fr.big[fr.bigOff:fr.bigN])
		fr.bigOff += k
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return codec.Header{}, nil, err
		}
	}
	f := fr.big[:fr.bigN]
	fr.bigN, fr.bigOff = 0, 0
	h, _ := codec.ParseHeader(f) // checked when the frame began
	return h, f, nil
}
