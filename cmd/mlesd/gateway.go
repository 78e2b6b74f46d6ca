package main

// The WebSocket gateway (package gateway) inside mlesd: --ws-listen ADDR
// serves the mles-websocket endpoint and the demo page, bridging each
// WebSocket client to mlesd's own TCP listener on loopback, so that the
// engine's limits, back-pressure, history and duplicate rules apply to it
// unchanged.
//

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
// bridging to the Mles server at mlesAddr with keys. stop closes the listener
// and every WebSocket connection (at most 5 s); stats returns the gateway's
// counters (sessions, TCP uplinks, messages in and out, frames dropped for
// slow WebSocket clients, refused handshakes) for the metrics collector.
func startGateway(wsListen, mlesAddr string, keys codec.KeyConfig, log *slog.Logger) (stop func(), stats func() gateway.Stats, err error) {
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
