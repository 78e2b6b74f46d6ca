// The engine's tests speak Mles through the project's client
// (github.com/mlesd/mlesd/client, imported as mlesclient: this package's
// test client is the type client): join connects and joins with a
// mlesclient.Conn, send sends through it, and readFrame reads whole frames
// with mlesclient.FrameReader. Each client keeps its raw connection (nc)
// and reader (r) because the tests also write what no client would (bursts
// of frames in one write, half frames, garbage, forged headers) and compare
// the frames they get byte for byte; a client built around a connection of
// the test's own (a literal) sends raw frames keyed with key.

package engine

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	mlesclient "github.com/mlesd/mlesd/client"
	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/internal/mlestest"
	"github.com/mlesd/mlesd/router"
)

// logBuffer collects the server's log lines so tests can assert on them.
type logBuffer struct{ mlestest.SyncBuffer }

// waitFor polls until the log holds substr or the deadline passes.
func (l *logBuffer) waitFor(t *testing.T, substr string) {
	t.Helper()
	mlestest.WaitFor(t, l.String, substr, 5*time.Second)
}

type testServer struct {
	srv  *Server
	addr string // host:port to dial
	log  *logBuffer
}

// startServer runs a server on a free loopback port until the test ends.
func startServer(t testing.TB, cfg Config, rcfg router.Config) *testServer {
	t.Helper()
	lb := &logBuffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if len(cfg.Listen) == 0 {
		cfg.Listen = []string{"127.0.0.1:0"}
	}
	if cfg.Loops == 0 {
		cfg.Loops = 2
	}
	r := router.New(rcfg)
	srv, err := New(cfg, r)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve() }()
	<-srv.Ready()
	addrs := srv.Addrs()
	if len(addrs) == 0 {
		t.Fatalf("server did not start: %v", <-done)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Stop(ctx); err != nil {
			t.Errorf("stop: %v", err)
		}
		<-done
		r.Close()
	})
	ta := addrs[0].(*net.TCPAddr)
	host := "127.0.0.1"
	if ta.IP.To4() == nil && !ta.IP.IsUnspecified() {
		host = ta.IP.String()
	}
	return &testServer{srv: srv, addr: net.JoinHostPort(host, itoa(ta.Port)), log: lb}
}

func itoa(n int) string { return strconv.Itoa(n) }

// client is a Mles client over a real socket, whose raw connection the test
// can also use (nc for writes, r for reads between frames).
type client struct {
	t       testing.TB
	nc      net.Conn
	r       *bufio.Reader // what readFrame reads through; made from nc when nil
	uid     string
	channel string
	key     uint64
	// conn is the client that joined and sends, for clients made by join.
	// Nil for a client built around a connection of the test's own: then
	// send writes frames keyed with key, the first of them being the join.
	conn *mlesclient.Conn
	fr   *mlesclient.FrameReader // reads whole frames through r
}

func localAddrPort(nc net.Conn) netip.AddrPort {
	return nc.LocalAddr().(*net.TCPAddr).AddrPort()
}

// dialRaw connects without sending anything.
func dialRaw(t testing.TB, addr string) net.Conn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return nc
}

// join connects and sends a join frame with message msg (empty = plain join),
// then waits until the server has counted one more join (so that the order of
// joins in a test is the order the server saw), or has closed a connection.
func (ts *testServer) join(t testing.TB, keys codec.KeyConfig, uid, channel string, msg []byte) *client {
	t.Helper()
	return ts.joinAt(t, ts.addr, keys, uid, channel, msg)
}

func (ts *testServer) joinAt(t testing.TB, addr string, keys codec.KeyConfig, uid, channel string, msg []byte) *client {
	t.Helper()
	st := ts.srv.Stats()
	before, closedBefore := st.Joins, sum(st.ClosedByRule)
	c := join(t, addr, keys, uid, channel, msg)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		st := ts.srv.Stats()
		if st.Joins > before || sum(st.ClosedByRule) > closedBefore {
			return c
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("server never processed %s's join", uid)
	return nil
}

// waitJoins waits until the server has counted n joins.
func (ts *testServer) waitJoins(t testing.TB, n uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for ts.srv.Stats().Joins < n {
		if time.Now().After(deadline) {
			t.Fatalf("server counted %d joins, want %d", ts.srv.Stats().Joins, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func sum(m map[string]uint64) (n uint64) {
	for _, v := range m {
		n += v
	}
	return n
}

// join connects and joins with a mlesclient.Conn under keys, its join frame
// carrying msg (empty = plain join). The Conn flushes each send at once
// (ManualFlush, then Flush), so that a test's raw writes on nc never overtake
// its frames; the test's cleanup closes it.
func join(t testing.TB, addr string, keys codec.KeyConfig, uid, channel string, msg []byte) *client {
	t.Helper()
	var nc net.Conn
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		nc = c
		return c, err
	}
	return connect(t, addr, keys, uid, channel, msg, dial, &nc)
}

// joinOver joins over nc, already open (a socket dialled with special
// options, or one end of a socketpair), as join does; keyAddr, when valid,
// is the address the server sees for an address key (an adopted
// connection's remote), else nc's own.
func joinOver(t testing.TB, nc net.Conn, keys codec.KeyConfig, uid, channel string, keyAddr netip.AddrPort) *client {
	t.Helper()
	dial := func(context.Context, string, string) (net.Conn, error) { return nc, nil }
	var opts []mlesclient.Option
	if keyAddr.IsValid() {
		opts = append(opts, mlesclient.KeyAddr(keyAddr))
	}
	return connect(t, "over-an-open-connection:0", keys, uid, channel, nil, dial, &nc, opts...)
}

// connect joins through mlesclient with dial; *nc is the connection dial
// made (or was given).
func connect(t testing.TB, addr string, keys codec.KeyConfig, uid, channel string, msg []byte,
	dial func(context.Context, string, string) (net.Conn, error), nc *net.Conn, extra ...mlesclient.Option) *client {
	t.Helper()
	opts := append([]mlesclient.Option{mlesclient.Keys(keys), mlesclient.Dialer(dial),
		mlesclient.DialTimeout(5 * time.Second), mlesclient.ManualFlush()}, extra...)
	if len(msg) > 0 {
		opts = append(opts, mlesclient.JoinMessage(msg))
	}
	conn, err := mlesclient.ConnectContext(context.Background(), addr, uid, channel, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.CloseNow() })
	return &client{t: t, nc: *nc, r: newReader(*nc), uid: uid, channel: channel, key: conn.Key(), conn: conn}
}

// frame builds one frame from this client with msg, under its join key.
func (c *client) frame(msg []byte) []byte {
	f, err := codec.AppendFrame(nil, c.key, codec.Triplet{UID: c.uid, Channel: c.channel, Message: msg})
	if err != nil {
		c.t.Fatal(err)
	}
	return f
}

// send sends one frame with msg, within 10 s, and returns its bytes: through
// conn for a client made by join, else as a raw write.
func (c *client) send(msg []byte) []byte {
	c.t.Helper()
	f := c.frame(msg)
	if c.conn == nil {
		c.write(f)
		return f
	}
	c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	err := c.conn.Send(msg)
	if err == nil {
		err = c.conn.Flush()
	}
	if err != nil {
		c.t.Fatalf("send: %v", err)
	}
	return f
}

func (c *client) write(b []byte) {
	c.t.Helper()
	_ = c.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// readFrame reads one whole frame, waiting at most timeout, and returns a
// copy of it (the caller's to keep), or the error. A frame half read when
// the time runs out is finished by the next readFrame. After it r stands
// right after the frame, for a test that reads on raw.
func (c *client) readFrame(timeout time.Duration) ([]byte, error) {
	if c.r == nil {
		c.r = newReader(c.nc)
	}
	if c.fr == nil {
		c.fr = mlesclient.NewFrameReader(c.r, c.r.Size()) // reads through r itself
	}
	_ = c.nc.SetReadDeadline(time.Now().Add(timeout))
	_, f, err := c.fr.ReadFrame()
	if err != nil {
		return nil, err
	}
	f = bytes.Clone(f)
	c.fr.Release()
	return f, nil
}

// expect reads one frame and requires it to equal want, byte for byte.
func (c *client) expect(want []byte) {
	c.t.Helper()
	got, err := c.readFrame(5 * time.Second)
	if err != nil {
		c.t.Fatalf("%s: reading frame: %v", c.uid, err)
	}
	if !bytes.Equal(got, want) {
		c.t.Fatalf("%s: got frame %x…, want %x…", c.uid, head(got), head(want))
	}
}

// expectNothing requires that no frame arrives within d.
func (c *client) expectNothing(d time.Duration) {
	c.t.Helper()
	got, err := c.readFrame(d)
	if err == nil {
		c.t.Fatalf("%s: unexpected frame %x…", c.uid, head(got))
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		c.t.Fatalf("%s: connection failed instead of staying quiet: %v", c.uid, err)
	}
}

// expectClosed requires the server to close the connection within 5 s.
func expectClosed(t testing.TB, nc net.Conn) {
	t.Helper()
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	for {
		_, err := nc.Read(buf)
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("connection still open after 5 s; want closed by server")
		}
		return // EOF or reset: closed
	}
}

func head(b []byte) []byte {
	if len(b) > 40 {
		return b[:40]
	}
	return b
}

var sharedKeys = codec.KeyConfig{SharedKey: "test-key"}

func netipAddrPortFrom(ip [16]byte, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom16(ip), port)
}

func newReader(nc net.Conn) *bufio.Reader { return bufio.NewReaderSize(nc, 64<<10) }
