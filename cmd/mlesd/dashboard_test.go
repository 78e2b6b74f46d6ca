package main

// The Grafana dashboard in deploy/ is checked against a real mlesd: every
// metric its queries name must be one /metrics serves.

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mlesd/mlesd/internal/mlestest"
	"github.com/mlesd/mlesd/metrics"
)

// dashboardQueries returns every Prometheus expression of the dashboard's
// panels, by panel title.
func dashboardQueries(t *testing.T) map[string][]string {
	t.Helper()
	raw, err := os.ReadFile("../../deploy/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string
			Type    string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("deploy/grafana-dashboard.json: %v", err)
	}
	q := map[string][]string{}
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			q[p.Title] = append(q[p.Title], tg.Expr)
		}
	}
	return q
}

// metricName matches the names of the metrics a query reads (ours, Go's and
// the process collector's); PromQL functions and labels never look like that.
var metricName = regexp.MustCompile(`\b(?:mlesd|go|process)_[a-z0-9_]+\b`)

// servedNames scrapes /metrics and returns the metric family names in it.
func servedNames(t *testing.T, addr string) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	for series := range scrape(t, addr) {
		if i := strings.IndexByte(series, '{'); i >= 0 {
			series = series[:i]
		}
		names[series] = true
	}
	return names
}

func TestGrafanaDashboardQueriesNameServedMetrics(t *testing.T) {
	pki := newTestPKI(t)
	waddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(mlestest.FreePort(t)))
	deadPeer := net.JoinHostPort("127.0.0.1", strconv.Itoa(mlestest.FreePort(t)))
	// Every optional part on, so that all of its metrics exist: TLS,
	// gateway (one session at most, to see a refusal) and peering (to a port
	// nobody listens on: uplinks fail and are counted).
	p, tlsAddr, maddr := startTLSMlesd(t, pki, "--ws-listen", waddr, "--ws-max-sessions", "1",
		"--peer", deadPeer, "--peer-backoff", "50ms")
	p.WaitLog(t, "websocket gateway listening")

	// Events behind the labelled counters, which have no series before.
	bad := mlestest.Join(t, p.Addr, "wrong", "intruder", "dash") // wrong-key close
	mlestest.ExpectClosed(t, bad.NC)
	mlestest.Exchange(t, p.Addr, key) // a channel with members: uplinks to the dead peer
	if nc, err := net.Dial("tcp", tlsAddr); err == nil {
		_, _ = nc.Write([]byte("not a TLS hello\r\n\r\n"))
		_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _ = nc.Read(make([]byte, 64))
		nc.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	opts := &websocket.DialOptions{Subprotocols: []string{"mles-websocket"}}
	first, _, err := websocket.Dial(ctx, "ws://"+waddr+"/", opts)
	if err != nil {
		t.Fatalf("websocket: %v", err)
	}
	defer first.CloseNow()
	if c, resp, err := websocket.Dial(ctx, "ws://"+waddr+"/", opts); err == nil {
		c.CloseNow()
		t.Fatal("a second websocket session was accepted with --ws-max-sessions 1")
	} else if resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("second websocket session: %v, want 503", err)
	}

	// Counters with a reason label that this test cannot make move without
	// starving the process; they must still be ones the collector declares.
	needsEvent := map[string]string{"mlesd_accept_errors_total": "only after running out of file descriptors"}
	waitMetric(t, maddr, "the TLS failure, the refused session and a dial failure", func(m map[string]float64) bool {
		var tlsFail, wsLimited bool
		for s := range m {
			tlsFail = tlsFail || strings.HasPrefix(s, "mlesd_tls_handshake_failures_total{")
			wsLimited = wsLimited || strings.HasPrefix(s, "mlesd_ws_sessions_limited_total{")
		}
		return tlsFail && wsLimited && m["mlesd_peer_dial_failures_total"] > 0
	})
	served := servedNames(t, maddr)
	checked := 0
	for title, exprs := range dashboardQueries(t) {
		for _, e := range exprs {
			names := metricName.FindAllString(e, -1)
			if len(names) == 0 {
				t.Errorf("panel %q: query %q names no metric", title, e)
			}
			for _, n := range names {
				checked++
				if served[n] {
					continue
				}
				if why, ok := needsEvent[n]; ok && declared(n) {
					t.Logf("panel %q: %s has no series yet (%s); the collector declares it", title, n, why)
					continue
				}
				t.Errorf("panel %q: query %q names %s, which /metrics does not serve", title, e, n)
			}
		}
	}
	if checked < 30 {
		t.Fatalf("only %d metric names in the dashboard's queries: the dashboard did not parse as expected", checked)
	}
	// And the other way round: every mlesd_ metric served is on the dashboard.
	onDashboard := map[string]bool{}
	for _, exprs := range dashboardQueries(t) {
		for _, e := range exprs {
			for _, n := range metricName.FindAllString(e, -1) {
				onDashboard[n] = true
			}
		}
	}
	var missing []string
	for n := range served {
		if strings.HasPrefix(n, "mlesd_") && !onDashboard[n] {
			missing = append(missing, n)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("metrics served but on no panel: %v", missing)
	}
}

// declared reports whether the metrics collector describes a metric name.
func declared(name string) bool {
	ch := make(chan *prometheus.Desc, 100)
	metrics.NewCollector(metrics.Sources{}).Describe(ch)
	close(ch)
	for d := range ch {
		if strings.Contains(d.String(), `fqName: "`+name+`"`) {
			return true
		}
	}
	return false
}
