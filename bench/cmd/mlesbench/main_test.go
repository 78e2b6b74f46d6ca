package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
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
