package engine

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/mlesd/mlesd/router"
)

// BenchmarkEngineFanout100Scraped is BenchmarkEngineFanout100 while another
// goroutine reads Stats (what a Prometheus scrape of package metrics reads
// from the engine) every `every`: the counters are per-loop atomics summed at
// read time, so the per-frame path should not notice. A real scrape comes
// every 15 s or so; 1 ms here is 15,000 times that. Compare with
// BenchmarkEngineFanout100/loops=2/history=0 in the same run.
func BenchmarkEngineFanout100Scraped(b *testing.B) {
	for _, tc := range []struct {
		every time.Duration
		stats bool // false: the same ticker wakes up but reads nothing (control)
	}{{time.Millisecond, true}, {time.Millisecond, false}, {100 * time.Millisecond, true}} {
		every := tc.every
		name := fmt.Sprintf("loops=2/history=0/stats-every=%v", every)
		if !tc.stats {
			name = fmt.Sprintf("loops=2/history=0/idle-ticker-every=%v", every)
		}
		b.Run(name, func(b *testing.B) {
			step, check, srv := fanoutRigWithServer(b, 2, 100, 128, 0)
			stop := make(chan struct{})
			done := make(chan int)
			go func() {
				reads := 0
				t := time.NewTicker(every)
				defer t.Stop()
				for {
					select {
					case <-stop:
						done <- reads
						return
					case <-t.C:
						if tc.stats {
							_ = srv.Stats()
							reads++
						}
					}
				}
			}()
			b.SetBytes(128)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				step()
			}
			b.StopTimer()
			close(stop)
			b.ReportMetric(float64(<-done), "stats-reads")
			check(b.N)
		})
	}
}

// fanoutRigWithServer is fanoutRig that also returns the server, for Stats.
// (Kept apart so fanout_bench_test.go is untouched; fanoutRig could return
// srv and this would go.)
func fanoutRigWithServer(tb testing.TB, loops, subs, size, history int) (step func(), check func(n int), srv *Server) {
	srv, _ = New(Config{Loops: loops, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))},
		router.New(router.Config{HistoryLimit: history}))
	els := make([]*manualLoop, loops)
	for i := range els {
		els[i] = &manualLoop{}
		srv.loops[i].Store(newLoop(i, srv, els[i], loops))
	}
	newConn := func(i int) *conn {
		c := &conn{gc: &sinkConn{fd: devNull}, loop: srv.loops[i%loops].Load(), cid: uint32(i + 1), state: joined}
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
	return step, check, srv
}
