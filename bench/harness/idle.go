package harness

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Idle: IdleMembers connections joined to one channel that never read, each
// left holding a backlog (IdleFill messages of IdlePayload bytes are
// published, more than their sockets take), then nothing happens for
// IdleWindow: the server's CPU over that window, from /proc. A server that
// polls its backlogged receivers pays for it here; one that waits for the
// kernel to say a socket has room pays nothing.
func Idle(ctx context.Context, env *Env) (*Result, error) {
	cfg := env.Cfg
	res := newResult("idle", env)
	res.Params["members"] = strconv.Itoa(cfg.IdleMembers)
	res.Params["window"] = cfg.IdleWindow.String()
	sctx, cancel := context.WithTimeout(ctx, cfg.SetupTimeout)
	defer cancel()

	members := make([]IdleConn, cfg.IdleMembers)
	defer func() {
		for _, c := range members {
			if c != nil {
				c.Close()
			}
		}
	}()
	var next, opened atomic.Int64
	var errs errList
	var wg sync.WaitGroup
	for range max(cfg.ConnsConcurrency, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for sctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= cfg.IdleMembers {
					return
				}
				c, err := env.Driver.Idle(sctx, env.Server.Addr, "idle")
				if err != nil {
					errs.add(fmt.Sprintf("member %d: %v", i, err))
					continue
				}
				members[i] = c
				opened.Add(1)
			}
		}()
	}
	wg.Wait()
	if opened.Load() == 0 {
		return nil, fmt.Errorf("idle: no member joined: %v", errs.list())
	}
	spec := GroupSpec{Channel: "idle", Pubs: []uint32{1}, Payload: cfg.IdlePayload, SendOnly: true}
	groups, err := openGroups(ctx, env, []GroupSpec{spec})
	if err != nil {
		return nil, err
	}
	defer closeGroups(groups)
	pub := groups[0].Pubs[0]
	boundWrites(groups[0].Pubs, time.Now().Add(cfg.SetupTimeout))
	for i := 0; i < cfg.IdleFill; i++ {
		if err := pub.Send(Trailer{Pub: 1, Seq: uint64(i), TS: Now()}); err != nil {
			return nil, fmt.Errorf("idle: publishing the backlog: %w", err)
		}
	}
	if err := pub.Flush(); err != nil {
		return nil, err
	}
	dctx, dcancel := context.WithTimeout(ctx, cfg.DrainTimeout)
	_ = pub.Drain(dctx)
	dcancel()
	fmt.Fprintf(env.Log, "%s %d members hold a backlog of %d × %d B; measuring %v of nothing\n",
		env.label("idle"), opened.Load(), cfg.IdleFill, cfg.IdlePayload, cfg.IdleWindow)
	// Writing the backlog into a thousand sockets' kernel buffers (over a
	// megabyte each on loopback) takes seconds: wait until the server is
	// done with it, a second under 5% of a core, at most 60 s.
	settleBegan := time.Now()
	prev, _ := env.Server.CPUTime()
	for time.Since(settleBegan) < 60*time.Second && ctx.Err() == nil {
		time.Sleep(time.Second)
		cur, _ := env.Server.CPUTime()
		if cur-prev < 50*time.Millisecond {
			break
		}
		prev = cur
	}
	res.Add("settle", "s", time.Since(settleBegan).Seconds(), false)
	env.measuring()
	cpu0, err := env.Server.CPUTime()
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(cfg.IdleWindow):
	}
	cpu1, err := env.Server.CPUTime()
	if err != nil {
		return nil, err
	}
	wall := time.Since(t0)
	res.SetPrimary("idle CPU", "% of a core", 100*(cpu1-cpu0).Seconds()/wall.Seconds(), false)
	res.Add("idle CPU time", "s", (cpu1 - cpu0).Seconds(), false)
	res.Add("members", "", float64(opened.Load()), true)
	res.Errors = errs.list()
	res.Notes = append(res.Notes, fmt.Sprintf("%d members that never read, each sent %d messages of %d bytes first; CPU of the server process over %v with no traffic",
		opened.Load(), cfg.IdleFill, cfg.IdlePayload, wall.Round(time.Millisecond)))
	return res, nil
}
