package harness

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// RunConfig is one invocation of the harness.
type RunConfig struct {
	Servers   []string // driver names, in table order
	Scenarios []string
	Cfg       Config
	ServerCfg ServerConfig
	KeepGoing bool      // go on after a scenario fails
	Repeat    int       // runs per (scenario, server); the median run is reported
	Log       io.Writer // progress lines
	Out       io.Writer // tables, one per scenario as soon as it is done

	// ProfileOut, when set, is where a CPU profile of mlesd goes: mlesd gets
	// --pprof on a free loopback port and the profile is fetched from
	// /debug/pprof/profile while the scenario measures (ProfileSeconds long;
	// 0: the scenario's duration).
	ProfileOut     string
	ProfileSeconds int
}

// Run runs every scenario against every server, each on a freshly started
// server process (so that one scenario's heap does not hide another's RSS),
// and returns the results with their ratios to NATS filled in.
func Run(ctx context.Context, rc RunConfig) ([]*Result, error) {
	var all []*Result
	for _, scn := range rc.Scenarios {
		fn, ok := Scenarios[scn]
		if !ok {
			return all, fmt.Errorf("unknown scenario %q (have %v)", scn, append(append([]string(nil), ScenarioOrder...), ExtraScenarios...))
		}
		var servers []string
		for _, name := range rc.Servers {
			if Supports(scn, name) {
				servers = append(servers, name)
			} else {
				fmt.Fprintf(rc.Log, "[%s %s] skipped: only %s run it\n", name, scn, strings.Join(ScenarioServers[scn], ", "))
			}
		}
		// Repeats are interleaved across servers (and sizes), so that a slow
		// spell of a shared machine does not fall on one server only.
		variants := scenarioVariants(scn, rc.Cfg)
		runs := map[string][]*Result{} // by server and variant
		runKey := func(name string, v variant) string { return name + "\x00" + v.label }
		var failed error
		for rep := 0; rep < max(rc.Repeat, 1) && failed == nil; rep++ {
			for _, v := range variants {
				vrc := rc
				vrc.Cfg = v.cfg
				for _, name := range servers {
					if ctx.Err() != nil {
						return all, ctx.Err()
					}
					if v.label != "" {
						fmt.Fprintf(rc.Log, "[%s %s] %s=%s\n", name, scn, v.key, v.label)
					}
					res, err := runOne(ctx, vrc, scn, name, fn)
					if err != nil {
						res = &Result{Scenario: scn, Server: name, Failed: err.Error()}
						fmt.Fprintf(rc.Log, "[%s %s] FAILED: %v\n", name, scn, err)
					}
					res.VariantKey, res.Variant = v.key, v.label
					for _, r := range []*Result{res.Baseline, res} {
						if r != nil && r.Delivery.Bad() {
							fmt.Fprintln(rc.Log, LossLine(r))
						}
					}
					runs[runKey(name, v)] = append(runs[runKey(name, v)], res)
					if err != nil && !rc.KeepGoing {
						failed = fmt.Errorf("%s/%s: %w", name, scn, err)
						break
					}
				}
				if failed != nil {
					break
				}
			}
		}
		for _, name := range servers {
			for _, v := range variants {
				if rs := runs[runKey(name, v)]; len(rs) > 0 {
					all = appendRun(all, medianRun(rs))
				}
			}
		}
		if len(variants) > 1 {
			addVariantScaling(all, scn, variants[0])
		}
		FillRatios(all)
		WriteTable(rc.Out, scn, all)
		if failed != nil {
			return all, failed
		}
	}
	return all, nil
}

// variant is one size of a scenario that runs at several (Result.Variant).
type variant struct {
	key, label string // "conns", "15000"; both "" for a scenario run once
	cfg        Config
}

// scenarioVariants lists the sizes scn runs at: joinstorm once per entry of
// JoinstormSizes when it has more than one, everything else once.
func scenarioVariants(scn string, cfg Config) []variant {
	if scn != "joinstorm" || len(cfg.JoinstormSizes) == 0 {
		return []variant{{cfg: cfg}}
	}
	if len(cfg.JoinstormSizes) == 1 {
		cfg.JoinstormConns = cfg.JoinstormSizes[0]
		return []variant{{cfg: cfg}}
	}
	var vs []variant
	for _, n := range cfg.JoinstormSizes {
		c := cfg
		c.JoinstormConns = n
		vs = append(vs, variant{key: "conns", label: strconv.Itoa(n), cfg: c})
	}
	return vs
}

// addVariantScaling gives every row of scn, right after its primary figure,
// that figure ÷ the same server's at the first variant: how the figure
// grows with the size (joinstorm: the time per join at 15,000 ÷ at 1,000).
func addVariantScaling(rs []*Result, scn string, first variant) {
	base := map[string]*Result{}
	for _, r := range rs {
		if r.Scenario == scn && r.Variant == first.label && r.Failed == "" {
			base[r.Server] = r
		}
	}
	for _, r := range rs {
		b := base[r.Server]
		if r.Scenario != scn || r.Failed != "" || b == nil || b.Primary.Value <= 0 {
			continue
		}
		m := Metric{Name: fmt.Sprintf("%s ÷ at %s", r.Primary.Name, first.label), Value: r.Primary.Value / b.Primary.Value}
		i := slices.IndexFunc(r.Metrics, func(x Metric) bool { return x.Name == r.Primary.Name })
		r.Metrics = slices.Insert(r.Metrics, i+1, m)
	}
}

// appendRun appends r to rs, its baseline (if any) first: the baseline is a
// row, and a verdict, of its own.
func appendRun(rs []*Result, r *Result) []*Result {
	if r.Baseline != nil {
		rs = append(rs, r.Baseline)
	}
	return append(rs, r)
}

// medianRun returns the run with the median primary figure, with every run's
// figure in a note; a failed or lossy run wins over a good one, so that no
// problem is hidden by repetition. A run's baseline comes with it.
func medianRun(rs []*Result) *Result {
	if len(rs) == 1 {
		return rs[0]
	}
	var ok []*Result
	for _, r := range rs {
		if r.Failed != "" || r.Bad() {
			r.Notes = append(r.Notes, fmt.Sprintf("1 of %d runs shown: this one failed or lost messages", len(rs)))
			return r
		}
		ok = append(ok, r)
	}
	sort.Slice(ok, func(i, j int) bool { return ok[i].Primary.Value < ok[j].Primary.Value })
	m := ok[(len(ok)-1)/2]
	if m.Primary.HigherBetter { // of an even count, take the lower-better middle
		m = ok[len(ok)/2]
	}
	var vals []string
	for _, r := range rs {
		vals = append(vals, FormatValue(r.Primary.Value, r.Primary.Unit))
	}
	m.Notes = append(m.Notes, fmt.Sprintf("median of %d runs by %s: %s", len(rs), m.Primary.Name, strings.Join(vals, ", ")))
	m.Notes = append(m.Notes, comparisonsOfRuns(rs)...)
	return m
}

func runOne(ctx context.Context, rc RunConfig, scn, name string, fn Scenario) (*Result, error) {
	drv, err := NewDriver(name)
	if err != nil {
		return nil, err
	}
	sc := rc.ServerCfg
	if name == "mlesd" {
		sc.MlesdArgs = append(ScenarioMlesdArgs(scn, rc.Cfg, sc.MlesdBin), sc.MlesdArgs...)
	}
	base := sc // without this process's own --pprof and --metrics
	var pprofAddr string
	if rc.ProfileOut != "" && name == "mlesd" {
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		pprofAddr = fmt.Sprintf("127.0.0.1:%d", port)
		sc.MlesdArgs = append(append([]string(nil), sc.MlesdArgs...), "--pprof", pprofAddr)
	}
	kind := name
	if name == "nats-raw" {
		kind = "nats"
	}
	var metricsAddr string
	if kind == "mlesd" && mlesdHasFlag(sc.MlesdBin, "metrics") {
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		metricsAddr = fmt.Sprintf("127.0.0.1:%d", port)
		sc.MlesdArgs = append(append([]string(nil), sc.MlesdArgs...), "--metrics", metricsAddr)
	}
	srv, err := StartServer(ctx, kind, sc)
	if err != nil {
		return nil, err
	}
	defer srv.Stop()
	fmt.Fprintf(rc.Log, "[%s %s] server pid %d on %s\n", name, scn, srv.PID(), srv.Addr)
	env := &Env{Server: srv, Driver: drv, Cfg: rc.Cfg, Log: rc.Log, ServerCfg: base, MetricsAddr: metricsAddr}
	var profDone chan error
	if pprofAddr != "" {
		secs := rc.ProfileSeconds
		if secs <= 0 {
			secs = max(int(rc.Cfg.Duration.Seconds()), 1)
		}
		profDone = make(chan error, 1)
		env.onMeasure = func() {
			fmt.Fprintf(rc.Log, "[%s %s] taking a %d s CPU profile from http://%s/debug/pprof/profile\n", name, scn, secs, pprofAddr)
			go func() { profDone <- fetchProfile(ctx, pprofAddr, secs, rc.ProfileOut) }()
		}
	}
	// Sample the server's RSS while the scenario runs; note its CPU time.
	cpu0, _ := srv.CPUTime()
	var peak int64
	sampleDone := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			if r, err := srv.RSS(); err == nil && r > peak {
				peak = r
			}
			select {
			case <-sampleDone:
				return
			case <-t.C:
			}
		}
	}()
	res, err := fn(ctx, env)
	close(sampleDone)
	<-sampled
	cpu1, _ := srv.CPUTime()
	if res != nil && metricsAddr != "" {
		addServerCounters(res, metricsAddr)
	}
	if res != nil {
		// A scenario with more than one server (peerfan), or whose CPU is its
		// primary figure (fanin-rate), measures them itself.
		if _, own := res.Metric("server peak RSS"); !own {
			res.Add("server peak RSS", "MB", float64(peak)/1e6, false)
		}
		if _, own := res.Metric("server CPU"); !own {
			res.Add("server CPU", "s", (cpu1 - cpu0).Seconds(), false)
			addPerCPU(res, cpu1-cpu0)
		}
	}
	if profDone != nil && env.onMeasure == nil { // the profile was started
		if perr := <-profDone; perr != nil {
			fmt.Fprintf(rc.Log, "[%s %s] profile: %v\n", name, scn, perr)
		} else {
			fmt.Fprintf(rc.Log, "[%s %s] CPU profile written to %s\n", name, scn, rc.ProfileOut)
		}
	}
	if exited, werr := srv.Exited(); exited {
		return nil, fmt.Errorf("%s died during %s (%v); log tail:\n%s", name, scn, werr, srv.LogTail(30))
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("interrupted: %w", ctx.Err())
	}
	if err != nil {
		return nil, err
	}
	return res, nil
}

// addPerCPU adds messages delivered per server CPU-second to a throughput result.
func addPerCPU(res *Result, cpu time.Duration) {
	if res.Primary.Unit == "msg/s" && cpu > 0 {
		if d := res.Delivery.Received; d > 0 {
			res.Add("msgs per server CPU-s", "msg", float64(d)/cpu.Seconds(), true)
		}
	}
}

// addServerCounters reads mlesd's Prometheus counters of frames in, out and
// dropped into res, with a note when it dropped any.
func addServerCounters(res *Result, addr string) { addCounters(res, addr, "server", "mlesd") }

// addCounters adds every unlabelled mlesd_* series of the mlesd whose
// /metrics is at addr to res's JSON details, named prefix+" "+series, and a
// note (naming the server who) when it dropped frames.
func addCounters(res *Result, addr, prefix, who string) {
	vals, err := scrapeMetrics(addr)
	if err != nil {
		res.Notes = append(res.Notes, fmt.Sprintf("%s /metrics: %v", who, err))
		return
	}
	var keys []string
	for k := range vals {
		if strings.HasPrefix(k, "mlesd_") && !strings.Contains(k, "{") {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys { // every unlabelled mlesd_ series, in the JSON
		res.AddDetail(prefix+" "+strings.TrimPrefix(k, "mlesd_"), "", vals[k], false)
	}
	if d := vals["mlesd_frames_dropped_total"]; d > 0 {
		res.Notes = append(res.Notes, fmt.Sprintf("%s's /metrics: %.0f frames dropped for receivers not keeping up (of %.0f out)", who, d, vals["mlesd_frames_out_total"]))
	}
	if d := vals["mlesd_loop_queue_dropped_total"]; d > 0 {
		res.Notes = append(res.Notes, fmt.Sprintf("%s's /metrics: %.0f frames dropped between event loops (mlesd_loop_queue_dropped_total: a loop far behind)", who, d))
	}
}

// scrapeMetrics reads a Prometheus text page: series (name with its labels,
// as written) to value.
func scrapeMetrics(addr string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s", resp.Status)
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return parseMetrics(string(b)), nil
}

// parseMetrics parses Prometheus text lines "series value" (mlesd writes no
// timestamps); comments are skipped.
func parseMetrics(page string) map[string]float64 {
	vals := map[string]float64{}
	for _, l := range strings.Split(page, "\n") {
		if l == "" || l[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		if i <= 0 {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(l[i+1:], &v); err == nil {
			vals[strings.TrimSpace(l[:i])] = v
		}
	}
	return vals
}

// fetchProfile saves a CPU profile of secs seconds from a net/http/pprof server.
func fetchProfile(ctx context.Context, addr string, secs int, out string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(secs+30)*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, secs), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s: %s", resp.Status, b)
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Environment describes the machine and the servers' versions.
func Environment(sc ServerConfig) map[string]string {
	env := map[string]string{
		"go":     runtime.Version(),
		"nproc":  fmt.Sprint(runtime.NumCPU()),
		"date":   time.Now().UTC().Format(time.RFC3339),
		"goarch": runtime.GOARCH,
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				env["cpu"] = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		env["loadavg-at-start"] = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		env["kernel"] = strings.TrimSpace(string(b))
	}
	ver := func(bin string, args ...string) string {
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			return "unknown"
		}
		return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	}
	env["nats-server"] = ver(sc.NATSBin, "--version")
	if dir := filepath.Dir(sc.MlesdBin); dir != "" {
		// The last commit of the server's own code (bench/ excluded).
		env["mlesd-commit"] = ver("git", "-C", dir, "log", "-1", "--format=%h %cI %s", "--",
			":(top)cmd", ":(top)engine", ":(top)router", ":(top)codec", ":(top)peering", ":(top)go.mod")
	}
	env["redis-server"] = ver(sc.RedisBin, "--version")
	return env
}
