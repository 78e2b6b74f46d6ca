package engine

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/mlesd/mlesd/router"
)

// sinkConn is a gnet.Conn whose socket is /dev/null, which takes every byte
// at once: it isolates the engine's per-frame work (store, fan-out, queue,
// vectored write) from the network. Methods the fan-out does not use are left
// to the nil embedded interface and would panic if called.
type sinkConn struct {
	gnet.Conn
	fd int
}

var devNull = func() int {
	fd, err := unix.Open("/dev/null", unix.O_WRONLY, 0)
	if err != nil {
		panic(err)
	}
	return fd
}()

func (c *sinkConn) Fd() int               { return c.fd }
func (c *sinkConn) OutboundBuffered() int { return 0 }

// manualLoop is a gnet.EventLoop whose tasks the benchmark runs itself.
type manualLoop struct {
	gnet.EventLoop
	tasks []gnet.Runnable
}

func (m *manualLoop) Execute(_ context.Context, r gnet.Runnable) error {
	m.tasks = append(m.tasks, r)
	return nil
}

func (m *manualLoop) run() {
	for i := 0; i < len(m.tasks); i++ { // tasks may queue more tasks
		_ = m.tasks[i].Run(context.Background())
	}
	clear(m.tasks)
	m.tasks = m.tasks[:0]
}

// fanoutRig joins subs receivers, spread over loops, plus a sender on loop
// 0. step forwards one frame of size bytes through the engine's real path;
// check verifies every receiver got n frames' bytes; srv is for Stats.
func fanoutRig(tb testing.TB, loops, subs, size, history int) (step func(), check func(n int), srv *Server) {
	step, check, srv, _ = laggerRig(tb, loops, subs, 0, size, history)
	return step, check, srv
}

// laggerRig is fanoutRig with lagging more receivers, made laggers as
// receivers whose socket is full are (they hold one queued frame, and
// their socket never drains); check verifies the listed receivers only.
// laggerConns returns the laggers.
func laggerRig(tb testing.TB, loops, subs, lagging, size, history int) (step func(), check func(n int), srv *Server, laggerConns []*conn) {
	srv, _ = New(Config{Loops: loops, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))},
		router.New(router.Config{HistoryLimit: historyLimit(history)}))
	els := make([]*manualLoop, loops)
	for i := range els {
		els[i] = &manualLoop{}
		srv.loops[i].Store(newLoop(i, srv, els[i], loops))
	}
	newConn := func(i int) *conn {
		c := &conn{gc: &sinkConn{fd: devNull}, loop: srv.loops[i%loops].Load(), cid: uint32(i + 1), dupKey: uint64(i + 1), state: joined}
		ch, _, err := srv.router.Join("bench", c, nil)
		if err != nil {
			tb.Fatal(err)
		}
		c.ch = ch
		return c
	}
	sender := newConn(0)
	receivers := make([]*conn, subs)
	for i := range receivers {
		receivers[i] = newConn(i + 1)
	}
	one := router.NewFrame([]byte("held"))
	for i := 0; i < lagging; i++ {
		c := newConn(subs + 1 + i)
		c.deliver(one, true) // a backlog, never written: it is not flushed
		c.dirty = false
		c.loop.dirty = c.loop.dirty[:0]
		c.loop.lag(c, c.set.Log.Head())
		laggerConns = append(laggerConns, c)
	}
	one.Release()
	l0 := srv.loops[0].Load()
	data := bytes.Repeat([]byte{0xa5}, size)
	step = func() {
		l0.frames = append(l0.frames, router.NewFrame(data))
		srv.dispatch(sender, l0)
		l0.flush()
		for _, el := range els {
			el.run()
		}
	}
	check = func(n int) {
		for _, r := range receivers {
			if got := int(r.sent); got != n*size {
				tb.Fatalf("receiver got %d bytes, want %d", got, n*size)
			}
		}
	}
	return step, check, srv, laggerConns
}

func benchFanout(b *testing.B, loops, subs, size, history int) {
	step, check, _ := fanoutRig(b, loops, subs, size, history)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		step()
	}
	b.StopTimer()
	check(b.N)
}

// BenchmarkEngineFanout100 is the per-frame path to 100 subscribers: one
// frame copied once, stored, queued by reference to each receiver, written
// with one vectored write each; with 2 loops, half the receivers get it
// through one batch task on the other loop. Must report 0 allocs/op. (The
// real gnet Execute adds one small closure per wake-up of another loop, not
// per frame: a wake-up carries every batch posted until that loop runs.)
func BenchmarkEngineFanout100(b *testing.B) {
	for _, tc := range []struct{ loops, history int }{{1, 0}, {2, 0}, {2, 100}} {
		b.Run(fmt.Sprintf("loops=%d/history=%d", tc.loops, tc.history), func(b *testing.B) {
			benchFanout(b, tc.loops, 100, 128, tc.history)
		})
	}
}

// BenchmarkEngineFanoutLagging: the per-frame cost with many lagging
// receivers is that of the listed ones alone (plus one log entry per loop).
// members is the channel's size, half of it lagging (then 10 listed with 0
// to 10,000 lagging): ns/op follows the listed receivers, never the laggers.
func BenchmarkEngineFanoutLagging(b *testing.B) {
	run := func(listed, lagging int) {
		b.Run(fmt.Sprintf("listed=%d/lagging=%d", listed, lagging), func(b *testing.B) {
			step, check, srv, _ := laggerRig(b, 2, listed, lagging, 128, 0)
			// The laggers never read, so their log holds every frame until
			// its bound and the frame pool is empty meanwhile: fill it
			// first, then measure the steady state (every frame in evicts
			// one, which goes back to the pool).
			const logBound = 1024
			srv.cfg.MaxPendingFrames = logBound
			for range 2 * logBound {
				step()
			}
			b.SetBytes(128)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				step()
			}
			b.StopTimer()
			check(b.N + 2*logBound)
		})
	}
	for _, members := range []int{10, 100, 1000, 10_000} {
		run(members/2, members/2)
	}
	for _, lagging := range []int{0, 1000, 10_000} {
		run(10, lagging)
	}
}

// historyLimit maps a rig's history length (0: none) onto router.Config's.
func historyLimit(n int) int {
	if n == 0 {
		return router.Off
	}
	return n
}
