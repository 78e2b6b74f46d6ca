package harness

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// settledRSS waits until the server's RSS stops moving (two readings 200 ms
// apart within 0.5%), at most 5 s, and returns it.
func settledRSS(ctx context.Context, s *Server) (int64, error) {
	prev, err := s.RSS()
	if err != nil {
		return 0, err
	}
	limit := time.Now().Add(5 * time.Second)
	for time.Now().Before(limit) && ctx.Err() == nil {
		time.Sleep(200 * time.Millisecond)
		cur, err := s.RSS()
		if err != nil {
			return 0, err
		}
		d := cur - prev
		if d < 0 {
			d = -d
		}
		if float64(d) <= 0.005*float64(prev) {
			return cur, nil
		}
		prev = cur
	}
	return prev, nil
}

// Conns: Conns idle connections, each joined to its own channel; the server's
// RSS growth per connection, and the time to connect and join.
func Conns(ctx context.Context, env *Env) (*Result, error) {
	return idleConns(ctx, env, "conns", env.Cfg.Conns, func(i int) string { return "idle-" + strconv.Itoa(i) })
}

// Joinstorm: JoinstormConns connections join one channel as fast as the
// harness opens them (ConnsConcurrency at a time): the time per join (p50,
// p99) and for all, and the server's RSS growth per member. A server whose
// join copies the member list pays O(n) per join here. Meanwhile a ping pair
// on another channel sends JoinstormPingRate stamped messages a second, from
// the first connect until the last joiner is proven joined: its latency
// says whether the storm stalls everyone else.
func Joinstorm(ctx context.Context, env *Env) (*Result, error) {
	return idleConns(ctx, env, "joinstorm", env.Cfg.JoinstormConns, func(int) string { return "storm" })
}

// pingPair is a publisher and a subscriber on a channel of their own, the
// publisher sending stamped messages at a fixed rate until stopped.
type pingPair struct {
	rec    *latencyRecorder
	sub    *Receiver
	groups []*Group
	pub    Publisher
	sent   atomic.Uint64
	stop   chan struct{}
	done   chan error
}

// openPingPair opens the pair on channel (not yet sending).
func openPingPair(ctx context.Context, env *Env, channel string) (*pingPair, error) {
	pp := &pingPair{rec: newLatencyRecorder(0, 0), stop: make(chan struct{}), done: make(chan error, 1)}
	pp.sub = pp.rec.receiver(0, 0)
	groups, err := openGroups(ctx, env, []GroupSpec{{Channel: channel, Pubs: []uint32{0}, Subs: []*Receiver{pp.sub}, Payload: env.Cfg.Payload}})
	if err != nil {
		return nil, err
	}
	pp.groups, pp.pub = groups, groups[0].Pubs[0]
	return pp, nil
}

// start sends at rate msgs/s from now until stopped, at most for limit.
func (pp *pingPair) start(rate int, limit time.Duration) {
	pace := newPacer(float64(rate), 0, limit)
	begin := time.Now()
	boundWrites([]Publisher{pp.pub}, begin.Add(limit+10*time.Second))
	go func() {
		timer := time.NewTimer(time.Hour)
		defer timer.Stop()
		var seq uint64
		for seq < pace.total {
			now := time.Since(begin)
			if due := pace.dueBy(now); due > seq {
				for ; seq < due; seq++ {
					if err := pp.pub.Send(Trailer{Pub: 0, Seq: seq, TS: Now()}); err != nil {
						pp.done <- err
						return
					}
				}
				if err := pp.pub.Flush(); err != nil {
					pp.done <- err
					return
				}
				pp.sent.Store(seq)
				continue
			}
			timer.Reset(pace.at(seq) - now)
			select {
			case <-timer.C:
			case <-pp.stop:
				pp.done <- nil
				return
			}
		}
		pp.done <- nil
	}()
}

// finish stops sending, waits for the last deliveries and closes the pair:
// its delivery verdict and send error, if any.
func (pp *pingPair) finish(ctx context.Context, cfg Config) (Delivery, error) {
	close(pp.stop)
	err := <-pp.done
	dctx, cancel := context.WithTimeout(ctx, cfg.DrainTimeout)
	defer cancel()
	if derr := pp.pub.Drain(dctx); derr != nil && err == nil {
		err = derr
	}
	sent := pp.sent.Load()
	waitDeliveries(dctx, []*Receiver{pp.sub}, sent, cfg.DrainStall)
	time.Sleep(50 * time.Millisecond)
	closeGroups(pp.groups)
	return Tally([]*Receiver{pp.sub}, []uint64{sent}), err
}

// idleConns opens n idle connections, connection i joined to channel(i).
func idleConns(ctx context.Context, env *Env, scn string, n int, channel func(i int) string) (*Result, error) {
	cfg := env.Cfg
	cfg.Conns = n
	res := newResult(scn, env)
	res.Params["conns"] = strconv.Itoa(cfg.Conns)
	rss0, err := settledRSS(ctx, env.Server)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, cfg.SetupTimeout)
	defer cancel()

	conns := make([]IdleConn, cfg.Conns)
	lat := make([]float64, cfg.Conns)
	var next, opened atomic.Int64
	var errs errList
	var failed atomic.Int64
	stopProgress := progress(env, scn, func(time.Duration) string {
		return fmt.Sprintf("%d of %d joined", opened.Load(), cfg.Conns)
	})
	defer stopProgress()
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	var ping *pingPair
	if scn == "joinstorm" && cfg.JoinstormPingRate > 0 {
		if ping, err = openPingPair(ctx, env, "joinstorm-ping"); err != nil {
			return nil, fmt.Errorf("%s: the ping pair: %w", scn, err)
		}
		defer closeGroups(ping.groups)
		res.Params["ping-rate"] = strconv.Itoa(cfg.JoinstormPingRate)
	}
	env.measuring()
	start := time.Now()
	if ping != nil { // the storm and its checks last at most SetupTimeout + 30 s
		ping.start(cfg.JoinstormPingRate, cfg.SetupTimeout+30*time.Second)
	}
	var wg sync.WaitGroup
	for range max(cfg.ConnsConcurrency, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for sctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= cfg.Conns {
					return
				}
				t0 := time.Now()
				c, err := env.Driver.Idle(sctx, env.Server.Addr, channel(i))
				if err != nil {
					errs.add(fmt.Sprintf("conn %d: %v", i, err))
					if failed.Add(1) > 10 {
						cancel()
					}
					continue
				}
				lat[i] = time.Since(t0).Seconds()
				conns[i] = c
				opened.Add(1)
			}
		}()
	}
	wg.Wait()
	connectTime := time.Since(start).Seconds()
	stopProgress()
	opens := opened.Load()
	if opens == 0 {
		return nil, fmt.Errorf("%s: no connection opened: %v", scn, errs.list())
	}

	// The server has joined everyone once the last connection opened is
	// known joined (the first Check below proves it, for protocols without
	// an acknowledgement): the storm's duration as the server saw it.
	last := -1
	for i := len(conns) - 1; i >= 0; i-- {
		if conns[i] != nil {
			last = i
			break
		}
	}
	var allJoined float64
	if last >= 0 {
		cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
		if err := conns[last].Check(cctx, env.Server.Addr); err != nil {
			errs.add(fmt.Sprintf("last conn %d not joined: %v", last, err))
		}
		ccancel()
		allJoined = time.Since(start).Seconds()
	}
	var pingDelivery Delivery
	if ping != nil {
		var perr error
		if pingDelivery, perr = ping.finish(ctx, cfg); perr != nil {
			errs.add(fmt.Sprintf("ping pair: %v", perr))
		}
		errs.addAll(groupErrors(ping.groups))
	}
	// Prove a sample is joined (for protocols without an acknowledgement).
	var checked, bad int
	for i := 0; i < cfg.Conns && checked < 20; i += max(cfg.Conns/20, 1) {
		if conns[i] == nil {
			continue
		}
		checked++
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		if err := conns[i].Check(cctx, env.Server.Addr); err != nil {
			bad++
			errs.add(fmt.Sprintf("conn %d not joined: %v", i, err))
		}
		ccancel()
	}
	rss1, err := settledRSS(ctx, env.Server)
	if err != nil {
		return nil, err
	}
	var ls []float64
	for i, c := range conns {
		if c != nil {
			ls = append(ls, lat[i])
		}
	}
	sort.Float64s(ls)
	if scn == "joinstorm" {
		res.SetPrimary("per join", "µs", 1e6*allJoined/float64(opens), false)
		res.Add("all joined", "s", allJoined, false)
		if ping != nil {
			h := ping.rec.merged()
			q := func(p float64) float64 { return float64(h.ValueAtQuantile(p)) / 1e9 }
			res.Add("ping p50", "s", q(50), false)
			res.Add("ping p99", "s", q(99), false)
			res.Add("ping max", "s", float64(h.Max())/1e9, false)
			res.AddDetail("ping samples", "", float64(h.TotalCount()), true)
			res.Delivery = pingDelivery
			res.Notes = append(res.Notes, fmt.Sprintf("ping: a pair on another channel, %d msgs/s from the first connect until the last joiner was proven joined (%d sent); lost/dup/reord are its deliveries",
				cfg.JoinstormPingRate, pingDelivery.Expected))
		}
		res.Add("RSS/conn", "KB", float64(rss1-rss0)/float64(opens)/1024, false)
	} else {
		res.SetPrimary("RSS/conn", "KB", float64(rss1-rss0)/float64(opens)/1024, false)
	}
	res.Add("RSS before", "MB", float64(rss0)/1e6, false)
	res.Add("RSS after", "MB", float64(rss1)/1e6, false)
	res.Add("connect+join all", "s", connectTime, false)
	res.AddDetail("conns/s", "conn/s", float64(opens)/connectTime, true)
	res.AddDetail("connect p50", "s", percentile(ls, 50), false)
	res.Add("connect p99", "s", percentile(ls, 99), false)
	res.Add("joined", "", float64(opens), true)
	res.Errors = errs.list()
	res.Notes = append(res.Notes, fmt.Sprintf("%d connections opened %d at a time; %d sampled and checked joined, %d not", opens, cfg.ConnsConcurrency, checked, bad))
	acked := true
	for _, c := range conns {
		if c != nil {
			_, acked = c.(ackedIdle)
			break
		}
	}
	if !acked {
		res.Notes = append(res.Notes, "no join acknowledgement in this protocol: a connection's time ends when its join is written")
	}
	if int(opens) < cfg.Conns {
		res.Errors = append(res.Errors, fmt.Sprintf("only %d of %d connections opened", opens, cfg.Conns))
	}
	return res, nil
}
