package main

import (
	"context"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mlesd/mlesd/client"
)

// TestPubRate50000PerSecondIsWithin5Percent is a benchmark-style check: a
// subscriber times `mles pub --rate 50000/s` over 5 s (250,000 messages)
// from the first message to the last. The figure is printed either way;
// on a machine too loaded to tell, the test skips with the figure instead
// of failing.
func TestPubRate50000PerSecondIsWithin5Percent(t *testing.T) {
	if testing.Short() {
		t.Skip("takes 5 s")
	}
	const rate, n = 50000, 250000
	env := keyEnv("k")
	srv := startMlesd(t, env, "--history-limit", "0")
	sub, err := client.Connect(srv, "timer", "rate", client.SharedKey("k"), client.BufferSizes(1<<20, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	pub := exec.Command(mlesBin, "pub", "-s", srv, "-u", "p", "-c", "rate", "-m", "0123456789abcdef", "--count", strconv.Itoa(n),
		"--rate", strconv.Itoa(rate)+"/s", "-v")
	pub.Env = env
	var perr strings.Builder
	pub.Stderr = &perr
	// The pub's first message is its join: the subscriber, joined first,
	// receives everything, history or not.
	if err := pub.Start(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var first, last time.Time
	got := 0
	idle := time.AfterFunc(2*time.Second, cancel)
	for m, err := range sub.Msgs(ctx) {
		if err != nil {
			break
		}
		if m.IsJoin() {
			continue
		}
		now := time.Now()
		if got == 0 {
			first = now
		}
		last = now
		if got++; got == n {
			break
		}
		if got%4096 == 0 {
			idle.Reset(2 * time.Second)
		}
	}
	idle.Stop()
	if err := pub.Wait(); err != nil {
		t.Fatalf("pub: %v %s", err, perr.String())
	}
	if got < 2 {
		t.Fatalf("received %d messages", got)
	}
	achieved := float64(got-1) / last.Sub(first).Seconds()
	t.Logf("pub --rate %d/s: subscriber received %d of %d in %v: %.0f msgs/s (%+.2f%%); pub says: %s",
		rate, got, n, last.Sub(first).Round(time.Millisecond), achieved, 100*(achieved-rate)/rate, strings.TrimSpace(perr.String()))
	if got < n*99/100 {
		t.Fatalf("received only %d of %d messages", got, n)
	}
	if achieved < rate*0.95 || achieved > rate*1.05 {
		if load := loadAverage(); load > 1.5*float64(runtime.NumCPU()) {
			t.Skipf("achieved %.0f msgs/s, outside 5%% of %d, but the machine is too loaded to tell (load average %.1f on %d CPUs)",
				achieved, rate, load, runtime.NumCPU())
		}
		t.Fatalf("achieved %.0f msgs/s, want %d ± 5%%", achieved, rate)
	}
}

func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f, _ := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	return f
}
