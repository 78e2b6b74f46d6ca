package client

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"

	"github.com/mlesd/mlesd/codec"
)

// ErrClosed is returned by every method of a Conn after Close.
var ErrClosed = errors.New("mles client: connection closed")

// ErrReconnecting is returned by Send while the Conn is reconnecting: the
// message is not sent (Mles has no acknowledgements, so the Conn does not
// pretend to queue it).
var ErrReconnecting = errors.New("mles client: reconnecting; message not sent")

// ErrMaxReconnects wraps the last error when the Conn gave up reconnecting.
var ErrMaxReconnects = errors.New("mles client: gave up reconnecting")

type connState int

const (
	stateUp connState = iota
	stateReconnecting
	stateClosed
)

// Conn is one Mles connection joined to one (uid, channel).
//
// Concurrency: Send, SendPayload, Flush, Stats, Key, UID, Channel, Close,
// CloseNow, CloseRead and SetWriteDeadline are safe from any goroutine.
// Receiving (Next, Msgs, NextFrame, Frames) is for one goroutine at a
// time, which may run alongside any number of senders. Drain is for the
// end, with no receive running.
type Conn struct {
	opts         Options
	ep           endpoint
	uid, channel string
	seed         maphash.Seed

	mu    sync.Mutex // guards the fields down to sent; never held by the reader's frame loop
	tr    *transport
	bw    *bufio.Writer // stream transports
	wbuf  []byte        // frame scratch (WebSocket, and frames larger than bw)
	key   uint64
	gen   uint64 // connection generation: 1 for the first, +1 per reconnect
	state connState
	err   error         // why the Conn is stateClosed
	up    chan struct{} // closed when the current reconnect ends, either way
	sent  hashRing      // hashes of the last frames sent (with reconnect)
	drain bool          // Drain has begun: no more sends, no reconnect
	// sentUncounted is frames sent and not yet in stats.sent (sentBatch).
	sentUncounted uint64

	trp        atomic.Pointer[transport] // tr, for interrupting a read without mu
	readBusy   atomic.Bool
	readShut   atomic.Bool // CloseRead was called: send-only from then on
	rd         reader      // owned by the goroutine holding readBusy
	kick       chan struct{}
	closing    chan struct{}   // closed by Close
	closed     atomic.Bool     // set by Close just before closing is closed
	life       context.Context // cancelled by Close: bounds reconnect dials
	endLife    context.CancelFunc
	closeOnce  sync.Once
	done       chan struct{} // closed when the Conn is finally closed
	finishOnce sync.Once
	wg         sync.WaitGroup
	stats      struct{ sent, received, skipped, reconnects atomic.Uint64 }
	events     eventQueue // handler calls, in order, on their own goroutine
}

// eventQueue runs handler calls one at a time, in the order posted, on a
// goroutine of its own, so that a handler may call any method of the Conn
// (Close included) and never holds up the Conn. Unbounded, but a Conn
// posts at most a few events per reconnect.
type eventQueue struct {
	mu      sync.Mutex
	q       []func()
	running bool
	ended   bool
}

// post queues f; nil marks the end (later posts are dropped).
func (e *eventQueue) post(f func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ended {
		return
	}
	if f == nil {
		e.ended = true
		return
	}
	e.q = append(e.q, f)
	if !e.running {
		e.running = true
		go e.run()
	}
}

func (e *eventQueue) run() {
	for {
		e.mu.Lock()
		if len(e.q) == 0 {
			e.running = false
			e.mu.Unlock()
			return
		}
		f := e.q[0]
		e.q = e.q[1:]
		e.mu.Unlock()
		f()
	}
}

// Stats are a Conn's counters since Connect.
type Stats struct {
	Sent       uint64 // frames handed to the connection (the join included)
	Received   uint64 // frames read, skipped ones included (while frames stream in, up to 63 behind)
	Skipped    uint64 // replayed history frames skipped after reconnects
	Reconnects uint64 // successful reconnects
}

// Connect is ConnectContext with context.Background().
func Connect(addr, uid, channel string, opts ...Option) (*Conn, error) {
	return ConnectContext(context.Background(), addr, uid, channel, opts...)
}

// ConnectContext connects to the Mles server at addr and joins (uid,
// channel): it sends the join frame (empty, or the JoinMessage option's
// message), computing its key as the Options say. The server answers
// nothing: a join it refuses (wrong key, duplicate CID) shows as the
// connection closing, on the next receive or a later Send.
//
// addr is "host[:port]" or "mles://host[:port]" for TCP (TLS when a TLS
// option is given), "tls://host[:port]" for TLS, or a "ws://" or "wss://"
// URL of a WebSocket gateway (mlesd --ws-listen, or mles proxy). Ports
// default to 8077 (TCP, TLS), 8076 (ws) and 443 (wss).
//
// ctx bounds connecting and joining only (and at most DialTimeout).
func ConnectContext(ctx context.Context, addr, uid, channel string, opts ...Option) (*Conn, error) {
	o := defaultOptions()
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	if !utf8.ValidString(uid) || !utf8.ValidString(channel) {
		return nil, errors.New("mles client: uid and channel must be valid UTF-8")
	}
	ep, err := parseAddr(addr, o.TLSConfig != nil)
	if err != nil {
		return nil, err
	}
	c := &Conn{
		opts:    o,
		ep:      ep,
		uid:     uid,
		channel: channel,
		seed:    maphash.MakeSeed(),
		kick:    make(chan struct{}, 1),
		closing: make(chan struct{}),
		done:    make(chan struct{}),
	}
	c.life, c.endLife = context.WithCancel(context.Background())
	if c.remember() {
		c.sent = newHashRing(o.HistoryWindow)
		c.rd.recv = newHashRing(o.HistoryWindow)
	}
	ctx, cancel := withTimeout(ctx, o.DialTimeout)
	defer cancel()
	if o.JoinPayload != nil {
		if len(o.JoinPayload) > codec.MaxPayloadLen {
			return nil, codec.ErrPayloadTooLarge
		}
		// scanTriplet does not copy a message of up to 16 MiB; other forms
		// of CBOR are decoded.
		u, ch, _, ok := scanTriplet(o.JoinPayload)
		if !ok {
			if t, err := codec.DecodeTriplet(o.JoinPayload); err == nil {
				u, ch, ok = []byte(t.UID), []byte(t.Channel), true
			}
		}
		if !ok || string(u) != uid || string(ch) != channel {
			return nil, fmt.Errorf("mles client: JoinPayload is not a triplet for uid %q channel %q", uid, channel)
		}
	}
	tr, key, err := c.dialJoin(ctx, o.JoinMessage, o.JoinPayload)
	if err != nil {
		return nil, fmt.Errorf("mles client: connecting to %s: %w", addr, err)
	}
	c.install(tr, key)
	if !o.ManualFlush {
		c.wg.Add(1)
		go c.flusher()
	}
	return c, nil
}

// withTimeout bounds ctx by d, unless d is 0 (DialTimeout off).
func withTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d == 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

// remember reports whether frames are hashed for the history filter.
func (c *Conn) remember() bool { return c.opts.MaxReconnects != 0 && c.opts.HistoryWindow > 0 }

func (c *Conn) hash(frame []byte) uint64 { return maphash.Bytes(c.seed, frame) }

// dialJoin opens a transport and writes the join frame on it: msg as the
// triplet's message, or payload as the whole payload when not nil.
func (c *Conn) dialJoin(ctx context.Context, msg, payload []byte) (*transport, uint64, error) {
	tr, err := dial(ctx, c.ep, &c.opts)
	if err != nil {
		return nil, 0, err
	}
	key := c.opts.Keys.ClientKey(tr.local, c.uid, c.channel)
	var hdr [codec.HeaderLen]byte
	var frame []byte // the join frame; nil for JoinPayload, which goes out behind hdr uncopied
	if payload != nil {
		codec.Header{Len: len(payload), CID: codec.CIDOf(key), Key: key}.Put(hdr[:])
	} else if frame, err = codec.AppendFrame(nil, key, codec.Triplet{UID: c.uid, Channel: c.channel, Message: msg}); err != nil {
		tr.close()
		return nil, 0, err
	}
	switch {
	case tr.ws != nil && payload != nil:
		err = tr.ws.Write(context.Background(), websocket.MessageBinary, payload)
	case tr.ws != nil:
		err = tr.writeMessage(frame)
	default:
		if dl, ok := ctx.Deadline(); ok {
			tr.setWriteDeadline(dl)
		}
		if payload != nil {
			bufs := net.Buffers{hdr[:], payload}
			_, err = bufs.WriteTo(tr.nc)
		} else {
			_, err = tr.nc.Write(frame)
		}
		tr.setWriteDeadline(time.Time{})
	}
	if err != nil {
		tr.close()
		return nil, 0, fmt.Errorf("join: %w", err)
	}
	c.stats.sent.Add(1)
	if (len(msg) > 0 || payload != nil) && c.remember() {
		var h uint64
		if payload != nil {
			var mh maphash.Hash
			mh.SetSeed(c.seed)
			mh.Write(hdr[:])
			mh.Write(payload)
			h = mh.Sum64()
		} else {
			h = c.hash(frame)
		}
		c.mu.Lock()
		c.sent.add(h)
		c.mu.Unlock()
	}
	return tr, key, nil
}

// install makes tr the live connection (a new generation).
func (c *Conn) install(tr *transport, key uint64) {
	c.mu.Lock()
	c.tr, c.key, c.state = tr, key, stateUp
	c.gen++
	c.trp.Store(tr)
	if c.bw != nil { // else made by the first Send: a receiver never needs one
		if tr.nc != nil {
			c.bw.Reset(tr.nc)
		} else {
			c.bw = nil
		}
	}
	gen := c.gen
	c.mu.Unlock()
	if c.opts.SendOnly || c.readShut.Load() {
		if tr.ws != nil {
			c.wg.Add(1)
			go c.discard(tr, gen)
		} else {
			tr.closeRead()
		}
	}
}

// discard reads and drops everything from a send-only WebSocket, so that
// its control frames are answered, until it fails.
func (c *Conn) discard(tr *transport, gen uint64) {
	defer c.wg.Done()
	var buf [4096]byte
	for {
		_, r, err := tr.ws.Reader(context.Background())
		if err != nil {
			c.lost(gen, err)
			return
		}
		for err == nil {
			_, err = r.Read(buf[:])
		}
	}
}

// UID is the connection's uid. Safe from any goroutine.
func (c *Conn) UID() string { return c.uid }

// Channel is the connection's channel. Safe from any goroutine.
func (c *Conn) Channel() string { return c.channel }

// Key is the key of the current connection's frames (its low 32 bits are
// the CID). With address keys it changes on every reconnect. Safe from any
// goroutine.
func (c *Conn) Key() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.key
}

// Stats returns the counters. Safe from any goroutine.
func (c *Conn) Stats() Stats {
	if c.mu.TryLock() { // not behind a Send blocked on a full socket
		c.publishSentLocked()
		c.mu.Unlock()
	}
	return Stats{
		Sent:       c.stats.sent.Load(),
		Received:   c.stats.received.Load(),
		Skipped:    c.stats.skipped.Load(),
		Reconnects: c.stats.reconnects.Load(),
	}
}

// Done is closed when the Conn is finally closed (by Close, or the
// connection lost and not reconnected). Safe from any goroutine.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err is why the Conn closed: nil while it is open, ErrClosed after Close,
// else the error that ended it. Safe from any goroutine.
func (c *Conn) Err() error {
	select {
	case <-c.done:
	default:
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Send sends one message to the channel: a frame carrying (uid, channel,
// msg) behind the connection's key. msg may be empty, though others then
// see a join. Send buffers the frame and returns; a background flusher
// writes buffered frames together, soon after. When the buffer is full,
// Send writes it itself, so a server that does not read makes Send block
// (back-pressure). Send does not keep msg. Safe from any goroutine; frames
// of concurrent Sends are not interleaved. In steady state it does not
// allocate.
//
// Errors: ErrClosed; ErrReconnecting while reconnecting (the message is not
// sent); codec.ErrPayloadTooLarge; else the network error that ended the
// connection.
func (c *Conn) Send(msg []byte) error {
	t := codec.Triplet{UID: c.uid, Channel: c.channel, Message: msg}
	n := codec.HeaderLen + codec.TripletLen(t)
	if n-codec.HeaderLen > codec.MaxPayloadLen {
		return codec.ErrPayloadTooLarge
	}
	c.mu.Lock()
	if err := c.writableLocked(); err != nil {
		c.mu.Unlock()
		return err
	}
	c.ensureWriterLocked()
	var frame []byte
	var err error
	switch {
	case c.tr.ws != nil:
		c.wbuf, _ = codec.AppendFrame(c.wbuf[:0], c.key, t)
		frame = c.wbuf
		err = c.tr.writeMessage(frame)
	case n <= c.bw.Size():
		if c.bw.Available() < n {
			err = c.bw.Flush()
		}
		if err == nil {
			frame, _ = codec.AppendFrame(c.bw.AvailableBuffer(), c.key, t)
			_, err = c.bw.Write(frame)
		}
	default: // larger than the buffer: one direct write after what is buffered
		c.wbuf, _ = codec.AppendFrame(c.wbuf[:0], c.key, t)
		frame = c.wbuf
		if err = c.bw.Flush(); err == nil {
			_, err = c.tr.nc.Write(frame)
		}
	}
	return c.sentLocked(frame, len(msg) > 0, err)
}

// SendPayload sends payload, an already encoded CBOR triplet, byte for
// byte behind this connection's header (for a gateway that must pass its
// clients' bytes unchanged). The server does not look inside frames after
// the join, so neither does SendPayload. Otherwise as Send: buffered, safe
// from any goroutine, no allocation in steady state.
func (c *Conn) SendPayload(payload []byte) error {
	if len(payload) == 0 {
		return codec.ErrZeroLength
	}
	if len(payload) > codec.MaxPayloadLen {
		return codec.ErrPayloadTooLarge
	}
	n := codec.HeaderLen + len(payload)
	c.mu.Lock()
	if err := c.writableLocked(); err != nil {
		c.mu.Unlock()
		return err
	}
	c.ensureWriterLocked()
	h := codec.Header{Len: len(payload), CID: codec.CIDOf(c.key), Key: c.key}
	var frame []byte
	var err error
	switch {
	case c.tr.ws != nil:
		c.wbuf = append(codec.AppendHeader(c.wbuf[:0], h), payload...)
		frame = c.wbuf
		err = c.tr.writeMessage(frame)
	case n <= c.bw.Size():
		if c.bw.Available() < n {
			err = c.bw.Flush()
		}
		if err == nil {
			frame = append(codec.AppendHeader(c.bw.AvailableBuffer(), h), payload...)
			_, err = c.bw.Write(frame)
		}
	default:
		var hb [codec.HeaderLen]byte
		h.Put(hb[:])
		if err = c.bw.Flush(); err == nil {
			bufs := net.Buffers{hb[:], payload}
			_, err = bufs.WriteTo(c.tr.nc)
		}
		if err == nil && c.remember() {
			frame = append(append(c.wbuf[:0], hb[:]...), payload...)
			c.wbuf = frame
		}
	}
	return c.sentLocked(frame, frame != nil, err)
}

// sentLocked finishes a send whose write returned err: it remembers frame
// for the reconnect filter when keep, drops a huge frame's buffer, unlocks
// c.mu, then reports a failure as a lost connection or counts the frame and
// wakes the flusher. c.mu must be held; it is released.
func (c *Conn) sentLocked(frame []byte, keep bool, err error) error {
	if err == nil && keep && c.remember() {
		c.sent.add(c.hash(frame))
	}
	if cap(c.wbuf) > 1<<20 {
		c.wbuf = nil // do not keep a huge frame's buffer
	}
	if err == nil {
		// Counted under mu, published now and then: an atomic add
		// per frame costs a seventh of a Send.
		if c.sentUncounted++; c.sentUncounted >= sentBatch {
			c.publishSentLocked()
		}
	}
	gen := c.gen
	c.mu.Unlock()
	if err != nil {
		c.lost(gen, err)
		return err
	}
	if !c.opts.ManualFlush {
		select {
		case c.kick <- struct{}{}:
		default:
		}
	}
	return nil
}

// sentBatch bounds how far Stats.Sent may lag behind Sends not yet flushed.
const sentBatch = 64

// publishSentLocked brings Stats.Sent up to date. c.mu must be held.
func (c *Conn) publishSentLocked() {
	if c.sentUncounted > 0 {
		c.stats.sent.Add(c.sentUncounted)
		c.sentUncounted = 0
	}
}

// ensureWriterLocked makes the write buffer of a stream transport on first
// use, so that a Conn that only receives never holds one.
func (c *Conn) ensureWriterLocked() {
	if c.bw == nil && c.tr.nc != nil {
		c.bw = bufio.NewWriterSize(c.tr.nc, c.opts.WriteBufferSize)
	}
}

// writableLocked says why Send cannot send now, if it cannot.
func (c *Conn) writableLocked() error {
	switch {
	case c.closingLocked(), c.drain:
		return ErrClosed
	case c.state == stateReconnecting:
		return ErrReconnecting
	case c.state == stateClosed:
		return c.err
	}
	return nil
}

func (c *Conn) closingLocked() bool { return c.isClosing() }

// isClosing reports whether Close (or CloseNow) has begun: a load, cheaper
// than a select on c.closing on the Send path.
func (c *Conn) isClosing() bool { return c.closed.Load() }

// Flush writes every buffered frame now. Safe from any goroutine.
func (c *Conn) Flush() error {
	c.mu.Lock()
	if err := c.writableLocked(); err != nil {
		c.mu.Unlock()
		return err
	}
	var err error
	if c.bw != nil {
		err = c.bw.Flush()
	}
	c.publishSentLocked()
	gen := c.gen
	c.mu.Unlock()
	if err != nil {
		c.lost(gen, err)
	}
	return err
}

// flusher writes what Sends buffered, once per wake-up: under load many
// frames go out in one write.
func (c *Conn) flusher() {
	defer c.wg.Done()
	for {
		select {
		case <-c.kick:
		case <-c.closing:
			return
		}
		c.mu.Lock()
		var err error
		if c.state == stateUp && c.bw != nil && c.bw.Buffered() > 0 {
			err = c.bw.Flush()
		}
		c.publishSentLocked()
		gen := c.gen
		c.mu.Unlock()
		if err != nil {
			c.lost(gen, err)
		}
	}
}

// lost handles the failure of connection generation gen (seen by the
// reader, a Send or the flusher; later reports of the same failure are
// ignored): reconnect, or close for good.
func (c *Conn) lost(gen uint64, err error) {
	c.mu.Lock()
	if c.gen != gen || c.state != stateUp {
		c.mu.Unlock()
		return
	}
	c.tr.close()
	if c.opts.MaxReconnects == 0 || c.isClosing() || c.drain {
		if c.isClosing() {
			err = ErrClosed // the failure Close (or CloseNow) caused
		}
		c.state, c.err = stateClosed, err
		c.mu.Unlock()
		if h := c.opts.DisconnectErrHandler; h != nil && !c.isClosing() {
			c.events.post(func() { h(c, err) })
		}
		c.finish()
		return
	}
	c.state = stateReconnecting
	c.up = make(chan struct{})
	c.mu.Unlock()
	c.wg.Add(1)
	go c.reconnect(err)
}

// reconnect dials again with a growing wait until it has rejoined, the
// attempts are used up, or Close.
func (c *Conn) reconnect(cause error) {
	defer c.wg.Done()
	if h := c.opts.DisconnectErrHandler; h != nil {
		c.events.post(func() { h(c, cause) })
	}
	wait := c.opts.ReconnectWait
	last := cause
	for attempt := 1; c.opts.MaxReconnects < 0 || attempt <= c.opts.MaxReconnects; attempt++ {
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
		case <-c.closing:
			timer.Stop()
			c.giveUp(ErrClosed)
			return
		}
		wait = min(2*wait, c.opts.MaxReconnectWait)
		ctx, cancel := withTimeout(c.life, c.opts.DialTimeout)
		tr, key, err := c.dialJoin(ctx, nil, nil)
		cancel()
		if err != nil {
			last = err
			continue
		}
		c.mu.Lock()
		closing := c.isClosing()
		c.mu.Unlock()
		if closing {
			tr.close()
			c.giveUp(ErrClosed)
			return
		}
		c.install(tr, key)
		c.mu.Lock()
		close(c.up)
		c.mu.Unlock()
		c.stats.reconnects.Add(1)
		if h := c.opts.ReconnectHandler; h != nil {
			c.events.post(func() { h(c) })
		}
		return
	}
	c.giveUp(fmt.Errorf("%w after %d attempts: %w", ErrMaxReconnects, c.opts.MaxReconnects, last))
}

// giveUp ends a reconnect without a connection.
func (c *Conn) giveUp(err error) {
	c.mu.Lock()
	c.state, c.err = stateClosed, err
	close(c.up)
	c.mu.Unlock()
	c.finish()
}

// finish marks the Conn finally closed, once.
func (c *Conn) finish() {
	c.finishOnce.Do(func() {
		close(c.done)
		if h := c.opts.ClosedHandler; h != nil {
			c.events.post(func() { h(c) })
		}
		c.events.post(nil) // the last event: the dispatcher ends
	})
}

// Close flushes what Send buffered (waiting at most 5 s for the server to
// take it), closes the connection and stops reconnecting. A receive in
// progress returns ErrClosed. Safe from any goroutine; later calls (and
// CloseNow) do nothing.
func (c *Conn) Close() error {
	c.shut(true)
	return nil
}

// CloseNow closes the connection at once and stops reconnecting, dropping
// whatever Send buffered: a Send or Flush blocked on a server that does
// not read returns (ErrClosed), and so does a receive in progress. For a
// gateway or proxy tearing down many connections, where Close's goodbye
// could wait. Safe from any goroutine; later calls (and Close) do nothing.
func (c *Conn) CloseNow() error {
	c.shut(false)
	return nil
}

func (c *Conn) shut(flush bool) {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		close(c.closing)
		c.endLife()
		if tr := c.trp.Load(); tr != nil {
			if flush {
				tr.setWriteDeadline(time.Now().Add(closeFlushTimeout))
				tr.interruptRead()
			} else {
				tr.close() // unblocks a Send holding mu
			}
		}
		c.mu.Lock()
		if c.state == stateUp {
			if c.bw != nil && flush {
				c.bw.Flush()
			}
			c.tr.close()
			c.state, c.err = stateClosed, ErrClosed
		}
		c.mu.Unlock()
		c.wg.Wait()
		c.finish()
	})
}

// CloseRead makes a stream (TCP or TLS) Conn send-only from now on, as the
// SendOnly option does from the start: it shuts down the receive side, the
// protocol's way to say so. A receive in progress, and every later one,
// returns ErrSendOnly; a reconnect shuts down the new connection's
// receive side too. For a client that must read until it knows it joined
// (the joins of others) and then only sends. Over WebSocket it is not
// supported (the gateway cannot be told): use SendOnly. Safe from any
// goroutine.
func (c *Conn) CloseRead() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.writableLocked(); err != nil && !errors.Is(err, ErrReconnecting) {
		return err
	}
	if c.tr.ws != nil {
		return errors.New("mles client: CloseRead over WebSocket; use the SendOnly option")
	}
	if c.readShut.Swap(true) || c.opts.SendOnly {
		return nil
	}
	if c.state != stateUp {
		return nil // the reconnect's install shuts it down
	}
	return c.tr.closeRead()
}

// SetWriteDeadline bounds in time every later write of the current
// connection (t zero: no bound), like net.Conn's: a Send, Flush or flush
// that passes it fails, and the connection is lost (or reconnected). A
// reconnected connection has no deadline. For a publisher that must not
// hang on a server that stopped reading. Over WebSocket it does nothing.
// Safe from any goroutine.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	if tr := c.trp.Load(); tr != nil && tr.nc != nil {
		return tr.nc.SetWriteDeadline(t)
	}
	return nil
}

// Drain is the clean goodbye of a publisher: it flushes, shuts down its
// sending side, and waits (until ctx ends) for the server to close the
// connection, which it does once it has handled every frame sent before.
// Frames received meanwhile are discarded, unless a receive (Next, Msgs)
// is running on another goroutine: then that goroutine gets them, and the
// server's close as io.EOF, while Drain waits for it. Then Drain closes the
// Conn. Sends during Drain fail with ErrClosed, and a Conn that is draining
// does not reconnect. On a send-only TCP or TLS Conn it returns after the
// shutdown: nothing can tell it more. Safe from any goroutine.
func (c *Conn) Drain(ctx context.Context) error {
	if !c.readBusy.CompareAndSwap(false, true) {
		return c.drainBeside(ctx)
	}
	defer c.readBusy.Store(false)
	defer c.Close()
	tr, gen, err := c.shutWrite()
	if err != nil {
		return err
	}
	if (c.opts.SendOnly || c.readShut.Load()) && tr.ws == nil {
		return nil
	}
	stop := context.AfterFunc(ctx, c.interruptRead)
	defer stop()
	rd := &c.rd
	if rd.tr != tr {
		rd.point(tr, gen, c.opts.ReadBufferSize)
	}
	tr.clearReadDeadline()
	for {
		_, _, err := rd.readFrame(ctx, c.closing)
		switch {
		case err == nil:
			continue
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, os.ErrDeadlineExceeded):
			tr.clearReadDeadline() // a stale interrupt
			continue
		case errors.Is(err, io.EOF):
			return nil
		}
		if tr.ws != nil && websocket.CloseStatus(err) != -1 {
			return nil // the gateway closed the WebSocket in answer
		}
		return err
	}
}

// shutWrite marks c draining, flushes what it has buffered and shuts down
// its sending side; it returns the transport and its generation.
func (c *Conn) shutWrite() (*transport, uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.writableLocked(); err != nil {
		return nil, 0, err
	}
	c.drain = true
	var err error
	if c.bw != nil {
		err = c.bw.Flush()
	}
	if err == nil {
		err = c.tr.closeWrite()
	}
	return c.tr, c.gen, err
}

// drainBeside is Drain while another goroutine receives: it shuts down the
// sending side and waits until that receiver has seen the server close.
func (c *Conn) drainBeside(ctx context.Context) error {
	defer c.Close()
	if _, _, err := c.shutWrite(); err != nil {
		return err
	}
	select {
	case <-c.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
