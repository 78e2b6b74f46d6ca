package harness

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// peerPair is a baseline and a through-the-peer result as peerScenario
// returns them.
func peerPair(scn string, base, peer float64, unit string) *Result {
	mk := func(topo string, v float64) *Result {
		r := &Result{Scenario: scn, Server: "mlesd/" + topo, Params: map[string]string{"subs": "100"}}
		if unit == "s" {
			r.SetPrimary("p99", "s", v, false)
			r.Add("p50", "s", v/10, false)
			r.Add("p99.9", "s", v*2, false)
			r.Add("max", "s", v*3, false)
			r.Add("sent msgs/s", "msg/s", 1000, true)
		} else {
			r.SetPrimary("delivered msgs/s", "msg/s", v, true)
			r.Add("published msgs/s", "msg/s", v/100, true)
		}
		r.Add("server CPU", "s", 1, false)
		return r
	}
	res := mk(TopoPeer, peer)
	res.Baseline = mk(TopoSingle, base)
	compareToBaseline(res)
	return res
}

func names(ms []Metric) []string {
	var n []string
	for _, m := range ms {
		n = append(n, m.Name)
	}
	return n
}

func TestLatencyThroughAPeerIsComparedPercentileByPercentile(t *testing.T) {
	res := peerPair("peerlat", 0.002, 0.003, "s")
	want := "p99 p50 p99.9 max added p50 added p99 added p99.9 sent msgs/s server CPU"
	if got := strings.Join(names(res.Metrics), " "); got != want {
		t.Fatalf("metrics %q, want %q", got, want)
	}
	for q, v := range map[string]float64{"added p50": 0.0001, "added p99": 0.001, "added p99.9": 0.002} {
		if m, _ := res.Metric(q); m.Value < v*0.999 || m.Value > v*1.001 || m.HigherBetter {
			t.Errorf("%s = %+v, want %v", q, m, v)
		}
	}
	if len(res.Notes) != 1 || !strings.Contains(res.Notes[0], "p99 +1.00ms (2.00ms → 3.00ms)") {
		t.Errorf("notes %q", res.Notes)
	}
	if _, ok := res.Baseline.Metric("added p99"); ok {
		t.Error("the baseline row got an added column")
	}
}

func TestThroughputThroughAPeerIsARatioToTheSingleServer(t *testing.T) {
	res := peerPair("peerfan", 4e6, 1e6, "msg/s")
	if got := names(res.Metrics)[1]; got != "÷ single" {
		t.Fatalf("second metric %q, want the ratio right after the primary", got)
	}
	if m, _ := res.Metric("÷ single"); m.Value != 0.25 {
		t.Fatalf("ratio %v", m.Value)
	}
	if len(res.Notes) != 1 || !strings.Contains(res.Notes[0], "0.25× the single server's (1.00M vs 4.00M)") {
		t.Errorf("notes %q", res.Notes)
	}
}

func TestPeerTableShowsTheBaselineAboveAndEveryColumn(t *testing.T) {
	res := peerPair("peerlat", 0.002, 0.0015, "s") // faster through the peer: a negative difference
	var b bytes.Buffer
	WriteTable(&b, "peerlat", appendRun(nil, res))
	out := b.String()
	lines := strings.Split(out, "\n")
	var rows []string
	for _, l := range lines {
		if f := strings.Fields(l); len(f) > 1 && strings.HasPrefix(f[0], "mlesd/") && !strings.HasSuffix(f[1], ":") { // not a note
			rows = append(rows, f[0])
		}
	}
	if strings.Join(rows, " ") != "mlesd/single mlesd/peer" {
		t.Fatalf("rows %v:\n%s", rows, out)
	}
	for _, s := range []string{"added p99.9", "-500.0µs", "added by the hop"} {
		if !strings.Contains(out, s) {
			t.Errorf("table lacks %q:\n%s", s, out)
		}
	}
	if strings.Contains(out, "NATS") {
		t.Errorf("ratio to NATS in an mlesd-only scenario:\n%s", out)
	}
	// The baseline row has no "added" figures: its cells show "-".
	for _, l := range lines {
		if strings.Contains(l, "mlesd/single") && strings.Count(l, " - ") < 3 {
			t.Errorf("baseline row %q", l)
		}
	}
}

func TestMedianRunKeepsEachRunWithItsOwnBaseline(t *testing.T) {
	var rs []*Result
	for _, v := range []float64{3e6, 1e6, 2e6} {
		rs = append(rs, peerPair("peerfan", v*2, v, "msg/s"))
	}
	m := medianRun(rs)
	if m.Primary.Value != 2e6 || m.Baseline.Primary.Value != 4e6 {
		t.Fatalf("median %v with baseline %v", m.Primary.Value, m.Baseline.Primary.Value)
	}
	if !strings.Contains(strings.Join(m.Notes, "\n"), "÷ single in each of the 3 runs: 0.50, 0.50, 0.50") {
		t.Errorf("notes %q", m.Notes)
	}
	// A lossy baseline is a lossy run: it is the one shown.
	rs[0].Baseline.Delivery = Delivery{Expected: 10, Received: 9, Lost: 1}
	if m := medianRun(rs); m != rs[0] || !m.Bad() {
		t.Fatalf("lossy baseline hidden by the median")
	}
	all := appendRun(nil, rs[0])
	if len(all) != 2 || all[0] != rs[0].Baseline || !all[0].Delivery.Bad() {
		t.Fatalf("baseline not listed as a result of its own: %v", all)
	}
	var b bytes.Buffer
	WriteTable(&b, "peerfan", all)
	if !strings.Contains(b.String(), "!!! LOSS !!! mlesd/single/peerfan: lost 1") {
		t.Errorf("no loss line for the baseline:\n%s", b.String())
	}
}

func TestTallyPubChecksDataNotSyncFrames(t *testing.T) {
	a, b := NewReceiver(0, 0, syncPub), NewReceiver(1, 0, syncPub)
	for _, r := range []*Receiver{a, b} {
		r.Observe(Trailer{Pub: syncPub, Seq: 7}) // the sync frames before it were lost, by design
		r.Observe(Trailer{Pub: syncPub, Seq: 8})
		for q := range uint64(5) {
			r.Observe(Trailer{Pub: 0, Seq: q})
		}
	}
	if d := tallyPub([]*Receiver{a, b}, 0, 5); d.Bad() || d.Received != 10 || d.Expected != 10 {
		t.Fatalf("clean run judged %+v", d)
	}
	b.Observe(Trailer{Pub: 0, Seq: 3})
	if d := tallyPub([]*Receiver{a, b}, 0, 6); d.Lost != 2 || d.Dup != 1 || !d.Bad() {
		t.Fatalf("verdict %+v", d)
	}
}

func TestCheckTopologies(t *testing.T) {
	for _, ok := range [][]string{{"single", "peer"}, {"peer"}, {"peer", "single"}} {
		if err := CheckTopologies(ok); err != nil {
			t.Errorf("%v: %v", ok, err)
		}
	}
	for _, bad := range [][]string{nil, {"peer", "peer"}, {"ring"}} {
		if CheckTopologies(bad) == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

func TestPeerScenariosAreMlesdOnlyAndNotInTheDefaultSet(t *testing.T) {
	for _, s := range ExtraScenarios {
		if !isPeerScenario(s) {
			continue
		}
		if Scenarios[s] == nil || Supports(s, "nats") || !Supports(s, "mlesd") {
			t.Errorf("%s: registered %v, nats %v, mlesd %v", s, Scenarios[s] != nil, Supports(s, "nats"), Supports(s, "mlesd"))
		}
		for _, d := range ScenarioOrder {
			if d == s {
				t.Errorf("%s is in the default set", s)
			}
		}
	}
	if !Supports("fanout", "redis") {
		t.Error("fanout not for every server")
	}
}

func TestParseMetricsKeepsLabelledSeries(t *testing.T) {
	page := "# HELP mlesd_peer_uplinks Uplinks.\n# TYPE mlesd_peer_uplinks gauge\n" +
		"mlesd_peer_uplinks{state=\"up\"} 1\nmlesd_peer_uplinks{state=\"down\"} 0\nmlesd_frames_out_total 1.5e+07\n"
	v := parseMetrics(page)
	if v[`mlesd_peer_uplinks{state="up"}`] != 1 || v["mlesd_frames_out_total"] != 1.5e7 || len(v) != 3 {
		t.Fatalf("parsed %v", v)
	}
	if got := uplinkGauges(v); got != `mlesd_peer_uplinks{state="down"} 0, mlesd_peer_uplinks{state="up"} 1` {
		t.Errorf("gauges %q", got)
	}
}

func TestServerLogsAreNeverOverwritten(t *testing.T) {
	// A port comes back free: B's log of one run must survive A of a later one.
	dir := t.TempDir()
	var paths []string
	for i := range 3 {
		f, path, err := createLog(dir, "mlesd", 4242)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(f, "server %d\n", i)
		f.Close()
		paths = append(paths, filepath.Base(path))
	}
	if strings.Join(paths, " ") != "mlesd-4242.log mlesd-4242-2.log mlesd-4242-3.log" {
		t.Fatalf("logs %v", paths)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "mlesd-4242.log")); string(b) != "server 0\n" {
		t.Fatalf("first log now %q", b)
	}
}
