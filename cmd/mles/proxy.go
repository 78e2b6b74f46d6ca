package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/mlesd/mlesd/client"
	"github.com/mlesd/mlesd/gateway"
)

const proxyDescription = `
A WebSocket gateway in front of any Mles server (mlesd, or the original
Rust server): browsers connect with subprotocol "mles-websocket" and send
CBOR triplets; each (uid, channel) becomes one TCP connection to the
server, keyed as a client would (MLES_KEY / --mles-key, or this host's own
address plus MLES_ADDR_KEY). The demo page is served at "/".
Runs until SIGINT/SIGTERM (exit 0).`

var proxyCommand = command{
	name:     "proxy",
	synopsis: "--listen :8076 -s HOST[:8077]",
	summary:  "WebSocket gateway (subprotocol mles-websocket) and demo page in front of any Mles server",
	desc:     proxyDescription,
	setup:    setupProxy,
}

func setupProxy(e env, fs *flagSet) func([]string) error {
	var listen, server, key, logLevel string
	var noDemo bool
	fs.String(&listen, "listen", "", "HOST:PORT", gateway.DefaultListen, "where WebSocket clients and the demo page are served")
	fs.String(&server, "server", "s", "HOST[:PORT]", "localhost:8077", "Mles server (TCP; port 8077 when omitted)")
	fs.String(&key, "mles-key", "", "KEY", "", "shared key, as the server's MLES_KEY (default $MLES_KEY)")
	fs.Bool(&noDemo, "no-demo", "", "do not serve the demo page at /")
	fs.String(&logLevel, "log-level", "", "LEVEL", "info", "debug, info, warn or error")
	return func(args []string) error {
		if len(args) > 0 {
			return usageErr("unexpected argument %q", args[0])
		}
		var level slog.Level
		if err := level.UnmarshalText([]byte(logLevel)); err != nil {
			return usageErr("--log-level %q: want debug, info, warn or error", logLevel)
		}
		log := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: level}))
		cf := connFlags{mlesKey: key}
		gw, err := gateway.Listen(listen, gateway.Config{
			Server: client.ServerAddr(server),
			Keys:   cf.keys(e),
			Demo:   !noDemo,
			Logger: log,
		})
		if err != nil {
			return fmt.Errorf("cannot listen: %w", err)
		}
		log.Info("mles proxy listening", slog.String("addr", gw.Addr().String()), slog.String("server", client.ServerAddr(server)))
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
}
