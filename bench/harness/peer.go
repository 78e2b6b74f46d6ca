package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Fan-out through a peer (peerfan, peerlat): one publisher on mlesd A,
// PeerSubs subscribers on mlesd B started with --peer A, all on one channel,
// so that every frame goes publisher → A → B's uplink → B → subscribers. In
// the same run, and before it, the same publisher and subscribers all on A
// alone give the baseline; a result's Baseline is that row.
//
// Both topologies are set up the same way: the subscribers join (on B, or on
// A), then the publisher joins A, then the publisher sends sync frames (a
// publisher id of their own, syncPub) until every subscriber has had one:
// through the peer that proves B's uplink joined A's channel and carries
// frames down. Sync frames sent before that are lost by design (A had nobody
// to forward them to), so only the data stream (publisher 0) is checked for
// loss, duplicates and reordering, exactly as in the other scenarios.

// Topologies of the peer scenarios.
const (
	TopoSingle = "single" // publisher and subscribers on A
	TopoPeer   = "peer"   // publisher on A, subscribers on B (--peer A)
)

// syncPub is the publisher id of the sync frames; data is publisher 0.
const syncPub uint32 = 1

// Peer back-off given to B, so that an uplink refused or cut early is retried
// at once instead of after mlesd's default wait.
const (
	peerBackoff    = "100ms"
	peerBackoffMax = "1s"
)

// UplinkUpLog is what mlesd logs when an uplink has joined its peer.
const UplinkUpLog = `msg="peer uplink up"`

// Peerfan: throughput through a peer, flow-controlled as fanout is (at most
// Window messages in flight to any subscriber): delivered msgs/s at the
// subscribers, single server against through the peer.
func Peerfan(ctx context.Context, env *Env) (*Result, error) {
	return peerScenario(ctx, env, "peerfan", peerfanPhase)
}

// Peerlat: latency through a peer at a fixed rate (PeerLatRate msg/s), as
// latency measures it (send time in every message, one HdrHistogram per
// subscriber, warm-up not recorded): p50, p99, p99.9 single server against
// through the peer, and the difference, which is what the hop adds.
func Peerlat(ctx context.Context, env *Env) (*Result, error) {
	return peerScenario(ctx, env, "peerlat", peerlatPhase)
}

// ScenarioMlesdArgs are the mlesd flags scenario scn needs on every mlesd it
// starts (--mlesd-args come after them, so they can override them).
func ScenarioMlesdArgs(scn string, cfg Config, bin string) []string {
	if !isPeerScenario(scn) || cfg.PeerLoops <= 0 || !mlesdHasFlag(bin, "loops") {
		return nil
	}
	return []string{"--loops", strconv.Itoa(cfg.PeerLoops)}
}

func isPeerScenario(scn string) bool { return scn == "peerfan" || scn == "peerlat" }

// topology is where one phase of a peer scenario connects.
type topology struct {
	name             string
	pubAddr, subAddr string
	servers          []*Server // A, and B when peered
	peerMetrics      string    // B's --metrics address ("" when off)
}

type phaseFunc func(ctx context.Context, env *Env, top *topology) (*Result, error)

// CheckTopologies validates a list of topologies: each of "single" and
// "peer" at most once, at least one.
func CheckTopologies(ts []string) error {
	if len(ts) == 0 {
		return errors.New("no topology (want single, peer or both)")
	}
	for i, t := range ts {
		if t != TopoSingle && t != TopoPeer {
			return fmt.Errorf("unknown topology %q (want %s or %s)", t, TopoSingle, TopoPeer)
		}
		if slices.Contains(ts[:i], t) {
			return fmt.Errorf("topology %q twice", t)
		}
	}
	return nil
}

// peerScenario measures each topology in turn; the last is the result, the
// one before it its baseline.
func peerScenario(ctx context.Context, env *Env, scn string, phase phaseFunc) (*Result, error) {
	if err := CheckTopologies(env.Cfg.PeerTopologies); err != nil {
		return nil, err
	}
	var rs []*Result
	for _, t := range env.Cfg.PeerTopologies {
		r, err := runTopology(ctx, env, scn, t, phase)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", t, err)
		}
		rs = append(rs, r)
	}
	res := rs[len(rs)-1]
	if len(rs) > 1 {
		res.Baseline = rs[len(rs)-2]
		compareToBaseline(res)
	}
	return res, nil
}

// runTopology sets up one topology (starting B when peered), runs phase on
// it and adds the figures of the servers involved, measured over the phase's
// measured part.
func runTopology(ctx context.Context, env *Env, scn, name string, phase phaseFunc) (*Result, error) {
	a := env.Server
	top := &topology{name: name, pubAddr: a.Addr, subAddr: a.Addr, servers: []*Server{a}}
	if name == TopoPeer {
		b, metrics, err := startPeered(ctx, env, scn)
		if err != nil {
			return nil, err
		}
		defer b.Stop()
		top.subAddr, top.peerMetrics = b.Addr, metrics
		top.servers = append(top.servers, b)
	}
	smp := &serverSampler{servers: top.servers}
	env.onPhase = smp.begin
	res, err := phase(ctx, env, top)
	env.onPhase = nil
	cpu, peak := smp.end()
	if len(top.servers) > 1 {
		if exited, werr := top.servers[1].Exited(); exited {
			return nil, fmt.Errorf("the peered mlesd (B) died (%v); log tail:\n%s", werr, top.servers[1].LogTail(30))
		}
	}
	if err != nil {
		return nil, err
	}
	res.Server = env.Driver.Name() + "/" + name
	res.Params["topology"] = strings.Join(env.Cfg.PeerTopologies, ",")
	if env.Cfg.PeerLoops > 0 {
		res.Params["loops"] = strconv.Itoa(env.Cfg.PeerLoops)
	} else {
		res.Params["loops"] = "default"
	}
	res.Add("server peak RSS", "MB", float64(peak)/1e6, false)
	res.Add("server CPU", "s", cpu.Seconds(), false)
	addPerCPU(res, cpu)
	if name == TopoPeer {
		res.Notes = append(res.Notes, "server peak RSS and CPU: A's plus B's, over the measured part")
		if top.peerMetrics != "" {
			addCounters(res, top.peerMetrics, "peer server", "mlesd B")
		}
	}
	return res, nil
}

// startPeered starts mlesd B with --peer A (short back-off, its own
// --metrics, log level info for the uplink's log line).
func startPeered(ctx context.Context, env *Env, scn string) (*Server, string, error) {
	sc := env.ServerCfg
	if sc.MlesdBin == "" || !mlesdHasFlag(sc.MlesdBin, "peer") {
		return nil, "", fmt.Errorf("mlesd %q has no --peer flag (build one with peering, or measure --peerfan-topologies single)", sc.MlesdBin)
	}
	args := []string{"--peer", env.Server.Addr, "--log-level", "info"}
	if mlesdHasFlag(sc.MlesdBin, "peer-backoff") {
		args = append(args, "--peer-backoff", peerBackoff)
	}
	if mlesdHasFlag(sc.MlesdBin, "peer-backoff-max") {
		args = append(args, "--peer-backoff-max", peerBackoffMax)
	}
	var metrics string
	if mlesdHasFlag(sc.MlesdBin, "metrics") {
		port, err := FreePort()
		if err != nil {
			return nil, "", err
		}
		metrics = fmt.Sprintf("127.0.0.1:%d", port)
		args = append(args, "--metrics", metrics)
	}
	sc.MlesdArgs = append(append([]string(nil), sc.MlesdArgs...), args...)
	b, err := StartServer(ctx, "mlesd", sc)
	if err != nil {
		return nil, "", fmt.Errorf("start the peered mlesd (B): %w", err)
	}
	fmt.Fprintf(env.Log, "%s peered server B pid %d on %s, --peer %s\n", env.label(scn), b.PID(), b.Addr, env.Server.Addr)
	return b, metrics, nil
}

// openTopology opens the subscribers (on subAddr) and then the publisher
// (publisher 0, on pubAddr) of one channel; groups holds both, the
// publisher's first.
func openTopology(ctx context.Context, env *Env, label string, top *topology, channel string, subs []*Receiver) (groups []*Group, pub Publisher, err error) {
	cfg := env.Cfg
	sctx, cancel := context.WithTimeout(ctx, cfg.SetupTimeout)
	defer cancel()
	fmt.Fprintf(env.Log, "%s opening %d subscribers on %s, the publisher on %s\n", env.label(label), len(subs), top.subAddr, top.pubAddr)
	sg, err := env.Driver.Open(sctx, top.subAddr, GroupSpec{Channel: channel, Subs: subs, Payload: cfg.Payload})
	if err != nil {
		return nil, nil, fmt.Errorf("open the subscribers: %w", err)
	}
	pg, err := env.Driver.Open(sctx, top.pubAddr, GroupSpec{Channel: channel, Pubs: []uint32{0}, Payload: cfg.Payload})
	if err != nil {
		sg.Close()
		return nil, nil, fmt.Errorf("open the publisher: %w", err)
	}
	return []*Group{pg, sg}, pg.Pubs[0], nil
}

// syncSubscribers sends sync frames (publisher syncPub), one every 10 ms, until
// every subscriber has had one, at most PeerSyncTimeout. Through the peer,
// that is when B's uplink is joined to A's channel and carries frames.
func syncSubscribers(ctx context.Context, env *Env, label string, top *topology, pub Publisher, subs []*Receiver) (time.Duration, error) {
	start := time.Now()
	deadline := start.Add(env.Cfg.PeerSyncTimeout)
	boundWrites([]Publisher{pub}, deadline.Add(5*time.Second))
	synced := func() int {
		n := 0
		for _, r := range subs {
			if r.Stream(syncPub).Unique() > 0 {
				n++
			}
		}
		return n
	}
	for seq := uint64(0); ; seq++ {
		if n := synced(); n == len(subs) {
			took := time.Since(start)
			fmt.Fprintf(env.Log, "%s every subscriber has frames from the publisher after %v (%d sync frames)\n",
				env.label(label), took.Round(time.Millisecond), seq)
			return took, nil
		} else if ctx.Err() != nil || time.Now().After(deadline) {
			msg := fmt.Sprintf("after %v, %d of %d subscribers have had a frame from the publisher", time.Since(start).Round(time.Millisecond), n, len(subs))
			if len(top.servers) > 1 {
				msg += "; " + uplinkEvidence(top)
			}
			return 0, errors.New(msg)
		}
		if err := pub.Send(Trailer{Pub: syncPub, Seq: seq, TS: Now()}); err != nil {
			return 0, fmt.Errorf("sync frame: %w", err)
		}
		if err := pub.Flush(); err != nil {
			return 0, fmt.Errorf("sync frame: %w", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// uplinkEvidence says what B says about its uplinks: its log line and gauge,
// and the tail of its log.
func uplinkEvidence(top *topology) string {
	b := top.servers[1]
	var parts []string
	if n, err := countLogLines(b.Log, UplinkUpLog); err == nil {
		parts = append(parts, fmt.Sprintf("B logged %s %d time(s)", UplinkUpLog, n))
	}
	if top.peerMetrics != "" {
		if v, err := scrapeMetrics(top.peerMetrics); err == nil {
			parts = append(parts, "B's "+uplinkGauges(v))
		}
	}
	parts = append(parts, "B's log tail:\n"+b.LogTail(20))
	return strings.Join(parts, "; ")
}

// uplinkGauges lists the mlesd_peer_uplinks series of a metrics page.
func uplinkGauges(v map[string]float64) string {
	var ss []string
	for k, x := range v {
		if strings.HasPrefix(k, "mlesd_peer_uplinks") {
			ss = append(ss, fmt.Sprintf("%s %g", k, x))
		}
	}
	if len(ss) == 0 {
		return "/metrics has no mlesd_peer_uplinks series"
	}
	slices.Sort(ss)
	return strings.Join(ss, ", ")
}

// checkUplink notes, once the sync frames got through B, what B's log and
// gauge say; anything but one uplink up is worth a look at the server.
func checkUplink(res *Result, top *topology) {
	b := top.servers[1]
	n, err := countLogLines(b.Log, UplinkUpLog)
	switch {
	case err != nil:
		res.Notes = append(res.Notes, fmt.Sprintf("B's log: %v", err))
	case n != 1:
		res.Notes = append(res.Notes, fmt.Sprintf("B logged %s %d times for one channel and one peer (want 1)", UplinkUpLog, n))
	}
	res.AddDetail("peer uplink up log lines", "", float64(n), false)
	if top.peerMetrics == "" {
		return
	}
	v, err := scrapeMetrics(top.peerMetrics)
	if err != nil {
		res.Notes = append(res.Notes, fmt.Sprintf("B's /metrics: %v", err))
		return
	}
	up, ok := v[`mlesd_peer_uplinks{state="up"}`]
	res.AddDetail("peer uplinks up", "", up, false)
	if !ok || up != 1 {
		res.Notes = append(res.Notes, "frames came through B's uplink, but "+uplinkGauges(v)+` (want mlesd_peer_uplinks{state="up"} 1)`)
	}
}

// countLogLines counts the lines of file that contain s.
func countLogLines(file, s string) (int, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, s) {
			n++
		}
	}
	return n, nil
}

// peerReceivers returns n subscribers expecting the data and the sync frames,
// made by mk (NewReceiver, or a latency recorder's).
func peerReceivers(n int, mk func(id int, pubs ...uint32) *Receiver) []*Receiver {
	rs := make([]*Receiver, n)
	for i := range rs {
		rs[i] = mk(i, 0, syncPub)
	}
	return rs
}

// setUp opens a topology and syncs it; label names the phase in log lines.
func setUp(ctx context.Context, env *Env, scn string, top *topology, res *Result, subs []*Receiver) ([]*Group, Publisher, error) {
	label := scn + " " + top.name
	groups, pub, err := openTopology(ctx, env, label, top, scn+"-"+top.name, subs)
	if err != nil {
		return nil, nil, err
	}
	took, err := syncSubscribers(ctx, env, label, top, pub, subs)
	if err != nil {
		closeGroups(groups)
		return nil, nil, err
	}
	res.AddDetail("sync", "s", took.Seconds(), false)
	if top.name == TopoPeer {
		checkUplink(res, top)
	}
	return groups, pub, nil
}

func peerParams(res *Result, cfg Config) {
	res.Params["subs"] = strconv.Itoa(cfg.PeerSubs)
	res.Params["payload"] = strconv.Itoa(cfg.Payload)
	res.Params["duration"] = cfg.Duration.String()
}

func peerfanPhase(ctx context.Context, env *Env, top *topology) (*Result, error) {
	cfg := env.Cfg
	res := newResult("peerfan", env)
	peerParams(res, cfg)
	win := cfg.windowFor(cfg.Payload, 1)
	res.Params["window"] = strconv.FormatUint(win, 10)
	subs := peerReceivers(cfg.PeerSubs, NewReceiver)
	groups, pub, err := setUp(ctx, env, "peerfan", top, res, subs)
	if err != nil {
		return nil, err
	}
	defer closeGroups(groups)
	fp := newFlowPub(pub, 0, streamsOf(0, subs), win)
	measureFlow(ctx, env, "peerfan "+top.name, res, []*flowPub{fp}, subs, groups,
		func(sent []uint64) Delivery { return tallyPub(subs, 0, sent[0]) })
	return res, nil
}

func peerlatPhase(ctx context.Context, env *Env, top *topology) (*Result, error) {
	cfg := env.Cfg
	res := newResult("peerlat", env)
	peerParams(res, cfg)
	res.Params["rate"] = strconv.Itoa(cfg.PeerLatRate)
	rec := newLatencyRecorder(0, latencyWarmup(cfg, cfg.PeerLatRate))
	subs := peerReceivers(cfg.PeerSubs, rec.receiver)
	groups, pub, err := setUp(ctx, env, "peerlat", top, res, subs)
	if err != nil {
		return nil, err
	}
	defer closeGroups(groups)
	measureLatency(ctx, env, "peerlat "+top.name, res, cfg.PeerLatRate, pub, subs, rec, groups,
		func(sent uint64) Delivery { return tallyPub(subs, 0, sent) })
	latencyFigures(res, rec)
	return res, nil
}

// tallyPub is Tally for the messages of publisher pub only (the sync frames
// are not checked), plus every receiver's foreign frames.
func tallyPub(rcvs []*Receiver, pub uint32, sent uint64) Delivery {
	var d Delivery
	for _, r := range rcvs {
		if s := r.Stream(pub); s != nil {
			d = d.Add(s.Verdict(sent))
		}
		d.Foreign += r.Foreign()
	}
	return d
}

// compareToBaseline adds to res how it compares with res.Baseline, measured
// in the same run: for throughput the ratio of the delivered rates, for
// latency what the hop adds to each percentile (res − baseline).
func compareToBaseline(res *Result) {
	base := res.Baseline
	switch res.Primary.Unit {
	case "msg/s":
		if base.Primary.Value > 0 {
			r := res.Primary.Value / base.Primary.Value
			insertMetric(res, res.Primary.Name, Metric{Name: "÷ " + TopoSingle, Value: r, HigherBetter: true})
			res.Notes = append(res.Notes, fmt.Sprintf("%s through the peer: %.2f× the single server's (%s vs %s)",
				res.Primary.Name, r, FormatValue(res.Primary.Value, res.Primary.Unit), FormatValue(base.Primary.Value, base.Primary.Unit)))
		}
	case "s":
		var parts []string
		after := "max"
		for _, q := range []string{"p50", "p99", "p99.9"} {
			m, ok1 := res.Metric(q)
			b, ok2 := base.Metric(q)
			if !ok1 || !ok2 {
				continue
			}
			d := Metric{Name: "added " + q, Unit: "s", Value: m.Value - b.Value}
			insertMetric(res, after, d)
			after = d.Name
			parts = append(parts, fmt.Sprintf("%s %s (%s → %s)", q, signed(d.Value), FormatValue(b.Value, "s"), FormatValue(m.Value, "s")))
		}
		if len(parts) > 0 {
			res.Notes = append(res.Notes, "added by the hop through the peer (this run, peer − single): "+strings.Join(parts, ", "))
		}
	}
}

// comparisonsOfRuns lists, for repeated runs with a baseline, every run's
// comparison figures (the median run alone hides how much they vary).
func comparisonsOfRuns(rs []*Result) []string {
	var notes []string
	for _, m := range rs[0].Metrics {
		if !strings.HasPrefix(m.Name, "added ") && !strings.HasPrefix(m.Name, "÷ ") {
			continue
		}
		var vals []string
		for _, r := range rs {
			if x, ok := r.Metric(m.Name); ok {
				if m.Unit == "s" {
					vals = append(vals, signed(x.Value))
				} else {
					vals = append(vals, FormatValue(x.Value, x.Unit))
				}
			}
		}
		notes = append(notes, fmt.Sprintf("%s in each of the %d runs: %s", m.Name, len(rs), strings.Join(vals, ", ")))
	}
	return notes
}

func signed(v float64) string {
	if v >= 0 {
		return "+" + FormatValue(v, "s")
	}
	return FormatValue(v, "s")
}

// insertMetric puts m right after the metric called after (at the end if
// there is none).
func insertMetric(res *Result, after string, m Metric) {
	i := slices.IndexFunc(res.Metrics, func(x Metric) bool { return x.Name == after })
	if i < 0 {
		res.Metrics = append(res.Metrics, m)
		return
	}
	res.Metrics = slices.Insert(res.Metrics, i+1, m)
}

// serverSampler measures servers' CPU time and peak RSS from begin to end.
type serverSampler struct {
	servers []*Server
	cpu0    []time.Duration
	peak    []int64
	stop    chan struct{}
	wg      sync.WaitGroup
}

func (s *serverSampler) begin() {
	if s.stop != nil {
		return
	}
	s.stop = make(chan struct{})
	s.peak = make([]int64, len(s.servers))
	for _, srv := range s.servers {
		c, _ := srv.CPUTime()
		s.cpu0 = append(s.cpu0, c)
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			for i, srv := range s.servers {
				if r, err := srv.RSS(); err == nil && r > s.peak[i] {
					s.peak[i] = r
				}
			}
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
}

// end returns the servers' CPU time since begin and the sum of their peak
// RSS; zero when begin was not called.
func (s *serverSampler) end() (cpu time.Duration, peak int64) {
	if s.stop == nil {
		return 0, 0
	}
	close(s.stop)
	s.wg.Wait()
	for i, srv := range s.servers {
		c, _ := srv.CPUTime()
		cpu += c - s.cpu0[i]
		peak += s.peak[i]
	}
	return cpu, peak
}
