// Package mlesdrv is the harness's Mles v1 driver: it speaks the protocol
// through the project's public client (github.com/mlesd/mlesd/client), over
// plain TCP with TCP_NODELAY, pipelined, with buffers of 256 KiB on both
// sides and flushes left to the harness.
//
// A Mles server acknowledges nothing, so readiness is proved with the frames
// the protocol forwards anyway: a join frame goes to every other connection
// already on the channel. One connection of each channel is the anchor; every
// other connection X is known joined once the anchor has received X's join,
// or X has received the anchor's join (whichever of the two the server
// processed second was forwarded to the first).
package mlesdrv

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mlesd/mlesd/bench/harness"
	"github.com/mlesd/mlesd/client"
	"github.com/mlesd/mlesd/codec"
)

// Key is the shared key the harness starts mlesd with (env MLES_KEY).
const Key = "bench"

// ioBufSize is each publishing or receiving connection's read and write
// buffer; idleBufSize an idle connection's, which reads only the few joins
// of its check.
const (
	ioBufSize   = 256 << 10
	idleBufSize = 4 << 10
)

// Driver is the Mles driver.
type Driver struct {
	Keys codec.KeyConfig
	name string
	uids atomic.Uint64 // numbers idle and probe connections: each has its own uid, so its own CID
}

// New returns the Mles driver with the harness's shared key, for mlesd.
func New() harness.Driver { return &Driver{Keys: codec.KeyConfig{SharedKey: Key}, name: "mlesd"} }

// NewNaive returns the same driver for the naive forwarder (bench/cmd/naivemles).
func NewNaive() harness.Driver { return &Driver{Keys: codec.KeyConfig{SharedKey: Key}, name: "naive"} }

func init() {
	harness.RegisterDriver("mlesd", New)
	harness.RegisterDriver("naive", NewNaive)
}

// Name is the server's name: "mlesd" or "naive".
func (d *Driver) Name() string { return d.name }

// dial connects and joins (uid, channel) with a plain join. Flushing is the
// caller's (ManualFlush): no flusher goroutine per connection.
func (d *Driver) dial(ctx context.Context, addr, uid, channel string, bufSize int) (*client.Conn, error) {
	return client.ConnectContext(ctx, addr, uid, channel, client.Keys(d.Keys), client.ManualFlush(),
		client.BufferSizes(bufSize, bufSize))
}

// closeNow closes a connection of a group at once (the group is ending;
// nothing buffered matters).
type closeNow struct{ c *client.Conn }

func (c closeNow) Close() error { return c.c.CloseNow() }

// barrier tracks which connections of a group are known joined.
type barrier struct {
	anchor string
	mu     sync.Mutex
	known  map[string]bool
	want   int
	done   chan struct{}
}

func newBarrier(anchor string, others int) *barrier {
	b := &barrier{anchor: anchor, known: map[string]bool{}, want: others, done: make(chan struct{})}
	if others == 0 {
		close(b.done)
	}
	return b
}

// sawJoin records that connection `reader` received the join frame of `joiner`.
func (b *barrier) sawJoin(reader, joiner string) {
	var other string
	switch {
	case reader == b.anchor:
		other = joiner
	case joiner == b.anchor:
		other = reader
	default:
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.known[other] || len(b.known) >= b.want {
		return
	}
	b.known[other] = true
	if len(b.known) == b.want {
		close(b.done)
	}
}

// waitFor waits until n members are known joined, or ctx ends.
func (b *barrier) waitFor(ctx context.Context, n int) error {
	for b.count() < n {
		select {
		case <-b.done:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Microsecond):
		}
	}
	return nil
}

func (b *barrier) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.known)
}

// readLoop receives frames on c until it fails or c is closed. Frames whose
// message carries a harness trailer go to rcv (if any); every join frame
// (empty message) goes to the barrier while it is still open. On a
// publisher's connection, a data frame with the publisher's own CID is its own
// frame come back, which a Mles server never does (through peers it would be
// a loop): the first one is reported as an error of the group. A send-only
// publisher's reader ends quietly when CloseRead makes it send-only.
func readLoop(g *harness.Group, c *client.Conn, rcv *harness.Receiver, b *barrier, pub bool) {
	var echoes uint64
	cid := codec.CIDOf(c.Key())
	uid := c.UID()
	// Frames: the triplet is decoded only for frames without a trailer
	// (joins, during setup), never on the data path.
	for m, err := range c.Frames(context.Background()) {
		if err != nil {
			if !errors.Is(err, client.ErrSendOnly) && !errors.Is(err, client.ErrClosed) {
				g.ReportErr(uid, err)
			}
			return
		}
		payload := m.Payload()
		// The message is the triplet's last item, so the trailer is at the
		// very end of the payload.
		if t, ok := harness.ReadTrailer(payload); ok {
			if rcv != nil {
				rcv.Observe(t)
			}
			if pub && m.CID == cid {
				if echoes++; echoes == 1 {
					g.ReportErr(uid, fmt.Errorf("the server sent the publisher its own frame back (publisher %d, seq %d)", t.Pub, t.Seq))
				}
			}
		} else if tr, err := codec.DecodeTriplet(payload); err == nil && len(tr.Message) == 0 {
			b.sawJoin(uid, tr.UID)
		} else if rcv != nil {
			rcv.ObserveMessage(payload) // counted as foreign
		}
	}
}

// Open joins the publishers and receivers of spec and waits until the join
// barrier proves every one of them joined.
func (d *Driver) Open(ctx context.Context, addr string, spec harness.GroupSpec) (*harness.Group, error) {
	g := harness.NewGroup()
	fail := func(err error) (*harness.Group, error) { g.Close(); return nil, err }
	if spec.Payload < harness.TrailerLen {
		return fail(fmt.Errorf("payload %d < trailer %d", spec.Payload, harness.TrailerLen))
	}
	type member struct {
		uid string
		rcv *harness.Receiver
		pub bool
	}
	var members []member
	// The anchor is a publisher when there is one per channel (fanout, pairs,
	// latency, bigfan), else the receiver (fanin's collector).
	pubFirst := len(spec.Pubs) <= len(spec.Subs) || len(spec.Subs) == 0
	subs := func() {
		for _, r := range spec.Subs {
			members = append(members, member{uid: fmt.Sprintf("sub-%d", r.ID), rcv: r})
		}
	}
	pubs := func() {
		for _, id := range spec.Pubs {
			members = append(members, member{uid: fmt.Sprintf("pub-%d", id), pub: true})
		}
	}
	if pubFirst {
		pubs()
		subs()
	} else {
		subs()
		pubs()
	}
	b := newBarrier(members[0].uid, len(members)-1)
	var sendOnly []*client.Conn // send-only publishers read only until the barrier is done
	for i, m := range members {
		c, err := d.dial(ctx, addr, m.uid, spec.Channel, ioBufSize)
		if err != nil {
			return fail(fmt.Errorf("%s: %w", m.uid, err))
		}
		g.AddCloser(closeNow{c})
		switch {
		case m.pub && spec.SendOnly && i > 1:
			// The anchor is known to be a member (below), so the server
			// forwards this join to it: no reader is needed, and none reads
			// the joins of the members after it (with 10,000 publishers that
			// would be 50 million frames received while setting up).
			sendOnly = append(sendOnly, c)
		case m.pub && spec.SendOnly && i != 0:
			sendOnly = append(sendOnly, c)
			go readLoop(g, c, nil, b, true)
		default:
			go readLoop(g, c, m.rcv, b, m.pub)
		}
		if m.pub {
			payload := codec.AppendTriplet(nil, codec.Triplet{UID: m.uid, Channel: spec.Channel, Message: make([]byte, spec.Payload)})
			if len(payload) > codec.MaxPayloadLen {
				return fail(codec.ErrPayloadTooLarge)
			}
			g.Pubs = append(g.Pubs, &pub{c: c, payload: payload})
		}
		if i == 1 && spec.SendOnly {
			// Once the first member after the anchor is known joined, the
			// anchor is a member too (it received that join, or that member
			// received the anchor's).
			if err := b.waitFor(ctx, 1); err != nil {
				return fail(fmt.Errorf("join barrier on %s: the first member: %w", spec.Channel, err))
			}
		}
	}
	// Publishers must come out in spec.Pubs order.
	{
		order := map[string]int{}
		for i, id := range spec.Pubs {
			order[fmt.Sprintf("pub-%d", id)] = i
		}
		sorted := make([]harness.Publisher, len(g.Pubs))
		for _, p := range g.Pubs {
			sorted[order[p.(*pub).c.UID()]] = p
		}
		g.Pubs = sorted
	}
	select {
	case <-b.done:
	case <-ctx.Done():
		return fail(fmt.Errorf("join barrier on %s: %d of %d connections known joined: %w", spec.Channel, b.count(), b.want, ctx.Err()))
	}
	// Send-only publishers stop reading: shutting down the receive side is the
	// protocol's way to be send-only. Their setup readers end with ErrSendOnly.
	for _, c := range sendOnly {
		if err := c.CloseRead(); err != nil {
			return fail(err)
		}
	}
	return g, nil
}

// pub is a publishing connection: one pre-encoded triplet whose trailer is
// rewritten for each message and sent behind the connection's header
// (SendPayload: one copy into the write buffer, nothing encoded per
// message).
type pub struct {
	c       *client.Conn
	payload []byte
}

// Send buffers one frame. Hot path: must not allocate.
func (p *pub) Send(t harness.Trailer) error {
	harness.PutTrailer(p.payload, t)
	return p.c.SendPayload(p.payload)
}

func (p *pub) Flush() error { return p.c.Flush() }

// SetWriteDeadline bounds every later write in time.
func (p *pub) SetWriteDeadline(t time.Time) error { return p.c.SetWriteDeadline(t) }

// Drain flushes; Mles has no acknowledgement to wait for.
func (p *pub) Drain(context.Context) error { return p.c.Flush() }

// Idle joins channel and leaves the connection idle.
func (d *Driver) Idle(ctx context.Context, addr, channel string) (harness.IdleConn, error) {
	c, err := d.dial(ctx, addr, fmt.Sprintf("idle-%d", d.uids.Add(1)), channel, idleBufSize)
	if err != nil {
		return nil, err
	}
	return &idle{d: d, c: c}, nil
}

type idle struct {
	d *Driver
	c *client.Conn
}

func (i *idle) Close() error { return i.c.CloseNow() }

// Check proves the idle connection joined: a probe joins the same channel,
// and either the idle connection receives the probe's join (after the joins
// of those that joined the channel after it, when it shares it: joinstorm)
// or, when the server processed the probe's join first (the two can be
// handled by different event loops, the idle connection's still waiting in
// a busy one), the probe receives the idle connection's. If the server
// closes the probe instead (a connection limit), Check says so at once.
//
// What already waits on the idle connection (the joins of later members) is
// received first: a server may drop frames for a member whose socket is full
// (mlesd does, then waits for it to take half), and the probe's join must
// not be one of those.
func (i *idle) Check(ctx context.Context, addr string) error {
	dl := time.Now().Add(5 * time.Second)
	if d, ok := ctx.Deadline(); ok {
		dl = d
	}
	ctx, cancel := context.WithDeadline(ctx, dl)
	defer cancel()
	if err := drainFrames(ctx, i.c, checkQuiet); err != nil {
		return fmt.Errorf("receiving what waited for %s: %w", i.c.UID(), err)
	}
	probe := fmt.Sprintf("probe-%d", i.d.uids.Add(1))
	p, err := i.d.dial(ctx, addr, probe, i.c.Channel(), idleBufSize)
	if err != nil {
		return err
	}
	defer p.CloseNow()
	idleUID := i.c.UID()
	probeSaw := make(chan error, 1)
	go func() {
		// On a shared channel (joinstorm) other members' joins may reach
		// the probe too: only the idle connection's, or an error (a close,
		// or the deadline), ends this.
		for {
			m, err := p.Next(ctx)
			if err != nil {
				if errors.Is(err, client.ErrNotTriplet) {
					continue
				}
				probeSaw <- err
				return
			}
			if m.IsJoin() && string(m.UID) == idleUID {
				probeSaw <- nil
				return
			}
		}
	}()
	readCtx, stopRead := context.WithCancel(ctx)
	defer stopRead()
	got := make(chan error, 1)
	go func() { got <- readJoinFrom(readCtx, i.c, probe) }()
	select {
	case err := <-got:
		return err
	case err := <-probeSaw:
		if err != nil && ctx.Err() != nil {
			return <-got // the deadline: the idle connection's receive says why
		}
		stopRead() // end the other receive; the idle connection stays open
		<-got
		if err == nil {
			return nil // the probe got the idle connection's join
		}
		return fmt.Errorf("the server closed the probe connection (a connection limit?): %v", err)
	}
}

// checkQuiet is how long Check waits for more of what is waiting on an idle
// connection before it stops receiving: frames already there arrive at once.
const checkQuiet = 2 * time.Millisecond

// drainFrames receives and discards frames on c until none arrives within
// quiet of the last (or ctx ends). The client resumes a frame a cancelled
// receive stopped inside, so the stream stays at a frame boundary. One
// timer and one context for the whole drain: nothing is allocated per frame.
func drainFrames(ctx context.Context, c *client.Conn, quiet time.Duration) error {
	qctx, stop := context.WithCancel(ctx)
	defer stop()
	timer := time.AfterFunc(quiet, stop)
	defer timer.Stop()
	for _, err := range c.Frames(qctx) {
		if err != nil {
			if qctx.Err() != nil {
				return nil // quiet, or ctx ended: what waited is taken
			}
			return err
		}
		timer.Reset(quiet)
	}
	return nil
}

// readJoinFrom receives frames on c (until ctx ends) until the join of uid;
// other members' joins before it are skipped, anything else is an error.
func readJoinFrom(ctx context.Context, c *client.Conn, uid string) error {
	for {
		m, err := c.Next(ctx)
		if err != nil {
			return fmt.Errorf("no frame from the %s's join: %w", uid, err)
		}
		if string(m.UID) == uid {
			return nil
		}
		if !m.IsJoin() {
			return errors.New("unexpected frame from " + string(m.UID))
		}
	}
}
