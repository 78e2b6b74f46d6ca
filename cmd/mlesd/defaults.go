package main

import "time"

// mlesd's own defaults; the server's limits are the packages' (engine,
// router, gateway, peering, tlsserve Default* constants), which the flags
// show in --help.
const (
	// defaultLogLevel: info logs starts, stops, refusals and failures, each
	// rate-limited; per-connection detail is debug.
	defaultLogLevel = "info"
	// defaultLogFormat is for people; json is for log collectors.
	defaultLogFormat = "text"
	// metricsReadHeaderTimeout bounds a scrape's request headers, so an idle
	// client cannot hold a connection to the metrics server.
	metricsReadHeaderTimeout = 10 * time.Second
	// stopGrace is how long a stop may take beyond twice --drain-timeout
	// (the drain, then closing) before mlesd exits 1 saying so.
	stopGrace = 10 * time.Second
	// tlsBridgeLinger: after the engine closed its side of the TLS
	// connections, their bridges get this long to pass on what it sent.
	tlsBridgeLinger = 2 * time.Second
	// drainPoll is how often a process that handed over (SIGUSR2) looks
	// whether its last connection has closed, so that it exits promptly.
	drainPoll = 50 * time.Millisecond
)
