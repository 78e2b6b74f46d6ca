package engine

import (
	"fmt"
	"testing"
	"time"
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
			step, check, srv := fanoutRig(b, 2, 100, 128, 0)
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
