// Package mlesdrv is the harness's Mles v1 driver: it speaks the protocol
// through github.com/mlesd/mlesd/codec only, over plain TCP with TCP_NODELAY
// and buffered, pipelined I/O on both sides.
//
// A Mles server acknowledges nothing, so readiness is proved with the frames
// the protocol forwards anyway: a join frame goes to every other connection
// already on the channel. One connection of each channel is the anchor; every
// other connection X is known joined once the anchor has received X's join,
// or X has received the anchor's join (whichever of the two the server
// processed second was forwarded to the first).
package mlesdrv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mlesd/mlesd/bench/harness"
	"github.com/mlesd/mlesd/codec"
)

// Key is the shared key the harness starts mlesd with (env MLES_KEY).
const Key = "bench"

const ioBufSize = 256 << 10

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

// conn is one Mles client connection.
type conn struct {
	c       *net.TCPConn
	uid     string
	channel string
	key     uint64
}

// dial connects, sets TCP_NODELAY and sends the join frame (empty message).
func (d *Driver) dial(ctx context.Context, addr, uid, channel string) (*conn, error) {
	var nd net.Dialer
	nc, err := nd.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	tc := nc.(*net.TCPConn)
	tc.SetNoDelay(true)
	local := tc.LocalAddr().(*net.TCPAddr).AddrPort()
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	c := &conn{c: tc, uid: uid, channel: channel, key: d.Keys.ClientKey(local, uid, channel)}
	join, err := codec.AppendFrame(nil, c.key, codec.Triplet{UID: uid, Channel: channel})
	if err != nil {
		tc.Close()
		return nil, err
	}
	if _, err := tc.Write(join); err != nil {
		tc.Close()
		return nil, fmt.Errorf("join: %w", err)
	}
	return c, nil
}

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

// readLoop reads frames from c until it fails or stop is closed. Frames whose
// message carries a harness trailer go to rcv (if any); every join frame
// (empty message) goes to the barrier while it is still open. On a
// publisher's connection, a data frame with the publisher's own CID is its own
// frame come back, which a Mles server never does (through peers it would be
// a loop): the first one is reported as an error of the group.
func readLoop(g *harness.Group, c *conn, br *bufio.Reader, rcv *harness.Receiver, b *barrier, stop <-chan struct{}, pub bool) {
	var big []byte
	var echoes uint64
	fail := func(err error) {
		select {
		case <-stop: // the read side was shut down on purpose
		default:
			g.ReportErr(c.uid, err)
		}
	}
	for {
		select {
		case <-stop:
			return
		default:
		}
		hb, err := br.Peek(codec.HeaderLen)
		if err != nil {
			fail(err)
			return
		}
		h, err := codec.ParseHeader(hb)
		if err != nil {
			fail(err)
			return
		}
		n := codec.HeaderLen + h.Len
		var frame []byte
		inBuf := n <= br.Size()
		if inBuf {
			if frame, err = br.Peek(n); err != nil {
				fail(err)
				return
			}
		} else {
			if cap(big) < n {
				big = make([]byte, n)
			}
			frame = big[:n]
			if _, err := io.ReadFull(br, frame); err != nil {
				fail(err)
				return
			}
		}
		payload := frame[codec.HeaderLen:]
		// The message is the triplet's last item, so the trailer is at the
		// very end of the payload: no decoding on the data path.
		if t, ok := harness.ReadTrailer(payload); ok {
			if rcv != nil {
				rcv.Observe(t)
			}
			if pub && h.CID == codec.CIDOf(c.key) {
				if echoes++; echoes == 1 {
					g.ReportErr(c.uid, fmt.Errorf("the server sent the publisher its own frame back (publisher %d, seq %d)", t.Pub, t.Seq))
				}
			}
		} else if tr, err := codec.DecodeTriplet(payload); err == nil && len(tr.Message) == 0 {
			b.sawJoin(c.uid, tr.UID)
		} else if rcv != nil {
			rcv.ObserveMessage(payload) // counted as foreign
		}
		if inBuf {
			br.Discard(n)
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
	stopSetupReaders := make(chan struct{}) // send-only publishers read only until the barrier is done
	var sendOnly []*conn
	for i, m := range members {
		c, err := d.dial(ctx, addr, m.uid, spec.Channel)
		if err != nil {
			return fail(fmt.Errorf("%s: %w", m.uid, err))
		}
		g.AddCloser(c.c)
		switch {
		case m.pub && spec.SendOnly && i > 1:
			// The anchor is known to be a member (below), so the server
			// forwards this join to it: no reader is needed, and none reads
			// the joins of the members after it (with 10,000 publishers that
			// would be 50 million frames read and decoded while setting up).
			sendOnly = append(sendOnly, c)
		case m.pub && spec.SendOnly && i != 0:
			sendOnly = append(sendOnly, c)
			go readLoop(g, c, bufio.NewReaderSize(c.c, ioBufSize), nil, b, stopSetupReaders, true)
		default:
			go readLoop(g, c, bufio.NewReaderSize(c.c, ioBufSize), m.rcv, b, nil, m.pub)
		}
		if m.pub {
			p := &pub{conn: c, w: bufio.NewWriterSize(c.c, ioBufSize)}
			frame, err := codec.AppendFrame(nil, c.key, codec.Triplet{UID: c.uid, Channel: c.channel, Message: make([]byte, spec.Payload)})
			if err != nil {
				return fail(err)
			}
			p.frame = frame
			g.Pubs = append(g.Pubs, p)
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
			sorted[order[p.(*pub).uid]] = p
		}
		g.Pubs = sorted
	}
	select {
	case <-b.done:
	case <-ctx.Done():
		return fail(fmt.Errorf("join barrier on %s: %d of %d connections known joined: %w", spec.Channel, b.count(), b.want, ctx.Err()))
	}
	// Send-only publishers stop reading: shutting down the receive side is the
	// protocol's way to be send-only. Their setup readers end on the EOF.
	close(stopSetupReaders)
	for _, c := range sendOnly {
		if err := c.c.CloseRead(); err != nil {
			return fail(err)
		}
	}
	return g, nil
}

// pub is a publishing connection: one pre-encoded frame whose trailer is
// rewritten for each message (later frames are not checked by the server, so
// the join key is reused).
type pub struct {
	*conn
	w     *bufio.Writer
	frame []byte
}

// Send buffers one frame. Hot path: must not allocate.
func (p *pub) Send(t harness.Trailer) error {
	harness.PutTrailer(p.frame, t)
	_, err := p.w.Write(p.frame)
	return err
}

func (p *pub) Flush() error { return p.w.Flush() }

// SetWriteDeadline bounds every later write in time.
func (p *pub) SetWriteDeadline(t time.Time) error { return p.c.SetWriteDeadline(t) }

// Drain flushes; Mles has no acknowledgement to wait for.
func (p *pub) Drain(context.Context) error { return p.w.Flush() }

// Idle joins channel and leaves the connection idle.
func (d *Driver) Idle(ctx context.Context, addr, channel string) (harness.IdleConn, error) {
	c, err := d.dial(ctx, addr, fmt.Sprintf("idle-%d", d.uids.Add(1)), channel)
	if err != nil {
		return nil, err
	}
	return &idle{d: d, conn: c}, nil
}

type idle struct {
	d *Driver
	*conn
}

func (i *idle) Close() error { return i.c.Close() }

// Check proves the idle connection joined: a probe joins the same channel,
// and either the idle connection receives the probe's join (after the joins
// of those that joined the channel after it, when it shares it: joinstorm)
// or, when the server processed the probe's join first (the two can be
// handled by different event loops, the idle connection's still waiting in
// a busy one), the probe receives the idle connection's. If the server
// closes the probe instead (a connection limit), Check says so at once.
//
// What already waits on the idle connection (the joins of later members) is
// read first: a server may drop frames for a member whose socket is full
// (mlesd does, then waits for it to take half), and the probe's join must
// not be one of those.
func (i *idle) Check(ctx context.Context, addr string) error {
	dl := time.Now().Add(5 * time.Second)
	if d, ok := ctx.Deadline(); ok {
		dl = d
	}
	if err := drainFrames(i.c, checkQuiet, dl); err != nil {
		return fmt.Errorf("reading what waited for %s: %w", i.uid, err)
	}
	probe := fmt.Sprintf("probe-%d", i.d.uids.Add(1))
	p, err := i.d.dial(ctx, addr, probe, i.channel)
	if err != nil {
		return err
	}
	defer p.c.Close()
	probeSaw := make(chan error, 1)
	go func() {
		// On a shared channel (joinstorm) other members' joins may reach
		// the probe too: only the idle connection's, or an error (a close,
		// or the deadline), ends this.
		p.c.SetReadDeadline(dl)
		for {
			t, err := readOneFrom(p.c, i.uid)
			if err != nil {
				probeSaw <- err
				return
			}
			if t.UID == i.uid && len(t.Message) == 0 {
				probeSaw <- nil
				return
			}
		}
	}()
	got := make(chan error, 1)
	go func() { got <- readJoinFrom(i.c, dl, probe) }()
	select {
	case err := <-got:
		return err
	case err := <-probeSaw:
		if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
			return <-got
		}
		i.c.SetReadDeadline(time.Now()) // end the other read
		<-got
		if err == nil {
			return nil // the probe got the idle connection's join
		}
		return fmt.Errorf("the server closed the probe connection (a connection limit?): %v", err)
	}
}

// checkQuiet is how long Check waits for more of what is waiting on an idle
// connection before it stops reading: frames already there arrive at once.
const checkQuiet = 2 * time.Millisecond

// drainFrames reads and discards whole frames from c until none begins
// within quiet (or dl passes): a frame that has begun is read to its end, so
// the stream stays at a frame boundary.
func drainFrames(c *net.TCPConn, quiet time.Duration, dl time.Time) error {
	defer c.SetReadDeadline(time.Time{})
	var hb [codec.HeaderLen]byte
	for {
		t := time.Now().Add(quiet)
		if t.After(dl) {
			t = dl
		}
		c.SetReadDeadline(t)
		if _, err := c.Read(hb[:1]); err != nil {
			if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
				return nil
			}
			return err
		}
		c.SetReadDeadline(dl)
		if _, err := io.ReadFull(c, hb[1:]); err != nil {
			return err
		}
		h, err := codec.ParseHeader(hb[:])
		if err != nil {
			return err
		}
		if _, err := io.CopyN(io.Discard, c, int64(h.Len)); err != nil {
			return err
		}
	}
}

// readJoinFrom reads frames from c (until dl) until the join of uid; other
// members' joins before it are skipped, anything else is an error.
func readJoinFrom(c *net.TCPConn, dl time.Time, uid string) error {
	c.SetReadDeadline(dl)
	defer c.SetReadDeadline(time.Time{})
	for {
		t, err := readOneFrom(c, uid)
		if err != nil {
			return err
		}
		if t.UID == uid {
			return nil
		}
		if len(t.Message) != 0 {
			return errors.New("unexpected frame from " + t.UID)
		}
	}
}

func readOneFrom(c *net.TCPConn, uid string) (codec.Triplet, error) {
	var hb [codec.HeaderLen]byte
	if _, err := io.ReadFull(c, hb[:]); err != nil {
		return codec.Triplet{}, fmt.Errorf("no frame from the %s's join: %w", uid, err)
	}
	h, err := codec.ParseHeader(hb[:])
	if err != nil {
		return codec.Triplet{}, err
	}
	payload := make([]byte, h.Len)
	if _, err := io.ReadFull(c, payload); err != nil {
		return codec.Triplet{}, err
	}
	return codec.DecodeTriplet(payload)
}
