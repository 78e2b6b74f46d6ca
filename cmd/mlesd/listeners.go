package main

// What mlesd says about its listeners: one log line and one exit code for
// any listener that cannot be opened, and a warning when clients beyond
// this machine can connect without a shared key.

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// listenFailed logs that a listener could not be opened (err names the flag
// and the address, and the kernel's reason such as "address already in
// use") and returns the exit code for it.
func listenFailed(log *slog.Logger, err error) int {
	log.Error("cannot listen", slog.String("error", err.Error()))
	return exitFailure
}

// startPprof serves net/http/pprof on addr, or on ln when it was inherited
// from an old process (upgrade); the listener is opened before it returns,
// so a busy port fails the start like any other listener. Closing the
// returned listener stops it.
func startPprof(addr string, ln net.Listener, log *slog.Logger) (net.Listener, error) {
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", addr); err != nil {
			return nil, fmt.Errorf("--pprof %s: %w", addr, err)
		}
	}
	log.Info("pprof listening", slog.String("addr", ln.Addr().String()))
	go func() {
		if err := http.Serve(ln, nil); err != nil && !errors.Is(err, net.ErrClosed) {
			log.Error("pprof server failed", slog.String("error", err.Error()))
		}
	}()
	return ln, nil
}

// isLoopback reports whether a listen address accepts only local clients.
// An empty host or a wildcard listens on every interface; a host name
// other than localhost may resolve to anything.
func isLoopback(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// warnOpenWithoutKey warns when a Mles listener (TCP, TLS or WebSocket)
// accepts clients from beyond loopback and joins are checked only with
// address keys: SipHash of the client's own address, uid and channel,
// which anyone can compute (MLES_ADDR_KEY, when set, is a secret in them).
func warnOpenWithoutKey(o Options, log *slog.Logger) {
	if o.Key != "" || o.AddrKey != "" {
		return
	}
	var open []string
	for _, a := range append(append([]string(nil), o.Listen...), o.TLSListen, o.WSListen) {
		if a != "" && !isLoopback(a) {
			open = append(open, a)
		}
	}
	if len(open) > 0 {
		log.Warn("listening beyond loopback without a shared key: address keys are no secret, anyone who can "+
			"connect can join any channel; set --key (or MLES_KEY), or MLES_ADDR_KEY", slog.Any("addrs", open))
	}
}
