package main

// The WebSocket gateway (package gateway) inside mlesd: --ws-listen ADDR
// serves the mles-websocket endpoint and the demo page, handing each
// WebSocket client's pairs to the engine over socketpairs, so that the
// engine's limits, back-pressure, history and duplicate rules apply to it
// unchanged.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"syscall"
	"time"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/engine"
	"github.com/mlesd/mlesd/gateway"
)

// startGateway serves the WebSocket gateway and demo page on o.WSListen.
// Each (uid, channel) pair of a WebSocket session becomes one end of a
// socketpair adopted by the engine with the WebSocket client's own address,
// as TLS connections are: the engine's per-IP limit and address keys see
// the real client, not one loopback address shared by every client, and no
// loopback port or accept is spent per pair. stop closes the listener and
// every WebSocket connection (at most 5 s); stats returns the gateway's
// counters for the metrics collector.
//
// ln, when set, is the listener inherited from an old process (upgrade);
// the one served is returned as bound.
func startGateway(o Options, srv *engine.Server, keys codec.KeyConfig, ln net.Listener, log *slog.Logger) (stop func(), stats func() gateway.Stats, bound net.Listener, err error) {
	cfg := gateway.Config{
		Adopter:              srv,
		Keys:                 keys,
		Demo:                 true,
		MaxMessageBytes:      o.WSMaxMessageBytes,
		MaxUnfinishedBytes:   o.WSMaxUnfinished,
		MaxQueuedBytes:       o.WSMaxQueued,
		MaxSessions:          o.WSMaxSessions,
		MaxSessionsPerClient: o.WSMaxSessionsClient,
		MaxPairs:             o.WSMaxPairs,
		MaxPairsPerClient:    o.WSMaxPairsClient,
		Logger:               log.With(slog.String("component", "gateway")),
	}
	var gw *gateway.Server
	if ln != nil {
		gw, err = gateway.Serve(ln, cfg)
	} else {
		gw, err = gateway.Listen(o.WSListen, cfg)
	}
	if err != nil {
		return nil, nil, nil, fmt.Errorf("--ws-listen %s: %w", o.WSListen, err)
	}
	var nofile syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &nofile) == nil && nofile.Cur < uint64(o.WSMaxSessions+2*o.WSMaxPairs) {
		// Not an error: pairs past the descriptors close their own session
		// (1013); the operator should know the limits cannot all be reached.
		log.Warn("the descriptor limit is below what the gateway's limits allow: sessions asking for a pair past it are closed",
			slog.Uint64("nofile", nofile.Cur), slog.Int("ws_max_sessions", o.WSMaxSessions), slog.Int("ws_max_pairs", o.WSMaxPairs))
	}
	log.Info("websocket gateway listening", slog.String("addr", gw.Addr().String()),
		slog.String("subprotocol", gateway.Subprotocol), slog.Int("max_sessions", o.WSMaxSessions),
		slog.Int("max_pairs", o.WSMaxPairs), slog.Int64("max_unfinished_bytes", o.WSMaxUnfinished))
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		gw.Close(ctx)
		st := gw.Stats()
		log.Info("websocket gateway stopped", slog.Uint64("messages_in", st.MessagesIn),
			slog.Uint64("messages_out", st.MessagesOut), slog.Uint64("dropped", st.Dropped))
	}, gw.Stats, gw.Listener(), nil
}

// loopbackAddr maps the engine's first bound listen address to one the
// gateway can dial on this host: an unspecified address (0.0.0.0, [::])
// becomes 127.0.0.1 (the [::] listener is dual stack) or [::1] for an
// IPv6-only wildcard; a specific address is used as it is.
func loopbackAddr(addrs []net.Addr) (string, error) {
	if len(addrs) == 0 {
		return "", errors.New("the Mles listener is not bound")
	}
	ta, ok := addrs[0].(*net.TCPAddr)
	if !ok {
		return addrs[0].String(), nil
	}
	ip := ta.IP
	if ip == nil || ip.IsUnspecified() {
		ip = net.IPv4(127, 0, 0, 1)
	}
	return net.JoinHostPort(ip.String(), strconv.Itoa(ta.Port)), nil
}
