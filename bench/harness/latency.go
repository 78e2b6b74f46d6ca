package harness

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Latency: one publisher at a fixed rate (LatencyRate msg/s) to LatencySubs
// subscribers; each message carries its send time, each subscriber records
// receive time minus send time in its own HdrHistogram. The first fifth of the
// run (at most 1 s) is warm-up and not recorded.
func Latency(ctx context.Context, env *Env) (*Result, error) {
	cfg := env.Cfg
	res := newResult("latency", env)
	rate := float64(cfg.LatencyRate)
	total := uint64(rate * cfg.Duration.Seconds())
	warm := uint64(rate * min(cfg.Duration/5, time.Second).Seconds())
	res.Params["rate"] = strconv.Itoa(cfg.LatencyRate)
	res.Params["subs"] = strconv.Itoa(cfg.LatencySubs)
	res.Params["payload"] = strconv.Itoa(cfg.Payload)
	res.Params["duration"] = cfg.Duration.String()

	const maxNs = int64(30 * time.Second)
	var over atomic.Uint64
	spec := GroupSpec{Channel: "latency", Pubs: []uint32{0}, Payload: cfg.Payload}
	hists := make([]*hdrhistogram.Histogram, cfg.LatencySubs)
	for i := range cfg.LatencySubs {
		h := hdrhistogram.New(1, maxNs, 3)
		hists[i] = h
		r := NewReceiver(i, 0)
		r.OnMessage = func(t Trailer, now int64) {
			if t.Seq < warm {
				return
			}
			if h.RecordValue(min(max(now-t.TS, 1), maxNs)) != nil {
				over.Add(1)
			}
		}
		spec.Subs = append(spec.Subs, r)
	}
	groups, err := openGroups(ctx, env, []GroupSpec{spec})
	if err != nil {
		return nil, err
	}
	defer closeGroups(groups)
	pub := groups[0].Pubs[0]

	var sent atomic.Uint64
	stopProgress := progress(env, "latency", func(time.Duration) string {
		return fmt.Sprintf("sent %d of %d, delivered %d", sent.Load(), total, sumUnique(spec.Subs))
	})
	defer stopProgress()
	var errs []string
	env.measuring()
	start := time.Now()
	boundWrites(groups[0].Pubs, start.Add(cfg.Duration+5*time.Second+cfg.DrainTimeout))
	var seq uint64
	for seq < total && ctx.Err() == nil {
		due := min(uint64(time.Since(start).Seconds()*rate)+1, total)
		for ; seq < due; seq++ {
			if err := pub.Send(Trailer{Pub: 0, Seq: seq, TS: Now()}); err != nil {
				errs = append(errs, err.Error())
				break
			}
		}
		if err := pub.Flush(); err != nil {
			errs = append(errs, err.Error())
		}
		sent.Store(seq)
		if len(errs) > 0 || time.Since(start) > cfg.Duration+5*time.Second {
			break
		}
		next := start.Add(time.Duration(float64(seq) / rate * 1e9))
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
	}
	actual := float64(seq) / time.Since(start).Seconds()
	dctx, cancel := context.WithTimeout(ctx, cfg.DrainTimeout)
	defer cancel()
	if err := pub.Drain(dctx); err != nil {
		errs = append(errs, err.Error())
	}
	want := seq * uint64(cfg.LatencySubs)
	waitDeliveries(dctx, spec.Subs, want, cfg.DrainStall)
	stopProgress()
	time.Sleep(50 * time.Millisecond)
	closeGroups(groups)
	res.Delivery = Tally(spec.Subs, []uint64{seq})
	res.Errors = append(errs, groupErrors(groups)...)

	all := hdrhistogram.New(1, maxNs, 3)
	for _, h := range hists {
		all.Merge(h)
	}
	q := func(p float64) float64 { return float64(all.ValueAtQuantile(p)) / 1e9 }
	res.SetPrimary("p99", "s", q(99), false)
	res.Add("p50", "s", q(50), false)
	res.Add("p99.9", "s", q(99.9), false)
	res.Add("max", "s", float64(all.Max())/1e9, false)
	res.AddDetail("mean", "s", all.Mean()/1e9, false)
	res.AddDetail("samples", "", float64(all.TotalCount()), true)
	res.Add("sent msgs/s", "msg/s", actual, true)
	if n := over.Load(); n > 0 {
		res.Notes = append(res.Notes, fmt.Sprintf("%d samples above %v were clamped", n, time.Duration(maxNs)))
	}
	return res, nil
}
