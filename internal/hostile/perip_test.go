package hostile

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/internal/mlestest"
)

// 10,001 connections from one loopback host (a benchmark, or a fleet
// behind one NAT) are all served with the default limits: none is closed
// for the per-IP limit, and the server keeps serving. Sized to the 20,000
// open files a process may have here: the test holds 10,001, the server as
// many.
func TestTenThousandAndOneConnectionsFromLoopbackAreServed(t *testing.T) {
	const n = 10_001
	p, base := start(t)
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	join := func(i int) []byte {
		uid, ch := fmt.Sprintf("dev-%d", i), fmt.Sprintf("fleet-%d", i%100)
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
	mlestest.WaitUntil(t, fmt.Sprintf("server holds %d more fds (or refuses some)", n), 30*time.Second,
		func() bool { return p.FDs(t) >= base.fds+n || strings.Contains(p.Log(), "max-conns-per-ip") })
	if strings.Contains(p.Log(), "max-conns-per-ip") {
		t.Fatalf("connections from loopback were refused for the per-IP limit:\n%s", tail(p.Log()))
	}
	mlestest.Exchange(t, p.Addr, key)
}

func tail(s string) string {
	if len(s) > 4000 {
		return "…" + s[len(s)-4000:]
	}
	return s
}
