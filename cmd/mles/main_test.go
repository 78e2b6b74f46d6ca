package main

// Black-box tests: they build the mles and mlesd binaries and run them as a
// user or a script would, over loopback.

import (
	"bufio"
	"bytes"
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

	"github.com/mlesd/mlesd/internal/mlestest"
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
func startMlesd(t *testing.T, env []string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	log := &mlestest.SyncBuffer{}
	cmd := exec.Command(mlesdBin, "--listen", addr, "--history-limit", "10")
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

func TestPubThenSubRoundTripInBothKeyModes(t *testing.T) {
	for _, key := range []string{"sekrit", ""} {
		t.Run(fmt.Sprintf("MLES_KEY=%q", key), func(t *testing.T) {
			env := keyEnv(key)
			srv := startMlesd(t, env)
			_, stderr, code := mles(t, env, "one\ntwo\n\nthree\xff\n", "pub", "--server", srv, "--uid", "alice", "--channel", "news")
			if code != 0 {
				t.Fatalf("pub exit %d: %s", code, stderr)
			}
			// sub joins after pub left: the messages come from history.
			out, stderr, code := mles(t, env, "", "sub", "--server", srv, "--uid", "bob", "--channel", "news", "--json", "--count", "3")
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

func TestPubPipedIntoALiveSub(t *testing.T) {
	env := keyEnv("k")
	srv := startMlesd(t, env)
	sub := exec.Command(mlesBin, "sub", "--server", srv, "--uid", "bob", "--channel", "live", "--count", "2")
	sub.Env = env
	var out, serr mlestest.SyncBuffer
	sub.Stdout, sub.Stderr = &out, &serr
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	pubCmd := exec.Command(mlesBin, "pub", "--server", srv, "--uid", "alice", "--channel", "live", "--rate", "100/s")
	pubCmd.Env = env
	pubCmd.Stdin = strings.NewReader("hello\nworld\n")
	if b, err := pubCmd.CombinedOutput(); err != nil {
		t.Fatalf("pub: %v %s", err, b)
	}
	done := make(chan error, 1)
	go func() { done <- sub.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("sub: %v %s", err, serr.String())
		}
	case <-time.After(10 * time.Second):
		sub.Process.Kill()
		t.Fatalf("sub did not get 2 messages; got %q %s", out.String(), serr.String())
	}
	if got := out.String(); got != "alice: hello\nalice: world\n" {
		t.Fatalf("sub printed %q", got)
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
	time.Sleep(200 * time.Millisecond)
	bob := start("bob")
	if l := readLine(alice); l != "* bob joined" {
		t.Fatalf("alice saw %q, want bob's join", l)
	}
	io.WriteString(alice.in, "hi bob\n")
	if l := readLine(bob); l != "alice: hi bob" {
		t.Fatalf("bob saw %q", l)
	}
	io.WriteString(bob.in, "hi alice\n")
	if l := readLine(alice); l != "bob: hi alice" {
		t.Fatalf("alice saw %q", l)
	}
	// End of input ends chat with exit 0.
	alice.in.Close()
	if err := alice.cmd.Wait(); err != nil {
		t.Fatalf("chat after end of input: %v", err)
	}
}

func TestWrongKeyIsAConnectionErrorWithExitCode1(t *testing.T) {
	srv := startMlesd(t, keyEnv("right"))
	for _, args := range [][]string{{"sub"}, {"pub"}, {"chat"}} {
		args = append(args, "--server", srv, "--uid", "u", "--channel", "c")
		_, stderr, code := mles(t, keyEnv("wrong"), "just one line\n", args...)
		if code != 1 || !strings.Contains(stderr, "closed the connection") {
			t.Errorf("%s: exit %d, stderr %q; want 1 and an explanation", args[0], code, stderr)
		}
	}
}

func TestUnreachableServerExitsWith1(t *testing.T) {
	for _, sub := range []string{"sub", "pub", "chat"} {
		_, stderr, code := mles(t, keyEnv(""), "x\n", sub, "--server", "127.0.0.1:1", "--uid", "u", "--channel", "c")
		if code != 1 || !strings.Contains(stderr, "cannot connect") {
			t.Errorf("%s: exit %d, stderr %q", sub, code, stderr)
		}
	}
}

func TestUsageErrorsExitWith2(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"nope"},
		{"sub", "--channel", "c"},
		{"pub", "--uid", "u"},
		{"pub", "--uid", "u", "--channel", "c", "--rate", "fast"},
		{"sub", "--uid", "u", "--channel", "c", "--bogus"},
		{"chat", "--uid", "u", "--channel", "c", "extra"},
		{"proxy", "--log-level", "loud"},
	} {
		_, stderr, code := mles(t, keyEnv(""), "", args...)
		if code != 2 || stderr == "" {
			t.Errorf("mles %v: exit %d, stderr %q; want 2 with a message", args, code, stderr)
		}
	}
}

func TestHelpForEachSubcommand(t *testing.T) {
	for _, sub := range []string{"chat", "pub", "sub", "proxy"} {
		out, _, code := mles(t, keyEnv(""), "", sub, "--help")
		if code != 0 || !strings.Contains(out, "usage: mles "+sub) || !strings.Contains(out, "MLES_KEY") {
			t.Errorf("mles %s --help: exit %d, output %q", sub, code, out)
		}
	}
	if out, _, code := mles(t, keyEnv(""), "", "--help"); code != 0 || !strings.Contains(out, "mles proxy") {
		t.Errorf("mles --help: exit %d", code)
	}
}

func TestPubSendsEachFileAsOneMessage(t *testing.T) {
	env := keyEnv("k")
	srv := startMlesd(t, env)
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.txt"), filepath.Join(dir, "b.txt")
	os.WriteFile(a, []byte("line 1\nline 2\n"), 0o644)
	os.WriteFile(b, []byte("second file"), 0o644)
	if _, stderr, code := mles(t, env, "", "pub", "--server", srv, "--uid", "f", "--channel", "files", a, b); code != 0 {
		t.Fatalf("pub: %d %s", code, stderr)
	}
	out, stderr, code := mles(t, env, "", "sub", "--server", srv, "--uid", "r", "--channel", "files", "--count", "2", "--json")
	if code != 0 {
		t.Fatalf("sub: %d %s", code, stderr)
	}
	if !strings.Contains(out, `"message":"line 1\nline 2\n"`) || !strings.Contains(out, `"message":"second file"`) {
		t.Fatalf("sub printed %q", out)
	}
}

func TestSubShowsJoinFramesOnlyWithShowJoins(t *testing.T) {
	env := keyEnv("k")
	srv := startMlesd(t, env)
	watcher := exec.Command(mlesBin, "sub", "--server", srv, "--uid", "w", "--channel", "j", "--show-joins", "--json", "--count", "1")
	watcher.Env = env
	var out mlestest.SyncBuffer
	watcher.Stdout = &out
	if err := watcher.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	// A second sub joins (empty join frame) and quits after one message.
	quiet := exec.Command(mlesBin, "sub", "--server", srv, "--uid", "q", "--channel", "j", "--count", "1")
	quiet.Env = env
	if err := quiet.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { quiet.Process.Kill(); quiet.Wait() }()
	done := make(chan error, 1)
	go func() { done <- watcher.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		watcher.Process.Kill()
		t.Fatal("the join frame was not printed")
	}
	if got := out.String(); !strings.HasPrefix(got, `{"uid":"q","channel":"j","message":"","cid":`) {
		t.Fatalf("printed %q", got)
	}
}
