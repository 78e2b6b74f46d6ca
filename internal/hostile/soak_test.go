//go:build soak

package hostile

// The soak: mixed publishers, subscribers, churn and hostile clients against
// one mlesd for SOAK_DURATION (default 30m). Run with `make soak`; not in CI.
// Every 10 s it logs the server's RSS, fds and goroutines; at the end it
// reports delivered and lost counts and fails on any loss for subscribers
// that keep up, or on resources not returning to the baseline.

import (
	"bufio"
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/internal/mlestest"
)

func keyFor(uid, ch string) uint64 { return codec.Key(key, uid, ch) }

func newReader(nc net.Conn) *bufio.Reader { return bufio.NewReaderSize(nc, 64<<10) }

func TestSoak(t *testing.T) {
	duration := 30 * time.Minute
	if d, err := time.ParseDuration(os.Getenv("SOAK_DURATION")); err == nil {
		duration = d
	}
	p, base := start(t, "--stall-timeout", "20s")
	t.Logf("soak for %v; baseline RSS %d KiB, fds %d, goroutines %d", duration, base.rssKiB, base.fds, base.goroutines)
	end := time.Now().Add(duration)
	var (
		wg                          sync.WaitGroup
		published, delivered, lost  atomic.Int64
		churned, hostile, reordered atomic.Int64
	)
	const channels, subsPer, rate = 20, 5, 50 // frames/s per publisher
	for ch := 0; ch < channels; ch++ {
		name := fmt.Sprintf("soak%02d", ch)
		var subs []*mlestest.Client
		for s := 0; s < subsPer; s++ {
			subs = append(subs, mlestest.Join(t, p.Addr, key, fmt.Sprintf("sub%d", s), name))
		}
		pub := mlestest.Join(t, p.Addr, key, "pub", name)
		for _, s := range subs {
			mlestest.Sync(t, pub, s)
		}
		for _, s := range subs { // subscribers that keep up: every frame, in order
			wg.Add(1)
			go func() {
				defer wg.Done()
				next := uint32(0)
				for {
					tr, err := s.Read(30 * time.Second)
					if err != nil {
						return
					}
					if tr.UID != "pub" || len(tr.Message) == 0 || mlestest.IsSync(tr.Message) {
						continue
					}
					seq := mlestest.SeqOf(tr.Message)
					switch {
					case seq > next:
						lost.Add(int64(seq - next))
					case seq < next:
						reordered.Add(1)
					}
					next = seq + 1
					delivered.Add(1)
				}
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(time.Second / rate)
			defer tick.Stop()
			for seq := uint32(0); time.Now().Before(end); seq++ {
				<-tick.C
				if pub.Send(mlestest.Seq(seq, 512)) != nil {
					t.Errorf("%s: publisher write failed", name)
					return
				}
				published.Add(int64(subsPer))
			}
			time.Sleep(3 * time.Second) // let subscribers drain, then end them
			for _, s := range subs {
				s.NC.Close()
			}
			pub.NC.Close()
		}()
	}
	// Churn and hostile clients, once a second.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for time.Now().Before(end) {
			for i := 0; i < 20; i++ { // joiners that read a little and leave
				go func() {
					nc, err := net.Dial("tcp", p.Addr)
					if err != nil {
						return
					}
					defer nc.Close()
					c := &mlestest.Client{NC: nc, UID: fmt.Sprintf("churn%d", mrand.IntN(1e6)), Ch: fmt.Sprintf("soak%02d", mrand.IntN(channels))}
					c.Key = keyFor(c.UID, c.Ch)
					c.R = newReader(nc)
					c.Send(nil)
					deadline := time.Now().Add(time.Duration(mrand.IntN(3000)) * time.Millisecond)
					for time.Now().Before(deadline) {
						if _, err := c.Read(time.Until(deadline)); err != nil {
							break
						}
					}
					churned.Add(1)
				}()
			}
			go func() { // garbage
				if nc, err := net.Dial("tcp", p.Addr); err == nil {
					junk := make([]byte, 1024)
					rand.Read(junk)
					nc.Write(junk)
					time.Sleep(100 * time.Millisecond)
					nc.Close()
					hostile.Add(1)
				}
			}()
			go func() { // a stalled receiver: joins, never reads, leaves after 30 s
				if nc, err := net.Dial("tcp", p.Addr); err == nil {
					c := &mlestest.Client{NC: nc, UID: fmt.Sprintf("stall%d", mrand.IntN(1e6)), Ch: fmt.Sprintf("soak%02d", mrand.IntN(channels))}
					c.Key = keyFor(c.UID, c.Ch)
					c.Send(nil)
					time.Sleep(30 * time.Second)
					nc.Close()
					hostile.Add(1)
				}
			}()
			time.Sleep(time.Second)
		}
	}()
	// Samples every 10 s.
	peak := 0
	for time.Now().Before(end) {
		time.Sleep(10 * time.Second)
		rss := p.Status(t, "VmRSS")
		peak = max(peak, rss)
		t.Logf("t=%-6s RSS %6d KiB  fds %5d  goroutines %3d  published %9d  delivered %9d  lost %d  reordered %d  churned %6d  hostile %5d",
			time.Until(end).Truncate(time.Second)*-1+duration.Truncate(time.Second), rss, p.FDs(t), p.Goroutines(t),
			published.Load(), delivered.Load(), lost.Load(), reordered.Load(), churned.Load(), hostile.Load())
	}
	wg.Wait()
	time.Sleep(35 * time.Second) // the last stalled receivers leave
	t.Logf("end: published %d, delivered %d, lost %d, reordered %d; churned %d, hostile %d; RSS peak %d KiB",
		published.Load(), delivered.Load(), lost.Load(), reordered.Load(), churned.Load(), hostile.Load(), peak)
	if lost.Load() != 0 || reordered.Load() != 0 || delivered.Load() != published.Load() {
		t.Errorf("subscribers that keep up lost %d and had %d reordered of %d published", lost.Load(), reordered.Load(), published.Load())
	}
	recovered(t, p, base, 64<<10)
}
