package main

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mlesd/mlesd/client"
)

const benchDescription = `
Measures a running Mles server, the way "nats bench" does: --subs
subscribers and --pubs publishers join one channel (by default a fresh,
random one, so that no history is replayed), the publishers send --size-byte
messages for --duration (or --count messages each), and the subscribers
check every message. It prints the publishers' and the subscribers' rates
(messages/s and MB/s of message bytes), latency percentiles (send to
receive, on this host's clock) and the loss: a Mles server drops frames for
a receiver that falls behind, without telling it. On a terminal a progress
line updates twice a second.

Each message carries a 24-byte stamp (publisher, sequence number, send
time), so --size is at least 24. Every connection is one TCP (or TLS, or
WebSocket) connection; each publisher and subscriber runs on its own
goroutine.`

// benchStamp marks a bench message: magic, publisher, sequence, send time.
const (
	benchMagic    = "MLESBNCH"
	benchStampLen = 8 + 4 + 4 + 8
	// benchSettle is how long subscribers may stay quiet after the last
	// send before what is missing counts as lost.
	benchSettle = 2 * time.Second
	// benchMaxSamples bounds the latency samples kept per subscriber
	// (reservoir sampling beyond it).
	benchMaxSamples = 1 << 18
	// benchJoinTimeout bounds waiting until every subscriber hears every publisher.
	benchJoinTimeout = 15 * time.Second
)

var benchCommand = command{
	name:     "bench",
	synopsis: "-s HOST[:8077] [--pubs N] [--subs M] [--size B] [--duration D | --count N] [--rate N/s]",
	summary:  "benchmark a running server: N publishers, M subscribers; rates, latency, loss",
	desc:     benchDescription,
	setup:    setupBench,
}

type benchConfig struct {
	pubs, subs, size, count int
	duration                time.Duration
	rate                    float64
}

func setupBench(e env, fs *flagSet) func([]string) error {
	var cf connFlags
	var bc benchConfig
	var rate string
	cf.register(e, fs, false)
	fs.String(&cf.channel, "channel", "c", "CHANNEL", "", "channel (default: a fresh random one)")
	fs.Int(&bc.pubs, "pubs", "p", "N", 1, "publishers")
	fs.Int(&bc.subs, "subs", "n", "M", 1, "subscribers")
	fs.Int(&bc.size, "size", "", "BYTES", 128, "message size (at least 24)")
	fs.Duration(&bc.duration, "duration", "d", 5*time.Second, "how long the publishers send")
	fs.Int(&bc.count, "count", "C", "N", 0, "send N messages per publisher instead of for --duration")
	fs.String(&rate, "rate", "r", "N/s", "", "each publisher sends at most N messages per second (default unlimited)")
	return func(args []string) error {
		if len(args) > 0 {
			return usageErr("unexpected argument %q", args[0])
		}
		if err := cf.check(); err != nil {
			return err
		}
		switch {
		case bc.pubs < 1 || bc.subs < 0:
			return usageErr("--pubs must be at least 1 and --subs at least 0")
		case bc.size < benchStampLen || bc.size > 1<<24-64:
			return usageErr("--size must be between %d and %d", benchStampLen, 1<<24-64)
		case bc.count < 0 || bc.duration <= 0:
			return usageErr("--count must be >= 0 and --duration positive")
		}
		var err error
		if bc.rate, err = parseRate(rate); err != nil {
			return usageErr("--rate %q: %v", rate, err)
		}
		if cf.channel == "" {
			var b [6]byte
			rand.Read(b[:])
			cf.channel = "bench-" + hex.EncodeToString(b[:])
		}
		return runBench(e, &cf, bc)
	}
}

// benchSub is one subscriber's tally.
type benchSub struct {
	conn     *client.Conn
	received atomic.Uint64
	dups     uint64
	foreign  uint64
	next     []uint32 // per publisher: the next sequence number expected
	heard    []atomic.Bool
	lat      []time.Duration
	seen     int // latency samples offered
	last     atomic.Int64
}

func runBench(e env, cf *connFlags, bc benchConfig) error {
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	var conns []*client.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	connect := func(uid string) (*client.Conn, error) {
		cctx, ccancel := context.WithTimeout(ctx, dialTimeout)
		defer ccancel()
		c, err := client.ConnectContext(cctx, cf.server, uid, cf.channel, cf.options(e)...)
		if err != nil {
			return nil, fmt.Errorf("cannot connect to %s: %w", cf.server, unwrapClient(err))
		}
		conns = append(conns, c)
		return c, nil
	}
	subs := make([]*benchSub, bc.subs)
	var wg sync.WaitGroup
	for i := range subs {
		c, err := connect(fmt.Sprintf("bench-sub-%d", i))
		if err != nil {
			return err
		}
		s := &benchSub{conn: c, next: make([]uint32, bc.pubs), heard: make([]atomic.Bool, bc.pubs),
			lat: make([]time.Duration, 0, latencyCap(bc))}
		subs[i] = s
		wg.Add(1)
		go func() { defer wg.Done(); s.run(ctx) }()
	}
	pubs := make([]*client.Conn, bc.pubs)
	for i := range pubs {
		c, err := connect(fmt.Sprintf("bench-pub-%d", i))
		if err != nil {
			return err
		}
		pubs[i] = c
		go func() { // publishers discard what they receive (other publishers' joins)
			for _, err := range c.Msgs(ctx) {
				if err != nil && !errors.Is(err, client.ErrNotTriplet) {
					return
				}
			}
		}()
	}
	// Barrier: the server may join connections in any order, so each
	// publisher sends sequence 0 until every subscriber has heard it.
	deadline := time.Now().Add(benchJoinTimeout)
	for {
		all := true
		for p, c := range pubs {
			heard := true
			for _, s := range subs {
				heard = heard && s.heard[p].Load()
			}
			if !heard {
				all = false
				if err := c.Send(stamp(make([]byte, bc.size), p, 0)); err != nil {
					return closedErr(err)
				}
			}
		}
		if all {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not every subscriber heard every publisher within %v", benchJoinTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}

	fmt.Fprintf(e.stdout, "mles bench: %d publishers, %d subscribers, %d-byte messages, %s, server %s, channel %s\n",
		bc.pubs, bc.subs, bc.size, benchLength(bc), cf.server, cf.channel)
	var sent atomic.Uint64
	start := time.Now()
	stopAt := start.Add(bc.duration)
	pubErr := make(chan error, bc.pubs)
	var pwg sync.WaitGroup
	for p, c := range pubs {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			buf := make([]byte, bc.size)
			pace := newPacer(bc.rate)
			pace.start(time.Now())
			for seq := uint32(1); ; seq++ {
				if bc.count > 0 && int(seq) > bc.count {
					break
				}
				if bc.count == 0 && seq%64 == 0 && time.Now().After(stopAt) {
					break
				}
				if !pace.wait(ctx) {
					break
				}
				if err := c.Send(stamp(buf, p, seq)); err != nil {
					pubErr <- closedErr(err)
					return
				}
				sent.Add(1)
			}
			if err := c.Flush(); err != nil {
				pubErr <- closedErr(err)
			}
		}()
	}
	pubsDone := make(chan struct{})
	go func() { pwg.Wait(); close(pubsDone) }()
	received := func() (n uint64) {
		for _, s := range subs {
			n += s.received.Load()
		}
		return n
	}
	progress := e.isTerminal(e.stderr)
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	var pubElapsed time.Duration
wait:
	for {
		select {
		case <-pubsDone:
			pubElapsed = time.Since(start)
			break wait
		case err := <-pubErr:
			return err
		case <-ctx.Done():
			return nil
		case <-tick.C:
			if progress {
				el := time.Since(start).Seconds()
				fmt.Fprintf(e.stderr, "\r\x1b[K%5.1fs  sent %d (%.0f/s)  received %d (%.0f/s)", el, sent.Load(),
					float64(sent.Load())/el, received(), float64(received())/el)
			}
		}
	}
	// Let the subscribers catch up, until everything arrived or they are quiet.
	want := sent.Load() * uint64(bc.subs)
	lastChange, lastN := time.Now(), received()
	for received() < want && time.Since(lastChange) < benchSettle && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
		if n := received(); n != lastN {
			lastChange, lastN = time.Now(), n
		}
	}
	if progress {
		fmt.Fprint(e.stderr, "\r\x1b[K")
	}
	cancel()
	for _, s := range subs {
		s.conn.Close()
	}
	wg.Wait()
	recvElapsed := pubElapsed
	for _, s := range subs {
		if l := time.Duration(s.last.Load() - start.UnixNano()); l > recvElapsed {
			recvElapsed = l
		}
	}
	report(e.stdout, bc, sent.Load(), pubElapsed, subs, recvElapsed)
	return nil
}

// latencyCap is how many latency samples one subscriber keeps.
func latencyCap(bc benchConfig) int {
	if bc.count > 0 {
		return min(benchMaxSamples, max(1024, bc.count*bc.pubs))
	}
	return benchMaxSamples
}

func benchLength(bc benchConfig) string {
	if bc.count > 0 {
		return fmt.Sprintf("%d messages each", bc.count)
	}
	return bc.duration.String()
}

// stamp writes the bench stamp into buf and returns it.
func stamp(buf []byte, pub int, seq uint32) []byte {
	copy(buf, benchMagic)
	binary.BigEndian.PutUint32(buf[8:], uint32(pub))
	binary.BigEndian.PutUint32(buf[12:], seq)
	binary.BigEndian.PutUint64(buf[16:], uint64(time.Now().UnixNano()))
	return buf
}

func (s *benchSub) run(ctx context.Context) {
	for m, err := range s.conn.Msgs(ctx) {
		if err != nil && !errors.Is(err, client.ErrNotTriplet) {
			return
		}
		msg := m.Message
		if len(msg) < benchStampLen || string(msg[:8]) != benchMagic {
			if len(msg) > 0 {
				s.foreign++
			}
			continue
		}
		p := binary.BigEndian.Uint32(msg[8:])
		seq := binary.BigEndian.Uint32(msg[12:])
		if int(p) >= len(s.next) {
			s.foreign++
			continue
		}
		if seq == 0 { // barrier
			s.heard[p].Store(true)
			continue
		}
		now := time.Now().UnixNano()
		switch {
		case seq < s.next[p]:
			s.dups++
			continue
		default:
			s.next[p] = seq + 1
		}
		s.received.Add(1)
		s.last.Store(now)
		d := time.Duration(now - int64(binary.BigEndian.Uint64(msg[16:])))
		s.seen++
		if len(s.lat) < cap(s.lat) {
			s.lat = append(s.lat, d)
		} else if j := mrand.IntN(s.seen); j < len(s.lat) {
			s.lat[j] = d
		}
	}
}

func report(w io.Writer, bc benchConfig, sent uint64, pubElapsed time.Duration, subs []*benchSub, recvElapsed time.Duration) {
	mb := func(n uint64, d time.Duration) float64 { return float64(n) * float64(bc.size) / 1e6 / d.Seconds() }
	fmt.Fprintf(w, "pub  %12s msgs  %8.2fs  %12s msgs/s  %8.2f MB/s\n", commas(sent), pubElapsed.Seconds(),
		commas(uint64(float64(sent)/pubElapsed.Seconds())), mb(sent, pubElapsed))
	if len(subs) == 0 {
		return
	}
	var recv, dups, foreign uint64
	var lat []time.Duration
	for _, s := range subs {
		recv += s.received.Load()
		dups += s.dups
		foreign += s.foreign
		lat = append(lat, s.lat...)
	}
	fmt.Fprintf(w, "sub  %12s msgs  %8.2fs  %12s msgs/s  %8.2f MB/s  (all %d subscribers together)\n", commas(recv),
		recvElapsed.Seconds(), commas(uint64(float64(recv)/recvElapsed.Seconds())), mb(recv, recvElapsed), len(subs))
	want := sent * uint64(len(subs))
	lost := want - min(want, recv)
	fmt.Fprintf(w, "loss %12s of %s (%.3f%%)", commas(lost), commas(want), 100*float64(lost)/math.Max(1, float64(want)))
	if dups > 0 || foreign > 0 {
		fmt.Fprintf(w, "  duplicates %d  other frames %d", dups, foreign)
	}
	fmt.Fprintln(w)
	if len(lat) > 0 {
		slices.Sort(lat)
		q := func(p float64) string {
			i := int(math.Ceil(p*float64(len(lat)))) - 1
			return lat[max(0, min(i, len(lat)-1))].Round(time.Microsecond).String()
		}
		fmt.Fprintf(w, "latency  p50 %s  p90 %s  p99 %s  p99.9 %s  max %s  (%d samples)\n",
			q(.5), q(.9), q(.99), q(.999), lat[len(lat)-1].Round(time.Microsecond), len(lat))
	}
}

// commas formats n with thousands separators.
func commas(n uint64) string {
	s := fmt.Sprint(n)
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	return b.String()
}
