package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mlesd/mlesd/bench/harness"
)

// TestFanoutAndPairsDeliverEverything runs fanout and pairs briefly against each
// server whose binary is here (bench/.bin/nats-server from `make bench-deps`,
// ../bin/mlesd from `make build`) and checks every delivery.
func TestFanoutAndPairsDeliverEverything(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers; skipped with -short")
	}
	for _, c := range []struct{ server, bin, flag, how string }{
		{"nats", "../../.bin/nats-server", "--nats-bin", "make bench-deps"},
		{"mlesd", "../../../bin/mlesd", "--mlesd-bin", "make build"},
	} {
		t.Run(c.server, func(t *testing.T) {
			bin, err := filepath.Abs(c.bin)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(bin); err != nil {
				t.Skipf("no %s binary at %s (run `%s` first)", c.server, bin, c.how)
			}
			var out, log bytes.Buffer
			code := run([]string{
				"--servers", c.server, c.flag, bin, "--scenarios", "fanout,pairs",
				"--duration", "500ms", "--fanout-subs", "10", "--pairs", "20", "--json",
				"--workdir", t.TempDir(),
			}, &out, &log)
			if code != 0 {
				t.Fatalf("exit %d\n%s", code, log.String())
			}
			var doc struct{ Results []harness.Result }
			if err := json.Unmarshal(out.Bytes(), &doc); err != nil {
				t.Fatalf("%v\n%s", err, out.String())
			}
			if len(doc.Results) != 2 {
				t.Fatalf("%d results, want 2\n%s", len(doc.Results), log.String())
			}
			for _, r := range doc.Results {
				if r.Failed != "" || r.Delivery.Bad() || r.Delivery.Received == 0 || r.Primary.Value <= 0 || len(r.Errors) > 0 {
					t.Errorf("%s/%s: %+v\n%s", r.Server, r.Scenario, r, log.String())
				}
			}
		})
	}
}

// TestPeerScenariosDeliverEverything runs peerfan and peerlat briefly against
// ../bin/mlesd (or $MLESD_BIN): through a peer and on a single server when the
// binary has --peer, else the single-server half only (and the peered half
// must fail saying why).
func TestPeerScenariosDeliverEverything(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers; skipped with -short")
	}
	bin := os.Getenv("MLESD_BIN")
	if bin == "" {
		bin = "../../../bin/mlesd"
	}
	bin, err := filepath.Abs(bin)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("no mlesd binary at %s (run `make build` first)", bin)
	}
	help, _ := exec.Command(bin, "--help").CombinedOutput()
	peer := strings.Contains(string(help), "-peer ")
	args := []string{
		"--servers", "mlesd,nats", "--mlesd-bin", bin, "--scenarios", "peerfan,peerlat",
		"--duration", "500ms", "--peerfan-subs", "10", "--peerlat-rate", "500", "--json",
		"--workdir", t.TempDir(),
	}
	rows := []string{"mlesd/single", "mlesd/peer"}
	if !peer {
		t.Logf("%s has no --peer: measuring the single-server half only", bin)
		args = append(args, "--peerfan-topologies", "single")
		rows = rows[:1]
	}
	var out, log bytes.Buffer
	if code := run(args, &out, &log); code != 0 {
		t.Fatalf("exit %d\n%s", code, log.String())
	}
	var doc struct{ Results []harness.Result }
	if err := json.Unmarshal(out.Bytes(), &doc); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	var got []string
	for _, r := range doc.Results {
		got = append(got, r.Scenario+" "+r.Server)
		if r.Failed != "" || r.Delivery.Bad() || r.Delivery.Received == 0 || r.Primary.Value <= 0 || len(r.Errors) > 0 {
			t.Errorf("%s/%s: %+v\n%s", r.Server, r.Scenario, r, log.String())
		}
		if r.Scenario == "peerlat" && r.Delivery.Expected != 10*uint64(float64(500)*0.5) {
			t.Errorf("%s/%s: expected %d deliveries, want every message of the fixed rate to every subscriber", r.Server, r.Scenario, r.Delivery.Expected)
		}
	}
	var want []string
	for _, s := range []string{"peerfan", "peerlat"} {
		for _, r := range rows {
			want = append(want, s+" "+r)
		}
	}
	if strings.Join(got, ", ") != strings.Join(want, ", ") {
		t.Fatalf("results %v, want %v (nats skipped)\n%s", got, want, log.String())
	}
	if !strings.Contains(log.String(), "[nats peerfan] skipped") {
		t.Errorf("nats not reported skipped:\n%s", log.String())
	}
	if peer {
		return
	}
	// Without --peer, the peered half fails at once and says why.
	log.Reset()
	code := run([]string{"--servers", "mlesd", "--mlesd-bin", bin, "--scenarios", "peerfan",
		"--duration", "200ms", "--peerfan-subs", "2", "--workdir", t.TempDir()}, &out, &log)
	if code != 1 || !strings.Contains(log.String(), "has no --peer flag") {
		t.Errorf("exit %d without --peer\n%s", code, log.String())
	}
}

func TestJoinstormConnsTakesAListOfSizes(t *testing.T) {
	got, err := parseSizes("1000, 5_000,15000")
	if err != nil || len(got) != 3 || got[0] != 1000 || got[1] != 5000 || got[2] != 15000 {
		t.Errorf("parseSizes: %v, %v", got, err)
	}
	for _, bad := range []string{"", "0", "1000,x", "-5"} {
		if _, err := parseSizes(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	var out, log bytes.Buffer
	if code := run([]string{"--joinstorm-conns", "1000,zero"}, &out, &log); code != 2 {
		t.Errorf("a bad --joinstorm-conns exits %d, want 2", code)
	}
}

func TestFDNeedsCoverEveryBigScenario(t *testing.T) {
	cfg := harness.DefaultConfig()
	cfg.FaninPubs = 10_000
	cfg.JoinstormSizes = []int{1000, 15000}
	needs := fdNeeds(cfg, []string{"fanin-rate", "joinstorm", "fanout"})
	if len(needs) != 3 || needs[0].conns != 10_001 || needs[2].conns != 15_002 {
		t.Errorf("fd needs: %+v", needs)
	}
}
