package harness

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// natsRawDriver speaks the NATS client protocol by hand, the way redisDriver
// and the Mles driver speak theirs: PUB pipelined through a 256 KiB buffered
// writer, MSG parsed in place from a buffered reader, no per-message
// allocation. It shows what the NATS server does when its client library is
// not the bottleneck (nats.go allocates and hands over each message to a
// goroutine per subscription). Server "nats-raw" in tables; it runs against
// the same nats-server as "nats".
type natsRawDriver struct{}

// NewNATSRaw returns the hand-written NATS protocol driver.
func NewNATSRaw() Driver { return natsRawDriver{} }

func init() { RegisterDriver("nats-raw", NewNATSRaw) }

func (natsRawDriver) Name() string { return "nats-raw" }

// natsRawConn is one connection: a mutex-guarded buffered writer (the reader
// answers server PINGs through it) and the count of PONGs seen.
type natsRawConn struct {
	c     *net.TCPConn
	mu    sync.Mutex
	w     *bufio.Writer
	br    *bufio.Reader
	pongs atomic.Uint64
	pings uint64 // PINGs we sent, under mu
}

func natsRawDial(ctx context.Context, addr string) (*natsRawConn, error) {
	tc, err := dialTCP(ctx, addr)
	if err != nil {
		return nil, err
	}
	nc := &natsRawConn{c: tc, w: bufio.NewWriterSize(tc, ioBufSize), br: bufio.NewReaderSize(tc, ioBufSize)}
	if dl, ok := ctx.Deadline(); ok {
		tc.SetReadDeadline(dl)
	}
	line, err := readNATSLine(nc.br)
	if err != nil || !bytes.HasPrefix(line, []byte("INFO ")) {
		tc.Close()
		return nil, fmt.Errorf("nats: no INFO (%q): %v", line, err)
	}
	tc.SetReadDeadline(time.Time{})
	nc.w.WriteString("CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"echo\":false}\r\n")
	return nc, nil
}

// readNATSLine reads one CRLF line without the CRLF (valid until next read).
func readNATSLine(br *bufio.Reader) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		return nil, err
	}
	return bytes.TrimRight(line, "\r\n"), nil
}

// ping sends PING and returns the PONG count that answers it.
func (nc *natsRawConn) ping() (uint64, error) {
	nc.mu.Lock()
	defer nc.mu.Unlock()
	nc.pings++
	nc.w.WriteString("PING\r\n")
	return nc.pings, nc.w.Flush()
}

func (nc *natsRawConn) waitPong(ctx context.Context, n uint64) error {
	for nc.pongs.Load() < n {
		select {
		case <-ctx.Done():
			return fmt.Errorf("nats: no PONG: %w", ctx.Err())
		case <-time.After(200 * time.Microsecond):
		}
	}
	return nil
}

// readLoop handles everything the server sends: MSG (to r, if any), PING,
// PONG, +OK, -ERR, INFO.
func (nc *natsRawConn) readLoop(g *Group, who string, r *Receiver) {
	var big []byte
	for {
		line, err := readNATSLine(nc.br)
		if err != nil {
			g.ReportErr(who, err)
			return
		}
		switch {
		case bytes.HasPrefix(line, []byte("MSG ")):
			sp := bytes.LastIndexByte(line, ' ')
			n, err := parseInt(line[sp+1:])
			if err != nil {
				g.ReportErr(who, err)
				return
			}
			if n+2 <= nc.br.Size() {
				b, err := nc.br.Peek(n + 2)
				if err != nil {
					g.ReportErr(who, err)
					return
				}
				if r != nil {
					r.ObserveMessage(b[:n])
				}
				nc.br.Discard(n + 2)
				continue
			}
			if cap(big) < n+2 {
				big = make([]byte, n+2)
			}
			if _, err := io.ReadFull(nc.br, big[:n+2]); err != nil {
				g.ReportErr(who, err)
				return
			}
			if r != nil {
				r.ObserveMessage(big[:n])
			}
		case bytes.Equal(line, []byte("PING")):
			nc.mu.Lock()
			nc.w.WriteString("PONG\r\n")
			nc.w.Flush()
			nc.mu.Unlock()
		case bytes.Equal(line, []byte("PONG")):
			nc.pongs.Add(1)
		case bytes.HasPrefix(line, []byte("-ERR")):
			g.ReportErr(who, fmt.Errorf("nats: %s", line))
		}
	}
}

func (natsRawDriver) Open(ctx context.Context, addr string, spec GroupSpec) (*Group, error) {
	g := NewGroup()
	fail := func(err error) (*Group, error) { g.Close(); return nil, err }
	subj := natsSubject(spec.Channel)
	for _, r := range spec.Subs {
		nc, err := natsRawDial(ctx, addr)
		if err != nil {
			return fail(err)
		}
		g.AddCloser(nc.c)
		fmt.Fprintf(nc.w, "SUB %s 1\r\n", subj)
		go nc.readLoop(g, fmt.Sprintf("sub-%d", r.ID), r)
		n, err := nc.ping()
		if err != nil {
			return fail(err)
		}
		if err := nc.waitPong(ctx, n); err != nil { // the server has the SUB
			return fail(err)
		}
	}
	for _, id := range spec.Pubs {
		nc, err := natsRawDial(ctx, addr)
		if err != nil {
			return fail(err)
		}
		g.AddCloser(nc.c)
		go nc.readLoop(g, fmt.Sprintf("pub-%d", id), nil) // reads and discards any MSG
		// Subscribed publishers: CONNECT said "echo":false, as Mles never
		// sends a member its own frames.
		if spec.PubsReceive {
			nc.mu.Lock() // the reader may be answering a PING
			fmt.Fprintf(nc.w, "SUB %s 1\r\n", subj)
			nc.mu.Unlock()
			n, err := nc.ping()
			if err != nil {
				return fail(err)
			}
			if err := nc.waitPong(ctx, n); err != nil {
				return fail(err)
			}
		}
		p := &natsRawPub{nc: nc, msg: make([]byte, spec.Payload)}
		p.prefix = fmt.Appendf(nil, "PUB %s %d\r\n", subj, spec.Payload)
		g.Pubs = append(g.Pubs, p)
	}
	return g, nil
}

type natsRawPub struct {
	nc     *natsRawConn
	prefix []byte
	msg    []byte
}

// Send buffers one PUB. Hot path: must not allocate.
func (p *natsRawPub) Send(t Trailer) error {
	PutTrailer(p.msg, t)
	nc := p.nc
	nc.mu.Lock()
	nc.w.Write(p.prefix)
	nc.w.Write(p.msg)
	_, err := nc.w.WriteString("\r\n")
	nc.mu.Unlock()
	return err
}

func (p *natsRawPub) Flush() error {
	p.nc.mu.Lock()
	defer p.nc.mu.Unlock()
	return p.nc.w.Flush()
}

func (p *natsRawPub) SetWriteDeadline(t time.Time) error { return p.nc.c.SetWriteDeadline(t) }

// Drain is a PING/PONG round trip: the server has then processed every PUB.
func (p *natsRawPub) Drain(ctx context.Context) error {
	n, err := p.nc.ping()
	if err != nil {
		return err
	}
	return p.nc.waitPong(ctx, n)
}

func (natsRawDriver) Idle(ctx context.Context, addr, channel string) (IdleConn, error) {
	return natsDriver{}.Idle(ctx, addr, channel)
}
