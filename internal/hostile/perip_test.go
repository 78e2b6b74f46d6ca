package hostile

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/gateway"
	"github.com/mlesd/mlesd/internal/mlestest"
)

// 10,001 connections from one loopback host (a benchmark, or a fleet
// behind one NAT) are all served with the default limits: none is closed
// for the per-IP limit, and the server keeps serving. Sized to the 20,000
// open files a process may have here: the test holds 10,001, the server as
// many.
func TestTenThousandAndOneConnectionsFromLoopbackAreServed(t *testing.T) {
	const n = 10_001
	wsAddr := net.JoinHostPort("127.0.0.1", fmt.Sprint(mlestest.FreePort(t)))
	metricsAddr := net.JoinHostPort("127.0.0.1", fmt.Sprint(mlestest.FreePort(t)))
	p, _ := start(t, "--ws-listen", wsAddr, "--metrics", metricsAddr)
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	join := func(i int) []byte {
		// A channel each: this test is about admission; forwarding to
		// thousands of receivers that never read is issue 12's (and
		// TestThousandReceiversThatStopReading's).
		uid, ch := fmt.Sprintf("dev-%d", i), fmt.Sprintf("fleet-%d", i)
		f, _ := codec.AppendFrame(nil, codec.Key(key, uid, ch), codec.Triplet{UID: uid, Channel: ch})
		return f
	}
	for i := 0; i < n; i++ {
		nc, err := net.DialTimeout("tcp", p.Addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conns = append(conns, nc)
		if _, err := nc.Write(join(i)); err != nil {
			t.Fatalf("join %d: %v", i, err)
		}
	}
	// Every connection is open on the server's side.
	// Every connection is open on the server's side (its own count; an fd
	// count would include the warm-up's connections still closing).
	waitUntil := time.Now().Add(60 * time.Second)
	for open := 0; open < n && !strings.Contains(p.Log(), "max-conns-per-ip"); open = openConns(t, metricsAddr) {
		if time.Now().After(waitUntil) {
			t.Fatalf("after 60 s the server has %d connections open, want %d:\n%s", open, n, tail(p.Log()))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if strings.Contains(p.Log(), "max-conns-per-ip") {
		t.Fatalf("connections from loopback were refused for the per-IP limit:\n%s", tail(p.Log()))
	}
	mlestest.Exchange(t, p.Addr, key)
	// The WebSocket gateway still works: a browser-style client's frame
	// reaches a TCP member.
	member := mlestest.Join(t, p.Addr, key, "tcp-member", "ws-probe")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws://"+wsAddr+"/", &websocket.DialOptions{Subprotocols: []string{gateway.Subprotocol}})
	if err != nil {
		t.Fatalf("websocket dial after 10,001 connections: %v", err)
	}
	defer ws.CloseNow()
	deadline := time.Now().Add(10 * time.Second)
	for {
		msg := codec.AppendTriplet(nil, codec.Triplet{UID: "browser", Channel: "ws-probe", Message: []byte("from the web")})
		if err := ws.Write(ctx, websocket.MessageBinary, msg); err != nil {
			t.Fatalf("websocket write: %v", err)
		}
		tr, err := member.Read(300 * time.Millisecond)
		if err == nil && string(tr.Message) == "from the web" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the WebSocket client's frame never reached the TCP member:\n%s", tail(p.Log()))
		}
	}
}

// openConns reads mlesd_connections_open from the server's /metrics.
func openConns(t *testing.T, metricsAddr string) int {
	return metricValue(t, metricsAddr, "mlesd_connections_open")
}

// metricValue reads one unlabelled metric from the server's /metrics.
func metricValue(t *testing.T, metricsAddr, name string) int {
	t.Helper()
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			n, _ := strconv.ParseFloat(v, 64)
			return int(n)
		}
	}
	t.Fatalf("no %s in /metrics", name)
	return 0
}

func tail(s string) string {
	if len(s) > 4000 {
		return "…" + s[len(s)-4000:]
	}
	return s
}

// Uplinks from a peer server are connections from the peer's address like
// any other: with A limited to 2 per IP (loopback included), B's uplinks
// for two channels come up and carry frames, the third is refused at A and
// redialled with back-off, and B's own members on that channel are not
// affected.
func TestUplinksCountAgainstThePeersPerIPLimit(t *testing.T) {
	a := mlestest.Start(t, bin, []string{"MLES_KEY=" + key},
		"--max-conns-per-ip", "2", "--max-conns-per-ip-loopback", "--log-level", "info")
	b := mlestest.Start(t, bin, []string{"MLES_KEY=" + key},
		"--peer", a.Addr, "--peer-backoff", "100ms", "--peer-backoff-max", "400ms", "--log-level", "info")
	// One member on A per channel, each from its own loopback address so
	// that only B's uplinks (from 127.0.0.1) meet A's limit.
	onA := make([]*mlestest.Client, 3)
	for i := range onA {
		onA[i] = joinFrom(t, fmt.Sprintf("127.0.0.%d", i+2), a.Addr, "a", fmt.Sprintf("ch-%d", i))
	}
	onB := make([]*mlestest.Client, 3)
	// The first two channels reach A, one after the other.
	for i := 0; i < 2; i++ {
		onB[i] = mlestest.Join(t, b.Addr, key, "b", fmt.Sprintf("ch-%d", i))
		deadline := time.Now().Add(10 * time.Second)
		for {
			if err := onB[i].Send([]byte("over the peer")); err != nil {
				t.Fatal(err)
			}
			tr, err := onA[i].Read(200 * time.Millisecond)
			if err == nil && string(tr.Message) == "over the peer" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("channel %d never reached A through the uplink:\nA:\n%s\nB:\n%s", i, tail(a.Log()), tail(b.Log()))
			}
		}
	}
	// The third uplink is one too many for A.
	onB[2] = mlestest.Join(t, b.Addr, key, "b", "ch-2")
	a.WaitLog(t, "reason=max-conns-per-ip")
	b.WaitLog(t, "peer uplink retry")
	// B's own members on the refused channel still talk to each other.
	other := mlestest.Join(t, b.Addr, key, "b2", "ch-2")
	mlestest.Sync(t, onB[2], other)
}

// joinFrom joins from the given local address (any of 127.0.0.0/8).
func joinFrom(t *testing.T, local, addr, uid, ch string) *mlestest.Client {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 5 * time.Second}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	c := mlestest.NewClient(nc, key, uid, ch)
	if err := c.Send(nil); err != nil {
		t.Fatal(err)
	}
	return c
}
