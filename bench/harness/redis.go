package harness

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync/atomic"
	"time"
)

// redisDriver speaks RESP2 pub/sub over raw TCP: PUBLISH pipelined through a
// 64 KiB buffered writer with replies read by a separate goroutine, SUBSCRIBE
// confirmed by the server's reply, push messages parsed in place from a
// buffered reader. This is what the fastest Redis clients do; a general client
// library would add its own per-message allocations to every Redis figure.
type redisDriver struct{}

// NewRedis returns the Redis driver.
func NewRedis() Driver { return redisDriver{} }

func init() { RegisterDriver("redis", NewRedis) }

func (redisDriver) Name() string { return "redis" }

const ioBufSize = 256 << 10

func dialTCP(ctx context.Context, addr string) (*net.TCPConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	tc := c.(*net.TCPConn)
	tc.SetNoDelay(true)
	return tc, nil
}

func respCommand(args ...string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	return b.Bytes()
}

func (redisDriver) Open(ctx context.Context, addr string, spec GroupSpec) (*Group, error) {
	g := NewGroup()
	fail := func(err error) (*Group, error) { g.Close(); return nil, err }
	for _, r := range spec.Subs {
		c, err := dialTCP(ctx, addr)
		if err != nil {
			return fail(err)
		}
		g.AddCloser(c)
		if _, err := c.Write(respCommand("SUBSCRIBE", spec.Channel)); err != nil {
			return fail(err)
		}
		br := bufio.NewReaderSize(c, ioBufSize)
		if dl, ok := ctx.Deadline(); ok {
			c.SetReadDeadline(dl)
		}
		// *3 $9 subscribe $n channel :1
		if _, err := readRESPArray(br, 3); err != nil {
			return fail(fmt.Errorf("redis: SUBSCRIBE reply: %w", err))
		}
		c.SetReadDeadline(time.Time{})
		go redisSubLoop(g, fmt.Sprintf("sub-%d", r.ID), br, r)
	}
	for _, id := range spec.Pubs {
		c, err := dialTCP(ctx, addr)
		if err != nil {
			return fail(err)
		}
		g.AddCloser(c)
		p := &redisPub{c: c, w: bufio.NewWriterSize(c, ioBufSize), msg: make([]byte, spec.Payload)}
		p.prefix = fmt.Appendf(nil, "*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n", len(spec.Channel), spec.Channel, spec.Payload)
		go p.readReplies(g, fmt.Sprintf("pub-%d", id))
		g.Pubs = append(g.Pubs, p)
	}
	return g, nil
}

// readRESPArray reads one array of n bulk strings / integers and returns the
// bulk strings (copied). Used off the hot path only.
func readRESPArray(br *bufio.Reader, n int) ([][]byte, error) {
	line, err := readLine(br)
	if err != nil {
		return nil, err
	}
	if len(line) == 0 || line[0] != '*' {
		return nil, fmt.Errorf("want array, got %q", line)
	}
	if got, _ := strconv.Atoi(string(line[1:])); got != n {
		return nil, fmt.Errorf("want %d elements, got %q", n, line)
	}
	var out [][]byte
	for range n {
		line, err := readLine(br)
		if err != nil {
			return nil, err
		}
		switch {
		case len(line) > 0 && line[0] == ':':
		case len(line) > 0 && line[0] == '$':
			l, err := strconv.Atoi(string(line[1:]))
			if err != nil {
				return nil, err
			}
			b := make([]byte, l+2)
			if _, err := io.ReadFull(br, b); err != nil {
				return nil, err
			}
			out = append(out, b[:l])
		default:
			return nil, fmt.Errorf("unexpected %q", line)
		}
	}
	return out, nil
}

// readLine returns one CRLF-terminated line without the CRLF, valid until the
// next read.
func readLine(br *bufio.Reader) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		return nil, err
	}
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return nil, fmt.Errorf("bad line %q", line)
	}
	return line[:len(line)-2], nil
}

// parseInt parses a RESP length. Hot path: must not allocate.
func parseInt(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, errors.New("empty number")
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("bad number %q", b)
		}
		n = n*10 + int(c-'0')
	}
	return n, nil
}

// redisSubLoop reads push messages: *3 $7 message $n channel $n payload.
func redisSubLoop(g *Group, who string, br *bufio.Reader, r *Receiver) {
	var big []byte
	for {
		err := func() error {
			line, err := readLine(br)
			if err != nil {
				return err
			}
			if string(line) != "*3" {
				return fmt.Errorf("unexpected %q", line)
			}
			for i := 0; i < 2; i++ { // kind, channel
				line, err := readLine(br)
				if err != nil {
					return err
				}
				if len(line) == 0 || line[0] != '$' {
					return fmt.Errorf("unexpected %q", line)
				}
				n, err := parseInt(line[1:])
				if err != nil {
					return err
				}
				if _, err := br.Discard(n + 2); err != nil {
					return err
				}
			}
			line, err = readLine(br)
			if err != nil {
				return err
			}
			if len(line) == 0 || line[0] != '$' {
				return fmt.Errorf("unexpected %q", line)
			}
			n, err := parseInt(line[1:])
			if err != nil {
				return err
			}
			if n+2 <= br.Size() {
				b, err := br.Peek(n + 2)
				if err != nil {
					return err
				}
				r.ObserveMessage(b[:n])
				br.Discard(n + 2)
				return nil
			}
			if cap(big) < n+2 {
				big = make([]byte, n+2)
			}
			if _, err := io.ReadFull(br, big[:n+2]); err != nil {
				return err
			}
			r.ObserveMessage(big[:n])
			return nil
		}()
		if err != nil {
			g.ReportErr(who, err)
			return
		}
	}
}

type redisPub struct {
	c      *net.TCPConn
	w      *bufio.Writer
	prefix []byte
	msg    []byte
	sent   uint64
	ackedN atomic.Uint64 // PUBLISH replies read
}

func (p *redisPub) Send(t Trailer) error {
	PutTrailer(p.msg, t)
	p.w.Write(p.prefix)
	p.w.Write(p.msg)
	_, err := p.w.WriteString("\r\n")
	p.sent++
	return err
}

func (p *redisPub) Flush() error { return p.w.Flush() }

func (p *redisPub) SetWriteDeadline(t time.Time) error { return p.c.SetWriteDeadline(t) }

// Drain waits for one reply per PUBLISH sent: Redis has then delivered each
// message to its subscribers' output buffers.
func (p *redisPub) Drain(ctx context.Context) error {
	if err := p.w.Flush(); err != nil {
		return err
	}
	for p.ackedN.Load() < p.sent {
		select {
		case <-ctx.Done():
			return fmt.Errorf("redis: %d of %d PUBLISH replies: %w", p.ackedN.Load(), p.sent, ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
	return nil
}

func (p *redisPub) readReplies(g *Group, who string) {
	br := bufio.NewReaderSize(p.c, 64<<10)
	for {
		line, err := readLine(br)
		if err != nil {
			g.ReportErr(who, err)
			return
		}
		if len(line) == 0 || line[0] != ':' {
			g.ReportErr(who, fmt.Errorf("PUBLISH reply %q", line))
			return
		}
		p.ackedN.Add(1)
	}
}

func (redisDriver) Idle(ctx context.Context, addr, channel string) (IdleConn, error) {
	c, err := dialTCP(ctx, addr)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if _, err := c.Write(respCommand("SUBSCRIBE", channel)); err != nil {
		c.Close()
		return nil, err
	}
	if _, err := readRESPArray(bufio.NewReaderSize(c, 512), 3); err != nil {
		c.Close()
		return nil, fmt.Errorf("redis: SUBSCRIBE reply: %w", err)
	}
	c.SetDeadline(time.Time{})
	return ackedIdle{c}, nil
}
