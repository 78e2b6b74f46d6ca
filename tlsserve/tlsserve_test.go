package tlsserve

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/engine"
	"github.com/mlesd/mlesd/internal/mlestest"
	"github.com/mlesd/mlesd/internal/tlsbridge"
	"github.com/mlesd/mlesd/router"
	"github.com/mlesd/mlesd/tlsserve/tlstest"
)

// logBuffer is a slog sink tests can read while the server writes.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// pki is one test's certificates: the server's CA and certificate, a valid,
// an expired and a foreign client certificate.
type pki struct {
	dir                      string
	ca, other                *tlstest.CA
	server                   tlstest.Pair
	client, expired, strange tlstest.Pair
}

func newPKI(t *testing.T) *pki {
	dir := t.TempDir()
	p := &pki{dir: dir, ca: tlstest.NewCA(t, dir, "test"), other: tlstest.NewCA(t, dir, "other")}
	p.server = p.ca.Server(t, dir, "server")
	p.client = p.ca.Client(t, dir, "client")
	p.expired = p.ca.ExpiredClient(t, dir, "expired")
	p.strange = p.other.Client(t, dir, "strange")
	return p
}

// rig is an engine on loopback with a TLS listener bridged to it.
type rig struct {
	eng     *engine.Server
	tls     *Server
	plain   string // plain TCP address
	tlsAddr string
	log     *logBuffer
	pki     *pki
}

func startRig(t *testing.T, keys codec.KeyConfig, ecfg engine.Config, cfg Config) *rig {
	t.Helper()
	lb := &logBuffer{}
	log := slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ecfg.Listen = []string{"127.0.0.1:0"}
	ecfg.Loops = 2
	ecfg.Keys = keys
	ecfg.Logger = log
	r := router.New(router.Config{HistoryLimit: router.Off})
	eng, err := engine.New(ecfg, r)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- eng.Serve() }()
	<-eng.Ready()
	if len(eng.Addrs()) == 0 {
		t.Fatalf("engine did not start: %v", <-served)
	}
	p := newPKI(t)
	cfg.CertFile, cfg.KeyFile, cfg.Logger = p.server.CertFile, p.server.KeyFile, log
	ts, err := New(cfg, eng)
	if err != nil {
		t.Fatal(err)
	}
	addr, err := ts.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := eng.Stop(ctx); err != nil {
			t.Errorf("engine stop: %v", err)
		}
		<-served
		ts.Close(ctx)
		r.Close()
	})
	return &rig{eng: eng, tls: ts, plain: eng.Addrs()[0].String(), tlsAddr: addr.String(), log: lb, pki: p}
}

// dialTLS connects to the rig's TLS listener trusting its CA, presenting
// cert if not nil, and finishes the handshake.
func (r *rig) dialTLS(t *testing.T, cert *tls.Certificate) (*tls.Conn, error) {
	t.Helper()
	cfg := &tls.Config{RootCAs: r.pki.ca.Pool(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	if cert != nil {
		// Always present it, even when it is not from a CA the server names.
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	d := &net.Dialer{Timeout: 5 * time.Second}
	tc, err := tls.DialWithDialer(d, "tcp", r.tlsAddr, cfg)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { tc.Close() })
	// TLS 1.3 reports a refused client certificate only on the first read.
	return tc, nil
}

// joinTLS joins over tc as uid on ch, with a key from keys computed for the
// client's own address (what the server sees).
func joinTLS(t *testing.T, tc *tls.Conn, keys codec.KeyConfig, uid, ch string) *mlestest.Client {
	t.Helper()
	local := tc.LocalAddr().(*net.TCPAddr).AddrPort()
	c := &mlestest.Client{NC: tc, R: bufio.NewReader(tc), UID: uid, Ch: ch, Key: keys.ClientKey(local, uid, ch)}
	if err := c.Send(nil); err != nil {
		t.Fatal(err)
	}
	return c
}

func expectMsg(t *testing.T, c *mlestest.Client, uid, msg string) {
	t.Helper()
	tr, err := c.Read(5 * time.Second)
	if err != nil {
		t.Fatalf("%s reading: %v", c.UID, err)
	}
	if tr.UID != uid || string(tr.Message) != msg {
		t.Fatalf("%s got %s:%q, want %s:%q", c.UID, tr.UID, tr.Message, uid, msg)
	}
}

func waitJoins(t *testing.T, eng *engine.Server, n uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for eng.Stats().Joins < n {
		if time.Now().After(deadline) {
			t.Fatalf("joins %d, want %d", eng.Stats().Joins, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A TLS client and a plain TCP client on one channel see each other's joins
// and frames, byte for byte; the TLS client's address key is computed from its
// real address, which the engine was given.
func TestTLSAndPlainClientsExchangeFramesOnOneChannel(t *testing.T) {
	for _, keys := range []codec.KeyConfig{{SharedKey: "k"}, {}} {
		name := "shared-key"
		if keys.SharedKey == "" {
			name = "address-key"
		}
		t.Run(name, func(t *testing.T) {
			r := startRig(t, keys, engine.Config{}, Config{})
			nc := mlestest.Dial(t, r.plain)
			local := nc.LocalAddr().(*net.TCPAddr).AddrPort()
			plain := &mlestest.Client{NC: nc, R: bufio.NewReader(nc), UID: "plain", Ch: "ch", Key: keys.ClientKey(local, "plain", "ch")}
			if err := plain.Send(nil); err != nil {
				t.Fatal(err)
			}
			waitJoins(t, r.eng, 1)
			tc, err := r.dialTLS(t, nil)
			if err != nil {
				t.Fatal(err)
			}
			sec := joinTLS(t, tc, keys, "secure", "ch")
			expectMsg(t, plain, "secure", "") // the TLS client's join frame
			for i := range 100 {
				msg := fmt.Sprintf("over tls %d %s", i, strings.Repeat("x", i*100))
				if err := sec.Send([]byte(msg)); err != nil {
					t.Fatal(err)
				}
				expectMsg(t, plain, "secure", msg)
				msg = fmt.Sprintf("over tcp %d", i)
				if err := plain.Send([]byte(msg)); err != nil {
					t.Fatal(err)
				}
				expectMsg(t, sec, "plain", msg)
			}
			if st := r.tls.Stats(); st.HandshakesOK != 1 || st.Open != 1 {
				t.Fatalf("tls stats %+v, want 1 handshake and 1 open", st)
			}
		})
	}
}

// With a client CA, a client that presents no certificate is refused and the
// engine never sees it.
func TestClientWithoutRequiredCertificateIsRefused(t *testing.T) {
	r := startRig(t, codec.KeyConfig{SharedKey: "k"}, engine.Config{}, Config{})
	r.requireClientCerts(t)
	tc, err := r.dialTLS(t, nil)
	if err == nil {
		// TLS 1.3: the client learns of the refusal on its first read.
		_ = tc.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = tc.Read(make([]byte, 1))
	}
	if err == nil {
		t.Fatal("a client without a certificate was served")
	}
	r.waitFailed(t, "no-client-cert", 1)
	if st := r.eng.Stats(); st.Accepted != 0 {
		t.Fatalf("engine accepted %d connections, want none", st.Accepted)
	}
	r.exchange(t, &r.pki.client.TLS)
}

// Expired certificates and certificates from another CA fail the handshake
// cleanly: counted, logged at info, and the server keeps serving.
func TestExpiredOrForeignClientCertificatesFailCleanly(t *testing.T) {
	r := startRig(t, codec.KeyConfig{SharedKey: "k"}, engine.Config{}, Config{})
	r.requireClientCerts(t)
	for _, cert := range []*tls.Certificate{&r.pki.expired.TLS, &r.pki.strange.TLS} {
		tc, err := r.dialTLS(t, cert)
		if err == nil {
			_ = tc.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = tc.Read(make([]byte, 1))
		}
		if err == nil {
			t.Fatal("a bad client certificate was accepted")
		}
	}
	r.waitFailed(t, "bad-client-cert", 2)
	for _, want := range []string{"level=INFO msg=\"tls handshake failed\" reason=bad-client-cert", "expired", "unknown authority"} {
		r.waitLog(t, want) // a failure is counted just before it is logged
	}
	r.exchange(t, &r.pki.client.TLS)
}

// A connection that does not finish its handshake in time is closed.
func TestSilentConnectionIsClosedAfterTheHandshakeTimeout(t *testing.T) {
	r := startRig(t, codec.KeyConfig{SharedKey: "k"}, engine.Config{}, Config{HandshakeTimeout: 200 * time.Millisecond})
	nc := mlestest.Dial(t, r.tlsAddr)
	began := time.Now()
	mlestest.ExpectClosed(t, nc)
	if d := time.Since(began); d > 3*time.Second {
		t.Fatalf("closed after %v, want about 200ms", d)
	}
	r.waitFailed(t, "timeout", 1)
	// Plain Mles bytes on the TLS port are not TLS.
	nc = mlestest.Dial(t, r.tlsAddr)
	c := &mlestest.Client{NC: nc, R: bufio.NewReader(nc), UID: "u", Ch: "c", Key: codec.Key("k", "u", "c")}
	_ = c.Send(nil)
	mlestest.ExpectClosed(t, nc)
	r.waitFailed(t, "not-tls", 1)
}

// When the engine closes a bridged connection (here: wrong key), the TLS
// client is closed too.
func TestEngineClosingTheConnectionClosesTheTLSClient(t *testing.T) {
	r := startRig(t, codec.KeyConfig{SharedKey: "k"}, engine.Config{}, Config{})
	tc, err := r.dialTLS(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &mlestest.Client{NC: tc, R: bufio.NewReader(tc), UID: "u", Ch: "c", Key: codec.Key("wrong", "u", "c")}
	if err := c.Send(nil); err != nil {
		t.Fatal(err)
	}
	mlestest.ExpectClosed(t, tc)
	r.waitOpen(t, 0)
	if n := r.eng.Stats().ClosedByRule["wrong-key"]; n != 1 {
		t.Fatalf("wrong-key closes %d, want 1", n)
	}
}

// A TLS receiver that does not read is treated as the engine treats a TCP
// one: frames are dropped for it alone, and when the engine closes it for
// being stalled and silent, the bridge notices and ends, although its copy
// to the client is blocked.
func TestStalledTLSReceiverIsDroppedForAndClosedByTheEngine(t *testing.T) {
	old := tlsbridge.CloseCheckInterval
	tlsbridge.CloseCheckInterval = 100 * time.Millisecond
	defer func() { tlsbridge.CloseCheckInterval = old }()
	r := startRig(t, codec.KeyConfig{SharedKey: "k"},
		engine.Config{MaxPending: 64 << 10, StallTimeout: 300 * time.Millisecond}, Config{})
	tc, err := r.dialTLS(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	joinTLS(t, tc, codec.KeyConfig{SharedKey: "k"}, "stalled", "ch")
	waitJoins(t, r.eng, 1)
	pub := mlestest.Join(t, r.plain, "k", "pub", "ch")
	msg := make([]byte, 32<<10)
	for i := 0; r.eng.Stats().ClosedByRule["stalled-and-silent"] == 0; i++ {
		if i > 20000 {
			t.Fatalf("never closed for stalling: %+v", r.eng.Stats())
		}
		if err := pub.Send(msg); err != nil {
			t.Fatal(err)
		}
		if i%64 == 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if r.eng.Stats().Dropped == 0 {
		t.Fatal("no frames dropped for the stalled TLS receiver")
	}
	pub.NC.Close()
	r.waitOpen(t, 0)
}

// Close ends every goroutine: listener, handshakes in progress, bridges.
func TestCloseEndsEveryGoroutine(t *testing.T) {
	before := runtime.NumGoroutine()
	r := startRig(t, codec.KeyConfig{SharedKey: "k"}, engine.Config{}, Config{})
	var clients []*mlestest.Client
	for i := range 20 {
		tc, err := r.dialTLS(t, nil)
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, joinTLS(t, tc, codec.KeyConfig{SharedKey: "k"}, fmt.Sprint("u", i), "ch"))
	}
	mlestest.Dial(t, r.tlsAddr) // a handshake in progress
	waitJoins(t, r.eng, 20)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r.tls.Close(ctx)
	for _, c := range clients {
		mlestest.ExpectClosed(t, c.NC)
	}
	r.waitOpen(t, 0)
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+30 { // the engine's own goroutines remain
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines, %d before", runtime.NumGoroutine(), before)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// requireClientCerts restarts the rig's TLS side with the test CA as client CA.
func (r *rig) requireClientCerts(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	r.tls.Close(ctx)
	ts, err := New(Config{CertFile: r.pki.server.CertFile, KeyFile: r.pki.server.KeyFile,
		ClientCAFile: r.pki.ca.File, Logger: r.tls.log}, r.eng)
	if err != nil {
		t.Fatal(err)
	}
	addr, err := ts.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ts.Close(context.Background()) })
	r.tls, r.tlsAddr = ts, addr.String()
}

func (r *rig) waitFailed(t *testing.T, reason string, n uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for r.tls.Stats().HandshakesFailed[reason] != n {
		if time.Now().After(deadline) {
			t.Fatalf("handshakes failed %v, want %d %s", r.tls.Stats().HandshakesFailed, n, reason)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (r *rig) waitLog(t *testing.T, substr string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(r.log.String(), substr) {
		if time.Now().After(deadline) {
			t.Fatalf("log does not say %q:\n%s", substr, r.log.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (r *rig) waitOpen(t *testing.T, n int64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for r.tls.Stats().Open != n || r.eng.Stats().OpenConns != n {
		if time.Now().After(deadline) {
			t.Fatalf("open: tls %d, engine %d; want %d", r.tls.Stats().Open, r.eng.Stats().OpenConns, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// exchange proves the TLS side still serves: a TLS client (with cert) and a
// plain client exchange a frame each way on a fresh channel.
func (r *rig) exchange(t *testing.T, cert *tls.Certificate) {
	t.Helper()
	ch := fmt.Sprint("probe-", time.Now().UnixNano())
	joined := r.eng.Stats().Joins
	plain := mlestest.Join(t, r.plain, "k", "plain", ch)
	waitJoins(t, r.eng, joined+1)
	tc, err := r.dialTLS(t, cert)
	if err != nil {
		t.Fatal(err)
	}
	sec := joinTLS(t, tc, codec.KeyConfig{SharedKey: "k"}, "secure", ch)
	expectMsg(t, plain, "secure", "")
	if err := plain.Send([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	expectMsg(t, sec, "plain", "ping")
}

// TLS connections count against the engine's limits with their real
// address: with one connection per IP, a plain connection from 127.0.0.1
// leaves no room for a TLS one from 127.0.0.1.
func TestTLSConnectionsCountAgainstThePerIPLimit(t *testing.T) {
	r := startRig(t, codec.KeyConfig{SharedKey: "k"}, engine.Config{MaxConnsPerIP: 1, LimitLoopback: true}, Config{})
	before := r.eng.Stats().ClosedByRule["max-conns-per-ip"]
	plain := mlestest.Join(t, r.plain, "k", "plain", "ch")
	waitJoins(t, r.eng, 1)
	tc, err := r.dialTLS(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	joinTLS(t, tc, codec.KeyConfig{SharedKey: "k"}, "secure", "ch")
	mlestest.ExpectClosed(t, tc)
	if n := r.eng.Stats().ClosedByRule["max-conns-per-ip"] - before; n != 1 {
		t.Fatalf("max-conns-per-ip closes %d, want 1", n)
	}
	plain.NC.Close()
	r.waitOpen(t, 0)
	tc, err = r.dialTLS(t, nil) // room again
	if err != nil {
		t.Fatal(err)
	}
	sec := joinTLS(t, tc, codec.KeyConfig{SharedKey: "k"}, "secure", "ch")
	waitJoins(t, r.eng, 2)
	if err := sec.Send([]byte("still here")); err != nil {
		t.Fatal(err)
	}
}
