package harness

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// pacer is the schedule of one publisher sending at a fixed rate: message k
// is due phase/rate seconds after the start plus k/rate, for every k whose
// time falls within the window. Publishers that share a total rate R get
// rate R/P and phases i/P (i = 0…P-1): their schedules interleave so evenly
// that floor(R·t)+1 messages are due in all at any time t ≥ 1/rate (Hermite's
// identity), not P at once every 1/rate.
type pacer struct {
	rate  float64 // messages per second
	phase float64 // in [0, 1): fraction of a period
	total uint64  // messages due within the window
}

// newPacer schedules messages at rate with the given phase, those due before
// window has passed.
func newPacer(rate, phase float64, window time.Duration) pacer {
	p := pacer{rate: rate, phase: phase}
	if x := window.Seconds()*rate - phase; rate > 0 && x > 0 {
		p.total = uint64(math.Ceil(x)) // k < x
	}
	return p
}

// sharedPacer is publisher i's share of a total rate spread over n publishers.
func sharedPacer(total float64, i, n int, window time.Duration) pacer {
	return newPacer(total/float64(n), float64(i)/float64(n), window)
}

// dueBy is the number of messages due once elapsed has passed.
func (p pacer) dueBy(elapsed time.Duration) uint64 {
	x := elapsed.Seconds()*p.rate - p.phase
	if x < 0 || p.rate <= 0 {
		return 0
	}
	return min(uint64(x)+1, p.total) // k ≤ x
}

// at is when message k is due, from the start.
func (p pacer) at(k uint64) time.Duration {
	return time.Duration((float64(k) + p.phase) / p.rate * 1e9)
}

// faninSettleMax is the longest fanin-rate waits for the server to finish
// with the joins before measuring.
const faninSettleMax = 30 * time.Second

// settleCPU waits until the server used under 5% of a core over a second,
// at most limit, and returns how long that took.
func settleCPU(ctx context.Context, s *Server, limit time.Duration) time.Duration {
	began := time.Now()
	prev, err := s.CPUTime()
	for err == nil && time.Since(began) < limit && ctx.Err() == nil {
		time.Sleep(time.Second)
		cur, cerr := s.CPUTime()
		if cerr != nil || cur-prev < 50*time.Millisecond {
			break
		}
		prev = cur
	}
	return time.Since(began)
}

// ratePub is one publisher of fanin-rate.
type ratePub struct {
	p      Publisher
	id     uint32
	pace   pacer
	sent   atomic.Uint64
	maxLag atomic.Int64 // the latest a message went out after its due time, ns
}

// run sends on schedule from start until every message due in the window is
// sent, hardEnd passes or stop closes: at each due time, whatever is due (all
// of it at once when it fell behind), then one flush.
func (r *ratePub) run(start, hardEnd time.Time, stop <-chan struct{}) error {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var seq uint64
	for seq < r.pace.total {
		now := time.Since(start)
		due := r.pace.dueBy(now)
		if due > seq {
			if lag := int64(now - r.pace.at(seq)); lag > r.maxLag.Load() {
				r.maxLag.Store(lag)
			}
			for ; seq < due; seq++ {
				if err := r.p.Send(Trailer{Pub: r.id, Seq: seq, TS: Now()}); err != nil {
					return err
				}
			}
			if err := r.p.Flush(); err != nil {
				return err
			}
			r.sent.Store(seq)
			continue
		}
		if time.Now().After(hardEnd) {
			break
		}
		timer.Reset(r.pace.at(seq) - now)
		select {
		case <-timer.C:
		case <-stop:
			return r.p.Flush()
		}
	}
	return r.p.Flush()
}

// FaninRate: FaninPubs send-only publishers and one collector on one
// channel, the publishers together offering FaninRate msgs/s for Duration,
// each sending its share on its own schedule (no flow control: a server
// that cannot keep up shows it as loss or lag). Every frame is numbered per
// publisher; the collector must get each exactly once, in order. The primary
// figure is the server's CPU time over the measured part (publishing and
// the drain): at the same offered load, less is better.
func FaninRate(ctx context.Context, env *Env) (*Result, error) {
	cfg := env.Cfg
	const scn = "fanin-rate"
	res := newResult(scn, env)
	res.Params["payload"] = strconv.Itoa(cfg.Payload)
	res.Params["duration"] = cfg.Duration.String()
	res.Params["pubs"] = strconv.Itoa(cfg.FaninPubs)
	res.Params["rate"] = strconv.Itoa(cfg.FaninRate)
	if cfg.FaninPubs < 1 || cfg.FaninRate < 1 {
		return nil, fmt.Errorf("%s: needs at least one publisher and a rate of at least 1 msg/s", scn)
	}

	spec := GroupSpec{Channel: scn, Payload: cfg.Payload, SendOnly: true}
	col := NewReceiver(0)
	for i := range cfg.FaninPubs {
		spec.Pubs = append(spec.Pubs, uint32(i))
		col.Expect(uint32(i))
	}
	spec.Subs = []*Receiver{col}
	rcvs := spec.Subs
	fmt.Fprintf(env.Log, "%s opening %d publishers and the collector\n", env.label(scn), cfg.FaninPubs)
	groups, err := openGroups(ctx, env, []GroupSpec{spec})
	if err != nil {
		return nil, err
	}
	defer closeGroups(groups)
	pubs := make([]*ratePub, len(spec.Pubs))
	var offered uint64
	for i, id := range spec.Pubs {
		pubs[i] = &ratePub{p: groups[0].Pubs[i], id: id, pace: sharedPacer(float64(cfg.FaninRate), i, len(spec.Pubs), cfg.Duration)}
		offered += pubs[i].pace.total
	}
	sentNow := func() uint64 {
		var n uint64
		for _, p := range pubs {
			n += p.sent.Load()
		}
		return n
	}

	// Joining is not measured: a Mles server forwards each of the joins to
	// every member already there (50 million frames at 10,000 publishers).
	settled := settleCPU(ctx, env.Server, faninSettleMax)
	res.Add("settle", "s", settled.Seconds(), false)
	fmt.Fprintf(env.Log, "%s the server settled %v after the joins\n", env.label(scn), settled.Round(time.Millisecond))

	var lastN uint64
	stopProgress := progress(env, scn, func(time.Duration) string {
		n := sumUnique(rcvs)
		s := fmt.Sprintf("sent %d of %d, delivered %d (%s/s)", sentNow(), offered, n, FormatValue(float64(n-lastN), ""))
		lastN = n
		return s
	})
	defer stopProgress()

	env.measuring()
	cpu0, err := env.Server.CPUTime()
	if err != nil {
		return nil, err
	}
	// Every publisher starts its schedule at the same instant, a little
	// ahead, so that none is due before all are running.
	start := time.Now().Add(20 * time.Millisecond)
	hardEnd := start.Add(cfg.Duration + 5*time.Second) // a publisher stuck behind gives up here
	boundWrites(groups[0].Pubs, hardEnd.Add(cfg.DrainTimeout))
	stop := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			close(stop)
		case <-time.After(time.Until(hardEnd)):
		}
	}()
	var wg sync.WaitGroup
	var errs errList
	for _, p := range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.run(start, hardEnd, stop); err != nil {
				errs.add(fmt.Sprintf("pub-%d: %v", p.id, err))
			}
		}()
	}
	wg.Wait()
	pubEnd := time.Now()

	dctx, cancel := context.WithTimeout(ctx, cfg.DrainTimeout)
	defer cancel()
	for _, p := range pubs {
		if err := p.p.Drain(dctx); err != nil {
			errs.add(fmt.Sprintf("pub-%d drain: %v", p.id, err))
			break
		}
	}
	sent := sentNow()
	waitDeliveries(dctx, rcvs, sent, cfg.DrainStall)
	end := time.Now()
	cpu1, err := env.Server.CPUTime()
	if err != nil {
		return nil, err
	}
	stopProgress()
	time.Sleep(50 * time.Millisecond) // let late duplicates show up before the verdict
	closeGroups(groups)

	sentBy := make([]uint64, len(pubs))
	var maxLag time.Duration
	for i, p := range pubs {
		sentBy[i] = p.sent.Load()
		maxLag = max(maxLag, time.Duration(p.maxLag.Load()))
	}
	d := Tally(rcvs, sentBy)
	res.Delivery = d
	res.Errors = append(errs.list(), groupErrors(groups)...)
	cpu := (cpu1 - cpu0).Seconds()
	pubTime := max(pubEnd.Sub(start).Seconds(), cfg.Duration.Seconds())
	res.SetPrimary("server CPU", "s", cpu, false)
	if d.Received > 0 {
		res.Add("CPU/delivered msg", "µs", 1e6*cpu/float64(d.Received), false)
	}
	res.Add("offered msgs/s", "msg/s", float64(sent)/pubTime, true)
	res.Add("delivered msgs/s", "msg/s", float64(d.Received)/end.Sub(start).Seconds(), true)
	res.Add("send lag max", "s", maxLag.Seconds(), false)
	res.AddDetail("offered", "msg", float64(sent), true)
	res.AddDetail("scheduled", "msg", float64(offered), true)
	res.AddDetail("delivered", "msg", float64(d.Received), true)
	res.AddDetail("drain", "s", end.Sub(pubEnd).Seconds(), false)
	res.Notes = append(res.Notes, fmt.Sprintf("server CPU is over the %v of publishing and the %v of drain; CPU/delivered msg divides it by what the collector got",
		pubEnd.Sub(start).Round(time.Millisecond), end.Sub(pubEnd).Round(time.Millisecond)))
	if sent < offered {
		res.Errors = append(res.Errors, fmt.Sprintf("publishers fell behind: %d of %d scheduled messages sent by %v after the window", sent, offered, hardEnd.Sub(start)-cfg.Duration))
	}
	if d.Received < sent {
		res.Errors = append(res.Errors, fmt.Sprintf("drain ended (nothing for %v, or %v in all): %d of %d delivered", cfg.DrainStall, cfg.DrainTimeout, d.Received, sent))
	}
	return res, nil
}

// FaninRead: fanin (as fast as the window allows) whose publishers also read
// and discard everything the server sends them. In Mles every member gets
// every frame of its channel, so each publisher gets the other publishers'
// frames; on NATS each publisher subscribes to the subject as well (without
// echo, as Mles never sends a member its own frames). Only the collector's
// deliveries are checked and counted. The collector's window is --window
// shared among the publishers (4 each at 1,000), not --min-window: each
// frame in flight to the collector is in flight to every publisher too, so
// fanin's 16,000 would be 16 million deliveries queued, minutes of drain.
func FaninRead(ctx context.Context, env *Env) (*Result, error) {
	cfg := env.Cfg
	env.Cfg.MinWindow = 1
	defer func() { env.Cfg = cfg }()
	spec := GroupSpec{Channel: "fanin-read", Payload: cfg.Payload, PubsReceive: true}
	col := NewReceiver(0)
	for i := range cfg.FaninPubs {
		spec.Pubs = append(spec.Pubs, uint32(i))
		col.Expect(uint32(i))
	}
	spec.Subs = []*Receiver{col}
	res, err := runFlow(ctx, env, "fanin-read", []GroupSpec{spec}, cfg.FaninPubs)
	if res != nil {
		res.Params["pubs"] = strconv.Itoa(cfg.FaninPubs)
		res.Notes = append(res.Notes, "every publisher also reads and discards what the server sends it (Mles: the other publishers' frames; NATS: it subscribes to the subject, without echo)")
	}
	return res, err
}
