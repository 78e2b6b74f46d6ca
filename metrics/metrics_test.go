package metrics

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mlesd/mlesd/engine"
	"github.com/mlesd/mlesd/gateway"
	"github.com/mlesd/mlesd/peering"
)

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	body, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(body)
}

// Every engine counter appears under its documented name with its value,
// closes by reason as labels, TLS failures by reason.
func TestMetricsShowTheEngineStatsAtScrapeTime(t *testing.T) {
	var frames atomic.Uint64
	h := Handler(Sources{
		Engine: func() engine.Stats {
			return engine.Stats{OpenConns: 3, Accepted: 7, Joins: 5, FramesIn: frames.Load(), BytesIn: 1600,
				FramesOut: 200, BytesOut: 3200, Dropped: 9, LoopQueueDropped: 11, BusyNanos: 1_500_000_000, HistoryBytes: 4096,
				Channels: 2, ClosedByRule: map[string]uint64{"wrong-key": 2, "max-conns": 1},
				AcceptErrors: map[string]uint64{"emfile": 6}}
		},
		TLS: func() (uint64, map[string]uint64) { return 4, map[string]uint64{"bad-client-cert": 1} },
		Gateway: func() gateway.Stats {
			return gateway.Stats{Sessions: 2, Uplinks: 2, MessagesIn: 10, MessagesOut: 20, Dropped: 1, Refused: 3}
		},
		Peering: func() peering.Stats {
			return peering.Stats{Connecting: 1, Up: 200, Backoff: 3, Linger: 4, Ups: 210, Downs: 8, DialFailures: 5}
		},
		Version: "v1.2.3", Commit: "abc",
	})
	frames.Store(100)
	code, body := get(t, h, "/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	for _, want := range []string{
		"mlesd_connections_open 3", "mlesd_connections_accepted_total 7", "mlesd_joins_total 5",
		"mlesd_frames_in_total 100", "mlesd_bytes_in_total 1600", "mlesd_frames_out_total 200",
		"mlesd_bytes_out_total 3200", "mlesd_frames_dropped_total 9", "mlesd_loop_queue_dropped_total 11", "mlesd_event_loop_busy_seconds_total 1.5",
		"mlesd_history_bytes 4096", "mlesd_channels 2", "mlesd_auth_failures_total 2",
		`mlesd_connections_closed_by_server_total{reason="wrong-key"} 2`,
		`mlesd_connections_closed_by_server_total{reason="max-conns"} 1`,
		`mlesd_accept_errors_total{reason="emfile"} 6`,
		"mlesd_tls_handshakes_total 4", `mlesd_tls_handshake_failures_total{reason="bad-client-cert"} 1`,
		`mlesd_build_info{commit="abc",version="v1.2.3"} 1`,
		"mlesd_ws_sessions_open 2", "mlesd_ws_uplinks_open 2", "mlesd_ws_messages_in_total 10",
		"mlesd_ws_messages_out_total 20", "mlesd_ws_frames_dropped_total 1", "mlesd_ws_handshakes_refused_total 3", "go_goroutines", "process_open_fds",
		`mlesd_peer_uplinks{state="connecting"} 1`, `mlesd_peer_uplinks{state="up"} 200`,
		`mlesd_peer_uplinks{state="backoff"} 3`, `mlesd_peer_uplinks{state="linger"} 4`,
		"mlesd_peer_uplink_ups_total 210", "mlesd_peer_uplink_downs_total 8", "mlesd_peer_dial_failures_total 5",
	} {
		if !hasSample(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if !strings.Contains(body, "# HELP mlesd_loop_queue_dropped_total Frames one event loop could not queue") {
		t.Error("mlesd_loop_queue_dropped_total has no help line")
	}
	if hasSample(body, "mlesd_frames_in_total 10") || hasSample(body, "mlesd_frames_in_total 1000") {
		t.Error("hasSample matches a prefix of the value")
	}
	frames.Store(150)
	if _, body = get(t, h, "/metrics"); !hasSample(body, "mlesd_frames_in_total 150") {
		t.Error("a second scrape does not read the counters again")
	}
}

// Without a TLS listener, a gateway or peers there are no TLS, WebSocket or
// peering metrics.
func TestNoTLSOrWebSocketMetricsWithoutThem(t *testing.T) {
	h := Handler(Sources{Engine: func() engine.Stats { return engine.Stats{} }})
	if _, body := get(t, h, "/metrics"); strings.Contains(body, "mlesd_tls_") || strings.Contains(body, "mlesd_ws_") ||
		strings.Contains(body, "mlesd_peer_") {
		t.Error("TLS, WebSocket or peering metrics without a TLS listener, gateway or --peer")
	}
}

// /healthz is 200 always; /readyz follows Ready.
func TestHealthAndReadiness(t *testing.T) {
	var ready atomic.Bool
	h := Handler(Sources{Engine: func() engine.Stats { return engine.Stats{} }, Ready: ready.Load})
	if code, body := get(t, h, "/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, _ := get(t, h, "/readyz"); code != 503 {
		t.Errorf("/readyz before ready: %d, want 503", code)
	}
	ready.Store(true)
	if code, body := get(t, h, "/readyz"); code != 200 || body != "ready\n" {
		t.Errorf("/readyz when ready: %d %q", code, body)
	}
	ready.Store(false)
	if code, _ := get(t, h, "/readyz"); code != 503 {
		t.Errorf("/readyz while stopping: %d, want 503", code)
	}
}

// BenchmarkScrape is the cost of one /metrics scrape: all of it (mlesd's
// collector plus the Go runtime and process collectors), and mlesd's
// collector alone. Nothing of it is on the per-frame path.
func BenchmarkScrape(b *testing.B) {
	src := Sources{Engine: func() engine.Stats {
		return engine.Stats{ClosedByRule: map[string]uint64{"wrong-key": 2, "max-conns": 1}}
	}}
	only := prometheus.NewRegistry()
	only.MustRegister(NewCollector(src))
	for _, bc := range []struct {
		name string
		h    http.Handler
	}{{"all", Handler(src)}, {"mlesd-only", promhttp.HandlerFor(only, promhttp.HandlerOpts{})}} {
		b.Run(bc.name, func(b *testing.B) {
			req := httptest.NewRequest("GET", "/metrics", nil)
			b.ReportAllocs()
			for b.Loop() {
				bc.h.ServeHTTP(httptest.NewRecorder(), req)
			}
		})
	}
}

// hasSample reports whether body has want as a whole sample line: "name
// value" (or "name{labels} value") exactly, or, for a bare name, a line of
// that metric with any value.
func hasSample(body, want string) bool {
	for _, line := range strings.Split(body, "\n") {
		if line == want {
			return true
		}
		if !strings.Contains(want, " ") && (strings.HasPrefix(line, want+" ") || strings.HasPrefix(line, want+"{")) {
			return true
		}
	}
	return false
}
