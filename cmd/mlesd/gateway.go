package main

// The WebSocket gateway (package gateway) inside mlesd: --ws-listen ADDR
// serves the mles-websocket endpoint and the demo page, bridging each
// WebSocket client to mlesd's own TCP listener on loopback, so that the
// engine's limits, back-pressure, history and duplicate rules apply to it
// unchanged.
//
// Wiring in main.go (three places):
//
//  1. In Options:
//
//	WSListen string
//
//  2. In parseOptions, next to the other flags:
//
//	fs.StringVar(&o.WSListen, "ws-listen", "", "`host:port` for the WebSocket gateway (subprotocol mles-websocket)\nand the demo page at /; off when empty (the original used :8076)")
//
//  3. In run, right after `go func() { served <- srv.Serve() }()`:
//
//	if o.WSListen != "" {
//		<-srv.Ready()
//		mlesAddr, err := loopbackAddr(srv.Addrs())
//		if err == nil {
//			var stopGateway func()
//			if stopGateway, err = startGateway(o.WSListen, mlesAddr, codec.KeyConfig{SharedKey: o.Key, AddrKey: o.AddrKey}, log); err == nil {
//				defer stopGateway()
//			}
//		}
//		if err != nil {
//			log.Error("websocket gateway failed", slog.String("error", err.Error()))
//			srv.Stop(context.Background())
//			return 1
//		}
//	}
//
//     (stopGateway runs after srv.Stop on the way out; the engine closing
//     its connections closes the WebSocket clients with status 1014 first,
//     which browser clients treat like any close: they reconnect.)

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/gateway"
)

// startGateway serves the WebSocket gateway and demo page on wsListen,
// bridging to the Mles server at mlesAddr with keys. stop closes the
// listener and every WebSocket connection (at most 5 s).
func startGateway(wsListen, mlesAddr string, keys codec.KeyConfig, log *slog.Logger) (stop func(), err error) {
	stop, _, err = startGatewayWithStats(wsListen, mlesAddr, keys, log)
	return stop, err
}

// startGatewayWithStats is startGateway that also returns the gateway's
// counters (WebSocket sessions, TCP uplinks, messages in and out, frames
// dropped for slow WebSocket clients, refused handshakes), for the metrics
// collector to read at scrape time.
func startGatewayWithStats(wsListen, mlesAddr string, keys codec.KeyConfig, log *slog.Logger) (stop func(), stats func() gateway.Stats, err error) {
	gw, err := gateway.Listen(wsListen, gateway.Config{
		Server: mlesAddr,
		Keys:   keys,
		Demo:   true,
		Logger: log.With(slog.String("component", "gateway")),
	})
	if err != nil {
		return nil, nil, fmt.Errorf("--ws-listen %s: %w", wsListen, err)
	}
	log.Info("websocket gateway listening", slog.String("addr", gw.Addr().String()),
		slog.String("subprotocol", gateway.Subprotocol), slog.String("mles", mlesAddr))
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		gw.Close(ctx)
		st := gw.Stats()
		log.Info("websocket gateway stopped", slog.Uint64("messages_in", st.MessagesIn),
			slog.Uint64("messages_out", st.MessagesOut), slog.Uint64("dropped", st.Dropped))
	}, gw.Stats, nil
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
