package gateway_test

import (
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/mlesd/mlesd/internal/mlestest"
)

// benchBin is the mlesd to measure: the tree's, or MLESD_BENCH_BIN (to
// compare with another build).
func benchBin() string {
	if b := os.Getenv("MLESD_BENCH_BIN"); b != "" {
		return b
	}
	return mlesdBin
}

// BenchmarkRelayThroughMlesdGateway: 8 WebSocket senders each relay 1 KiB
// messages through mlesd --ws-listen to their own WebSocket receiver, in
// windows of 64 (so that nothing is dropped); it reports messages per
// second over all pairs, and the descriptors mlesd holds per pair.
func BenchmarkRelayThroughMlesdGateway(b *testing.B) {
	const (
		pairs  = 8
		window = 64
		size   = 1 << 10
	)
	ws := "127.0.0.1:" + strconv.Itoa(mlestest.FreePort(b))
	p := mlestest.Start(b, benchBin(), []string{"MLES_KEY=" + limitsKey}, "--ws-listen", ws, "--history-limit", "0")
	p.WaitLog(b, "websocket gateway listening")
	url := "ws://" + ws + "/"
	fdsBefore := p.FDs(b)
	type link struct {
		tx *websocket.Conn
		rx *watched
	}
	links := make([]link, pairs)
	for i := range links {
		tx, rx := mustDialFrom(b, url, ""), mustDialFrom(b, url, "")
		links[i] = link{tx, watch(rx)}
		ch := "bench" + strconv.Itoa(i)
		sendWS(b, rx, triplet("rx", ch, nil))
		exchangeWS(b, tx, links[i].rx, "tx", ch) // both pairs open and joined
	}
	// 2 sessions (one descriptor each) and 2 pairs per link.
	fdsPerPair := float64(p.FDs(b)-fdsBefore-2*pairs) / float64(2*pairs)
	b.SetBytes(size)
	b.ReportAllocs()
	b.ResetTimer()
	start, cpu0 := time.Now(), cpuTime(b, p)
	var wg sync.WaitGroup
	per := max(b.N/pairs, 1)
	for i, l := range links {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := triplet("tx", "bench"+strconv.Itoa(i), make([]byte, size))
			for sent := 0; sent < per; {
				n := min(window, per-sent)
				for range n {
					if err := l.tx.Write(context.Background(), websocket.MessageBinary, msg); err != nil {
						b.Error(err)
						return
					}
				}
				for range n {
					select {
					case <-l.rx.msgs:
					case <-time.After(10 * time.Second):
						b.Error("a message was lost")
						return
					}
				}
				sent += n
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(per*pairs)/time.Since(start).Seconds(), "msgs/s")
	b.ReportMetric(fdsPerPair, "fds/pair")
	b.ReportMetric(float64((cpuTime(b, p)-cpu0).Microseconds())/float64(per*pairs), "mlesd-cpu-µs/msg")
}

// cpuTime is the CPU time mlesd has used (user and system, from
// /proc/PID/stat in clock ticks of 10 ms): under a shared machine's noise
// it is a steadier measure than wall-clock throughput.
func cpuTime(b *testing.B, p *mlestest.Proc) time.Duration {
	b.Helper()
	st, err := os.ReadFile("/proc/" + strconv.Itoa(p.Cmd.Process.Pid) + "/stat")
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(st[strings.LastIndexByte(string(st), ')')+2:]))
	utime, _ := strconv.Atoi(f[11])
	stime, _ := strconv.Atoi(f[12])
	return time.Duration(utime+stime) * 10 * time.Millisecond
}
