package engine

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

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

// client is a plain Mles client over a real TCP socket.
type client struct {
	t       testing.TB
	nc      net.Conn
	r       *bufio.Reader
	uid     string
	channel string
	key     uint64
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

// join connects and sends a join frame with message msg (empty = plain join).
func join(t testing.TB, addr string, keys codec.KeyConfig, uid, channel string, msg []byte) *client {
	t.Helper()
	nc := dialRaw(t, addr)
	c := &client{t: t, nc: nc, r: bufio.NewReaderSize(nc, 64<<10), uid: uid, channel: channel}
	c.key = keys.ClientKey(localAddrPort(nc), uid, channel)
	c.send(msg)
	return c
}

// frame builds one frame from this client with msg, under its join key.
func (c *client) frame(msg []byte) []byte {
	f, err := codec.AppendFrame(nil, c.key, codec.Triplet{UID: c.uid, Channel: c.channel, Message: msg})
	if err != nil {
		c.t.Fatal(err)
	}
	return f
}

// send writes one frame with msg and returns its bytes.
func (c *client) send(msg []byte) []byte {
	c.t.Helper()
	f := c.frame(msg)
	c.write(f)
	return f
}

func (c *client) write(b []byte) {
	c.t.Helper()
	_ = c.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// readFrame reads one whole frame or returns the error.
func (c *client) readFrame(timeout time.Duration) ([]byte, error) {
	_ = c.nc.SetReadDeadline(time.Now().Add(timeout))
	hdr := make([]byte, codec.HeaderLen)
	if _, err := io.ReadFull(c.r, hdr); err != nil {
		return nil, err
	}
	h, err := codec.ParseHeader(hdr)
	if err != nil {
		return nil, err
	}
	f := make([]byte, codec.HeaderLen+h.Len)
	copy(f, hdr)
	if _, err := io.ReadFull(c.r, f[codec.HeaderLen:]); err != nil {
		return nil, err
	}
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
