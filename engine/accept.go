package engine

// The engine accepts connections itself instead of letting gnet do it.
//
// Why: gnet v2's acceptor treats any accept error other than EAGAIN,
// EINTR, ECONNRESET and ECONNABORTED as fatal: on EMFILE ("too many open
// files") its main reactor exits and the whole engine stops, dropping every
// member (measured: `ulimit -n 64` and 100 connections ended mlesd). A server
// must ride out fd exhaustion as Go's net/http does: back off, retry, and
// keep serving the connections it has.
//
// How: each listen address is a Go net.Listener. One goroutine per listener
// accepts (Go's netpoller wakes it; it costs nothing while idle) and hands
// every connection to an event loop through gnet's Engine.Register, the same
// path TLS and uplinks take (adopt). gnet itself is started with one Unix
// listener in a private directory that is unlinked as soon as gnet has bound
// it, so nothing can ever connect to it: gnet's fatal accept path is never
// reached. Register is serialised by registerMu because gnet's round-robin
// balancer is not safe from several goroutines, and it is only called after
// the first OnTick, when gnet has registered every event loop (the ticker
// goroutine starts after that).
//
// Out of descriptors, the acceptor closes a spare descriptor it keeps for
// the purpose, accepts the waiting connections and closes each at once (so
// their clients see a prompt close, not a hang in the backlog; counted as
// closed by the server with reason out-of-fds), reopens the spare, counts
// the error (mlesd_accept_errors_total) and logs it (rate-limited), and
// backs off like net/http: 5 ms doubling to 1 s while errors continue.

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/panjf2000/gnet/v2"
)

// registration is the outcome of one hand-over to an event loop.
type registration = <-chan gnet.RegisteredResult

const (
	// acceptBackoffMin and acceptBackoffMax pace retries after an accept
	// error, doubling while errors continue (net/http's values).
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
	// engineSocketName is the file name of gnet's own listener, a Unix socket
	// in a private directory that is removed as soon as gnet has bound it.
	engineSocketName = "engine.sock"
	// maxShed bounds the waiting connections closed per accept error when
	// out of descriptors, so the acceptor comes back to retry in time.
	maxShed = 4096
	// maxRegistering bounds accepted connections being handed to their
	// event loop at once; past it the acceptor waits (the kernel's backlog
	// holds the rest).
	maxRegistering = 128
)

// acceptErrorReason is the label of an accept error in
// mlesd_accept_errors_total.
func acceptErrorReason(err error) string {
	switch {
	case errors.Is(err, syscall.EMFILE):
		return "emfile"
	case errors.Is(err, syscall.ENFILE):
		return "enfile"
	case errors.Is(err, syscall.ENOBUFS), errors.Is(err, syscall.ENOMEM):
		return "enomem"
	default:
		return "other"
	}
}

// outOfFDs reports whether err means the process or system has no
// descriptor left.
func outOfFDs(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}

// listen opens every configured listen address that was not inherited
// (Inherit). It runs before gnet starts, so a busy port is reported as what
// it is ("address already in use").
func (s *Server) listen() error {
	lc := net.ListenConfig{KeepAlive: DefaultKeepAlive}
	s.lnMu.Lock()
	lns := make([]net.Listener, len(s.cfg.Listen))
	copy(lns, s.listeners) // inherited, index = listen address
	s.listeners = lns
	s.lnMu.Unlock()
	for i, a := range s.cfg.Listen {
		if lns[i] != nil {
			continue
		}
		host, port, err := splitListen(a)
		if err != nil {
			s.closeListeners()
			return err
		}
		ln, err := lc.Listen(context.Background(), "tcp", net.JoinHostPort(host, port))
		if err != nil {
			s.closeListeners()
			return err
		}
		s.lnMu.Lock()
		lns[i] = ln
		s.lnMu.Unlock()
	}
	return nil
}

// closeListeners closes every listener (new connections are refused by the
// kernel from then on, unless another process shares the listening socket:
// handoff.go); the accept goroutines end.
func (s *Server) closeListeners() {
	s.lnMu.Lock()
	defer s.lnMu.Unlock()
	for _, ln := range s.listeners {
		if ln != nil {
			_ = ln.Close()
		}
	}
	s.unparkAcceptors() // parked by a freeze (freeze.go): they find their listeners closed
}

// engineSocket makes the private directory for gnet's own listener.
func engineSocket() (dir, addr string, err error) {
	dir, err = os.MkdirTemp("", "mlesd-engine-")
	if err != nil {
		return "", "", err
	}
	return dir, "unix://" + filepath.Join(dir, engineSocketName), nil
}

// startAccepting starts one accept goroutine per listener and the collector
// of their hand-overs. Called once, on the first OnTick.
func (s *Server) startAccepting() {
	s.lnMu.Lock()
	defer s.lnMu.Unlock()
	go s.collectRegistrations()
	for _, ln := range s.listeners {
		s.acceptWG.Add(1)
		go s.acceptLoop(ln)
	}
}

// acceptLoop accepts connections on ln until it is closed.
func (s *Server) acceptLoop(ln net.Listener) {
	defer s.acceptWG.Done()
	spare := openSpare()
	defer func() {
		if spare != nil {
			_ = spare.Close()
		}
	}()
	var wait time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if s.parkAcceptor(ln, err) { // a handover's freeze (freeze.go)
				continue
			}
			reason := acceptErrorReason(err)
			s.countAcceptError(reason)
			shed := 0
			if outOfFDs(err) && spare != nil {
				// Free one descriptor to take the waiting connections off
				// the backlog and close them: their clients learn at once
				// instead of waiting in the queue.
				_ = spare.Close()
				shed = shedBacklog(ln)
				spare = openSpare()
				s.countRefusedN("out-of-fds", uint64(shed))
			}
			if wait == 0 {
				wait = acceptBackoffMin
			} else if wait *= 2; wait > acceptBackoffMax {
				wait = acceptBackoffMax
			}
			s.rlog.Log(levelWarn, "accept-"+reason, "accept failed; retrying",
				slog.String("listen", ln.Addr().String()), slog.String("error", err.Error()),
				slog.Int("closed_waiting", shed), slog.Duration("retry_in", wait))
			time.Sleep(wait)
			continue
		}
		wait = 0
		if err := s.register(nc, nil, false); err != nil {
			_ = nc.Close()
			if !s.stopping.Load() {
				reason := acceptErrorReason(err)
				s.countAcceptError(reason)
				s.rlog.Log(levelWarn, "handover-"+reason, "cannot hand a connection to an event loop; it is closed",
					slog.String("error", err.Error()))
			}
		}
	}
}

// shedBacklog accepts and at once closes the connections waiting on ln,
// up to maxShed, using the one descriptor the caller freed. It stops when
// none is waiting (a 1 ms deadline) or accepting fails again.
func shedBacklog(ln net.Listener) int {
	tl, ok := ln.(*net.TCPListener)
	if il, inherited := ln.(inheritedListener); inherited {
		tl, ok = il.TCPListener, true
	}
	if !ok {
		return 0
	}
	_ = tl.SetDeadline(time.Now().Add(time.Millisecond))
	defer func() { _ = tl.SetDeadline(time.Time{}) }()
	n := 0
	for n < maxShed {
		c, err := tl.Accept()
		if err != nil {
			break
		}
		_ = c.Close()
		n++
	}
	return n
}

// openSpare opens the descriptor kept in reserve for accepting and closing
// when the process is out of descriptors; nil if even that fails.
func openSpare() *os.File {
	f, err := os.Open(os.DevNull)
	if err != nil {
		return nil
	}
	return f
}

// register hands nc to an event loop (round robin). a, when set, becomes the
// gnet context of the connection (adopted transports and uplinks). With wait,
// it returns once the loop has taken the connection (or failed to);
// otherwise failures are counted and logged from a short-lived goroutine, so
// the acceptor never waits for a loop. gnet duplicates nc's descriptor and
// closes nc itself.
func (s *Server) register(nc net.Conn, a *adopted, wait bool) error {
	select {
	case <-s.loopsUp:
	default:
		return errors.New("engine: not serving yet")
	}
	ctx := context.Background()
	if a != nil {
		ctx = gnet.NewContext(ctx, a)
	}
	ctx = gnet.NewNetConnContext(ctx, nc)
	s.registerMu.Lock()
	res, err := s.eng.Register(ctx)
	s.registerMu.Unlock()
	if err != nil {
		return err
	}
	if wait {
		select {
		case r := <-res:
			return r.Err
		case <-s.shutdown:
			// gnet never answers a hand-over its stopping loop did not run.
			return errors.New("engine: shutting down")
		}
	}
	// gnet's Register runs each hand-over on a pooled goroutine that waits
	// until the loop has taken the connection. Bounding how many are in
	// flight bounds those goroutines (a storm of connects otherwise spawned
	// thousands, each holding a stack) and makes the acceptor wait for busy
	// loops instead of queueing without limit. Each one in flight counts in
	// acceptWG (the acceptor's own count is held, so this Add never starts
	// from zero) until collected: whoever waits for the acceptors also waits
	// until every connection they accepted has been opened (StopAccepting).
	s.acceptWG.Add(1)
	s.up.inflight.Add(1)
	s.registering <- res
	return nil
}

// collectRegistrations reads the outcome of each hand-over the acceptors
// queued, in order, and counts and logs the failures. It ends when the
// queue is closed (after the acceptors have ended).
func (s *Server) collectRegistrations() {
	defer close(s.collected)
	for res := range s.registering {
		var r gnet.RegisteredResult
		select {
		case r = <-res:
		case <-s.shutdown:
		}
		s.acceptWG.Done() // opened, failed, or never answered (see register)
		s.up.inflight.Add(-1)
		if r.Err == nil {
			continue
		}
		if !s.stopping.Load() {
			reason := acceptErrorReason(r.Err)
			s.countAcceptError(reason)
			s.rlog.Log(levelWarn, "handover-"+reason, "cannot hand a connection to an event loop; it is closed",
				slog.String("error", r.Err.Error()))
		}
	}
}

func (s *Server) countAcceptError(reason string) { addCount(&s.acceptErrs, reason, 1) }
