package harness

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Config holds every knob of every scenario. Defaults: DefaultConfig.
type Config struct {
	Duration time.Duration // publishing time of a throughput or latency scenario
	Payload  int           // message size in bytes (trailer included)

	FanoutSubs int // fanout: subscribers of the one publisher
	FaninPubs  int // fanin, fanin-rate, fanin-read: publisher connections feeding one collector
	FaninRate  int // fanin-rate: total messages per second offered, spread over the publishers
	Pairs      int // pairs: channels, one publisher and one subscriber each

	BigfanSize int // bigfan: message size
	BigfanSubs int // bigfan: subscribers
	BigfanReps int // bigfan: repetitions

	LatencyRate int // latency: messages per second, fixed
	LatencySubs int // latency: subscribers

	Conns            int // conns: idle joined connections
	ConnsConcurrency int // conns: connections being opened at once

	JoinstormConns int // joinstorm: connections joining one channel at once
	// JoinstormSizes, when it has more than one entry, runs joinstorm once
	// per size (JoinstormConns set to each), rows side by side in one table.
	JoinstormSizes    []int
	JoinstormPingRate int // joinstorm: messages per second of the ping pair on another channel

	IdleMembers int           // idle: members that never read, one channel
	IdleFill    int           // idle: messages published first, to give each a backlog
	IdlePayload int           // idle: their size
	IdleWindow  time.Duration // idle: how long nothing happens while CPU is measured

	// peerfan and peerlat: one publisher on mlesd A, PeerSubs subscribers on
	// mlesd B started with --peer A, against the same publisher and
	// subscribers on A alone, in the same run.
	PeerSubs        int           // subscribers
	PeerLatRate     int           // peerlat: messages per second, fixed
	PeerLoops       int           // --loops of A and B (0: mlesd's default, one per core)
	PeerTopologies  []string      // which of "single" and "peer" to measure, in this order
	PeerSyncTimeout time.Duration // longest wait for B's uplink to carry frames

	// Flow control of the throughput scenarios: a publisher never has more
	// than this many messages (and bytes) in flight to one receiver connection,
	// shared among the publishers feeding that receiver. This measures the
	// rate a server sustains without dropping, instead of its drop policy.
	Window      int
	WindowBytes int
	MinWindow   int // per (publisher, receiver), however many publishers share a receiver
	// MaxInFlight caps what all the publishers sharing a receiver have in
	// flight to it, above MinWindow: 10,000 fanin publishers × 16 would be
	// 160,000, past the 65,536 pending messages a receiver may have in mlesd
	// (DefaultMaxPendingFrames) and NATS alike, so a drop test again.
	MaxInFlight int

	MaxMsgs      uint64        // bound on messages per publisher
	SetupTimeout time.Duration // connecting and joining everything
	DrainTimeout time.Duration // waiting for the last deliveries
	DrainStall   time.Duration // ... ending early when none arrived for this long
}

// DefaultConfig is the standard suite.
func DefaultConfig() Config {
	return Config{
		Duration:          5 * time.Second,
		Payload:           128,
		FanoutSubs:        100,
		FaninPubs:         1000,
		FaninRate:         100_000,
		Pairs:             500,
		BigfanSize:        1_600_000,
		BigfanSubs:        100,
		BigfanReps:        20,
		LatencyRate:       10_000,
		LatencySubs:       10,
		Conns:             10_000,
		ConnsConcurrency:  32,
		JoinstormConns:    5000,
		JoinstormPingRate: 200,
		IdleMembers:       1000,
		IdleFill:          64,
		IdlePayload:       64 << 10,
		IdleWindow:        20 * time.Second,
		PeerSubs:          100,
		PeerLatRate:       1_000,
		PeerLoops:         1,
		PeerTopologies:    []string{TopoSingle, TopoPeer},
		PeerSyncTimeout:   30 * time.Second,
		Window:            4096,
		WindowBytes:       1 << 20,
		MinWindow:         16,
		MaxInFlight:       32_768,
		MaxMsgs:           200_000_000,
		SetupTimeout:      60 * time.Second,
		DrainTimeout:      20 * time.Second,
		DrainStall:        5 * time.Second,
	}
}

// Env is what a scenario runs against.
type Env struct {
	Server *Server
	Driver Driver
	Cfg    Config
	Log    io.Writer // progress lines

	// ServerCfg is how Server was started, without its --metrics and
	// --pprof: scenarios that start more servers (peerfan) start them so.
	ServerCfg ServerConfig
	// MetricsAddr is Server's --metrics address ("" when off).
	MetricsAddr string

	onMeasure func() // called once when the measured part begins
	onPhase   func() // called each time a measured part begins
}

// measuring marks the start of the measured part of a scenario.
func (e *Env) measuring() {
	if f := e.onPhase; f != nil {
		f()
	}
	if f := e.onMeasure; f != nil {
		e.onMeasure = nil
		f()
	}
}

func (e *Env) label(scn string) string { return fmt.Sprintf("[%s %s]", e.Driver.Name(), scn) }

// Scenario runs one scenario and returns its result.
type Scenario func(ctx context.Context, env *Env) (*Result, error)

// ScenarioOrder is the order of the standard suite, the default set.
var ScenarioOrder = []string{"fanout", "fanin", "fanin-rate", "pairs", "bigfan", "latency", "conns", "joinstorm", "idle"}

// ExtraScenarios run only when named: peerfan and peerlat measure mlesd
// against itself (through a peer), not side by side with the other servers;
// fanin-read takes NATS 20 to 30 s at the default duration, as its 1,000
// publishers each receive every frame.
var ExtraScenarios = []string{"fanin-read", "peerfan", "peerlat"}

// Scenarios by name.
var Scenarios = map[string]Scenario{
	"fanout":     Fanout,
	"fanin":      Fanin,
	"fanin-rate": FaninRate,
	"fanin-read": FaninRead,
	"pairs":      Pairs,
	"bigfan":     Bigfan,
	"latency":    Latency,
	"conns":      Conns,
	"idle":       Idle,
	"joinstorm":  Joinstorm,
	"peerfan":    Peerfan,
	"peerlat":    Peerlat,
}

// ScenarioServers lists, for scenarios that only some servers can run, those
// servers; the others are skipped (with a line on the log).
var ScenarioServers = map[string][]string{
	// A Redis connection that subscribes can no longer publish.
	"fanin-read": {"mlesd", "naive", "nats", "nats-raw"},
	"peerfan":    {"mlesd"},
	"peerlat":    {"mlesd"},
}

// Supports reports whether server can run scenario.
func Supports(scenario, server string) bool {
	only, ok := ScenarioServers[scenario]
	if !ok {
		return true
	}
	for _, s := range only {
		if s == server {
			return true
		}
	}
	return false
}

func newResult(scn string, env *Env) *Result {
	return &Result{Scenario: scn, Server: env.Driver.Name(), Params: map[string]string{}}
}

// progress prints a line per second until the returned stop is called.
func progress(env *Env, scn string, status func(elapsed time.Duration) string) (stop func()) {
	start := time.Now()
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				fmt.Fprintf(env.Log, "%s %4.0fs %s\n", env.label(scn), time.Since(start).Seconds(), status(time.Since(start)))
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done); wg.Wait() }) }
}

// openGroups opens the groups of specs, a few at a time.
func openGroups(ctx context.Context, env *Env, specs []GroupSpec) ([]*Group, error) {
	ctx, cancel := context.WithTimeout(ctx, env.Cfg.SetupTimeout)
	defer cancel()
	groups := make([]*Group, len(specs))
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range specs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			g, err := env.Driver.Open(ctx, env.Server.Addr, specs[i])
			mu.Lock()
			defer mu.Unlock()
			if err != nil && firstErr == nil {
				firstErr = fmt.Errorf("open channel %s: %w", specs[i].Channel, err)
				cancel()
			}
			groups[i] = g
		}()
	}
	wg.Wait()
	if firstErr != nil {
		closeGroups(groups)
		return nil, firstErr
	}
	return groups, nil
}

func closeGroups(gs []*Group) {
	for _, g := range gs {
		if g != nil {
			g.Close()
		}
	}
}

func groupErrors(gs []*Group) []string {
	var out []string
	for _, g := range gs {
		if g != nil {
			out = append(out, g.Errors()...)
		}
	}
	return out
}

func streamsOf(pub uint32, subs []*Receiver) []*Stream {
	var ss []*Stream
	for _, r := range subs {
		if s := r.Stream(pub); s != nil {
			ss = append(ss, s)
		}
	}
	return ss
}

func sumUnique(rcvs []*Receiver) uint64 {
	var n uint64
	for _, r := range rcvs {
		n += r.Unique()
	}
	return n
}

// flowPub is one publisher of a throughput scenario.
type flowPub struct {
	p       Publisher
	id      uint32
	streams []*Stream
	window  uint64
	wake    chan struct{}
	sent    atomic.Uint64
	waits   atomic.Uint64 // times it waited for the window to open
	// skipDrain: the publisher also receives (GroupSpec.PubsReceive), so a
	// drain round trip would wait behind its own inbound flood; its frames'
	// arrival at the receivers is awaited instead.
	skipDrain bool
}

func newFlowPub(p Publisher, id uint32, streams []*Stream, window uint64) *flowPub {
	f := &flowPub{p: p, id: id, streams: streams, window: window, wake: make(chan struct{}, 1)}
	for _, s := range streams {
		s.SetWake(f.wake)
	}
	return f
}

// slowest returns the stream with the fewest deliveries.
func (f *flowPub) slowest() (*Stream, uint64) {
	var slow *Stream
	m := ^uint64(0)
	for _, s := range f.streams {
		if u := s.Unique(); u < m {
			slow, m = s, u
		}
	}
	return slow, m
}

// run publishes until deadline, stop, or MaxMsgs, never with more than window
// messages in flight to any of its receivers. When the window is full it
// flushes and sleeps until the slowest receiver has taken half of it.
func (f *flowPub) run(deadline time.Time, max uint64, stop <-chan struct{}) error {
	var seq, low uint64
	if len(f.streams) == 0 {
		return nil
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for seq < max {
		if seq&63 == 0 {
			if time.Now().After(deadline) {
				break
			}
			select {
			case <-stop:
				return f.p.Flush()
			default:
			}
		}
		for seq-low >= f.window {
			var slow *Stream
			if slow, low = f.slowest(); seq-low < f.window {
				break
			}
			if err := f.p.Flush(); err != nil {
				return err
			}
			f.waits.Add(1)
			if !slow.WaitFor(seq - f.window/2) {
				timer.Reset(min(time.Until(deadline), 100*time.Millisecond))
				select {
				case <-f.wake:
				case <-timer.C:
				case <-stop:
					return nil
				}
				timer.Stop()
			}
			if time.Now().After(deadline) {
				return nil
			}
		}
		if err := f.p.Send(Trailer{Pub: f.id, Seq: seq}); err != nil {
			return err
		}
		seq++
		f.sent.Store(seq)
	}
	return f.p.Flush()
}

// windowFor is the per-(publisher, receiver) window when pubsPerReceiver
// publishers share each receiver.
func (c Config) windowFor(payload, pubsPerReceiver int) uint64 {
	w := c.Window
	if b := c.WindowBytes / max(payload, 1); b < w {
		w = b
	}
	n := max(pubsPerReceiver, 1)
	w = max(w/n, c.MinWindow, 1)
	if c.MaxInFlight > 0 && n > 1 {
		w = min(w, max(c.MaxInFlight/n, 1))
	}
	return uint64(w)
}

// runFlow drives a throughput scenario: specs are opened, every publisher
// sends as fast as the window lets it for cfg.Duration, then deliveries are
// awaited and checked.
func runFlow(ctx context.Context, env *Env, scn string, specs []GroupSpec, pubsPerReceiver int) (*Result, error) {
	cfg := env.Cfg
	res := newResult(scn, env)
	res.Params["payload"] = strconv.Itoa(cfg.Payload)
	res.Params["duration"] = cfg.Duration.String()
	win := cfg.windowFor(cfg.Payload, pubsPerReceiver)
	res.Params["window"] = strconv.FormatUint(win, 10)

	fmt.Fprintf(env.Log, "%s opening %d channel(s)\n", env.label(scn), len(specs))
	groups, err := openGroups(ctx, env, specs)
	if err != nil {
		return nil, err
	}
	defer closeGroups(groups)

	if pubsPerReceiver > 1 {
		// Many members on one channel (fanin): a Mles server forwards each
		// join to every member already there (50 million frames at 10,000
		// publishers), which is not what is measured here.
		settled := settleCPU(ctx, env.Server, faninSettleMax)
		res.AddDetail("settle", "s", settled.Seconds(), false)
		fmt.Fprintf(env.Log, "%s the server settled %v after the joins\n", env.label(scn), settled.Round(time.Millisecond))
	}
	var pubs []*flowPub
	var rcvs []*Receiver
	for i, s := range specs {
		for j, id := range s.Pubs {
			f := newFlowPub(groups[i].Pubs[j], id, streamsOf(id, s.Subs), win)
			f.skipDrain = s.PubsReceive
			pubs = append(pubs, f)
		}
		rcvs = append(rcvs, s.Subs...)
	}
	measureFlow(ctx, env, scn, res, pubs, rcvs, groups, func(sent []uint64) Delivery { return Tally(rcvs, sent) })
	return res, nil
}

// measureFlow is the measured part of a throughput scenario whose groups are
// open: every publisher sends as fast as its window lets it for cfg.Duration,
// then deliveries are awaited, the groups closed, and tally (given what each
// publisher sent, by id) checks them. It fills res.
func measureFlow(ctx context.Context, env *Env, scn string, res *Result, pubs []*flowPub, rcvs []*Receiver, groups []*Group, tally func(sent []uint64) Delivery) {
	cfg := env.Cfg
	maxPub := uint32(0)
	for _, p := range pubs {
		maxPub = max(maxPub, p.id)
	}
	sentOf := func() []uint64 {
		sent := make([]uint64, maxPub+1)
		for _, p := range pubs {
			sent[p.id] = p.sent.Load()
		}
		return sent
	}
	expected := func() uint64 {
		var n uint64
		for _, p := range pubs {
			n += p.sent.Load() * uint64(len(p.streams))
		}
		return n
	}

	var lastN uint64
	stopProgress := progress(env, scn, func(time.Duration) string {
		n := sumUnique(rcvs)
		s := fmt.Sprintf("delivered %d (%s/s), in flight %d", n, FormatValue(float64(n-lastN), ""), int64(expected())-int64(n))
		lastN = n
		return s
	})
	defer stopProgress()

	env.measuring()
	start := time.Now()
	deadline := start.Add(cfg.Duration)
	for _, g := range groups {
		boundWrites(g.Pubs, deadline.Add(cfg.DrainTimeout))
	}
	stop := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			close(stop)
		case <-time.After(cfg.Duration + time.Second):
		}
	}()
	var wg sync.WaitGroup
	var errs errList
	for _, p := range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.run(deadline, cfg.MaxMsgs, stop); err != nil {
				errs.add(fmt.Sprintf("pub-%d: %v", p.id, err))
			}
		}()
	}
	wg.Wait()
	pubEnd := time.Now()

	// Drain: every publisher's data is on the server, then every receiver has it.
	dctx, cancel := context.WithTimeout(ctx, cfg.DrainTimeout)
	defer cancel()
	for _, p := range pubs {
		if p.skipDrain {
			if err := p.p.Flush(); err != nil {
				errs.add(fmt.Sprintf("pub-%d flush: %v", p.id, err))
			}
			continue
		}
		if err := p.p.Drain(dctx); err != nil {
			errs.add(fmt.Sprintf("pub-%d drain: %v", p.id, err))
			break
		}
	}
	want := expected()
	waitDeliveries(dctx, rcvs, want, cfg.DrainStall)
	end := time.Now()
	stopProgress()
	time.Sleep(50 * time.Millisecond) // let late duplicates show up before the verdict
	closeGroups(groups)

	d := tally(sentOf())
	res.Delivery = d
	res.Errors = append(errs.list(), groupErrors(groups)...)
	elapsed := end.Sub(start).Seconds()
	var sent, waits uint64
	for _, p := range pubs {
		sent += p.sent.Load()
		waits += p.waits.Load()
	}
	res.SetPrimary("delivered msgs/s", "msg/s", float64(d.Received)/elapsed, true)
	res.Add("delivered MB/s", "MB/s", float64(d.Received)*float64(cfg.Payload)/elapsed/1e6, true)
	res.Add("published msgs/s", "msg/s", float64(sent)/pubEnd.Sub(start).Seconds(), true)
	res.AddDetail("delivered", "msg", float64(d.Received), true)
	res.AddDetail("elapsed", "s", elapsed, false)
	res.AddDetail("drain", "s", end.Sub(pubEnd).Seconds(), false)
	res.AddDetail("window waits", "", float64(waits), false)
	if d.Received < want {
		res.Errors = append(res.Errors, fmt.Sprintf("drain ended (nothing for %v, or %v in all): %d of %d delivered", cfg.DrainStall, cfg.DrainTimeout, d.Received, want))
	}
}

// waitDeliveries waits until rcvs hold want messages, ctx ends, or nothing
// has arrived for stall (then what is missing is counted lost).
func waitDeliveries(ctx context.Context, rcvs []*Receiver, want uint64, stall time.Duration) {
	last, lastT := sumUnique(rcvs), time.Now()
	for last < want && ctx.Err() == nil && time.Since(lastT) < stall {
		time.Sleep(time.Millisecond)
		if n := sumUnique(rcvs); n != last {
			last, lastT = n, time.Now()
		}
	}
}

// Fanout: one publisher, FanoutSubs subscribers on one channel.
func Fanout(ctx context.Context, env *Env) (*Result, error) {
	cfg := env.Cfg
	spec := GroupSpec{Channel: "fanout", Pubs: []uint32{0}, Payload: cfg.Payload}
	for i := range cfg.FanoutSubs {
		spec.Subs = append(spec.Subs, NewReceiver(i, 0))
	}
	res, err := runFlow(ctx, env, "fanout", []GroupSpec{spec}, 1)
	if res != nil {
		res.Params["subs"] = strconv.Itoa(cfg.FanoutSubs)
	}
	return res, err
}

// Fanin: FaninPubs publisher connections, one collector, one channel.
func Fanin(ctx context.Context, env *Env) (*Result, error) {
	cfg := env.Cfg
	spec := GroupSpec{Channel: "fanin", Payload: cfg.Payload, SendOnly: true}
	col := NewReceiver(0)
	for i := range cfg.FaninPubs {
		spec.Pubs = append(spec.Pubs, uint32(i))
		col.Expect(uint32(i))
	}
	spec.Subs = []*Receiver{col}
	res, err := runFlow(ctx, env, "fanin", []GroupSpec{spec}, cfg.FaninPubs)
	if res != nil {
		res.Params["pubs"] = strconv.Itoa(cfg.FaninPubs)
	}
	return res, err
}

// Pairs: Pairs channels, each with one publisher and one subscriber.
func Pairs(ctx context.Context, env *Env) (*Result, error) {
	cfg := env.Cfg
	var specs []GroupSpec
	for i := range cfg.Pairs {
		specs = append(specs, GroupSpec{
			Channel: fmt.Sprintf("pair-%d", i),
			Pubs:    []uint32{uint32(i)},
			Subs:    []*Receiver{NewReceiver(i, uint32(i))},
			Payload: cfg.Payload,
		})
	}
	res, err := runFlow(ctx, env, "pairs", specs, 1)
	if res != nil {
		res.Params["pairs"] = strconv.Itoa(cfg.Pairs)
	}
	return res, err
}

// percentile of sorted values, nearest rank.
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p/100*float64(len(sorted))+0.999999) - 1
	i = min(max(i, 0), len(sorted)-1)
	return sorted[i]
}

// Bigfan: one BigfanSize-byte message to BigfanSubs subscribers, BigfanReps
// times, one at a time; each time from the send to the last subscriber
// having the whole message.
func Bigfan(ctx context.Context, env *Env) (*Result, error) {
	cfg := env.Cfg
	res := newResult("bigfan", env)
	res.Params["size"] = strconv.Itoa(cfg.BigfanSize)
	res.Params["subs"] = strconv.Itoa(cfg.BigfanSubs)
	res.Params["reps"] = strconv.Itoa(cfg.BigfanReps)
	reps := cfg.BigfanReps
	arrived := make([]atomic.Int32, reps)
	last := make([]atomic.Int64, reps)
	done := make([]chan struct{}, reps)
	for i := range done {
		done[i] = make(chan struct{})
	}
	n := int32(cfg.BigfanSubs)
	spec := GroupSpec{Channel: "bigfan", Pubs: []uint32{0}, Payload: cfg.BigfanSize}
	for i := range cfg.BigfanSubs {
		r := NewReceiver(i, 0)
		r.OnMessage = func(t Trailer, now int64) {
			if t.Seq >= uint64(reps) {
				return
			}
			for { // last[rep] = max(last[rep], now)
				old := last[t.Seq].Load()
				if now <= old || last[t.Seq].CompareAndSwap(old, now) {
					break
				}
			}
			if arrived[t.Seq].Add(1) == n {
				close(done[t.Seq])
			}
		}
		spec.Subs = append(spec.Subs, r)
	}
	fmt.Fprintf(env.Log, "%s opening %d subscribers\n", env.label("bigfan"), cfg.BigfanSubs)
	groups, err := openGroups(ctx, env, []GroupSpec{spec})
	if err != nil {
		return nil, err
	}
	defer closeGroups(groups)
	pub := groups[0].Pubs[0]

	var durs []float64
	var sent atomic.Uint64
	stopProgress := progress(env, "bigfan", func(time.Duration) string {
		return fmt.Sprintf("%d of %d sent", sent.Load(), reps)
	})
	defer stopProgress()
	env.measuring()
	limit := time.Now().Add(max(2*cfg.Duration, 10*time.Second))
	boundWrites(groups[0].Pubs, limit.Add(cfg.DrainTimeout))
	var errs []string
	for rep := range reps {
		if ctx.Err() != nil || time.Now().After(limit) {
			break
		}
		t0 := Now()
		if err := pub.Send(Trailer{Pub: 0, Seq: uint64(rep), TS: t0}); err != nil {
			errs = append(errs, err.Error())
			break
		}
		if err := pub.Flush(); err != nil {
			errs = append(errs, err.Error())
			break
		}
		sent.Add(1)
		select {
		case <-done[rep]:
			durs = append(durs, float64(last[rep].Load()-t0)/1e9)
		case <-time.After(10 * time.Second):
			errs = append(errs, fmt.Sprintf("rep %d: %d of %d subscribers got it within 10 s", rep, arrived[rep].Load(), n))
		case <-ctx.Done():
		}
		if len(errs) > 0 {
			break
		}
	}
	stopProgress()
	time.Sleep(50 * time.Millisecond)
	closeGroups(groups)
	s := sent.Load()
	res.Delivery = Tally(spec.Subs, []uint64{s})
	res.Errors = append(errs, groupErrors(groups)...)
	sort.Float64s(durs)
	if len(durs) == 0 {
		return res, fmt.Errorf("bigfan: no repetition completed: %v", res.Errors)
	}
	var sum float64
	for _, d := range durs {
		sum += d
	}
	res.SetPrimary("median", "s", percentile(durs, 50), false)
	res.Add("p90", "s", percentile(durs, 90), false)
	res.AddDetail("min", "s", durs[0], false)
	res.Add("max", "s", durs[len(durs)-1], false)
	res.AddDetail("mean", "s", sum/float64(len(durs)), false)
	res.Add("reps", "", float64(len(durs)), true)
	return res, nil
}
