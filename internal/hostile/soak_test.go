//go:build soak

package hostile

// The soak: mixed publishers, subscribers, churn and hostile clients against
// one mlesd (TestSoak), or against two peered ones (TestSoakPeered), for
// SOAK_DURATION (default 30m). Run with `make soak`; not in CI. Every 10 s
// it logs each server's RSS, fds and goroutines; at the end it reports
// delivered and lost counts and fails on any loss for subscribers that keep
// up, or on resources not returning to the baseline.

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

func soakDuration() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("SOAK_DURATION")); err == nil {
		return d
	}
	return 30 * time.Minute
}

func TestSoak(t *testing.T) {
	p, base := start(t, "--stall-timeout", "20s")
	soak(t, soakDuration(), []*mlestest.Proc{p}, []baseline{base})
}

// Two servers, A peered to B: publishers on A, subscribers on both (those on
// B get every frame through A's uplinks), churn and hostile clients on both,
// and on A joiners of fresh channels, whose uplinks open and close with them.
func TestSoakPeered(t *testing.T) {
	B, baseB := start(t, "--stall-timeout", "20s")
	A, baseA := start(t, "--stall-timeout", "20s", "--peer", B.Addr, "--peer-backoff", "200ms",
		"--peer-backoff-max", "2s", "--peer-linger", "500ms")
	baseA = measure(t, A) // after the warm-up channel's uplink is gone
	soak(t, soakDuration(), []*mlestest.Proc{A, B}, []baseline{baseA, baseB})
}

// soak runs the load on servers[0] (publishers, and subscribers spread over
// every server) for duration, then checks delivery and each server against
// its baseline.
func soak(t *testing.T, duration time.Duration, servers []*mlestest.Proc, bases []baseline) {
	p := servers[0]
	for i, b := range bases {
		t.Logf("soak for %v; server %d baseline RSS %d KiB, fds %d, goroutines %d", duration, i, b.rssKiB, b.fds, b.goroutines)
	}
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
			subs = append(subs, mlestest.Join(t, servers[s%len(servers)].Addr, key, fmt.Sprintf("sub%d", s), name))
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
					nc, err := net.Dial("tcp", servers[mrand.IntN(len(servers))].Addr)
					if err != nil {
						return
					}
					defer nc.Close()
					ch := fmt.Sprintf("soak%02d", mrand.IntN(channels))
					if len(servers) > 1 && mrand.IntN(4) == 0 {
						ch = fmt.Sprintf("fresh%d", mrand.IntN(1e6)) // a new channel: its uplinks open and close
					}
					c := &mlestest.Client{NC: nc, UID: fmt.Sprintf("churn%d", mrand.IntN(1e6)), Ch: ch}
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
				if nc, err := net.Dial("tcp", servers[mrand.IntN(len(servers))].Addr); err == nil {
					junk := make([]byte, 1024)
					rand.Read(junk)
					nc.Write(junk)
					time.Sleep(100 * time.Millisecond)
					nc.Close()
					hostile.Add(1)
				}
			}()
			go func() { // a stalled receiver: joins, never reads, leaves after 30 s
				if nc, err := net.Dial("tcp", servers[mrand.IntN(len(servers))].Addr); err == nil {
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
	peak := make([]int, len(servers))
	for time.Now().Before(end) {
		time.Sleep(10 * time.Second)
		for i, sp := range servers {
			rss := sp.Status(t, "VmRSS")
			peak[i] = max(peak[i], rss)
			t.Logf("t=%-6s server %d RSS %6d KiB  fds %5d  goroutines %3d  published %9d  delivered %9d  lost %d  reordered %d  churned %6d  hostile %5d",
				time.Until(end).Truncate(time.Second)*-1+duration.Truncate(time.Second), i, rss, sp.FDs(t), sp.Goroutines(t),
				published.Load(), delivered.Load(), lost.Load(), reordered.Load(), churned.Load(), hostile.Load())
		}
	}
	wg.Wait()
	time.Sleep(35 * time.Second) // the last stalled receivers leave
	t.Logf("end: published %d, delivered %d, lost %d, reordered %d; churned %d, hostile %d; RSS peak %v KiB",
		published.Load(), delivered.Load(), lost.Load(), reordered.Load(), churned.Load(), hostile.Load(), peak)
	if lost.Load() != 0 || reordered.Load() != 0 || delivered.Load() != published.Load() {
		t.Errorf("subscribers that keep up lost %d and had %d reordered of %d published", lost.Load(), reordered.Load(), published.Load())
	}
	for i, sp := range servers {
		recovered(t, sp, bases[i], 64<<10)
	}
}
