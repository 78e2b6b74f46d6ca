package harness

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
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
	Log       io.Writer // progress lines
	Out       io.Writer // tables, one per scenario as soon as it is done
}

// Run runs every scenario against every server, each on a freshly started
// server process (so that one scenario's heap does not hide another's RSS),
// and returns the results with their ratios to NATS filled in.
func Run(ctx context.Context, rc RunConfig) ([]*Result, error) {
	var all []*Result
	for _, scn := range rc.Scenarios {
		fn, ok := Scenarios[scn]
		if !ok {
			return all, fmt.Errorf("unknown scenario %q (have %v)", scn, ScenarioOrder)
		}
		var rows []*Result
		for _, name := range rc.Servers {
			if ctx.Err() != nil {
				return all, ctx.Err()
			}
			res, err := runOne(ctx, rc, scn, name, fn)
			if err != nil {
				res = &Result{Scenario: scn, Server: name, Failed: err.Error()}
				fmt.Fprintf(rc.Log, "[%s %s] FAILED: %v\n", name, scn, err)
			}
			if res.Delivery.Bad() {
				fmt.Fprintln(rc.Log, LossLine(res))
			}
			rows = append(rows, res)
			all = append(all, res)
			if err != nil && !rc.KeepGoing {
				FillRatios(all)
				WriteTable(rc.Out, scn, all)
				return all, fmt.Errorf("%s/%s: %w", name, scn, err)
			}
		}
		FillRatios(all)
		WriteTable(rc.Out, scn, all)
	}
	return all, nil
}

func runOne(ctx context.Context, rc RunConfig, scn, name string, fn Scenario) (*Result, error) {
	drv, err := NewDriver(name)
	if err != nil {
		return nil, err
	}
	srv, err := StartServer(ctx, name, rc.ServerCfg)
	if err != nil {
		return nil, err
	}
	defer srv.Stop()
	fmt.Fprintf(rc.Log, "[%s %s] server pid %d on %s\n", name, scn, srv.PID(), srv.Addr)
	env := &Env{Server: srv, Driver: drv, Cfg: rc.Cfg, Log: rc.Log}
	res, err := fn(ctx, env)
	if exited, werr := srv.Exited(); exited {
		return nil, fmt.Errorf("%s died during %s (%v); log tail:\n%s", name, scn, werr, srv.LogTail(30))
	}
	if err != nil {
		return nil, err
	}
	return res, nil
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
	env["redis-server"] = ver(sc.RedisBin, "--version")
	return env
}
