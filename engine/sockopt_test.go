package engine

import (
	"context"
	"testing"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/mlesd/mlesd/router"
)

// Every accepted connection has TCP_NODELAY and SO_KEEPALIVE set, read back
// from the server's own sockets on their owning loops.
func TestEveryConnectionHasNoDelayAndKeepAlive(t *testing.T) {
	ts := startServer(t, Config{Keys: sharedKeys}, router.Config{HistoryLimit: router.Off})
	for i := 0; i < 4; i++ {
		ts.join(t, sharedKeys, "u"+itoa(i), "ch", nil)
	}
	type opts struct{ nodelay, keepalive int }
	results := make(chan opts, 16)
	checked := 0
	for i := range ts.srv.loops {
		l := ts.srv.loops[i].Load()
		if l == nil {
			continue
		}
		done := make(chan int, 1)
		err := l.el.Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
			n := 0
			for c := range l.conns {
				nd, _ := unix.GetsockoptInt(c.gc.Fd(), unix.IPPROTO_TCP, unix.TCP_NODELAY)
				ka, _ := unix.GetsockoptInt(c.gc.Fd(), unix.SOL_SOCKET, unix.SO_KEEPALIVE)
				results <- opts{nd, ka}
				n++
			}
			done <- n
			return nil
		}))
		if err != nil {
			t.Fatal(err)
		}
		checked += <-done
	}
	close(results)
	if checked != 4 {
		t.Fatalf("checked %d connections, want 4", checked)
	}
	for o := range results {
		if o.nodelay != 1 || o.keepalive != 1 {
			t.Fatalf("socket options: TCP_NODELAY=%d SO_KEEPALIVE=%d, want 1 and 1", o.nodelay, o.keepalive)
		}
	}
}
