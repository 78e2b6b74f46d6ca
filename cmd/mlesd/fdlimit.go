package main

import (
	"log/slog"
	"syscall"
)

// fdReserve is the descriptors mlesd needs besides one per connection:
// listeners, the event loops' epoll and event fds, the metrics and pprof
// servers, log and profile files, peers being dialled.
const fdReserve = 64

// fdsPerBridged is what one TLS or WebSocket connection costs: the client's
// socket plus both ends of the socketpair that feeds the engine.
const fdsPerBridged = 3

// raiseFDLimit lifts the soft limit on open files to the hard limit (Go's
// runtime does the same at start on Linux; doing it here too makes the
// result explicit and logged) and returns the limit in force.
func raiseFDLimit() (soft, hard uint64, err error) {
	var lim syscall.Rlimit
	if err = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, 0, err
	}
	if lim.Cur < lim.Max {
		want := lim
		want.Cur = lim.Max
		if err = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err == nil {
			lim = want
		}
	}
	return lim.Cur, lim.Max, err
}

// checkFDLimit raises the fd limit and warns when --max-conns promises more
// connections than the limit allows. Past the limit nothing breaks: the
// acceptor closes what it cannot take and counts it
// (mlesd_accept_errors_total), but the operator should know.
func checkFDLimit(o Options, log *slog.Logger) {
	soft, hard, err := raiseFDLimit()
	if soft == 0 {
		log.Warn("cannot read the open-file limit", slog.String("error", err.Error()))
		return
	}
	if err != nil {
		log.Debug("cannot raise the open-file limit", slog.Uint64("soft", soft), slog.Uint64("hard", hard),
			slog.String("error", err.Error()))
	}
	room := int64(soft) - fdReserve
	if o.TLSListen != "" || o.WSListen != "" {
		// Bridged clients cost three descriptors; assume the worst case.
		room = room / fdsPerBridged
	}
	if room < 1 {
		room = 1
	}
	if o.MaxConns <= 0 || int64(o.MaxConns) > room {
		log.Warn("--max-conns exceeds what the open-file limit allows: connections past it are closed at accept",
			slog.Int("max_conns", o.MaxConns), slog.Uint64("fd_limit", soft), slog.Int64("about_connections", room))
	}
}
