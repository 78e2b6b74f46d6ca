package harness

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// latencyMaxNs is the largest latency a histogram holds; larger samples are
// clamped to it and counted.
const latencyMaxNs = int64(30 * time.Second)

// latencyRecorder keeps one HdrHistogram per receiver of receive time minus
// send time for the messages of one publisher, from sequence number warm on.
type latencyRecorder struct {
	pub   uint32
	warm  uint64
	hists []*hdrhistogram.Histogram
	over  atomic.Uint64
}

func newLatencyRecorder(pub uint32, warm uint64) *latencyRecorder {
	return &latencyRecorder{pub: pub, warm: warm}
}

// receiver returns receiver id, expecting pubs, that records the latency of
// the recorder's publisher in its own histogram (no lock on the hot path).
func (l *latencyRecorder) receiver(id int, pubs ...uint32) *Receiver {
	h := hdrhistogram.New(1, latencyMaxNs, 3)
	l.hists = append(l.hists, h)
	r := NewReceiver(id, pubs...)
	r.OnMessage = func(t Trailer, now int64) {
		if t.Pub != l.pub || t.Seq < l.warm {
			return
		}
		if h.RecordValue(min(max(now-t.TS, 1), latencyMaxNs)) != nil {
			l.over.Add(1)
		}
	}
	return r
}

// merged is every receiver's histogram in one. Call it once receivers stopped.
func (l *latencyRecorder) merged() *hdrhistogram.Histogram {
	all := hdrhistogram.New(1, latencyMaxNs, 3)
	for _, h := range l.hists {
		all.Merge(h)
	}
	return all
}

// Latency: one publisher at a fixed rate (LatencyRate msg/s) to LatencySubs
// subscribers; each message carries its send time, each subscriber records
// receive time minus send time in its own HdrHistogram. The first fifth of the
// run (at most 1 s) is warm-up and not recorded.
func Latency(ctx context.Context, env *Env) (*Result, error) {
	cfg := env.Cfg
	res := newResult("latency", env)
	rate := cfg.LatencyRate
	res.Params["rate"] = strconv.Itoa(cfg.LatencyRate)
	res.Params["subs"] = strconv.Itoa(cfg.LatencySubs)
	res.Params["payload"] = strconv.Itoa(cfg.Payload)
	res.Params["duration"] = cfg.Duration.String()

	rec := newLatencyRecorder(0, latencyWarmup(cfg, rate))
	spec := GroupSpec{Channel: "latency", Pubs: []uint32{0}, Payload: cfg.Payload}
	for i := range cfg.LatencySubs {
		spec.Subs = append(spec.Subs, rec.receiver(i, 0))
	}
	groups, err := openGroups(ctx, env, []GroupSpec{spec})
	if err != nil {
		return nil, err
	}
	defer closeGroups(groups)
	measureLatency(ctx, env, "latency", res, rate, groups[0].Pubs[0], spec.Subs, rec, groups,
		func(sent uint64) Delivery { return Tally(spec.Subs, []uint64{sent}) })
	latencyFigures(res, rec)
	return res, nil
}

// latencyWarmup is the number of messages of warm-up at rate: the first fifth
// of the run, at most 1 s.
func latencyWarmup(cfg Config, rate int) uint64 {
	return uint64(float64(rate) * min(cfg.Duration/5, time.Second).Seconds())
}

// measureLatency is the measured part of a latency scenario whose groups are
// open: pub (publisher id rec.pub) sends at a fixed rate for cfg.Duration,
// every message stamped with its send time, then deliveries are awaited, the
// groups closed, and tally (given how many messages pub sent) checks them.
// It fills res with the delivery verdict, errors and the sent rate;
// latencyFigures adds the percentiles.
func measureLatency(ctx context.Context, env *Env, scn string, res *Result, rateN int, pub Publisher, rcvs []*Receiver, rec *latencyRecorder, groups []*Group, tally func(sent uint64) Delivery) {
	cfg := env.Cfg
	rate := float64(rateN)
	total := uint64(rate * cfg.Duration.Seconds())
	var sent atomic.Uint64
	stopProgress := progress(env, scn, func(time.Duration) string {
		return fmt.Sprintf("sent %d of %d, delivered %d", sent.Load(), total, sumUnique(rcvs))
	})
	defer stopProgress()
	var errs []string
	env.measuring()
	start := time.Now()
	boundWrites([]Publisher{pub}, start.Add(cfg.Duration+5*time.Second+cfg.DrainTimeout))
	var seq uint64
	for seq < total && ctx.Err() == nil {
		due := min(uint64(time.Since(start).Seconds()*rate)+1, total)
		for ; seq < due; seq++ {
			if err := pub.Send(Trailer{Pub: rec.pub, Seq: seq, TS: Now()}); err != nil {
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
	want := seq * uint64(len(rcvs))
	waitDeliveries(dctx, rcvs, want, cfg.DrainStall)
	stopProgress()
	time.Sleep(50 * time.Millisecond)
	closeGroups(groups)
	res.Delivery = tally(seq)
	res.Errors = append(errs, groupErrors(groups)...)
	res.Add("sent msgs/s", "msg/s", actual, true)
}

// latencyFigures puts the percentiles of rec into res, p99 as the primary
// figure, before the metrics measureLatency added.
func latencyFigures(res *Result, rec *latencyRecorder) {
	rest := res.Metrics
	res.Metrics = nil
	all := rec.merged()
	q := func(p float64) float64 { return float64(all.ValueAtQuantile(p)) / 1e9 }
	res.SetPrimary("p99", "s", q(99), false)
	res.Add("p50", "s", q(50), false)
	res.Add("p99.9", "s", q(99.9), false)
	res.Add("max", "s", float64(all.Max())/1e9, false)
	res.AddDetail("mean", "s", all.Mean()/1e9, false)
	res.AddDetail("samples", "", float64(all.TotalCount()), true)
	res.Metrics = append(res.Metrics, rest...)
	if n := rec.over.Load(); n > 0 {
		res.Notes = append(res.Notes, fmt.Sprintf("%d samples above %v were clamped", n, time.Duration(latencyMaxNs)))
	}
}
