// Package tlsserve terminates TLS in Go and hands each connection's
// plaintext to the engine's event loops over a Unix socketpair.
//
// gnet has no TLS, so a TLS connection is accepted here (one goroutine per
// connection), its handshake is run with crypto/tls, and then one end of a
// fresh socketpair is adopted by the engine (engine.Server.Adopt) with the
// client's real address, while two goroutines copy bytes between the
// tls.Conn and the other end. The engine cannot tell the connection from a
// plain TCP one: the same router, limits (per IP and total), keys, history,
// back-pressure and logs apply, and the plain TCP per-frame path is not
// touched.
//
// Invariants a caller relies on:
//   - memory per bridged connection is bounded: two copy buffers (BufSize
//     each), crypto/tls's record buffers and the socketpair's kernel buffers;
//     a TLS client that does not read stalls its copy goroutine, which fills
//     the socketpair, which the engine sees as a stalled receiver (frames are
//     dropped for it alone, as for TCP);
//   - when either side ends (EOF, error, the engine closing the connection)
//     both sides are closed;
//   - handshakes are bounded in time (HandshakeTimeout) and in number
//     (MaxHandshakes at once); failures are counted and logged at info,
//     rate-limited per reason.
package tlsserve

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mlesd/mlesd/internal/tlsbridge"
)

// Defaults.
const (
	// DefaultHandshakeTimeout bounds a TLS handshake (slowloris before the join).
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultMaxHandshakes bounds the handshakes in progress at once; a
	// connection over it is closed at once and counted as failed ("busy").
	DefaultMaxHandshakes = 1024
	// BufSize is each copy direction's buffer per bridged connection.
	BufSize = tlsbridge.BufSize
	// logBurst is how many handshake failures per reason are logged per second.
	logBurst = 5
)

// Adopter takes over an established connection as if accepted from remote
// on local (the address the client reached); engine.Server implements it.
type Adopter interface {
	Adopt(nc net.Conn, local, remote netip.AddrPort) error
}

// Config is a TLS listener's settings.
type Config struct {
	CertFile, KeyFile string        // PEM server certificate (chain) and key
	ClientCAFile      string        // PEM CAs; when set, clients must present a certificate they signed
	HandshakeTimeout  time.Duration // 0 = DefaultHandshakeTimeout
	MaxHandshakes     int           // 0 = DefaultMaxHandshakes
	Logger            *slog.Logger  // nil = slog.Default()
}

// TLSConfig builds the server's crypto/tls configuration: TLS 1.2 or later,
// Go's default (modern, AEAD-only for 1.2 ECDHE) cipher suites and curves,
// and, with ClientCAFile, verified client certificates.
func (c Config) TLSConfig() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("tls certificate: %w", err)
	}
	tc := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
	}
	if c.ClientCAFile != "" {
		pool, err := tlsbridge.LoadPool(c.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("tls client CA: %w", err)
		}
		tc.ClientCAs = pool
		tc.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return tc, nil
}

// Stats counts handshakes and bridged connections.
type Stats struct {
	HandshakesOK     uint64
	HandshakesFailed map[string]uint64 // by reason: timeout, no-client-cert, bad-client-cert, not-tls, busy, adopt, other
	Open             int64             // bridged connections now
	Conns            int               // client connections now: handshaking or bridged
}

// Server accepts TLS connections and bridges them to an Adopter.
// Every method is safe from any goroutine.
type Server struct {
	cfg    Config
	tls    *tls.Config
	engine Adopter
	log    *slog.Logger

	ok     atomic.Uint64
	failed sync.Map // reason -> *atomic.Uint64
	open   atomic.Int64
	slots  chan struct{} // handshake slots

	mu     sync.Mutex
	ln     net.Listener
	conns  map[net.Conn]bool // every client connection, for Close: true once bridged
	closed bool
	wg     sync.WaitGroup

	rl rateLimiter
}

// New checks cfg and loads its certificates.
func New(cfg Config, engine Adopter) (*Server, error) {
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if cfg.MaxHandshakes <= 0 {
		cfg.MaxHandshakes = DefaultMaxHandshakes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	tc, err := cfg.TLSConfig()
	if err != nil {
		return nil, err
	}
	return &Server{cfg: cfg, tls: tc, engine: engine, log: cfg.Logger,
		slots: make(chan struct{}, cfg.MaxHandshakes), conns: map[net.Conn]bool{},
		rl: rateLimiter{seen: map[string]*window{}}}, nil
}

// Listen opens a TCP listener on addr ("[::]:port" is dual stack) and serves
// it in the background; it returns the bound address.
func (s *Server) Listen(addr string) (net.Addr, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return s.Serve(ln)
}

// Listener is the listener served (nil before Listen or Serve). Closing it
// only stops accepting: connections go on (an upgrade hands it over).
func (s *Server) Listener() net.Listener {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ln
}

// Serve serves ln (a listener handed over by an upgrade) as Listen does.
func (s *Server) Serve(ln net.Listener) (net.Addr, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return nil, net.ErrClosed
	}
	s.ln = ln
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		s.serve(ln)
	}()
	return ln.Addr(), nil
}

func (s *Server) serve(ln net.Listener) {
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and the like: wait a little, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("tls accept failed", slog.String("error", err.Error()))
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if !s.track(nc) {
			nc.Close()
			return
		}
		select {
		case s.slots <- struct{}{}:
		default:
			s.fail("busy", nc.RemoteAddr(), errors.New("too many handshakes in progress"))
			s.untrack(nc)
			nc.Close()
			continue
		}
		s.wg.Add(1)
		go s.handle(nc)
	}
}

// track records nc for Close; false once the server is closed.
func (s *Server) track(nc net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[nc] = false
	return true
}

func (s *Server) untrack(nc net.Conn) {
	s.mu.Lock()
	delete(s.conns, nc)
	s.mu.Unlock()
}

// handle runs the handshake, then bridges nc to the engine until either side ends.
func (s *Server) handle(nc net.Conn) {
	defer s.wg.Done()
	defer s.untrack(nc)
	tc := tls.Server(nc, s.tls)
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.HandshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	<-s.slots
	if err != nil {
		s.fail(failureReason(err, ctx), nc.RemoteAddr(), err)
		nc.Close()
		return
	}
	s.ok.Add(1)
	remote := addrPort(nc.RemoteAddr())
	local, engineEnd, err := tlsbridge.Socketpair()
	if err != nil {
		s.fail("adopt", nc.RemoteAddr(), err)
		tc.Close()
		return
	}
	if err := s.engine.Adopt(engineEnd, addrPort(nc.LocalAddr()), remote); err != nil {
		engineEnd.Close()
		local.Close()
		s.fail("adopt", nc.RemoteAddr(), err)
		tc.Close()
		return
	}
	s.open.Add(1)
	defer s.open.Add(-1)
	s.mu.Lock()
	closed := s.closed
	s.conns[nc] = true
	s.mu.Unlock()
	if closed {
		local.Close()
		tc.Close()
		return
	}
	tlsbridge.Bridge(tc, local.(*net.UnixConn))
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// failureReason names why a handshake failed, for counting and logs.
func failureReason(err error, ctx context.Context) string {
	var (
		ce  *tls.CertificateVerificationError
		rhe tls.RecordHeaderError
		ae  tls.AlertError
	)
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	case errors.As(err, &rhe):
		return "not-tls"
	case errors.As(err, &ce):
		return "bad-client-cert"
	case err.Error() == "tls: client didn't provide a certificate":
		return "no-client-cert"
	case errors.As(err, &ae):
		return "client-alert" // the client refused us (e.g. it does not trust our certificate)
	case errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET):
		return "client-gone"
	}
	return "other"
}

func (s *Server) fail(reason string, remote net.Addr, err error) {
	v, ok := s.failed.Load(reason)
	if !ok {
		v, _ = s.failed.LoadOrStore(reason, new(atomic.Uint64))
	}
	v.(*atomic.Uint64).Add(1)
	if held, ok := s.rl.allow(reason, time.Now()); ok {
		attrs := []any{slog.String("reason", reason), slog.String("remote", remote.String()),
			slog.String("error", err.Error())}
		if held > 0 {
			attrs = append(attrs, slog.Uint64("suppressed", held))
		}
		s.log.Info("tls handshake failed", attrs...)
	}
}

// Stats returns the counters now.
func (s *Server) Stats() Stats {
	st := Stats{HandshakesOK: s.ok.Load(), HandshakesFailed: map[string]uint64{}, Open: s.open.Load()}
	s.mu.Lock()
	st.Conns = len(s.conns)
	s.mu.Unlock()
	s.failed.Range(func(k, v any) bool {
		st.HandshakesFailed[k.(string)] = v.(*atomic.Uint64).Load()
		return true
	})
	return st
}

// Close stops accepting and ends handshakes in progress at once; bridged
// connections are given until ctx is done to end by themselves (they end when
// the engine closes its side and the bytes it sent have been passed on), then
// closed. It returns when every goroutine of the server has ended.
func (s *Server) Close(ctx context.Context) {
	s.mu.Lock()
	s.closed = true
	if s.ln != nil {
		s.ln.Close()
	}
	for nc, bridged := range s.conns {
		if !bridged {
			nc.Close() // a handshake in progress
		}
	}
	s.mu.Unlock()
	ended := make(chan struct{})
	go func() { s.wg.Wait(); close(ended) }()
	select {
	case <-ended:
		return
	case <-ctx.Done():
	}
	s.mu.Lock()
	for nc := range s.conns {
		nc.Close()
	}
	s.mu.Unlock()
	<-ended
}

// rateLimiter lets logBurst lines per reason per second through and counts
// the rest, reported with the next line let through.
type rateLimiter struct {
	mu   sync.Mutex
	seen map[string]*window
}

type window struct {
	start time.Time
	n     int
	held  uint64
}

func (r *rateLimiter) allow(reason string, now time.Time) (held uint64, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	w := r.seen[reason]
	if w == nil {
		w = &window{start: now}
		r.seen[reason] = w
	}
	if now.Sub(w.start) >= time.Second {
		w.start, w.n = now, 0
	}
	if w.n >= logBurst {
		w.held++
		return 0, false
	}
	w.n++
	held, w.held = w.held, 0
	return held, true
}
