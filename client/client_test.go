package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mlesd/mlesd/client"
	"github.com/mlesd/mlesd/tlsserve/tlstest"
)

// recv reads one message (skipping joins) within 10 s.
func recv(t testing.TB, c *client.Conn) *client.Msg {
	t.Helper()
	ctx := ctxFor(t, 10*time.Second)
	for {
		m, err := c.Next(ctx)
		if err != nil {
			t.Fatalf("%s: receive: %v", c.UID(), err)
		}
		if !m.IsJoin() {
			return m
		}
	}
}

// roundTrip: a joins, b joins and sends; a gets it; a sends, b gets it.
func roundTrip(t *testing.T, addr string, opts ...client.Option) {
	t.Helper()
	ch := "rt-" + t.Name()
	a, err := client.Connect(addr, "alice", ch, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := a.Send([]byte("from a")); err != nil {
		t.Fatal(err)
	}
	b, err := client.Connect(addr, "bob", ch, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if m := recv(t, b); string(m.UID) != "alice" || string(m.Message) != "from a" || string(m.Channel) != ch {
		t.Fatalf("b got %q/%q/%q from history", m.UID, m.Channel, m.Message)
	}
	if err := b.Send([]byte("from b")); err != nil {
		t.Fatal(err)
	}
	if m := recv(t, a); string(m.UID) != "bob" || string(m.Message) != "from b" {
		t.Fatalf("a got %q: %q", m.UID, m.Message)
	}
}

func TestPubSubOverTCPWithSharedKey(t *testing.T) {
	p := server(t, []string{"MLES_KEY=k1"})
	roundTrip(t, p.Addr, client.SharedKey("k1"))
}

func TestPubSubOverTCPWithAddressKey(t *testing.T) {
	p := server(t, nil)
	roundTrip(t, p.Addr)
}

func TestPubSubOverTCPWithAddressKeyAndAddrKey(t *testing.T) {
	p := server(t, []string{"MLES_ADDR_KEY=x"})
	roundTrip(t, p.Addr, client.AddrKey("x"))
}

func TestWrongKeyClosesTheConnection(t *testing.T) {
	p := server(t, []string{"MLES_KEY=right"})
	c, err := client.Connect(p.Addr, "u", "c", client.SharedKey("wrong"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Next(ctxFor(t, 10*time.Second))
	if !errors.Is(err, io.EOF) && !errors.Is(err, syscall_ECONNRESET) {
		t.Fatalf("Next after a refused join: %v, want EOF or reset", err)
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after the connection was lost")
	}
	if err := c.Send([]byte("x")); err == nil {
		t.Fatal("Send on a lost connection succeeded")
	}
}

func tlsServer(t *testing.T, env []string) (tlsAddr, caFile string) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "test")
	cert := ca.Server(t, dir, "server")
	tlsAddr = freeAddr(t)
	server(t, env, "--tls-listen", tlsAddr, "--tls-cert", cert.CertFile, "--tls-key", cert.KeyFile)
	waitFor(t, tlsAddr)
	return tlsAddr, ca.File
}

func TestPubSubOverTLSWithSharedKey(t *testing.T) {
	addr, ca := tlsServer(t, []string{"MLES_KEY=k"})
	roundTrip(t, "tls://"+addr, client.SharedKey("k"), client.RootCAs(ca))
}

func TestPubSubOverTLSWithAddressKey(t *testing.T) {
	addr, ca := tlsServer(t, nil)
	roundTrip(t, addr, client.RootCAs(ca)) // a TLS option makes host:port a TLS address
}

func TestTLSRefusesAnUnknownCertificateUnlessInsecure(t *testing.T) {
	addr, _ := tlsServer(t, []string{"MLES_KEY=k"})
	if _, err := client.Connect("tls://"+addr, "u", "c", client.SharedKey("k")); err == nil {
		t.Fatal("a certificate from an unknown CA was accepted")
	}
	roundTrip(t, "tls://"+addr, client.SharedKey("k"), client.InsecureSkipVerify())
}

func TestTLSClientCertificate(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "test")
	cert := ca.Server(t, dir, "server")
	cl := ca.Client(t, dir, "client")
	addr := freeAddr(t)
	server(t, []string{"MLES_KEY=k"}, "--tls-listen", addr, "--tls-cert", cert.CertFile, "--tls-key", cert.KeyFile,
		"--tls-client-ca", ca.File)
	waitFor(t, addr)
	roundTrip(t, "tls://"+addr, client.SharedKey("k"), client.RootCAs(ca.File), client.ClientCert(cl.CertFile, cl.KeyFile))
}

func wsServer(t *testing.T, env []string) (wsAddr string) {
	wsAddr = freeAddr(t)
	server(t, env, "--ws-listen", wsAddr)
	waitFor(t, wsAddr)
	return wsAddr
}

func TestPubSubOverWebSocketWithSharedKey(t *testing.T) {
	addr := wsServer(t, []string{"MLES_KEY=k"})
	roundTrip(t, "ws://"+addr+"/") // the gateway keys the frames itself
}

func TestPubSubOverWebSocketWithAddressKey(t *testing.T) {
	addr := wsServer(t, nil)
	roundTrip(t, "ws://"+addr)
}

func TestWebSocketAndTCPClientsShareAChannel(t *testing.T) {
	p := server(t, []string{"MLES_KEY=k"}, "--ws-listen", freeAddrVar(t))
	ws := p.Cmd.Args[len(p.Cmd.Args)-1]
	waitFor(t, ws)
	tcp, err := client.Connect(p.Addr, "tcp", "mixed", client.SharedKey("k"))
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	w, err := client.Connect("ws://"+ws, "ws", "mixed")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.Send([]byte("over ws"))
	if m := recv(t, tcp); string(m.Message) != "over ws" || string(m.UID) != "ws" {
		t.Fatalf("tcp got %q: %q", m.UID, m.Message)
	}
	tcp.Send([]byte("over tcp"))
	if m := recv(t, w); string(m.Message) != "over tcp" || m.CID != 0 {
		t.Fatalf("ws got %q (cid %d)", m.Message, m.CID)
	}
}

func freeAddrVar(t *testing.T) string { return freeAddr(t) }

func TestSendOnlyConnectionSendsButDoesNotReceive(t *testing.T) {
	p := server(t, []string{"MLES_KEY=k"})
	sub, err := client.Connect(p.Addr, "sub", "so", client.SharedKey("k"))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	pub, err := client.Connect(p.Addr, "pub", "so", client.SharedKey("k"), client.SendOnly())
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	if _, err := pub.Next(context.Background()); !errors.Is(err, client.ErrSendOnly) {
		t.Fatalf("Next on a send-only Conn: %v", err)
	}
	// Frames for the send-only connection (the sub's messages) do not stop
	// it from publishing.
	big := bytes.Repeat([]byte("x"), 60<<10)
	for range 10 {
		if err := sub.Send(big); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 100 {
		if err := pub.Send(fmt.Appendf(nil, "m%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 100 {
		if m := recv(t, sub); string(m.Message) != fmt.Sprintf("m%d", i) {
			t.Fatalf("message %d: %q", i, m.Message)
		}
	}
	if err := pub.Drain(ctxFor(t, 5*time.Second)); err != nil {
		t.Fatalf("Drain of a send-only Conn: %v", err)
	}
}

func TestDrainReturnsAfterTheServerHandledEverything(t *testing.T) {
	p := server(t, []string{"MLES_KEY=k"})
	pub, err := client.Connect(p.Addr, "pub", "drain", client.SharedKey("k"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 1000 {
		pub.Send(fmt.Appendf(nil, "m%d", i))
	}
	if err := pub.Drain(ctxFor(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	// Everything is in the history (limit 100) now.
	sub, err := client.Connect(p.Addr, "sub", "drain", client.SharedKey("k"))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	for i := 900; i < 1000; i++ {
		if m := recv(t, sub); string(m.Message) != fmt.Sprintf("m%d", i) {
			t.Fatalf("history: %q, want m%d", m.Message, i)
		}
	}
}

func TestJoinMessageIsTheFirstFrame(t *testing.T) {
	p := server(t, []string{"MLES_KEY=k"})
	a, err := client.Connect(p.Addr, "a", "jm", client.SharedKey("k"), client.JoinMessage([]byte("present")))
	if err != nil {
		t.Fatal(err)
	}
	a.Drain(ctxFor(t, 5*time.Second))
	b, err := client.Connect(p.Addr, "b", "jm", client.SharedKey("k"))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if m := recv(t, b); string(m.Message) != "present" {
		t.Fatalf("history holds %q", m.Message)
	}
}

func TestCancelledContextEndsAReceiveAndTheConnStaysUsable(t *testing.T) {
	p := server(t, []string{"MLES_KEY=k"})
	a, _ := client.Connect(p.Addr, "a", "ctx", client.SharedKey("k"))
	defer a.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := a.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next: %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Next took %v to notice its context", d)
	}
	b, _ := client.Connect(p.Addr, "b", "ctx", client.SharedKey("k"))
	defer b.Close()
	b.Send([]byte("after"))
	if m := recv(t, a); string(m.Message) != "after" {
		t.Fatalf("got %q", m.Message)
	}
}

func TestConcurrentSendsArriveWhole(t *testing.T) {
	p := server(t, []string{"MLES_KEY=k"}, "--history-limit", "0")
	sub, _ := client.Connect(p.Addr, "sub", "conc", client.SharedKey("k"))
	defer sub.Close()
	pub, _ := client.Connect(p.Addr, "pub", "conc", client.SharedKey("k"))
	defer pub.Close()
	syncPair(t, sub, pub)
	const senders, each = 8, 500
	var wg sync.WaitGroup
	for s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if err := pub.Send(fmt.Appendf(nil, "%d-%d-%s", s, i, bytes.Repeat([]byte("p"), i%300))); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	next := make([]int, senders)
	for range senders * each {
		m := recv(t, sub)
		var s, i int
		if _, err := fmt.Sscanf(string(m.Message), "%d-%d-", &s, &i); err != nil || s >= senders || i != next[s] {
			t.Fatalf("frame %q out of order or torn (want %d-%d)", m.Message, s, next[s])
		}
		next[s]++
	}
	wg.Wait()
}

func TestLargeFramesPassWhole(t *testing.T) {
	p := server(t, []string{"MLES_KEY=k"})
	sub, _ := client.Connect(p.Addr, "sub", "big", client.SharedKey("k"))
	defer sub.Close()
	pub, _ := client.Connect(p.Addr, "pub", "big", client.SharedKey("k"))
	defer pub.Close()
	want := bytes.Repeat([]byte("0123456789abcdef"), 1<<20) // 16 MiB less the triplet's overhead below
	want = want[:len(want)-64]
	for range 2 {
		if err := pub.Send(want); err != nil {
			t.Fatal(err)
		}
		if m := recv(t, sub); !bytes.Equal(m.Message, want) {
			t.Fatalf("large frame: got %d bytes", len(m.Message))
		}
	}
}

// cutProxy forwards TCP connections to target and can cut them all.
type cutProxy struct {
	l      net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{l: l, target: target}
	t.Cleanup(func() { l.Close(); p.cut() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			go func() { io.Copy(s, c); s.Close() }()
			go func() { io.Copy(c, s); c.Close() }()
		}
	}()
	return p
}

func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func TestReconnectSkipsHistoryAlreadyDeliveredAndItsOwnFrames(t *testing.T) {
	p := server(t, []string{"MLES_KEY=k"})
	proxy := newCutProxy(t, p.Addr)
	reconnected := make(chan struct{}, 1)
	sub, err := client.Connect(proxy.l.Addr().String(), "sub", "rc", client.SharedKey("k"),
		client.MaxReconnects(-1), client.ReconnectWait(20*time.Millisecond, 200*time.Millisecond),
		client.ReconnectHandler(func(*client.Conn) { reconnected <- struct{}{} }))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	pub, _ := client.Connect(p.Addr, "pub", "rc", client.SharedKey("k"))
	defer pub.Close()
	for i := range 5 {
		pub.Send(fmt.Appendf(nil, "before-%d", i))
	}
	for i := range 5 {
		if m := recv(t, sub); string(m.Message) != fmt.Sprintf("before-%d", i) {
			t.Fatalf("got %q", m.Message)
		}
	}
	sub.Send([]byte("mine")) // in the history; must not come back
	if m := recv(t, pub); string(m.Message) != "mine" {
		t.Fatalf("pub got %q", m.Message)
	}
	proxy.cut()
	// The reader notices the cut and reconnects; meanwhile pub goes on.
	got := make(chan *client.Msg, 100)
	go func() {
		for m, err := range sub.Msgs(context.Background()) {
			if err != nil {
				close(got)
				return
			}
			if !m.IsJoin() {
				got <- m.Clone()
			}
		}
	}()
	pub.Send([]byte("during"))
	select {
	case <-reconnected:
	case <-time.After(10 * time.Second):
		t.Fatal("no reconnect")
	}
	// The rejoin is forwarded to pub as a join: after it, frames are live.
	for {
		m, err := pub.Next(ctxFor(t, 10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if m.IsJoin() && string(m.UID) == "sub" {
			break
		}
	}
	pub.Send([]byte("after"))
	for _, want := range []string{"during", "after"} {
		select {
		case m := <-got:
			if string(m.Message) != want {
				t.Fatalf("after the reconnect got %q, want %q (history must be skipped)", m.Message, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no %q", want)
		}
	}
	select {
	case m := <-got:
		t.Fatalf("extra frame %q", m.Message)
	case <-time.After(200 * time.Millisecond):
	}
	if st := sub.Stats(); st.Reconnects != 1 || st.Skipped != 6 {
		t.Fatalf("stats %+v: want 1 reconnect and 6 skipped (5 before + mine)", st)
	}
}

func TestReconnectAcrossAServerRestartDeliversNoDuplicates(t *testing.T) {
	addr := freeAddr(t)
	start := func() *mlestestProc { return startAt(t, addr) }
	p := start()
	sub, err := client.Connect(addr, "sub", "restart", client.SharedKey("k"),
		client.MaxReconnects(-1), client.ReconnectWait(20*time.Millisecond, 200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	pub, _ := client.Connect(addr, "pub", "restart", client.SharedKey("k"),
		client.MaxReconnects(-1), client.ReconnectWait(20*time.Millisecond, 200*time.Millisecond))
	defer pub.Close()
	go func() { // a reading Conn notices the restart at once (see the package doc)
		for _, err := range pub.Msgs(context.Background()) {
			if errors.Is(err, client.ErrClosed) {
				return
			}
		}
	}()
	pub.Send([]byte("one"))
	if m := recv(t, sub); string(m.Message) != "one" {
		t.Fatalf("got %q", m.Message)
	}
	if err := p.stop(); err != nil {
		t.Fatal(err)
	}
	start()
	// Both reconnect; pub's sends fail until it has. Its first frame after
	// the rejoin is a new one; sub must see it exactly once.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if pub.Stats().Reconnects == 1 && sub.Stats().Reconnects == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no reconnect: pub %+v sub %+v", pub.Stats(), sub.Stats())
		}
		if _, err := sub.Next(ctxFor(t, 50*time.Millisecond)); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Fatal(err)
		}
	}
	pub.Send([]byte("two"))
	pub.Send([]byte("three"))
	for _, want := range []string{"two", "three"} {
		if m := recv(t, sub); string(m.Message) != want {
			t.Fatalf("after restart got %q, want %q", m.Message, want)
		}
	}
	if _, err := sub.Next(ctxFor(t, 300*time.Millisecond)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("an extra frame or error after the restart: %v", err)
	}
}

func TestGivesUpAfterMaxReconnects(t *testing.T) {
	addr := freeAddr(t)
	p := startAt(t, addr)
	closed := make(chan struct{})
	c, err := client.Connect(addr, "u", "giveup", client.SharedKey("k"), client.MaxReconnects(2),
		client.ReconnectWait(10*time.Millisecond, 20*time.Millisecond), client.ClosedHandler(func(*client.Conn) { close(closed) }))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p.stop()
	if _, err := c.Next(ctxFor(t, 10*time.Second)); !errors.Is(err, client.ErrMaxReconnects) {
		t.Fatalf("Next: %v, want ErrMaxReconnects", err)
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("ClosedHandler not called")
	}
}

func TestCloseEndsAReceiveInProgress(t *testing.T) {
	p := server(t, []string{"MLES_KEY=k"})
	c, _ := client.Connect(p.Addr, "u", "close", client.SharedKey("k"))
	errc := make(chan error, 1)
	go func() { _, err := c.Next(context.Background()); errc <- err }()
	time.Sleep(50 * time.Millisecond) // let Next block (it ends either way)
	c.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, client.ErrClosed) {
			t.Fatalf("Next after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end Next")
	}
	if err := c.Send([]byte("x")); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("Send after Close: %v", err)
	}
}

var _ = filepath.Join

func TestAHandlerMayCloseTheConn(t *testing.T) {
	addr := freeAddr(t)
	p := startAt(t, addr)
	c, err := client.Connect(addr, "u", "h", client.SharedKey("k"), client.MaxReconnects(-1),
		client.ReconnectWait(10*time.Millisecond, 10*time.Millisecond),
		client.DisconnectErrHandler(func(c *client.Conn, _ error) { c.Close() }))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for range c.Msgs(context.Background()) {
		}
	}()
	p.stop()
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Close from DisconnectErrHandler did not close the Conn")
	}
	if !errors.Is(c.Err(), client.ErrClosed) {
		t.Fatalf("Err %v, want ErrClosed", c.Err())
	}
}

func TestManualFlushHoldsFramesUntilFlush(t *testing.T) {
	p := server(t, []string{"MLES_KEY=k"}, "--history-limit", "0")
	sub, err := client.Connect(p.Addr, "sub", "manual", client.SharedKey("k"))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	// sub is surely joined once a probe's frames reach it.
	probe, _ := client.Connect(p.Addr, "probe", "manual", client.SharedKey("k"))
	syncPair(t, sub, probe)
	probe.Close()
	pub, err := client.Connect(p.Addr, "mpub", "manual", client.SharedKey("k"), client.ManualFlush())
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	ctx := ctxFor(t, 10*time.Second)
	if m, err := sub.Next(ctx); err != nil || !m.IsJoin() { // mpub's join is written by Connect
		t.Fatalf("want mpub's join: %v", err)
	}
	pub.Send([]byte("held"))
	if m, err := sub.Next(ctxFor(t, 300*time.Millisecond)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a frame arrived before Flush: %v %v", m, err)
	}
	pub.Flush()
	if m := recv(t, sub); string(m.Message) != "held" {
		t.Fatalf("got %q", m.Message)
	}
}

func TestAddressKeyOverIPv6(t *testing.T) {
	l, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(mlesdBin, "--listen", addr, "--log-level", "warn")
	cmd.Env = append(os.Environ(), "MLES_KEY=", "MLES_ADDR_KEY=")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitFor(t, addr)
	roundTrip(t, addr) // the key hashes "[0:0:0:0:0:0:0:1]:port"
}

func TestWebSocketConnReconnectsAfterTheGatewayRestarts(t *testing.T) {
	ws := freeAddr(t)
	tcp := freeAddr(t)
	start := func() *exec.Cmd {
		cmd := exec.Command(mlesdBin, "--listen", tcp, "--ws-listen", ws, "--log-level", "warn")
		cmd.Env = append(os.Environ(), "MLES_KEY=k")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		waitFor(t, ws)
		return cmd
	}
	srv := start()
	sub, err := client.Connect("ws://"+ws, "sub", "wsrc", client.MaxReconnects(-1), client.ReconnectWait(20*time.Millisecond, 100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	pub, _ := client.Connect(tcp, "pub", "wsrc", client.SharedKey("k"))
	pub.Send([]byte("one"))
	if m := recv(t, sub); string(m.Message) != "one" {
		t.Fatalf("got %q", m.Message)
	}
	pub.Close()
	got := make(chan string, 10)
	go func() {
		for m, err := range sub.Msgs(context.Background()) {
			if err != nil {
				return
			}
			if !m.IsJoin() {
				got <- string(m.Message)
			}
		}
	}()
	srv.Process.Signal(syscall.SIGTERM)
	srv.Wait()
	start()
	deadline := time.Now().Add(10 * time.Second)
	for sub.Stats().Reconnects == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no reconnect over WebSocket")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// "two" reaches sub live, or from the new server's history if the
	// gateway's uplink joins after it: once either way.
	pub, _ = client.Connect(tcp, "pub", "wsrc", client.SharedKey("k"))
	defer pub.Close()
	pub.Send([]byte("two"))
	select {
	case m := <-got:
		if m != "two" {
			t.Fatalf("after the restart got %q", m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("nothing after the restart")
	}
	select {
	case m := <-got:
		t.Fatalf("extra %q", m)
	case <-time.After(200 * time.Millisecond):
	}
}

func TestPayloadsPassByteForByte(t *testing.T) {
	p := server(t, []string{"MLES_KEY=k"})
	// A valid triplet that is not in the canonical form: keys in another
	// order, a non-shortest length head.
	odd := func(uid, ch, msg string) []byte {
		b := []byte{0xa3, 0x67}
		b = append(b, "message"...)
		b = append(b, 0x58, byte(len(msg)))
		b = append(b, msg...)
		b = append(b, 0x63)
		b = append(b, "uid"...)
		b = append(b, 0x60|byte(len(uid)))
		b = append(b, uid...)
		b = append(b, 0x67)
		b = append(b, "channel"...)
		b = append(b, 0x60|byte(len(ch)))
		return append(b, ch...)
	}
	join, later := odd("gw", "bytes", "hello"), odd("gw", "bytes", "later")
	if _, err := client.Connect(p.Addr, "gw", "bytes", client.SharedKey("k"), client.JoinPayload(odd("gw", "other", "x"))); err == nil {
		t.Fatal("a JoinPayload for another channel was accepted")
	}
	gw, err := client.Connect(p.Addr, "gw", "bytes", client.SharedKey("k"), client.JoinPayload(join))
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	if err := gw.SendPayload(later); err != nil {
		t.Fatal(err)
	}
	gw.Flush()
	// Whether sub's join comes before gw's frames or after (history), it
	// receives both, in order.
	sub, _ := client.Connect(p.Addr, "sub", "bytes", client.SharedKey("k"))
	defer sub.Close()
	for _, want := range [][]byte{join, later} {
		m := recv(t, sub)
		if !bytes.Equal(m.Payload(), want) || string(m.UID) != "gw" {
			t.Fatalf("payload %x, want %x", m.Payload(), want)
		}
	}
}

// A receive whose context ends returns the context's error and leaves the
// connection open: the next receive gets the next frame.
func TestCancelledReceiveLeavesTheConnectionOpen(t *testing.T) {
	for _, tc := range []struct {
		name string
		ws   bool
	}{{"tcp", false}, {"websocket", true}} {
		t.Run(tc.name, func(t *testing.T) {
			ws := freeAddr(t)
			p := server(t, []string{"MLES_KEY=k"}, "--ws-listen", ws)
			waitFor(t, ws)
			addr, opts := p.Addr, []client.Option{client.SharedKey("k")}
			if tc.ws {
				addr, opts = "ws://"+ws, nil
			}
			sub, err := client.Connect(addr, "sub", "cancel", opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close()
			pub, err := client.Connect(p.Addr, "pub", "cancel", client.SharedKey("k"))
			if err != nil {
				t.Fatal(err)
			}
			defer pub.Close()
			syncPair(t, sub, pub)
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			if _, err := sub.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("receive with nothing to read: %v, want the context's error", err)
			}
			if err := sub.Err(); err != nil {
				t.Fatalf("the Conn closed after a cancelled receive: %v", err)
			}
			pub.Send([]byte("after"))
			if m := recv(t, sub); string(m.Message) != "after" {
				t.Fatalf("next frame %q, want %q", m.Message, "after")
			}
			if st := sub.Stats(); st.Reconnects != 0 {
				t.Fatalf("%d reconnects", st.Reconnects)
			}
		})
	}
}

// mlesd's flags keep their meaning over the router's Config rule (0 is the
// default there, Off is none): --history-limit 0 keeps no history, and
// the default replays it.
func TestHistoryLimitZeroReplaysNothingAndTheDefaultReplays(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want int
	}{{"history-limit-0", []string{"--history-limit", "0"}, 0}, {"default", nil, 3}} {
		t.Run(tc.name, func(t *testing.T) {
			p := server(t, []string{"MLES_KEY=k"}, tc.args...)
			sub, err := client.Connect(p.Addr, "sub", "hist", client.SharedKey("k"))
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close()
			pub, err := client.Connect(p.Addr, "pub", "hist", client.SharedKey("k"))
			if err != nil {
				t.Fatal(err)
			}
			defer pub.Close()
			syncPair(t, sub, pub)
			for _, m := range []string{"a", "b", "c"} {
				pub.Send([]byte(m))
			}
			for string(recv(t, sub).Message) != "c" { // routed, so in the history if it keeps any
			}
			late, err := client.Connect(p.Addr, "late", "hist", client.SharedKey("k"))
			if err != nil {
				t.Fatal(err)
			}
			defer late.Close()
			stop := make(chan struct{})
			defer close(stop)
			go func() { // live frames until the late joiner has one
				for {
					select {
					case <-stop:
						return
					case <-time.After(20 * time.Millisecond):
						pub.Send([]byte("live"))
					}
				}
			}()
			got := 0
			for {
				m := string(recv(t, late).Message)
				if m == "live" {
					break
				}
				if m == "a" || m == "b" || m == "c" {
					got++
				}
			}
			if got != tc.want {
				t.Fatalf("the late joiner got %d frames of history, want %d", got, tc.want)
			}
		})
	}
}
