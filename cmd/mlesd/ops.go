package main

// The TLS listener (package tlsserve) and the metrics endpoint (package
// metrics) inside mlesd.

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"

	"github.com/mlesd/mlesd/engine"
	"github.com/mlesd/mlesd/gateway"
	"github.com/mlesd/mlesd/metrics"
	"github.com/mlesd/mlesd/peering"
	"github.com/mlesd/mlesd/tlsserve"
)

// startTLS serves Mles over TLS on o.TLSListen, bridging every connection to
// srv (which must be Ready and listening).
// ln, when set, is the listener inherited from an old process (upgrade).
func startTLS(o Options, srv *engine.Server, ln net.Listener, log *slog.Logger) (*tlsserve.Server, error) {
	ts, err := tlsserve.New(tlsserve.Config{
		CertFile: o.TLSCert, KeyFile: o.TLSKey, ClientCAFile: o.TLSClientCA,
		HandshakeTimeout: o.TLSHandshakeTimeout,
		Logger:           log.With(slog.String("component", "tls")),
	}, srv)
	if err != nil {
		return nil, err
	}
	var addr net.Addr
	if ln != nil {
		addr, err = ts.Serve(ln)
	} else {
		addr, err = ts.Listen(o.TLSListen)
	}
	if err != nil {
		return nil, fmt.Errorf("--tls-listen %s: %w", o.TLSListen, err)
	}
	log.Info("tls listening", slog.String("addr", addr.String()),
		slog.Bool("client_certs_required", o.TLSClientCA != ""))
	return ts, nil
}

// startMetrics serves /metrics, /healthz and /readyz on addr. The TLS
// listener and the gateway's stats, once started, are stored in tls and gw
// (nil: no TLS listener, no gateway: no such metrics).
// ln, when set, is the listener inherited from an old process (upgrade).
// stop closes the server and its listener.
func startMetrics(addr string, ln net.Listener, srv *engine.Server, tls *atomic.Pointer[tlsserve.Server],
	gw *atomic.Pointer[func() gateway.Stats], peers func() peering.Stats, ready func() bool, log *slog.Logger) (stop func(), bound net.Listener, err error) {
	if ln == nil {
		if ln, err = net.Listen("tcp", addr); err != nil {
			return nil, nil, fmt.Errorf("--metrics %s: %w", addr, err)
		}
	}
	src := metrics.Sources{
		Engine:  srv.Stats,
		Peering: peers,
		Ready:   ready,
		Version: version,
		Commit:  commit,
	}
	if tls != nil {
		src.TLS = func() (uint64, map[string]uint64) {
			ts := tls.Load()
			if ts == nil {
				return 0, nil
			}
			st := ts.Stats()
			return st.HandshakesOK, st.HandshakesFailed
		}
	}
	if gw != nil {
		src.Gateway = func() gateway.Stats {
			if f := gw.Load(); f != nil {
				return (*f)()
			}
			return gateway.Stats{}
		}
	}
	h := metrics.Handler(src)
	hs := &http.Server{Handler: h, ReadHeaderTimeout: metricsReadHeaderTimeout}
	go func() {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server failed", slog.String("error", err.Error()))
		}
	}()
	log.Info("metrics listening", slog.String("addr", ln.Addr().String()))
	return func() { _ = hs.Close() }, ln, nil
}
