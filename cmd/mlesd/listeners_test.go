package main

// Black-box tests of what mlesd says at start: listener failures, the
// version, addresses in JSON logs, the warning for open listeners without a
// shared key.

import (
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mlesd/mlesd/internal/mlestest"
)

// runToExit runs mlesd, which must exit by itself within 15 s.
func runToExit(t *testing.T, args ...string) (stderr string, code int) {
	t.Helper()
	cmd := exec.Command(mlesdBin, args...)
	var log mlestest.SyncBuffer
	cmd.Stderr = &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if ee, ok := err.(*exec.ExitError); ok {
			return log.String(), ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return log.String(), 0
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("%v still running after 15 s:\n%s", args, log.String())
		return "", -1
	}
}

// Any listener that cannot be opened is logged with its flag, address and
// the kernel's reason, and mlesd exits 1, whichever listener it is.
func TestBusyListenerSaysAddressAlreadyInUseAndExitsOne(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	b := busy.Addr().String()
	free := func() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(mlestest.FreePort(t))) }
	pki := newTestPKI(t)
	for _, tc := range []struct {
		flag string
		args []string
	}{
		{"--listen", []string{"--listen", b}},
		{"--metrics", []string{"--listen", free(), "--metrics", b}},
		{"--pprof", []string{"--listen", free(), "--pprof", b}},
		{"--ws-listen", []string{"--listen", free(), "--ws-listen", b}},
		{"--tls-listen", []string{"--listen", free(), "--tls-listen", b, "--tls-cert", pki.server.CertFile, "--tls-key", pki.server.KeyFile}},
	} {
		log, code := runToExit(t, tc.args...)
		if code != exitFailure || !strings.Contains(log, `msg="cannot listen"`) ||
			!strings.Contains(log, tc.flag+" ") && !strings.Contains(log, tc.flag+":") ||
			!strings.Contains(log, "address already in use") {
			t.Errorf("%s on a busy port: exit %d, want %d with \"cannot listen\", the flag and the reason:\n%s",
				tc.flag, code, exitFailure, log)
		}
	}
}

func TestStartLogNamesTheVersion(t *testing.T) {
	out, err := exec.Command(mlesdBin, "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	// "mlesd VERSION (commit COMMIT, go...)"
	f := strings.Fields(string(out))
	if len(f) < 4 {
		t.Fatalf("--version: %q", out)
	}
	version, commit := f[1], strings.TrimSuffix(f[3], ",")
	p := startMlesd(t)
	p.WaitLog(t, "mlesd listening")
	for _, line := range strings.Split(p.Log(), "\n") {
		if strings.Contains(line, `msg="starting mlesd"`) {
			if !strings.Contains(line, "version="+version+" commit="+commit+" ") {
				t.Errorf("start-up line lacks version=%s commit=%s: %s", version, commit, line)
			}
			return
		}
	}
	t.Fatalf("no start-up line:\n%s", p.Log())
}

// In JSON logs every address is a string (or a list of strings), never an
// object of IP, Port and Zone.
func TestJSONLogAddressesAreStrings(t *testing.T) {
	pki := newTestPKI(t)
	p, tlsAddr, _ := startTLSMlesd(t, pki, "--log-format", "json", "--log-level", "debug",
		"--ws-listen", net.JoinHostPort("127.0.0.1", strconv.Itoa(mlestest.FreePort(t))))
	p.WaitLog(t, "websocket gateway listening")
	bad := mlestest.Join(t, p.Addr, "wrong", "intruder", "json") // a close with its remote address
	mlestest.ExpectClosed(t, bad.NC)
	if nc, err := net.Dial("tcp", tlsAddr); err == nil { // a failed handshake with its remote address
		_, _ = nc.Write([]byte("not TLS\r\n\r\n"))
		_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _ = nc.Read(make([]byte, 16))
		nc.Close()
	}
	p.WaitLog(t, `"remote"`)
	p.WaitLog(t, "tls handshake failed")
	addrKeys := map[string]bool{"listen": true, "addrs": true, "addr": true, "remote": true, "local": true, "peer": true, "peers": true}
	seen := 0
	for _, line := range strings.Split(strings.TrimSpace(p.Log()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("not a JSON log line: %q", line)
		}
		for k, v := range rec {
			if !addrKeys[k] {
				continue
			}
			seen++
			switch v := v.(type) {
			case string:
			case []any:
				for _, e := range v {
					if _, ok := e.(string); !ok {
						t.Errorf("%s in %q: element %v is not a string", k, line, e)
					}
				}
			default:
				t.Errorf("%s in %q is %T, not a string", k, line, v)
			}
		}
	}
	if seen < 5 {
		t.Fatalf("only %d address fields in the log: the test proves nothing\n%s", seen, p.Log())
	}
}

// startInNetns runs mlesd in a network namespace of its own (nothing can
// reach it, whatever it binds) until its log says it listens.
func startInNetns(t *testing.T, env []string, args ...string) *mlestest.SyncBuffer {
	t.Helper()
	if err := exec.Command("unshare", "-rn", "true").Run(); err != nil {
		t.Skipf("cannot make a network namespace (unshare -rn): %v", err)
	}
	// Loopback up inside, so that 127.0.0.1 and ::1 exist there too.
	cmd := exec.Command("unshare", append([]string{"-rn", "sh", "-c", `ip link set lo up && exec "$0" "$@"`, mlesdBin}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	log := &mlestest.SyncBuffer{}
	cmd.Stderr = log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("mlesd in its namespace: %v\n%s", err, log.String())
			}
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			t.Errorf("mlesd did not stop on SIGTERM")
		}
	})
	mlestest.WaitFor(t, log.String, "mlesd listening", 10*time.Second)
	return log
}

const openWithoutKey = "listening beyond loopback without a shared key"

func TestListeningBeyondLoopbackWithoutKeyWarns(t *testing.T) {
	env := []string{"MLES_KEY=", "MLESD_KEY=", "MLES_ADDR_KEY="}
	log := startInNetns(t, env, "--listen", "0.0.0.0:8077")
	if !strings.Contains(log.String(), openWithoutKey) || !strings.Contains(log.String(), "addrs=[0.0.0.0:8077]") {
		t.Errorf("no warning for 0.0.0.0 without a key:\n%s", log.String())
	}
	keyed := startInNetns(t, env, "--listen", "[::]:8077", "--key", "secret")
	if strings.Contains(keyed.String(), openWithoutKey) {
		t.Errorf("warning although a shared key is set:\n%s", keyed.String())
	}
	local := startInNetns(t, env, "--listen", "127.0.0.1:8077,[::1]:8078")
	if strings.Contains(local.String(), openWithoutKey) {
		t.Errorf("warning for loopback listeners:\n%s", local.String())
	}
}

func TestIsLoopback(t *testing.T) {
	for addr, want := range map[string]bool{"127.0.0.1:1": true, "[::1]:1": true, "localhost:1": true, "127.3.2.1:1": true,
		":8077": false, "[::]:8077": false, "0.0.0.0:1": false, "10.0.0.1:1": false, "example.com:1": false, "bad": false} {
		if got := isLoopback(addr); got != want {
			t.Errorf("isLoopback(%q) = %v, want %v", addr, got, want)
		}
	}
}

// gnet's own lines (its event loops starting and stopping) are debug lines:
// at info the log shows none, at debug it does.
func TestGnetChatterOnlyAtDebug(t *testing.T) {
	for level, want := range map[string]bool{"info": false, "debug": true} {
		p := startMlesd(t, "--log-level", level)
		p.WaitLog(t, "mlesd listening")
		if err := p.Stop(15 * time.Second); err != nil {
			t.Fatal(err)
		}
		if got := strings.Contains(p.Log(), "gnet: "); got != want {
			t.Errorf("--log-level %s: gnet lines in the log: %v, want %v\n%s", level, got, want, p.Log())
		}
	}
}
