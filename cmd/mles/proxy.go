package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/mlesd/mlesd/gateway"
)

const proxyDescription = `
A WebSocket gateway in front of any Mles server (mlesd, or the original
Rust server): browsers connect with subprotocol "mles-websocket" and send
CBOR triplets; each (uid, channel) becomes one TCP connection to the
server, keyed as a client would (MLES_KEY / --key, or this host's own
address plus MLES_ADDR_KEY). The demo page is served at "/".
Runs until SIGINT/SIGTERM (exit 0).`

func runProxy(e env, args []string) error {
	fs := newFlagSet(e, "proxy", "--listen :8076 --server HOST[:8077]", proxyDescription)
	listen := fs.String("listen", gateway.DefaultListen, "`host:port` for WebSocket clients and the demo page")
	server := fs.String("server", "localhost:8077", "Mles server `host[:port]` (port 8077 when omitted)")
	key := fs.String("key", "", "shared key (default $MLES_KEY); must match the server's")
	demo := fs.Bool("demo", true, "serve the demo page at /")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return usageErr("--log-level %q: want debug, info, warn or error", *logLevel)
	}
	log := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: level}))
	cf := connFlags{key: *key}
	gw, err := gateway.Listen(*listen, gateway.Config{
		Server: serverAddr(*server),
		Keys:   cf.keys(e),
		Demo:   *demo,
		Logger: log,
	})
	if err != nil {
		return fmt.Errorf("cannot listen: %w", err)
	}
	log.Info("mles proxy listening", slog.String("addr", gw.Addr().String()), slog.String("server", serverAddr(*server)))
	select {
	case <-e.ctx.Done():
	case err := <-gw.Done():
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	gw.Close(ctx)
	st := gw.Stats()
	log.Info("mles proxy stopped", slog.Uint64("messages_in", st.MessagesIn), slog.Uint64("messages_out", st.MessagesOut),
		slog.Uint64("dropped", st.Dropped))
	return nil
}
