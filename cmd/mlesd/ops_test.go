package main

// Black-box tests of TLS, metrics, health, the config file and --version.

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/internal/mlestest"
	"github.com/mlesd/mlesd/tlsserve/tlstest"
)

type testPKI struct {
	ca                       *tlstest.CA
	server                   tlstest.Pair
	client, expired, strange tlstest.Pair
}

func newTestPKI(t *testing.T) *testPKI {
	dir := t.TempDir()
	p := &testPKI{ca: tlstest.NewCA(t, dir, "test")}
	other := tlstest.NewCA(t, dir, "other")
	p.server = p.ca.Server(t, dir, "server")
	p.client = p.ca.Client(t, dir, "client")
	p.expired = p.ca.ExpiredClient(t, dir, "expired")
	p.strange = other.Client(t, dir, "strange")
	return p
}

// startTLSMlesd runs mlesd with a TLS listener (and a metrics endpoint) and
// returns it with the TLS and metrics addresses, once both listen.
func startTLSMlesd(t *testing.T, p *testPKI, args ...string) (proc *mlestest.Proc, tlsAddr, metricsAddr string) {
	t.Helper()
	tlsAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(mlestest.FreePort(t)))
	metricsAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(mlestest.FreePort(t)))
	proc = startMlesd(t, append([]string{"--tls-listen", tlsAddr, "--tls-cert", p.server.CertFile,
		"--tls-key", p.server.KeyFile, "--metrics", metricsAddr}, args...)...)
	proc.WaitLog(t, "tls listening")
	return proc, tlsAddr, metricsAddr
}

// dialTLS finishes a handshake presenting cert (nil: none) and, because TLS
// 1.3 tells a client its certificate was refused only when it reads, reads
// with a short deadline: err is then the server's refusal, if any.
func dialTLS(t *testing.T, addr string, p *testPKI, cert *tls.Certificate) (*tls.Conn, error) {
	t.Helper()
	cfg := &tls.Config{RootCAs: p.ca.Pool(), ServerName: "localhost", MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	tc, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { tc.Close() })
	_ = tc.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := tc.Read(make([]byte, 1)); err != nil {
		if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
			return nil, err
		}
	}
	return tc, nil
}

func tlsClient(tc *tls.Conn, uid, ch string) *mlestest.Client {
	return &mlestest.Client{NC: tc, R: bufio.NewReaderSize(tc, 256<<10), UID: uid, Ch: ch, Key: codec.Key(key, uid, ch)}
}

// A TLS client and a plain TCP client on one channel exchange frames through
// the real binary.
func TestTLSClientAndPlainClientShareAChannel(t *testing.T) {
	pki := newTestPKI(t)
	p, tlsAddr, _ := startTLSMlesd(t, pki)
	plain := mlestest.Join(t, p.Addr, key, "plain", "mixed")
	tc, err := dialTLS(t, tlsAddr, pki, nil)
	if err != nil {
		t.Fatal(err)
	}
	sec := tlsClient(tc, "secure", "mixed")
	if err := sec.Send(nil); err != nil {
		t.Fatal(err)
	}
	mlestest.Sync(t, sec, plain)
	mlestest.Sync(t, plain, sec)
	for i := range 50 {
		if err := plain.Send(fmt.Appendf(nil, "tcp %d", i)); err != nil {
			t.Fatal(err)
		}
		if err := sec.Send(fmt.Appendf(nil, "tls %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 50 {
		if tr := readMsg(t, sec); tr != fmt.Sprintf("plain:tcp %d", i) {
			t.Fatalf("TLS client got %q, want frame %d from plain", tr, i)
		}
		if tr := readMsg(t, plain); tr != fmt.Sprintf("secure:tls %d", i) {
			t.Fatalf("plain client got %q, want frame %d from secure", tr, i)
		}
	}
}

// readMsg reads the next non-sync frame as "uid:message".
func readMsg(t *testing.T, c *mlestest.Client) string {
	t.Helper()
	for {
		tr, err := c.Read(5 * time.Second)
		if err != nil {
			t.Fatalf("%s: %v", c.UID, err)
		}
		if !mlestest.IsSync(tr.Message) {
			return tr.UID + ":" + string(tr.Message)
		}
	}
}

// With --tls-client-ca, a client without a certificate is refused, expired
// and foreign certificates fail cleanly (logged), and the server keeps
// serving a client with a good certificate.
func TestClientCertificatesAreRequiredAndVerified(t *testing.T) {
	pki := newTestPKI(t)
	p, tlsAddr, maddr := startTLSMlesd(t, pki, "--tls-client-ca", pki.ca.File)
	cases := []struct {
		name string
		cert *tls.Certificate
		log  string
	}{
		{"no certificate", nil, "reason=no-client-cert"},
		{"expired", &pki.expired.TLS, "expired"},
		{"another CA", &pki.strange.TLS, "unknown authority"},
	}
	for _, c := range cases {
		if _, err := dialTLS(t, tlsAddr, pki, c.cert); err == nil {
			t.Errorf("%s: served, want refused", c.name)
		}
		p.WaitLog(t, c.log)
	}
	m := scrape(t, maddr)
	if m[`mlesd_tls_handshake_failures_total{reason="no-client-cert"}`] != 1 ||
		m[`mlesd_tls_handshake_failures_total{reason="bad-client-cert"}`] != 2 {
		t.Errorf("failure counts: %v", m)
	}
	tc, err := dialTLS(t, tlsAddr, pki, &pki.client.TLS)
	if err != nil {
		t.Fatalf("a good client certificate was refused: %v", err)
	}
	sec := tlsClient(tc, "secure", "certs")
	if err := sec.Send(nil); err != nil {
		t.Fatal(err)
	}
	plain := mlestest.Join(t, p.Addr, key, "plain", "certs")
	mlestest.Sync(t, plain, sec)
	if !strings.Contains(p.Log(), `level=INFO msg="tls handshake failed"`) {
		t.Errorf("handshake failures not logged at info:\n%s", p.Log())
	}
}

// scrape reads /metrics into series -> value ("name{labels}" as printed).
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	m := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad metrics line %q", line)
		}
		m[line[:i]] = v
	}
	return m
}

// counted reads frames from r until it has been idle for idle (or the
// stream is bad), returning how many frames and bytes (headers included)
// arrived.
func counted(nc net.Conn, r *bufio.Reader, idle time.Duration) (frames, bytes int) {
	var hdr [codec.HeaderLen]byte
	for {
		_ = nc.SetReadDeadline(time.Now().Add(idle))
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		h, err := codec.ParseHeader(hdr[:])
		if err != nil {
			return
		}
		_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := r.Discard(h.Len); err != nil {
			return
		}
		frames++
		bytes += codec.HeaderLen + h.Len
	}
}

// waitMetric polls until cond holds for the scraped metrics (10 s at most).
func waitMetric(t *testing.T, addr, what string, cond func(m map[string]float64) bool) map[string]float64 {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		m := scrape(t, addr)
		if cond(m) {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics never showed %s: %v", what, m)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The counters move exactly as the traffic this test generates says: joins,
// frames and bytes in, frames and bytes out (what the clients received),
// frames dropped for a TLS receiver that does not read (routed minus
// received), closes by reason, TLS handshakes.
func TestMetricsCountExactlyTheTrafficGenerated(t *testing.T) {
	const n, size = 1500, 16 << 10
	pki := newTestPKI(t)
	p, tlsAddr, maddr := startTLSMlesd(t, pki, "--history-limit", "0", "--max-pending", "262144", "--loops", "2")
	if resp, err := http.Get("http://" + maddr + "/readyz"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("/readyz: %v %v", resp, err)
	}
	if resp, err := http.Get("http://" + maddr + "/healthz"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("/healthz: %v %v", resp, err)
	}
	// The base is taken once the start-up probe (mlestest.Start) has been
	// accepted and closed: on a slow machine its accept can come after the
	// first scrape, which then counted it as one of this test's.
	base := waitMetric(t, maddr, "the probe accepted and no open connections", func(m map[string]float64) bool {
		return m["mlesd_connections_accepted_total"] >= 1 && m["mlesd_connections_open"] == 0
	})
	delta := func(m map[string]float64, series string) float64 { return m[series] - base[series] }

	// One join at a time: the publisher joins last, so that it, which never
	// reads, is sent no join frame; every frame out goes to sub or stall.
	joins := func(n float64) {
		waitMetric(t, maddr, fmt.Sprint(n, " joins"), func(m map[string]float64) bool { return delta(m, "mlesd_joins_total") == n })
	}
	sub := mlestest.Join(t, p.Addr, key, "sub", "metered")
	joins(1)
	tc, err := dialTLS(t, tlsAddr, pki, nil)
	if err != nil {
		t.Fatal(err)
	}
	stall := tlsClient(tc, "stall", "metered")
	if err := stall.Send(nil); err != nil {
		t.Fatal(err)
	}
	joins(2)
	pub := mlestest.Join(t, p.Addr, key, "pub", "metered")
	joins(3)

	// The subscriber reads all along; the TLS receiver reads nothing yet.
	type tally struct{ frames, bytes int }
	subGot := make(chan tally, 1)
	go func() {
		f, b := counted(sub.NC, sub.R, 3*time.Second)
		subGot <- tally{f, b}
	}()
	msg := make([]byte, size)
	for i := range n {
		if err := pub.Send(msg); err != nil {
			t.Fatal(err)
		}
		if i%100 == 99 {
			time.Sleep(5 * time.Millisecond) // let the subscriber keep up
		}
	}
	waitMetric(t, maddr, "every frame in", func(m map[string]float64) bool { return delta(m, "mlesd_frames_in_total") == n })
	// Now the TLS receiver takes what it was not dropped.
	sf, sb := counted(stall.NC, stall.R, 2*time.Second)
	s := <-subGot
	const routed = 2*n + 3 // n frames to 2 receivers, plus each pair's join frame once
	m := waitMetric(t, maddr, "every routed frame out or dropped", func(m map[string]float64) bool {
		return delta(m, "mlesd_frames_out_total")+delta(m, "mlesd_frames_dropped_total") == routed
	})
	t.Logf("sub got %d frames, the TLS receiver %d; dropped %v", s.frames, sf, delta(m, "mlesd_frames_dropped_total"))
	frameBytes := len(pub.Frame(msg))
	for _, c := range []struct {
		series string
		want   float64
	}{
		{"mlesd_joins_total", 3},
		{"mlesd_frames_in_total", n},
		{"mlesd_bytes_in_total", float64(n * frameBytes)},
		{"mlesd_frames_out_total", float64(s.frames + sf)},
		{"mlesd_bytes_out_total", float64(s.bytes + sb)},
		{"mlesd_frames_dropped_total", float64(routed - s.frames - sf)},
		{"mlesd_connections_accepted_total", 3},
		{"mlesd_tls_handshakes_total", 1},
		{"mlesd_channels", 1},
	} {
		if got := delta(m, c.series); got != c.want {
			t.Errorf("%s moved by %v, want %v", c.series, got, c.want)
		}
	}
	if delta(m, "mlesd_frames_dropped_total") == 0 {
		t.Error("the TLS receiver that did not read had nothing dropped")
	}

	// Closes by reason: garbage, a wrong key, plain bytes on the TLS port.
	garbage := mlestest.Dial(t, p.Addr)
	_, _ = garbage.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	mlestest.ExpectClosed(t, garbage)
	wrong := mlestest.Join(t, p.Addr, "not-the-key", "w", "metered")
	mlestest.ExpectClosed(t, wrong.NC)
	notTLS := mlestest.Join(t, tlsAddr, key, "x", "metered")
	mlestest.ExpectClosed(t, notTLS.NC)
	m = waitMetric(t, maddr, "the closes", func(m map[string]float64) bool {
		return delta(m, `mlesd_tls_handshake_failures_total{reason="not-tls"}`) == 1 &&
			delta(m, "mlesd_connections_accepted_total") == 5
	})
	for series, want := range map[string]float64{
		`mlesd_connections_closed_by_server_total{reason="bad-magic"}`: 1,
		`mlesd_connections_closed_by_server_total{reason="wrong-key"}`: 1,
		"mlesd_auth_failures_total":                                    1,
		"mlesd_joins_total":                                            3,
	} {
		if got := delta(m, series); got != want {
			t.Errorf("%s moved by %v, want %v", series, got, want)
		}
	}
	if m["mlesd_event_loop_busy_seconds_total"] <= base["mlesd_event_loop_busy_seconds_total"] {
		t.Error("event loop busy time did not move")
	}
}

// Precedence: a flag beats the environment, which beats the file, which
// beats the default; --print-config shows each value and its source.
func TestConfigPrecedenceFlagEnvFileDefault(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "mlesd.toml")
	if err := os.WriteFile(file, []byte(`
max-conns = 111          # file only
max-conns-per-ip = 222   # file, env overrides
history-limit = 333      # file, env and flag: the flag wins
listen = ["127.0.0.1:7001", "127.0.0.1:7002"]
stall-timeout = "3m"
key = "from-the-file"
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(mlesdBin, "--config", file, "--print-config", "--history-limit", "999")
	cmd.Env = append(os.Environ(), "MLESD_MAX_CONNS_PER_IP=2000", "MLESD_HISTORY_LIMIT=3000", "MLES_KEY=")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("--print-config: %v", err)
	}
	for _, want := range []string{
		"max-conns = 111  # file\n",
		"max-conns-per-ip = 2000  # env MLESD_MAX_CONNS_PER_IP\n",
		"history-limit = 999  # flag\n",
		`listen = ["127.0.0.1:7001", "127.0.0.1:7002"]  # file` + "\n",
		`stall-timeout = "3m0s"  # file` + "\n",
		"max-frame = 16777215  # default\n",
		"# key = (set, hidden)  # file\n",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("--print-config lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(string(out), "from-the-file") {
		t.Error("--print-config shows the key")
	}
	// Its output is itself a valid config file giving the same settings.
	again := filepath.Join(dir, "again.toml")
	if err := os.WriteFile(again, out, 0o600); err != nil {
		t.Fatal(err)
	}
	out2, err := exec.Command(mlesdBin, "--config", again, "--print-config").Output()
	if err != nil {
		t.Fatalf("--print-config of the printed config: %v", err)
	}
	if !strings.Contains(string(out2), "history-limit = 999  # file\n") {
		t.Errorf("the printed config does not read back:\n%s", out2)
	}
}

// A config file can start the server; MLESD_CONFIG names it too.
func TestConfigFileSetsTheServerUp(t *testing.T) {
	file := filepath.Join(t.TempDir(), "mlesd.toml")
	if err := os.WriteFile(file, []byte("max-conns = 1\nlog-level = \"debug\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := mlestest.Start(t, mlesdBin, []string{"MLES_KEY=" + key, "MLESD_CONFIG=" + file})
	p.WaitLog(t, "connection closed") // the start-up probe has gone
	mlestest.Join(t, p.Addr, key, "a", "c")
	time.Sleep(200 * time.Millisecond)
	mlestest.ExpectClosed(t, mlestest.Dial(t, p.Addr))
	p.WaitLog(t, "reason=max-conns")
}

// Bad config files and inconsistent TLS flags exit 2 with a message.
func TestBadConfigExitsWithUsageError(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	for _, c := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--config", write("typo.toml", "max-con = 3\n")}, `unknown setting "max-con"`},
		{[]string{"--config", write("type.toml", "max-conns = \"many\"\n")}, "max-conns"},
		{[]string{"--config", write("syntax.toml", "max-conns = \n")}, "syntax.toml"},
		{[]string{"--config", filepath.Join(dir, "missing.toml")}, "missing.toml"},
		{[]string{"--tls-listen", "127.0.0.1:0"}, "--tls-listen needs --tls-cert and --tls-key"},
		{[]string{"--tls-cert", "x.pem"}, "need --tls-listen"},
	} {
		cmd := exec.Command(mlesdBin, c.args...)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
			t.Errorf("%v: exit %v, want 2", c.args, err)
		}
		if !strings.Contains(string(out), c.msg) {
			t.Errorf("%v: output %q lacks %q", c.args, out, c.msg)
		}
	}
}

// --version prints the version and commit stamped by the build.
func TestVersionPrintsVersionAndCommit(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "mlesd-stamped")
	build := exec.Command("go", "build", "-o", bin, "-ldflags", "-X main.version=v9.8.7 -X main.commit=cafe123", ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(out), "mlesd v9.8.7 (commit cafe123, go") {
		t.Errorf("--version: %q", out)
	}
}

// With --ws-listen the gateway's counters are exported too; without a TLS
// listener there are no TLS metrics.
func TestGatewayMetricsAppearWithTheGateway(t *testing.T) {
	maddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(mlestest.FreePort(t)))
	waddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(mlestest.FreePort(t)))
	p := startMlesd(t, "--metrics", maddr, "--ws-listen", waddr)
	p.WaitLog(t, "websocket gateway listening")
	m := scrape(t, maddr)
	for _, series := range []string{"mlesd_ws_sessions_open", "mlesd_ws_messages_in_total", "mlesd_ws_frames_dropped_total"} {
		if _, ok := m[series]; !ok {
			t.Errorf("no %s with --ws-listen", series)
		}
	}
	if _, ok := m["mlesd_tls_handshakes_total"]; ok {
		t.Error("TLS metrics without --tls-listen")
	}
}
