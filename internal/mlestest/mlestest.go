// Package mlestest is test support shared by the black-box suites: it builds
// and runs the mlesd binary as a separate process on loopback, reads its
// resource use from /proc and pprof, and speaks Mles through the project's
// client (github.com/mlesd/mlesd/client): Join connects and joins with a
// client.Conn, and frames are read with client.FrameReader. The raw
// connection stays in reach (Client.NC) for hostile tests that write bytes
// no client would. It is imported only by tests.
package mlestest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mlesd/mlesd/client"
	"github.com/mlesd/mlesd/codec"
)

// Build compiles cmd/mlesd into dir and returns the binary's path.
func Build(dir string) (string, error) { return BuildCommand(dir, "mlesd") }

// BuildCommand compiles cmd/NAME of this module into dir/NAME and returns
// the binary's path.
func BuildCommand(dir, name string) (string, error) {
	root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		return "", fmt.Errorf("finding the module root: %w", err)
	}
	bin := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/"+name)
	cmd.Dir = strings.TrimSpace(string(root))
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building %s: %v\n%s", name, err, out)
	}
	return bin, nil
}

// SyncBuffer is a bytes.Buffer safe for concurrent writes and reads (a
// child process's log, written by exec's copier, read by the test).
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// FreePort returns a TCP port free on 127.0.0.1 right now, below the
// kernel's ephemeral range. Why not port 0's pick: that comes from the
// ephemeral range, which every outgoing connection draws its local port
// from too, so between this call and the server's bind a test dialling
// hundreds of connections (the upgrade and storm tests, in another package
// running at the same time) can take it: "bind: address already in use",
// seen in CI. No outgoing connection takes a port below the range.
func FreePort(t testing.TB) int {
	t.Helper()
	lo, hi := portRange()
	portMu.Lock()
	defer portMu.Unlock()
	for range 1000 {
		port := lo + rand.IntN(hi-lo)
		if portsGiven[port] {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue // bound by someone: try another
		}
		l.Close()
		portsGiven[port] = true
		return port
	}
	t.Fatalf("no free port in %d-%d", lo, hi)
	return 0
}

var (
	portMu     sync.Mutex
	portsGiven = map[int]bool{} // Lock: portMu; never handed out twice by one test binary
)

// portRange is where FreePort picks: from 10000 up to the start of the
// ephemeral range (/proc/sys/net/ipv4/ip_local_port_range), or 20000-32767
// if that cannot be read or leaves too little room.
func portRange() (lo, hi int) {
	lo, hi = 20000, 32768
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return lo, hi
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return lo, hi
	}
	start, err := strconv.Atoi(f[0])
	if err != nil || start < 12000 {
		return lo, hi
	}
	return 10000, start
}

// Proc is a running mlesd.
type Proc struct {
	Cmd       *exec.Cmd
	Addr      string // Mles listener, 127.0.0.1:port
	PprofAddr string // net/http/pprof, 127.0.0.1:port
	log       SyncBuffer
	waited    chan error
}

// Start runs bin on free loopback ports (Mles and pprof) with env added to
// the environment; the test's cleanup sends SIGTERM and requires exit 0
// within 15 s unless the test already stopped it.
func Start(t testing.TB, bin string, env []string, args ...string) *Proc {
	t.Helper()
	p := &Proc{
		Addr:      net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t))),
		PprofAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t))),
		waited:    make(chan error, 1),
	}
	p.Cmd = exec.Command(bin, append([]string{"--listen", p.Addr, "--pprof", p.PprofAddr}, args...)...)
	p.Cmd.Env = append(os.Environ(), env...)
	p.Cmd.Stderr = &p.log
	if err := p.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.waited <- p.Cmd.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		nc, err := net.Dial("tcp", p.Addr)
		if err == nil {
			nc.Close()
			break
		}
		if time.Now().After(deadline) {
			p.Cmd.Process.Kill()
			t.Fatalf("mlesd did not listen:\n%s", p.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Cleanup(func() {
		if p.Cmd.ProcessState != nil {
			return
		}
		if err := p.Stop(15 * time.Second); err != nil {
			t.Errorf("%v\n%s", err, p.Log())
		}
	})
	return p
}

// Stop sends SIGTERM and waits up to timeout for exit code 0.
func (p *Proc) Stop(timeout time.Duration) error {
	p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.waited:
		if err != nil {
			return fmt.Errorf("mlesd exit after SIGTERM: %w", err)
		}
		return nil
	case <-time.After(timeout):
		// SIGQUIT makes the Go runtime dump every goroutine into the log.
		p.Cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-p.waited:
		case <-time.After(3 * time.Second):
			p.Cmd.Process.Kill()
			<-p.waited
		}
		return fmt.Errorf("mlesd did not exit within %v of SIGTERM (goroutine dump in its log)", timeout)
	}
}

// Alive reports whether the process has not exited.
func (p *Proc) Alive() bool {
	return p.Cmd.ProcessState == nil && p.Cmd.Process.Signal(syscall.Signal(0)) == nil
}

// Log returns everything the server logged so far.
func (p *Proc) Log() string { return p.log.String() }

// WaitLog waits up to 10 s for substr in the log.
func (p *Proc) WaitLog(t testing.TB, substr string) {
	t.Helper()
	WaitFor(t, p.Log, substr, 10*time.Second)
}

// WaitFor polls log until it contains substr, or fails the test after
// timeout with the whole log.
func WaitFor(t testing.TB, log func() string, substr string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Contains(log(), substr) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("log never said %q:\n%s", substr, log())
}

// Status reads a field of /proc/PID/status in KiB (VmRSS, VmHWM).
func (p *Proc) Status(t testing.TB, field string) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, field+":") {
			n, _ := strconv.Atoi(strings.Fields(line)[1])
			return n
		}
	}
	t.Fatalf("no %s in /proc/PID/status", field)
	return 0
}

// FDs counts the process's open file descriptors.
func (p *Proc) FDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.Cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

var goroutineTotal = regexp.MustCompile(`goroutine profile: total (\d+)`)

// Goroutines reads the server's goroutine count from its pprof endpoint.
func (p *Proc) Goroutines(t testing.TB) int {
	t.Helper()
	resp, err := http.Get("http://" + p.PprofAddr + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	m := goroutineTotal.FindSubmatch(body)
	if m == nil {
		t.Fatalf("no goroutine total in pprof output")
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// Settle waits until f() is at most limit, or fails after 10 s: resource
// counts take a moment to fall after clients leave.
func Settle(t testing.TB, what string, limit int, f func() int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var n int
	for time.Now().Before(deadline) {
		if n = f(); n <= limit {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s is %d, want at most %d", what, n, limit)
}

// Client is a Mles client with a shared key, over a connection the test
// can also use raw (NC, R).
type Client struct {
	NC      net.Conn
	R       *bufio.Reader // what Read reads through; made from NC when nil
	UID, Ch string
	Key     uint64
	// Conn is the client that joined and sends, for clients made by Join.
	// Nil for a Client built around a connection of the test's own (a
	// literal, or NewClient): then Send writes frames keyed with Key, the
	// first of them being the join.
	Conn *client.Conn
	buf  []byte
	fr   *client.FrameReader
}

// readBufSize is R's size for the clients this package makes.
const readBufSize = 256 << 10

// Dial connects without sending anything; the test's cleanup closes it.
func Dial(t testing.TB, addr string) net.Conn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return nc
}

// Join connects and sends a plain join (empty message) under shared key k,
// with a client.Conn that flushes each Send at once (ManualFlush and
// Flush), so that a test's raw writes on NC never overtake its frames.
func Join(t testing.TB, addr, k, uid, ch string) *Client {
	t.Helper()
	var nc net.Conn
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
		nc = c
		return c, err
	}
	conn, err := client.Connect(addr, uid, ch, client.SharedKey(k), client.Dialer(dial), client.ManualFlush())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.CloseNow() })
	c := NewClient(nc, k, uid, ch)
	c.Conn = conn
	return c
}

// NewClient wraps an open connection as uid on channel ch under shared key
// k; it sends nothing.
func NewClient(nc net.Conn, k, uid, ch string) *Client {
	return &Client{NC: nc, R: bufio.NewReaderSize(nc, readBufSize), UID: uid, Ch: ch, Key: codec.Key(k, uid, ch)}
}

// Frame encodes msg as this client's frame (valid until the next call).
func (c *Client) Frame(msg []byte) []byte {
	f, _ := codec.AppendFrame(c.buf[:0], c.Key, codec.Triplet{UID: c.UID, Channel: c.Ch, Message: msg})
	c.buf = f
	return f
}

// Send sends one frame with msg, within 10 s.
func (c *Client) Send(msg []byte) error {
	dl := time.Now().Add(10 * time.Second)
	if c.Conn != nil {
		c.Conn.SetWriteDeadline(dl)
		if err := c.Conn.Send(msg); err != nil {
			return err
		}
		return c.Conn.Flush()
	}
	_ = c.NC.SetWriteDeadline(dl)
	_, err := c.NC.Write(c.Frame(msg))
	return err
}

// Read reads and decodes one frame, waiting at most timeout. A frame half
// read when the time runs out is finished by the next Read.
func (c *Client) Read(timeout time.Duration) (codec.Triplet, error) {
	if c.R == nil {
		c.R = bufio.NewReaderSize(c.NC, readBufSize)
	}
	if c.fr == nil {
		c.fr = client.NewFrameReader(c.R, c.R.Size()) // reads through R itself
	}
	_ = c.NC.SetReadDeadline(time.Now().Add(timeout))
	_, f, err := c.fr.ReadFrame()
	if err != nil {
		return codec.Triplet{}, err
	}
	t, err := codec.DecodeTriplet(f[codec.HeaderLen:]) // a copy: f is released now
	c.fr.Release()
	return t, err
}

// Seq makes a message of size bytes starting with a big-endian sequence number.
func Seq(seq uint32, size int) []byte {
	m := make([]byte, max(size, 4))
	binary.BigEndian.PutUint32(m, seq)
	return m
}

// SeqOf reads the sequence number of a Seq message.
func SeqOf(msg []byte) uint32 { return binary.BigEndian.Uint32(msg) }

// ExpectClosed requires the server to close nc within 10 s.
func ExpectClosed(t testing.TB, nc net.Conn) {
	t.Helper()
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64<<10)
	for {
		if _, err := nc.Read(buf); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("connection still open after 10 s; want closed by the server")
			}
			return
		}
	}
}

// Sync makes sure receiver is on its channel before a test publishes: sender
// (on the same channel) sends "sync" frames until receiver gets one. Joins are
// processed on several event loops, so the order of two clients' joins is not
// the order they were sent in.
func Sync(t testing.TB, sender, receiver *Client) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if err := sender.Send([]byte("sync")); err != nil {
			t.Fatal(err)
		}
		for {
			tr, err := receiver.Read(100 * time.Millisecond)
			if err != nil {
				break // nothing yet: send another
			}
			if string(tr.Message) == "sync" && tr.UID == sender.UID {
				return
			}
		}
	}
	t.Fatalf("%s never received %s's frames", receiver.UID, sender.UID)
}

// IsSync reports whether msg is one of Sync's frames.
func IsSync(msg []byte) bool { return string(msg) == "sync" }

// Exchange proves the server still serves: two fresh clients on a fresh
// channel exchange frames each way. Joins on different event loops finish
// in no set order, so each side sends until the other has its frame.
func Exchange(t testing.TB, addr, k string) {
	t.Helper()
	ch := fmt.Sprintf("probe-%d", time.Now().UnixNano())
	a := Join(t, addr, k, "probe-a", ch)
	b := Join(t, addr, k, "probe-b", ch)
	Sync(t, a, b)
	Sync(t, b, a)
	a.NC.Close()
	b.NC.Close()
}

// WaitUntil polls cond every 20 ms until it holds, or fails the test after
// timeout naming what it waited for.
func WaitUntil(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting until %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// MetricLines returns the samples of the /metrics served at addr whose
// line holds substr, joined with "; " ("" when none; the error's text when
// /metrics cannot be read): for a test's failure message.
func MetricLines(addr, substr string) string {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, substr) && !strings.HasPrefix(line, "#") {
			out = append(out, line)
		}
	}
	return strings.Join(out, "; ")
}
