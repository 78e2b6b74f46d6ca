// Command mlesbench load-tests mlesd side by side with NATS and Redis pub/sub.
//
//	cd bench && go run ./cmd/mlesbench --servers mlesd,nats,redis --duration 5s
//
// Every server is started on 127.0.0.1 on a free port, once per scenario, and
// ended by PID at the end (also on Ctrl-C). Tables go to stdout (to stderr
// with --json, which puts a JSON document on stdout); progress lines go to
// stderr. Exit status: 0 ok, 1 a scenario failed, 3 delivery went wrong
// (loss, duplicates, reordering); --keep-going runs on after failures and
// exits 0.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mlesd/mlesd/bench/harness"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// binOr returns path if it exists, else name found on PATH, else path.
func binOr(path, name string) string {
	if _, err := os.Stat(path); err == nil {
		return path
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return path
}

func run(args []string, stdout, stderr io.Writer) int {
	cfg := harness.DefaultConfig()
	fs := flag.NewFlagSet("mlesbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	servers := fs.String("servers", "mlesd,naive,nats,nats-raw,redis", "servers to run, comma-separated: mlesd, nats (nats.go client), nats-raw (same server, hand-written client), redis, naive (the naive goroutine-per-connection Mles forwarder of cmd/naivemles)")
	scenarios := fs.String("scenarios", strings.Join(harness.ScenarioOrder, ","), "scenarios to run, comma-separated; also, only when named: "+strings.Join(harness.ExtraScenarios, ", ")+" (fanin-read: fanin whose publishers read and discard; peerfan, peerlat: mlesd through a peer against mlesd alone)")
	fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "publishing time per throughput/latency scenario")
	fs.IntVar(&cfg.Payload, "payload", cfg.Payload, "message size in bytes (>= 24, the trailer)")
	fs.IntVar(&cfg.FanoutSubs, "fanout-subs", cfg.FanoutSubs, "fanout: subscribers")
	fs.IntVar(&cfg.FaninPubs, "fanin-pubs", cfg.FaninPubs, "fanin, fanin-rate, fanin-read: publisher connections (up to 10,000 within a 20,000-fd limit: the harness and the server each hold one fd per publisher)")
	fs.IntVar(&cfg.FaninRate, "fanin-rate", cfg.FaninRate, "fanin-rate: total msgs/s the publishers offer, each sending its share on its own schedule")
	fs.IntVar(&cfg.Pairs, "pairs", cfg.Pairs, "pairs: channels with one publisher and one subscriber each")
	fs.IntVar(&cfg.BigfanSize, "bigfan-size", cfg.BigfanSize, "bigfan: message size in bytes")
	fs.IntVar(&cfg.BigfanSubs, "bigfan-subs", cfg.BigfanSubs, "bigfan: subscribers")
	fs.IntVar(&cfg.BigfanReps, "bigfan-reps", cfg.BigfanReps, "bigfan: repetitions")
	fs.IntVar(&cfg.LatencyRate, "latency-rate", cfg.LatencyRate, "latency: fixed publish rate, msgs/s")
	fs.IntVar(&cfg.LatencySubs, "latency-subs", cfg.LatencySubs, "latency: subscribers")
	fs.IntVar(&cfg.Conns, "conns", cfg.Conns, "conns: idle joined connections")
	fs.IntVar(&cfg.ConnsConcurrency, "conns-concurrency", cfg.ConnsConcurrency, "conns, idle: connections opened at once")
	joinstormConns := fs.String("joinstorm-conns", strconv.Itoa(cfg.JoinstormConns), "joinstorm: connections joining one channel as fast as they can; a comma-separated list (1000,5000,15000) runs each size, one row per size and server, with the time per join ÷ the first size's")
	fs.IntVar(&cfg.JoinstormPingRate, "joinstorm-ping-rate", cfg.JoinstormPingRate, "joinstorm: msgs/s of the ping pair on another channel whose latency is measured during the storm (0: no pair)")
	fs.IntVar(&cfg.IdleMembers, "idle-members", cfg.IdleMembers, "idle: members of one channel that never read")
	fs.IntVar(&cfg.IdleFill, "idle-fill", cfg.IdleFill, "idle: messages published first so that every member holds a backlog")
	fs.IntVar(&cfg.IdlePayload, "idle-payload", cfg.IdlePayload, "idle: size of those messages in bytes")
	fs.DurationVar(&cfg.IdleWindow, "idle-window", cfg.IdleWindow, "idle: how long nothing happens while the server's CPU is measured")
	fs.IntVar(&cfg.PeerSubs, "peerfan-subs", cfg.PeerSubs, "peerfan, peerlat: subscribers (on the peered mlesd B; the publisher is on A)")
	fs.IntVar(&cfg.PeerLatRate, "peerlat-rate", cfg.PeerLatRate, "peerlat: fixed publish rate, msgs/s")
	fs.IntVar(&cfg.PeerLoops, "peerfan-loops", cfg.PeerLoops, "peerfan, peerlat: --loops of each mlesd (0: mlesd's default, one per core)")
	topos := fs.String("peerfan-topologies", strings.Join(cfg.PeerTopologies, ","), "peerfan, peerlat: what to measure, in this order: single (publisher and subscribers on A), peer (subscribers on B, started with --peer A); the last is compared with the one before")
	fs.DurationVar(&cfg.PeerSyncTimeout, "peerfan-sync-timeout", cfg.PeerSyncTimeout, "peerfan, peerlat: longest wait for the publisher's frames to reach every subscriber before measuring")
	fs.IntVar(&cfg.Window, "window", cfg.Window, "flow control: most messages in flight to one receiver")
	fs.IntVar(&cfg.WindowBytes, "window-bytes", cfg.WindowBytes, "flow control: most bytes in flight to one receiver")
	fs.IntVar(&cfg.MinWindow, "min-window", cfg.MinWindow, "flow control: least messages in flight per (publisher, receiver), however many publishers share a receiver (fanin: 1,000 × 16 = 16,000 to the collector)")
	fs.IntVar(&cfg.MaxInFlight, "max-in-flight", cfg.MaxInFlight, "flow control: most messages in flight to one receiver from all the publishers sharing it, capping --min-window (10,000 fanin publishers: 3 each); below the 65,536 pending messages mlesd and NATS allow a receiver (0: no cap)")
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", cfg.DrainTimeout, "longest wait for the last deliveries")
	fs.DurationVar(&cfg.DrainStall, "drain-stall", cfg.DrainStall, "stop waiting for the last deliveries after this long without one (the rest counts as lost)")
	fs.DurationVar(&cfg.SetupTimeout, "setup-timeout", cfg.SetupTimeout, "longest wait to connect and join a scenario's connections")
	mdOut := fs.String("markdown", "", "also write the environment and every table in Markdown to this `file`")
	jsonOut := fs.Bool("json", false, "print results as JSON on stdout (tables go to stderr)")
	mlesdBin := fs.String("mlesd-bin", "../bin/mlesd", "mlesd binary")
	mlesdArgs := fs.String("mlesd-args", "", "extra mlesd flags, space-separated (e.g. \"--pprof 127.0.0.1:6060\")")
	naiveBin := fs.String("naive-bin", ".bin/naivemles", "the naive Mles forwarder (go build -o .bin/naivemles ./cmd/naivemles)")
	natsBin := fs.String("nats-bin", ".bin/nats-server", "nats-server binary (falls back to PATH)")
	redisBin := fs.String("redis-bin", "redis-server", "redis-server binary")
	repeat := fs.Int("repeat", 1, "runs per scenario and server, interleaved; the median run is shown (a failed or lossy run is shown instead)")
	keepGoing := fs.Bool("keep-going", false, "run on after a failed scenario, and exit 0 even after loss")
	pprofOut := fs.String("pprof-out", "", "write a CPU profile of mlesd, taken while each scenario measures, to this `file` (mlesd gets --pprof on a free port)")
	pprofSecs := fs.Int("pprof-seconds", 0, "length of that profile in seconds (default: --duration)")
	workDir := fs.String("workdir", "", "directory for server logs and configs (default: a new temporary directory)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if cfg.Payload < harness.TrailerLen || cfg.BigfanSize < harness.TrailerLen {
		fmt.Fprintf(stderr, "--payload and --bigfan-size must be at least %d\n", harness.TrailerLen)
		return 2
	}
	sizes, err := parseSizes(*joinstormConns)
	if err != nil {
		fmt.Fprintf(stderr, "--joinstorm-conns: %v\n", err)
		return 2
	}
	cfg.JoinstormConns, cfg.JoinstormSizes = sizes[0], sizes
	if cfg.FaninPubs < 1 || cfg.FaninRate < 1 || cfg.JoinstormPingRate < 0 {
		fmt.Fprintln(stderr, "--fanin-pubs and --fanin-rate must be at least 1, --joinstorm-ping-rate at least 0")
		return 2
	}
	cfg.PeerTopologies = splitList(*topos)
	if err := harness.CheckTopologies(cfg.PeerTopologies); err != nil {
		fmt.Fprintf(stderr, "--peerfan-topologies: %v\n", err)
		return 2
	}
	if cfg.PeerSubs < 1 || cfg.PeerLatRate < 1 {
		fmt.Fprintln(stderr, "--peerfan-subs and --peerlat-rate must be at least 1")
		return 2
	}

	if lim, err := harness.RaiseFDLimit(); err != nil {
		fmt.Fprintf(stderr, "raise fd limit: %v\n", err)
	} else {
		for _, n := range fdNeeds(cfg, splitList(*scenarios)) {
			if need := uint64(n.conns + 1000); lim < need {
				fmt.Fprintf(stderr, "warning: fd limit %d is below the %d that %s needs\n", lim, need, n.what)
			}
		}
	}
	wd := *workDir
	if wd != "" {
		if err := os.MkdirAll(wd, 0o755); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
	} else {
		d, err := os.MkdirTemp("", "mlesbench-")
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		wd = d
	}
	if slices.Contains(splitList(*servers), "naive") {
		if _, err := os.Stat(*naiveBin); err != nil { // build it (needs to run from bench/)
			fmt.Fprintf(stderr, "building %s from ./cmd/naivemles\n", *naiveBin)
			if out, err := exec.Command("go", "build", "-o", *naiveBin, "./cmd/naivemles").CombinedOutput(); err != nil {
				fmt.Fprintf(stderr, "cannot build the naive forwarder: %v\n%s", err, out)
			}
		}
	}
	sc := harness.ServerConfig{
		MlesdBin:  *mlesdBin,
		NaiveBin:  *naiveBin,
		NATSBin:   binOr(*natsBin, "nats-server"),
		RedisBin:  *redisBin,
		MlesKey:   "bench",
		MlesdArgs: strings.Fields(*mlesdArgs),
		WorkDir:   wd,
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		fmt.Fprintln(stderr, "interrupted: stopping (again to force)")
		cancel()
		<-sigs
		harness.StopAll()
		os.Exit(130)
	}()
	defer harness.StopAll()

	tables := stdout
	if *jsonOut {
		tables = stderr
	}
	env := harness.Environment(sc)
	fmt.Fprintf(stderr, "mlesbench: %s, %s cores, kernel %s, %s, load %s; logs in %s\n", env["cpu"], env["nproc"], env["kernel"], env["go"], env["loadavg-at-start"], wd)
	t0 := time.Now()
	results, err := harness.Run(ctx, harness.RunConfig{
		Servers:   splitList(*servers),
		Scenarios: splitList(*scenarios),
		Cfg:       cfg,
		ServerCfg: sc,
		KeepGoing: *keepGoing,
		Repeat:    *repeat,
		Log:       stderr,
		Out:       tables,

		ProfileOut:     *pprofOut,
		ProfileSeconds: *pprofSecs,
	})
	fmt.Fprintf(stderr, "mlesbench: done in %.1fs\n", time.Since(t0).Seconds())
	if *jsonOut {
		if jerr := harness.WriteJSON(stdout, env, results); jerr != nil {
			fmt.Fprintln(stderr, jerr)
		}
	}
	if *mdOut != "" {
		if err := writeMarkdown(*mdOut, env, results, args); err != nil {
			fmt.Fprintln(stderr, err)
		}
	}
	bad := false
	for _, r := range results { // a baseline is a result of its own here
		if r.Delivery.Bad() {
			bad = true
			fmt.Fprintln(stderr, harness.LossLine(r))
		}
	}
	switch {
	case err != nil:
		fmt.Fprintf(stderr, "mlesbench: %v\n", err)
		if !*keepGoing {
			return 1
		}
	case bad && !*keepGoing:
		return 3
	}
	return 0
}

// parseSizes parses a comma-separated list of connection counts, each >= 1.
func parseSizes(s string) ([]int, error) {
	var out []int
	for _, f := range splitList(s) {
		n, err := strconv.Atoi(strings.ReplaceAll(f, "_", ""))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a count of connections", f)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no size in %q", s)
	}
	return out, nil
}

type fdNeed struct {
	what  string
	conns int
}

// fdNeeds lists the connections each scenario to run holds open at once, in
// the harness (a server holds as many): what the fd limit must cover.
func fdNeeds(cfg harness.Config, scenarios []string) []fdNeed {
	var out []fdNeed
	for _, scn := range scenarios {
		switch scn {
		case "conns":
			out = append(out, fdNeed{fmt.Sprintf("--conns %d", cfg.Conns), cfg.Conns})
		case "fanin", "fanin-rate", "fanin-read":
			out = append(out, fdNeed{fmt.Sprintf("%s with --fanin-pubs %d", scn, cfg.FaninPubs), cfg.FaninPubs + 1})
		case "joinstorm":
			for _, n := range cfg.JoinstormSizes {
				out = append(out, fdNeed{fmt.Sprintf("joinstorm with %d connections", n), n + 2})
			}
		}
	}
	return out
}

// writeMarkdown writes the environment, the command and every table.
func writeMarkdown(path string, env map[string]string, rs []*harness.Result, args []string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "Command: `go run ./cmd/mlesbench %s` (from bench/)\n\n", strings.Join(args, " "))
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "- %s: %s\n", k, env[k])
	}
	seen := map[string]bool{}
	for _, r := range rs {
		if !seen[r.Scenario] {
			seen[r.Scenario] = true
			harness.WriteMarkdown(&b, r.Scenario, rs)
		}
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}
