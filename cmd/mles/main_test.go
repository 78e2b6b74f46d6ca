package main

// Black-box tests: they build the mles and mlesd binaries and run them as a
// user or a script would, over loopback.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mlesd/mlesd/client"
	"github.com/mlesd/mlesd/internal/mlestest"
	"github.com/mlesd/mlesd/tlsserve/tlstest"
)

var mlesBin, mlesdBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mles-test-")
	if err != nil {
		panic(err)
	}
	if mlesBin, err = mlestest.BuildCommand(dir, "mles"); err == nil {
		mlesdBin, err = mlestest.BuildCommand(dir, "mlesd")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// keyEnv is the environment with MLES_KEY=key ("" = address keys).
func keyEnv(key string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MLES_KEY=") && !strings.HasPrefix(kv, "MLES_ADDR_KEY=") {
			env = append(env, kv)
		}
	}
	if key != "" {
		env = append(env, "MLES_KEY="+key)
	}
	return env
}

// startMlesd runs mlesd on a free loopback port with history 10.
func startMlesd(t *testing.T, env []string, args ...string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	log := &mlestest.SyncBuffer{}
	cmd := exec.Command(mlesdBin, append([]string{"--listen", addr, "--history-limit", "10", "--log-level", "warn"}, args...)...)
	cmd.Env = env
	cmd.Stderr = log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Errorf("mlesd: %v\n%s", err, log)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if nc, err := net.Dial("tcp", addr); err == nil {
			nc.Close()
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("mlesd did not listen: %s", log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// mles runs the client to completion with stdin and env, and returns its
// stdout, stderr and exit code.
func mles(t *testing.T, env []string, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(mlesBin, args...)
	cmd.Env = env
	cmd.Stdin = strings.NewReader(stdin)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("mles %v did not finish; stderr: %s", args, e.String())
	}
	return o.String(), e.String(), cmd.ProcessState.ExitCode()
}

// waitAddr waits until addr accepts connections.
func waitAddr(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if nc, err := net.Dial("tcp", addr); err == nil {
			nc.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never accepted", addr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// start runs the client in the background; wait collects it.
type bg struct {
	cmd      *exec.Cmd
	out, err mlestest.SyncBuffer
	done     chan error
}

func startMles(t *testing.T, env []string, args ...string) *bg {
	t.Helper()
	b := &bg{cmd: exec.Command(mlesBin, args...), done: make(chan error, 1)}
	b.cmd.Env = env
	b.cmd.Stdout, b.cmd.Stderr = &b.out, &b.err
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { b.done <- b.cmd.Wait() }()
	t.Cleanup(func() { b.cmd.Process.Kill(); <-b.done })
	return b
}

func (b *bg) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case err := <-b.done:
		b.done <- err // for the cleanup
		return b.cmd.ProcessState.ExitCode()
	case <-time.After(d):
		t.Fatalf("mles %v did not finish in %v; stdout %q stderr %q", b.cmd.Args[1:], d, b.out.String(), b.err.String())
		return -1
	}
}

func TestPubThenSubRoundTripInBothKeyModes(t *testing.T) {
	for _, key := range []string{"sekrit", ""} {
		t.Run(fmt.Sprintf("MLES_KEY=%q", key), func(t *testing.T) {
			env := keyEnv(key)
			srv := startMlesd(t, env)
			_, stderr, code := mles(t, env, "one\ntwo\n\nthree\xff\n", "pub", "--server", srv, "--uid", "alice", "--channel", "news", "-l")
			if code != 0 {
				t.Fatalf("pub exit %d: %s", code, stderr)
			}
			// sub joins after pub left: the messages come from history.
			out, stderr, code := mles(t, env, "", "sub", "-s", srv, "-u", "bob", "-c", "news", "--json", "--count", "3")
			if code != 0 {
				t.Fatalf("sub exit %d: %s", code, stderr)
			}
			var got []subRecord
			dec := json.NewDecoder(strings.NewReader(out))
			for dec.More() {
				var r subRecord
				if err := dec.Decode(&r); err != nil {
					t.Fatalf("sub output %q: %v", out, err)
				}
				if r.CID == 0 {
					t.Errorf("record without cid: %+v", r)
				}
				r.CID = 0
				got = append(got, r)
			}
			want := []subRecord{
				{UID: "alice", Channel: "news", Message: "one"},
				{UID: "alice", Channel: "news", Message: "two"},
				{UID: "alice", Channel: "news", Message: "dGhyZWX/", Encoding: "base64"},
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("sub printed %+v, want %+v", got, want)
			}
		})
	}
}

func TestPubMessageWithCountSendsItNTimes(t *testing.T) {
	env := keyEnv("k")
	srv := startMlesd(t, env)
	if _, stderr, code := mles(t, env, "", "pub", "-s", srv, "-u", "a", "-c", "ch", "-m", "hi", "--count", "3"); code != 0 {
		t.Fatalf("pub: %d %s", code, stderr)
	}
	out, stderr, code := mles(t, env, "", "sub", "-s", srv, "-u", "b", "-c", "ch", "-C", "3", "--raw")
	if code != 0 || out != "hi\nhi\nhi\n" {
		t.Fatalf("sub --raw: exit %d, printed %q, stderr %q", code, out, stderr)
	}
}

func TestSubRawPrintsOnlyThePayload(t *testing.T) {
	env := keyEnv("k")
	srv := startMlesd(t, env)
	mles(t, env, "", "pub", "-s", srv, "-u", "alice", "-c", "raw", "-m", "payload: \xff bytes")
	out, _, code := mles(t, env, "", "sub", "-s", srv, "-u", "b", "-c", "raw", "-C", "1", "-R")
	if code != 0 || out != "payload: \xff bytes\n" {
		t.Fatalf("exit %d, %q", code, out)
	}
}

func TestPubSendsAFileAsOneMessage(t *testing.T) {
	env := keyEnv("k")
	srv := startMlesd(t, env)
	f := filepath.Join(t.TempDir(), "a.txt")
	os.WriteFile(f, []byte("line 1\nline 2\n"), 0o644)
	if _, stderr, code := mles(t, env, "", "pub", "-s", srv, "-u", "f", "-c", "files", "-f", f); code != 0 {
		t.Fatalf("pub: %d %s", code, stderr)
	}
	out, stderr, code := mles(t, env, "", "sub", "-s", srv, "-u", "r", "-c", "files", "--count", "1", "--json")
	if code != 0 || !strings.Contains(out, `"message":"line 1\nline 2\n"`) {
		t.Fatalf("sub: %d %q %s", code, out, stderr)
	}
}

func TestPubStdinSendsAllOfItAsOneMessage(t *testing.T) {
	env := keyEnv("k")
	srv := startMlesd(t, env)
	if _, stderr, code := mles(t, env, "a\nb\n", "pub", "-s", srv, "-u", "f", "-c", "stdin", "--stdin"); code != 0 {
		t.Fatalf("pub: %d %s", code, stderr)
	}
	out, _, code := mles(t, env, "", "sub", "-s", srv, "-u", "r", "-c", "stdin", "-C", "1", "--json")
	if code != 0 || !strings.Contains(out, `"message":"a\nb\n"`) {
		t.Fatalf("sub: %d %q", code, out)
	}
}

func TestPubPipedIntoALiveSub(t *testing.T) {
	env := keyEnv("k")
	srv := startMlesd(t, env)
	sub := startMles(t, env, "sub", "-s", srv, "-u", "bob", "-c", "live", "--count", "2")
	// The sub's join cannot be observed (the server acknowledges nothing
	// and keeps no empty joins); history makes the order irrelevant.
	_, stderr, code := mles(t, env, "hello\nworld\n", "pub", "-s", srv, "-u", "alice", "-c", "live", "-l", "--rate", "100/s")
	if code != 0 {
		t.Fatalf("pub: %d %s", code, stderr)
	}
	if code := sub.wait(t, 10*time.Second); code != 0 || sub.out.String() != "alice: hello\nalice: world\n" {
		t.Fatalf("sub exit %d printed %q %s", code, sub.out.String(), sub.err.String())
	}
}

func TestSubTimeoutEndsAQuietSubscription(t *testing.T) {
	env := keyEnv("k")
	srv := startMlesd(t, env)
	start := time.Now()
	_, stderr, code := mles(t, env, "", "sub", "-s", srv, "-u", "b", "-c", "quiet", "--timeout", "300ms")
	if code != 0 {
		t.Fatalf("sub --timeout without --count: exit %d %s", code, stderr)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("sub --timeout 300ms took %v", d)
	}
	_, stderr, code = mles(t, env, "", "sub", "-s", srv, "-u", "b", "-c", "quiet", "-W", "300ms", "-C", "2")
	if code != 3 || !strings.Contains(stderr, "received 0 of 2 messages") {
		t.Fatalf("sub --timeout with --count unmet: exit %d, stderr %q; want 3", code, stderr)
	}
}

func TestSubCountGivesUpWhenTheChannelGoesQuiet(t *testing.T) {
	env := keyEnv("k")
	srv := startMlesd(t, env)
	mles(t, env, "", "pub", "-s", srv, "-u", "a", "-c", "lossy", "-m", "only", "-C", "2")
	out, stderr, code := mles(t, env, "", "sub", "-s", srv, "-u", "b", "-c", "lossy", "-C", "5", "--idle", "300ms")
	if code != 3 || out != "a: only\na: only\n" || !strings.Contains(stderr, "received 2 of 5 messages") || !strings.Contains(stderr, "quiet") {
		t.Fatalf("exit %d, out %q, stderr %q", code, out, stderr)
	}
}

func TestChatDrivenThroughPipes(t *testing.T) {
	env := keyEnv("k")
	srv := startMlesd(t, env)
	type chat struct {
		cmd *exec.Cmd
		in  io.WriteCloser
		out *bufio.Reader
	}
	start := func(uid string) chat {
		cmd := exec.Command(mlesBin, "chat", "--server", srv, "--uid", uid, "--channel", "lobby")
		cmd.Env = env
		in, _ := cmd.StdinPipe()
		outPipe, _ := cmd.StdoutPipe()
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return chat{cmd, in, bufio.NewReader(outPipe)}
	}
	readLine := func(c chat) string {
		t.Helper()
		lc := make(chan string, 1)
		go func() { l, _ := c.out.ReadString('\n'); lc <- l }()
		select {
		case l := <-lc:
			return strings.TrimSuffix(l, "\n")
		case <-time.After(10 * time.Second):
			t.Fatal("no line from chat")
			return ""
		}
	}
	alice := start("alice")
	io.WriteString(alice.in, "hi bob\n") // kept in history: bob sees it whatever the join order
	bob := start("bob")
	for { // alice's join reaches bob too when the server joined bob first
		l := readLine(bob)
		if l == "* alice joined" {
			continue
		}
		if l != "alice: hi bob" {
			t.Fatalf("bob saw %q", l)
		}
		break
	}
	io.WriteString(bob.in, "hi alice\n")
	for {
		l := readLine(alice)
		if l == "* bob joined" {
			continue
		}
		if l != "bob: hi alice" {
			t.Fatalf("alice saw %q", l)
		}
		break
	}
	// End of input ends chat with exit 0.
	alice.in.Close()
	if err := alice.cmd.Wait(); err != nil {
		t.Fatalf("chat after end of input: %v", err)
	}
}

func TestWrongKeyIsAConnectionErrorWithExitCode1(t *testing.T) {
	srv := startMlesd(t, keyEnv("right"))
	for _, args := range [][]string{{"sub"}, {"pub", "-l"}, {"pub", "-m", "x"}, {"chat"}} {
		args = append(args, "--server", srv, "--uid", "u", "--channel", "c")
		_, stderr, code := mles(t, keyEnv("wrong"), "just one line\n", args...)
		if code != 1 || !strings.Contains(stderr, "closed the connection") {
			t.Errorf("%v: exit %d, stderr %q; want 1 and an explanation", args, code, stderr)
		}
	}
}

func TestUnreachableServerExitsWith1(t *testing.T) {
	for _, args := range [][]string{{"sub"}, {"pub", "-m", "x"}, {"chat"}} {
		args = append(args, "--server", "127.0.0.1:1", "--uid", "u", "--channel", "c")
		_, stderr, code := mles(t, keyEnv(""), "x\n", args...)
		if code != 1 || !strings.Contains(stderr, "cannot connect") {
			t.Errorf("%v: exit %d, stderr %q", args, code, stderr)
		}
	}
}

func TestUsageErrorsPrintTheErrorAndAPointerToHelpAndExit2(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"nope"},
		{"sub", "--channel", "c"},
		{"pub", "--uid", "u"},
		{"pub", "-u", "u", "-c", "c"}, // no message source
		{"pub", "-u", "u", "-c", "c", "-m", "x", "-l"},
		{"pub", "-u", "u", "-c", "c", "-m", "x", "--rate", "fast"},
		{"pub", "-u", "u", "-c", "c", "-m", "x", "--count", "0"},
		{"sub", "-u", "u", "-c", "c", "--bogus"},
		{"sub", "-u", "u", "-c", "c", "--raw", "--json"},
		{"chat", "-u", "u", "-c", "c", "extra"},
		{"bench", "--size", "3"},
		{"completion", "tcsh"},
		{"proxy", "--log-level", "loud"},
		{"pub", "-u", "u", "-c", "c", "-m", "x", "--cert", "a.pem"},
	} {
		out, stderr, code := mles(t, keyEnv(""), "", args...)
		lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
		if code != 2 || out != "" || len(lines) != 2 || !strings.Contains(lines[1], "--help\" for usage") {
			t.Errorf("mles %v: exit %d, stdout %q, stderr %q; want 2, the error and one line pointing at --help", args, code, out, stderr)
		}
	}
}

func TestHelpGoesToStdoutWithExit0(t *testing.T) {
	for _, sub := range []string{"chat", "pub", "sub", "bench", "proxy", "completion"} {
		for _, h := range []string{"--help", "-h"} {
			out, stderr, code := mles(t, keyEnv(""), "", sub, h)
			if code != 0 || stderr != "" || !strings.Contains(out, "usage: mles "+sub) || !strings.Contains(out, "--help") {
				t.Errorf("mles %s %s: exit %d, stderr %q, output %q", sub, h, code, stderr, out)
			}
		}
	}
	out, _, _ := mles(t, keyEnv(""), "", "pub", "--help")
	for _, want := range []string{"-s, --server URL", "-m, --message TEXT", "-l, --lines", "--tls", "--ca FILE", "--insecure", "mosquitto_pub"} {
		if !strings.Contains(out, want) {
			t.Errorf("pub --help lacks %q", want)
		}
	}
	if out, _, code := mles(t, keyEnv(""), "", "--help"); code != 0 || !strings.Contains(out, "bench") || !strings.Contains(out, "--version") {
		t.Errorf("mles --help: exit %d %q", code, out)
	}
}

func TestVersionPrintsOneLine(t *testing.T) {
	out, _, code := mles(t, keyEnv(""), "", "--version")
	if code != 0 || !strings.HasPrefix(out, "mles ") || strings.Count(out, "\n") != 1 {
		t.Fatalf("--version: exit %d %q", code, out)
	}
}

func TestCompletionScriptsLoad(t *testing.T) {
	t.Run("bash", func(t *testing.T) {
		script := fmt.Sprintf(`source <(%q completion bash) && complete -p mles && COMP_WORDS=(mles pub --se); COMP_CWORD=2; _mles; echo "${COMPREPLY[@]}"`, mlesBin)
		out, err := exec.Command("bash", "-c", script).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "complete -F _mles mles") || !strings.Contains(string(out), "--server") {
			t.Fatalf("bash: %v %s", err, out)
		}
	})
	t.Run("zsh", func(t *testing.T) {
		if _, err := exec.LookPath("zsh"); err != nil {
			t.Skip("zsh is not installed")
		}
		out, err := exec.Command("zsh", "-c", fmt.Sprintf(`autoload -U compinit && compinit -u && source <(%q completion zsh) && (( $+functions[_mles] )) && echo "comp=$_comps[mles]"`, mlesBin)).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "comp=_mles") {
			t.Fatalf("zsh: %v %s", err, out)
		}
	})
	t.Run("fish", func(t *testing.T) {
		if _, err := exec.LookPath("fish"); err != nil {
			t.Skip("fish is not installed")
		}
		out, err := exec.Command("fish", "-c", fmt.Sprintf(`%q completion fish | source; complete -C 'mles pub --ser'`, mlesBin)).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--server") {
			t.Fatalf("fish: %v %s", err, out)
		}
	})
}

func TestPubAndSubOverTLS(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "test")
	cert := ca.Server(t, dir, "server")
	tlsAddr := freeAddr(t)
	env := keyEnv("k")
	startMlesd(t, env, "--tls-listen", tlsAddr, "--tls-cert", cert.CertFile, "--tls-key", cert.KeyFile)
	waitAddr(t, tlsAddr)
	if _, stderr, code := mles(t, env, "", "pub", "-s", "tls://"+tlsAddr, "--ca", ca.File, "-u", "a", "-c", "sec", "-m", "secret"); code != 0 {
		t.Fatalf("pub --ca: %d %s", code, stderr)
	}
	out, stderr, code := mles(t, env, "", "sub", "-s", tlsAddr, "--tls", "--insecure", "-u", "b", "-c", "sec", "-C", "1")
	if code != 0 || out != "a: secret\n" {
		t.Fatalf("sub --tls --insecure: %d %q %s", code, out, stderr)
	}
	// Without the CA the certificate is not trusted.
	_, stderr, code = mles(t, env, "", "sub", "-s", "tls://"+tlsAddr, "-u", "b", "-c", "sec", "-C", "1")
	if code != 1 || !strings.Contains(stderr, "certificate") {
		t.Fatalf("sub without --ca: exit %d, %q", code, stderr)
	}
}

func TestPubAndSubOverWebSocket(t *testing.T) {
	ws := freeAddr(t)
	env := keyEnv("k")
	startMlesd(t, env, "--ws-listen", ws)
	waitAddr(t, ws)
	if _, stderr, code := mles(t, env, "", "pub", "-s", "ws://"+ws+"/", "-u", "a", "-c", "web", "-m", "via ws"); code != 0 {
		t.Fatalf("pub: %d %s", code, stderr)
	}
	out, stderr, code := mles(t, env, "", "sub", "-s", "ws://"+ws, "-u", "b", "-c", "web", "-C", "1")
	if code != 0 || out != "a: via ws\n" {
		t.Fatalf("sub: %d %q %s", code, out, stderr)
	}
}

func TestSubShowsJoinFramesOnlyWithShowJoins(t *testing.T) {
	env := keyEnv("k")
	srv := startMlesd(t, env)
	watcher := startMles(t, env, "sub", "-s", srv, "-u", "w", "-c", "j", "--show-joins", "--json", "--count", "1")
	// Join a second client until the watcher reports a join (the join
	// order of two connections is the server's; retry rather than sleep).
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := client.Connect(srv, "q", "j", client.SharedKey("k"))
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-watcher.done:
			c.Close()
			if got := watcher.out.String(); !strings.HasPrefix(got, `{"uid":"q","channel":"j","message":"","cid":`) {
				t.Fatalf("printed %q", got)
			}
			watcher.done <- nil
			return
		case <-time.After(200 * time.Millisecond):
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("the join frame was not printed")
		}
	}
}

func TestBenchReportsRatesLatencyAndLoss(t *testing.T) {
	env := keyEnv("k")
	srv := startMlesd(t, env, "--history-limit", "0")
	out, stderr, code := mles(t, env, "", "bench", "-s", srv, "--pubs", "2", "--subs", "3", "--size", "64", "--count", "2000")
	if code != 0 {
		t.Fatalf("bench: exit %d %s", code, stderr)
	}
	for _, want := range []string{"2 publishers, 3 subscribers, 64-byte messages", "pub         4,000 msgs", "msgs/s", "MB/s", "loss", "latency  p50", "p99.9"} {
		if !strings.Contains(out, want) {
			t.Errorf("bench output lacks %q:\n%s", want, out)
		}
	}
	var recv int
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "sub ") {
			fmt.Sscanf(strings.ReplaceAll(strings.TrimSpace(strings.TrimPrefix(l, "sub")), ",", ""), "%d", &recv)
		}
	}
	if recv == 0 || recv > 12000 {
		t.Fatalf("bench received %d of 12000:\n%s", recv, out)
	}
	t.Logf("\n%s", out)
}

var _ = bytes.Equal

func TestBenchShowsAProgressLineOnATerminal(t *testing.T) {
	env := keyEnv("k")
	srv := startMlesd(t, env, "--history-limit", "0")
	var out, errOut mlestest.SyncBuffer
	e := envFor(env, &out, &errOut)
	e.isTerminal = func(io.Writer) bool { return true }
	if code := run(e, []string{"bench", "-s", srv, "--mles-key", "k", "--subs", "1", "--duration", "1200ms", "--rate", "2000/s"}); code != 0 {
		t.Fatalf("bench: exit %d %s", code, errOut.String())
	}
	if s := errOut.String(); !strings.Contains(s, "\r\x1b[K") || !strings.Contains(s, "received") {
		t.Fatalf("no progress line on the terminal: %q", s)
	}
	if !strings.Contains(out.String(), "loss") {
		t.Fatalf("no report: %q", out.String())
	}
}

func TestSubReconnectRejoinsAfterAServerRestart(t *testing.T) {
	env := keyEnv("k")
	addr := freeAddr(t)
	startAt := func() *exec.Cmd {
		cmd := exec.Command(mlesdBin, "--listen", addr, "--log-level", "warn")
		cmd.Env = env
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		waitAddr(t, addr)
		return cmd
	}
	srv := startAt()
	sub := startMles(t, env, "sub", "-s", addr, "-u", "s", "-c", "re", "--reconnect", "-C", "2")
	mles(t, env, "", "pub", "-s", addr, "-u", "p", "-c", "re", "-m", "before")
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(sub.out.String(), "p: before") {
		if time.Now().After(deadline) {
			t.Fatalf("sub printed %q", sub.out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	srv.Process.Signal(syscall.SIGTERM)
	srv.Wait()
	startAt()
	// pub until the rejoined sub has it (the rejoin's timing is the sub's).
	for {
		mles(t, env, "", "pub", "-s", addr, "-u", "p", "-c", "re", "-m", "after")
		select {
		case <-sub.done:
			sub.done <- nil
			if got := sub.out.String(); got != "p: before\np: after\n" {
				t.Fatalf("sub printed %q", got)
			}
			return
		case <-time.After(300 * time.Millisecond):
		}
		if time.Now().After(deadline.Add(10 * time.Second)) {
			t.Fatalf("sub did not rejoin: %q %q", sub.out.String(), sub.err.String())
		}
	}
}

func envFor(vars []string, stdout, stderr io.Writer) env {
	m := map[string]string{}
	for _, kv := range vars {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return env{stdin: strings.NewReader(""), stdout: stdout, stderr: stderr, ctx: context.Background(),
		getenv: func(k string) string { return m[k] }}
}

func TestSubExitsWith0OnSIGINT(t *testing.T) {
	env := keyEnv("k")
	srv := startMlesd(t, env)
	sub := startMles(t, env, "sub", "-s", srv, "-u", "b", "-c", "sig")
	// A message printed proves the sub is running its loop.
	mles(t, env, "", "pub", "-s", srv, "-u", "a", "-c", "sig", "-m", "up")
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(sub.out.String(), "a: up") {
		if time.Now().After(deadline) {
			t.Fatalf("sub printed %q", sub.out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	sub.cmd.Process.Signal(os.Interrupt)
	if code := sub.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("sub after SIGINT: exit %d %s", code, sub.err.String())
	}
}
