// Package metrics serves mlesd's Prometheus metrics and health checks.
//
// Every mlesd metric is read at scrape time from engine.Stats (and the TLS
// listener's stats), which sums per-event-loop atomic counters: nothing is
// added to the per-frame path, no lock and no allocation. A scrape costs one
// Stats call per source.
//
// Endpoints of Handler:
//
//	/metrics  Prometheus text format (mlesd_* plus the Go runtime and process collectors)
//	/healthz  200 "ok" while the process runs
//	/readyz   200 "ready" once the engine listens and until shutdown begins, else 503
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mlesd/mlesd/engine"
	"github.com/mlesd/mlesd/gateway"
	"github.com/mlesd/mlesd/peering"
)

// Sources is where the collector reads from. Engine is required; the others
// may be nil.
type Sources struct {
	Engine func() engine.Stats
	// TLS returns successful handshakes and failed ones by reason (nil: no TLS listener).
	TLS func() (ok uint64, failed map[string]uint64)
	// Gateway returns the WebSocket gateway's counters (nil: no gateway).
	Gateway func() gateway.Stats
	// Peering returns the uplinks to peer servers (nil: no --peer).
	Peering func() peering.Stats
	// Ready reports whether the server takes connections (for /readyz).
	Ready func() bool
	// Version and Commit label mlesd_build_info.
	Version, Commit string
}

var (
	descOpen     = desc("connections_open", "Connections open now (TCP and TLS).")
	descAccepted = desc("connections_accepted_total", "Connections accepted (TCP, and TLS after a successful handshake).")
	descClosed   = desc("connections_closed_by_server_total", "Connections the server closed, by reason (refusals, limits, bad input, wrong key, stalls, shutdown).", "reason")
	descAcceptEr = desc("accept_errors_total", "Accept errors, by reason (emfile, enfile: out of file descriptors; the waiting connection is closed at once and accepting resumes with back-off).", "reason")
	descAuthFail = desc("auth_failures_total", "Joins refused for a wrong key (also counted in connections_closed_by_server_total{reason=\"wrong-key\"}).")
	descJoins    = desc("joins_total", "Successful joins.")
	descMoved    = desc("connections_moved_total", "Connections moved at their join to the event loop that holds their small channel (no client sees it).")
	descChannels = desc("channels", "Channels now.")
	descFramesIn = desc("frames_in_total", "Frames received after the join and forwarded (join frames not counted).")
	descBytesIn  = desc("bytes_in_total", "Bytes of the frames counted in frames_in_total, headers included.")
	descFramesOu = desc("frames_out_total", "Frames handed to receivers' sockets whole (forwarded joins and history included).")
	descBytesOut = desc("bytes_out_total", "Bytes handed to receivers' sockets.")
	descDropped  = desc("frames_dropped_total", "Frames dropped for receivers that were not keeping up (each receiver counted once per frame).")
	descLoopDrop = desc("loop_queue_dropped_total", "Frames one event loop could not queue for another loop that was far behind (its queue bound reached); each also counts in frames_dropped_total, once per member it was for.")
	descHistory  = desc("history_bytes", "Bytes of frames held in channel history.")
	descBusy     = desc("event_loop_busy_seconds_total", "Time the event loops spent handling traffic, summed over loops.")
	descTLS      = desc("tls_handshakes_total", "TLS handshakes that succeeded.")
	descTLSFail  = desc("tls_handshake_failures_total", "TLS handshakes that failed, by reason.", "reason")
	descWSOpen   = desc("ws_sessions_open", "WebSocket gateway sessions open now.")
	descWSUp     = desc("ws_uplinks_open", "The gateway's (uid, channel) pairs open now, each one engine connection.")
	descWSUnfin  = desc("ws_unfinished_bytes", "Memory held by WebSocket messages still arriving (buffer capacity), bounded by --ws-max-unfinished-bytes.")
	descWSQueued = desc("ws_queued_bytes", "Frames queued for or being written to WebSocket clients, in bytes, bounded by --ws-max-queued-bytes (plus one frame per client).")
	descWSLimit  = desc("ws_sessions_limited_total", "WebSocket sessions refused (503) or closed by a gateway limit, by reason.", "reason")
	descWSIn     = desc("ws_messages_in_total", "WebSocket messages forwarded to the engine.")
	descWSOut    = desc("ws_messages_out_total", "Frames written to WebSocket clients.")
	descWSDrop   = desc("ws_frames_dropped_total", "Frames dropped for WebSocket clients that did not keep up.")
	descWSRef    = desc("ws_handshakes_refused_total", "WebSocket handshakes refused (no mles-websocket subprotocol).")
	descPeerUp   = desc("peer_uplinks", "Uplinks to peer servers (one per channel with members and peer), by state: connecting, up, backoff, and linger (its channel has no members; it closes when the linger ends, counted in its state too).", "state")
	descPeerUps  = desc("peer_uplink_ups_total", "Times an uplink to a peer server came up.")
	descPeerDown = desc("peer_uplink_downs_total", "Times an uplink that was handed to the engine ended other than by its channel emptying (refusals included).")
	descPeerDial = desc("peer_dial_failures_total", "Connection attempts to peer servers that failed.")
	descBuild    = desc("build_info", "Always 1; labels name the build.", "version", "commit")
)

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("mlesd_"+name, help, labels, nil)
}

// Collector is a prometheus.Collector that reads Sources at each scrape.
type Collector struct{ src Sources }

// NewCollector returns a collector over src.
func NewCollector(src Sources) *Collector { return &Collector{src: src} }

// Describe sends every metric's description.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descOpen, descAccepted, descClosed, descAcceptEr, descAuthFail, descJoins, descMoved,
		descChannels, descFramesIn, descBytesIn, descFramesOu, descBytesOut, descDropped, descLoopDrop, descHistory,
		descBusy, descTLS, descTLSFail, descWSOpen, descWSUp, descWSUnfin, descWSQueued, descWSLimit, descWSIn, descWSOut, descWSDrop, descWSRef,
		descPeerUp, descPeerUps, descPeerDown, descPeerDial, descBuild} {
		ch <- d
	}
}

// Collect reads the sources once and sends every metric.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	st := c.src.Engine()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge(descOpen, float64(st.OpenConns))
	counter(descAccepted, float64(st.Accepted))
	for reason, n := range st.ClosedByRule {
		counter(descClosed, float64(n), reason)
	}
	for reason, n := range st.AcceptErrors {
		counter(descAcceptEr, float64(n), reason)
	}
	counter(descAuthFail, float64(st.ClosedByRule["wrong-key"]))
	counter(descJoins, float64(st.Joins))
	counter(descMoved, float64(st.Moved))
	gauge(descChannels, float64(st.Channels))
	counter(descFramesIn, float64(st.FramesIn))
	counter(descBytesIn, float64(st.BytesIn))
	counter(descFramesOu, float64(st.FramesOut))
	counter(descBytesOut, float64(st.BytesOut))
	counter(descDropped, float64(st.Dropped))
	counter(descLoopDrop, float64(st.LoopQueueDropped))
	gauge(descHistory, float64(st.HistoryBytes))
	counter(descBusy, float64(st.BusyNanos)/1e9)
	if c.src.TLS != nil {
		ok, failed := c.src.TLS()
		counter(descTLS, float64(ok))
		for reason, n := range failed {
			counter(descTLSFail, float64(n), reason)
		}
	}
	if c.src.Gateway != nil {
		gs := c.src.Gateway()
		gauge(descWSOpen, float64(gs.Sessions))
		gauge(descWSUp, float64(gs.Uplinks))
		gauge(descWSUnfin, float64(gs.UnfinishedBytes))
		gauge(descWSQueued, float64(gs.QueuedBytes))
		for reason, n := range gs.Limited {
			counter(descWSLimit, float64(n), reason)
		}
		counter(descWSIn, float64(gs.MessagesIn))
		counter(descWSOut, float64(gs.MessagesOut))
		counter(descWSDrop, float64(gs.Dropped))
		counter(descWSRef, float64(gs.Refused))
	}
	if c.src.Peering != nil {
		ps := c.src.Peering()
		gauge(descPeerUp, float64(ps.Connecting), "connecting")
		gauge(descPeerUp, float64(ps.Up), "up")
		gauge(descPeerUp, float64(ps.Backoff), "backoff")
		gauge(descPeerUp, float64(ps.Linger), "linger")
		counter(descPeerUps, float64(ps.Ups))
		counter(descPeerDown, float64(ps.Downs))
		counter(descPeerDial, float64(ps.DialFailures))
	}
	gauge(descBuild, 1, c.src.Version, c.src.Commit)
}

// Handler serves /metrics, /healthz and /readyz for src.
func Handler(src Sources) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(src),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if src.Ready == nil || !src.Ready() {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready\n"))
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return mux
}
