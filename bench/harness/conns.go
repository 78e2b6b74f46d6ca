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
// join copies the member list pays O(n) per join here.
func Joinstorm(ctx context.Context, env *Env) (*Result, error) {
	return idleConns(ctx, env, "joinstorm", env.Cfg.JoinstormConns, func(int) string { return "storm" })
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
	env.measuring()
	start := time.Now()
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
