package harness

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// natsDriver speaks NATS core pub/sub through nats.go with the settings its
// authors recommend for throughput: one connection per publisher/receiver, one
// subject per channel, asynchronous callback subscriptions, Publish buffered by
// the library's flusher, a Flush round trip at the end only, and pending limits
// lifted so a client-side slow consumer is never what we measure (if one
// happens anyway, it is reported as an error).
type natsDriver struct{}

// NewNATS returns the NATS driver.
func NewNATS() Driver { return natsDriver{} }

func init() { RegisterDriver("nats", NewNATS) }

func (natsDriver) Name() string { return "nats" }

func natsSubject(channel string) string { return "bench." + channel }

func natsConnect(ctx context.Context, addr, name string, g *Group, extra ...nats.Option) (*nats.Conn, error) {
	to := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		to = time.Until(dl)
	}
	return nats.Connect("nats://"+addr, append([]nats.Option{
		nats.Name(name),
		nats.NoReconnect(),
		nats.Timeout(to),
		nats.SkipHostLookup(),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			g.ReportErr(name, err) // slow consumers land here
		}),
		nats.ClosedHandler(func(nc *nats.Conn) {
			if err := nc.LastError(); err != nil {
				g.ReportErr(name, fmt.Errorf("closed: %w", err))
			}
		}),
	}, extra...)...)
}

func (natsDriver) Open(ctx context.Context, addr string, spec GroupSpec) (*Group, error) {
	g := NewGroup()
	subj := natsSubject(spec.Channel)
	fail := func(err error) (*Group, error) { g.Close(); return nil, err }
	for _, r := range spec.Subs {
		r := r
		nc, err := natsConnect(ctx, addr, fmt.Sprintf("sub-%d", r.ID), g)
		if err != nil {
			return fail(err)
		}
		g.AddCloser(closerFunc(func() error { nc.Close(); return nil }))
		sub, err := nc.Subscribe(subj, func(m *nats.Msg) { r.ObserveMessage(m.Data) })
		if err != nil {
			return fail(err)
		}
		if err := sub.SetPendingLimits(-1, -1); err != nil {
			return fail(err)
		}
		// The PING/PONG round trip proves the server has the subscription.
		if err := nc.FlushWithContext(ctx); err != nil {
			return fail(err)
		}
	}
	for _, id := range spec.Pubs {
		var opts []nats.Option
		if spec.PubsReceive {
			opts = append(opts, nats.NoEcho()) // as Mles: a member never gets its own frames
		}
		nc, err := natsConnect(ctx, addr, fmt.Sprintf("pub-%d", id), g, opts...)
		if err != nil {
			return fail(err)
		}
		g.AddCloser(closerFunc(func() error { nc.Close(); return nil }))
		if spec.PubsReceive {
			sub, err := nc.Subscribe(subj, func(*nats.Msg) {}) // read and discard
			if err != nil {
				return fail(err)
			}
			if err := sub.SetPendingLimits(-1, -1); err != nil {
				return fail(err)
			}
			if err := nc.FlushWithContext(ctx); err != nil {
				return fail(err)
			}
		}
		g.Pubs = append(g.Pubs, &natsPub{nc: nc, subj: subj, msg: make([]byte, spec.Payload)})
	}
	return g, nil
}

type natsPub struct {
	nc   *nats.Conn
	subj string
	msg  []byte
}

func (p *natsPub) Send(t Trailer) error {
	PutTrailer(p.msg, t)
	return p.nc.Publish(p.subj, p.msg) // copies msg into the library's buffer
}

// Flush does nothing: nats.go's own flusher goroutine pushes buffered data out
// as soon as it can, and a nc.Flush here would be a round trip.
func (p *natsPub) Flush() error { return nil }

func (p *natsPub) Drain(ctx context.Context) error { return p.nc.FlushWithContext(ctx) }

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// Idle speaks the NATS protocol by hand (INFO, CONNECT, SUB, PING → PONG): an
// idle subscriber needs no client library, and 10,000 nats.go connections
// would measure the harness, not the server.
func (natsDriver) Idle(ctx context.Context, addr, channel string) (IdleConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	br := bufio.NewReaderSize(c, 4096)
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "INFO ") {
		c.Close()
		return nil, fmt.Errorf("nats: no INFO (%q): %v", line, err)
	}
	_, err = fmt.Fprintf(c, "CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1}\r\nSUB %s 1\r\nPING\r\n", natsSubject(channel))
	if err != nil {
		c.Close()
		return nil, err
	}
	for {
		line, err = br.ReadString('\n')
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("nats: waiting for PONG: %v", err)
		}
		if strings.HasPrefix(line, "PONG") {
			break
		}
		if strings.HasPrefix(line, "-ERR") {
			c.Close()
			return nil, fmt.Errorf("nats: %s", strings.TrimSpace(line))
		}
	}
	c.SetDeadline(time.Time{})
	return ackedIdle{c}, nil
}

// ackedIdle is an idle connection whose protocol acknowledged the subscription.
type ackedIdle struct{ net.Conn }

func (ackedIdle) Check(context.Context, string) error { return nil }
