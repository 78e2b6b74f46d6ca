package harness

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func sampleResults() []*Result {
	mk := func(server string, v float64) *Result {
		r := &Result{Scenario: "fanout", Server: server, Params: map[string]string{"subs": "100"}}
		r.SetPrimary("delivered msgs/s", "msg/s", v, true)
		r.Add("elapsed", "s", 2.5, false)
		return r
	}
	lat := func(server string, v float64) *Result {
		r := &Result{Scenario: "latency", Server: server}
		r.SetPrimary("p99", "s", v, false)
		return r
	}
	lossy := mk("redis", 500)
	lossy.Delivery = Delivery{Expected: 10, Received: 7, Lost: 3}
	return []*Result{
		mk("mlesd", 3000), mk("nats", 1000), lossy,
		lat("mlesd", 0.001), lat("nats", 0.004),
		{Scenario: "latency", Server: "redis", Failed: "redis exited\nlog tail"},
	}
}

func TestRatioIsHowManyTimesBetterThanNATS(t *testing.T) {
	rs := sampleResults()
	FillRatios(rs)
	want := map[string]float64{"fanout/mlesd": 3, "fanout/nats": 1, "fanout/redis": 0.5, "latency/mlesd": 4, "latency/nats": 1, "latency/redis": 0}
	for _, r := range rs {
		if got := r.VsNATS; got != want[r.Scenario+"/"+r.Server] {
			t.Errorf("%s/%s: ratio %v, want %v", r.Scenario, r.Server, got, want[r.Scenario+"/"+r.Server])
		}
	}
}

func TestTableHasOneRowPerServerAndARatioColumn(t *testing.T) {
	rs := sampleResults()
	FillRatios(rs)
	var b bytes.Buffer
	WriteTable(&b, "fanout", rs)
	out := b.String()
	for _, s := range []string{"== fanout (subs=100)", "×NATS", "3.00", "0.50", "delivered msgs/s", "2.500s"} {
		if !strings.Contains(out, s) {
			t.Errorf("table lacks %q:\n%s", s, out)
		}
	}
	rows := 0
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) > 0 && (f[0] == "mlesd" || f[0] == "nats" || f[0] == "redis") {
			rows++
		}
	}
	if rows != 3 {
		t.Errorf("%d rows, want 3:\n%s", rows, out)
	}
}

func TestTableShoutsLoss(t *testing.T) {
	rs := sampleResults()
	var b bytes.Buffer
	WriteTable(&b, "fanout", rs)
	if !strings.Contains(b.String(), "!!! LOSS !!! redis/fanout: lost 3") {
		t.Errorf("no loss line:\n%s", b.String())
	}
}

func TestTableMarksFailedRuns(t *testing.T) {
	var b bytes.Buffer
	WriteTable(&b, "latency", sampleResults())
	if !strings.Contains(b.String(), "FAILED") || !strings.Contains(b.String(), "redis FAILED: redis exited") {
		t.Errorf("failed run not shown:\n%s", b.String())
	}
}

func TestJSONCarriesEveryResult(t *testing.T) {
	var b bytes.Buffer
	if err := WriteJSON(&b, map[string]string{"nproc": "2"}, sampleResults()); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Environment map[string]string
		Results     []Result
	}
	if err := json.Unmarshal(b.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Results) != 6 || doc.Environment["nproc"] != "2" || doc.Results[2].Delivery.Lost != 3 {
		t.Fatalf("decoded %+v", doc)
	}
}

func TestFormatValue(t *testing.T) {
	for _, c := range []struct {
		v    float64
		unit string
		want string
	}{
		{0.000123, "s", "123.0µs"}, {0.0412, "s", "41.20ms"}, {2.5, "s", "2.500s"},
		{3_400_000, "msg/s", "3.40M"}, {12_345, "", "12.3k"}, {42, "", "42"}, {1.5, "KB", "1.50"},
	} {
		if got := FormatValue(c.v, c.unit); got != c.want {
			t.Errorf("FormatValue(%v, %q) = %q, want %q", c.v, c.unit, got, c.want)
		}
	}
}

func TestRawNATSRowGetsItsOwnRatioColumn(t *testing.T) {
	rs := sampleResults()[:3]
	raw := &Result{Scenario: "fanout", Server: "nats-raw"}
	raw.SetPrimary("delivered msgs/s", "msg/s", 1500, true)
	rs = append(rs, raw)
	FillRatios(rs)
	if rs[0].VsNATSRaw != 2 || rs[0].VsNATS != 3 {
		t.Fatalf("mlesd ratios %v %v", rs[0].VsNATS, rs[0].VsNATSRaw)
	}
	var b bytes.Buffer
	WriteTable(&b, "fanout", rs)
	if !strings.Contains(b.String(), "×NATS-raw") {
		t.Errorf("no raw column:\n%s", b.String())
	}
}

func TestMarkdownTableHasAHeaderRowPerServer(t *testing.T) {
	rs := sampleResults()
	FillRatios(rs)
	var b bytes.Buffer
	WriteMarkdown(&b, "fanout", rs)
	out := b.String()
	if !strings.Contains(out, "### fanout (subs=100)") || !strings.Contains(out, "| server | delivered msgs/s (msg/s) |") ||
		!strings.Contains(out, "| mlesd | 3000 |") || strings.Count(out, "\n| ") != 5 {
		t.Errorf("markdown:\n%s", out)
	}
}
