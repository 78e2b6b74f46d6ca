package upgrade

// The process mechanics with real processes: this test binary plays the
// new process (TestMain, when UPGRADE_TEST_CHILD says how to behave), and
// the real mlesd plays the new process offered a format it does not read.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mlesd/mlesd/internal/mlestest"
)

// childRole is how this binary behaves when started as a new process.
const childRole = "UPGRADE_TEST_CHILD"

func TestMain(m *testing.M) {
	if role, ok := os.LookupEnv(childRole); ok {
		os.Exit(runChild(role))
	}
	os.Exit(m.Run())
}

// runChild is a new process: "serve" takes the listener, answers every
// connection with its PID, reports ready and waits for Commit; "exit"
// exits 3 at once; "hang" never reports.
func runChild(role string) int {
	switch role {
	case "exit":
		return 3
	case "hang":
		time.Sleep(time.Minute)
		return 0
	case "refuse":
		h, err := Inherited("child-version", 5*time.Second)
		if err != nil || h == nil {
			return 1
		}
		h.Refuse(errors.New("no thanks"))
		time.Sleep(time.Minute) // the old process kills it
		return 0
	}
	h, err := Inherited("child-version", 5*time.Second)
	if err != nil || h == nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	ln, err := h.Listener(RoleMles, "test")
	if err != nil || ln == nil {
		fmt.Fprintln(os.Stderr, "child: no listener", err)
		return 1
	}
	if role == "serve-after-commit" {
		// Accept nothing until the old process has let go: whatever was
		// queued meanwhile must still be there.
		if err := h.Ready(5 * time.Second); err != nil {
			fmt.Fprintln(os.Stderr, "child: no commit:", err)
			return 1
		}
		for {
			c, err := ln.Accept()
			if err != nil {
				return 1
			}
			fmt.Fprintf(c, "%d\n", os.Getpid())
			c.Close()
		}
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%d\n", os.Getpid())
			c.Close()
		}
	}()
	if err := h.Ready(5 * time.Second); err != nil {
		fmt.Fprintln(os.Stderr, "child: no commit:", err)
		return 1
	}
	fmt.Println("committed")
	time.Sleep(time.Minute) // the test kills it
	return 0
}

// servedBy dials addr and reads the PID of the process that accepted.
func servedBy(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("reading who served: %v", err)
	}
	return strings.TrimSpace(line)
}

func startChild(t *testing.T, role string, timeout time.Duration) (*Child, *net.TCPListener, error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	stdout, err := os.CreateTemp(t.TempDir(), "child-out")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdout.Close() })
	c, err := Start(Options{Path: os.Args[0], Env: append(os.Environ(), childRole+"="+role),
		Stdout: stdout, Stderr: os.Stderr, Version: "parent-version",
		Files: []File{{FileID{RoleMles, "test"}, f}}, Timeout: timeout})
	if c != nil {
		t.Cleanup(c.Kill)
	}
	return c, ln.(*net.TCPListener), err
}

// The new process serves on the very socket the old one listens on: once
// the old one closes its copy, connections to the same address reach the
// new process, and the new one learns of the Commit.
func TestStartHandsTheListeningSocketToAProcessThatServesOnIt(t *testing.T) {
	c, ln, err := startChild(t, "serve", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if c.Version != "child-version" {
		t.Fatalf("child version %q", c.Version)
	}
	addr := ln.Addr().String()
	ln.Close() // the old process lets go; the socket stays open in the child
	for range 20 {
		if got := servedBy(t, addr); got != fmt.Sprint(c.PID) {
			t.Fatalf("served by %s, want the new process %d", got, c.PID)
		}
	}
	if err := c.Commit(time.Second); err != nil {
		t.Fatal(err)
	}
}

// Connections waiting in the kernel's accept queue when the old process
// closes its copy of the listening socket are neither refused nor reset:
// the queue belongs to the socket, which the new process holds, and it
// accepts them all once it has taken over.
func TestQueuedConnectionsSurviveTheOldProcessClosingItsListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	var queued []net.Conn
	dial := func(n int) {
		for range n {
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			t.Cleanup(func() { c.Close() })
			queued = append(queued, c)
		}
	}
	dial(10) // queued before the handover, never accepted by the old process
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	c, err := Start(Options{Path: os.Args[0], Env: append(os.Environ(), childRole+"=serve-after-commit"),
		Stderr: os.Stderr, Files: []File{{FileID{RoleMles, "test"}, f}}, Timeout: 10 * time.Second})
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Kill)
	dial(10) // queued while both hold the socket
	ln.Close()
	dial(10) // queued after the old process let go, before the new one accepts
	if err := c.Commit(time.Second); err != nil {
		t.Fatal(err)
	}
	for i, q := range queued {
		_ = q.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(q).ReadString('\n')
		if err != nil {
			t.Fatalf("queued connection %d: %v", i, err)
		}
		if strings.TrimSpace(line) != fmt.Sprint(c.PID) {
			t.Fatalf("queued connection %d served by %s, want %d", i, line, c.PID)
		}
	}
}

// The socket stays non-blocking while it is handed over: the mode belongs
// to the socket, shared with the listener the old process still accepts
// on, and a blocking listener ties its accept goroutine in accept(2), out
// of reach of Close (the old process then never stopped). A new process
// that serves sets it non-blocking again itself; one that fails does not.
func TestAFailedHandoverLeavesTheListeningSocketNonBlocking(t *testing.T) {
	_, ln, err := startChild(t, "exit", 10*time.Second)
	if err == nil {
		t.Fatal("the upgrade to a process that exits succeeded")
	}
	rc, err := ln.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var flags int
	var ferr error
	if err := rc.Control(func(fd uintptr) { flags, ferr = unix.FcntlInt(fd, unix.F_GETFL, 0) }); err != nil || ferr != nil {
		t.Fatal(err, ferr)
	}
	if flags&unix.O_NONBLOCK == 0 {
		t.Fatal("the listening socket is blocking after the handover")
	}
}

func TestNewProcessThatRefusesFailsTheUpgradeAndSaysWhy(t *testing.T) {
	_, _, err := startChild(t, "refuse", 10*time.Second)
	if err == nil || !strings.Contains(err.Error(), `version "child-version") refused the handover: no thanks`) {
		t.Fatalf("err = %v", err)
	}
}

func TestNewProcessThatExitsFailsTheUpgrade(t *testing.T) {
	_, _, err := startChild(t, "exit", 10*time.Second)
	if err == nil || !strings.Contains(err.Error(), "exited before it was ready: exit status 3") {
		t.Fatalf("err = %v", err)
	}
}

func TestNewProcessNotReadyInTimeIsKilled(t *testing.T) {
	start := time.Now()
	_, _, err := startChild(t, "hang", 500*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "was not ready within 500ms") {
		t.Fatalf("err = %v", err)
	}
	if time.Since(start) > 8*time.Second {
		t.Fatalf("the failure took %v", time.Since(start))
	}
	var pid int
	if _, serr := fmt.Sscanf(err.Error(), "the new process (pid %d)", &pid); serr != nil {
		t.Fatal(serr)
	}
	if syscall.Kill(pid, 0) == nil {
		t.Fatalf("process %d still exists (killed and reaped is wanted)", pid)
	}
}

func TestCancelEndsAnUpgradeAtOnce(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	f, _ := ln.(*net.TCPListener).File()
	defer f.Close()
	cancel := make(chan struct{})
	time.AfterFunc(200*time.Millisecond, func() { close(cancel) })
	_, err := Start(Options{Path: os.Args[0], Env: append(os.Environ(), childRole+"=hang"), Stderr: os.Stderr,
		Files: []File{{FileID{RoleMles, "test"}, f}}, Timeout: time.Minute, Cancel: cancel})
	if err == nil || !strings.Contains(err.Error(), "cancelled") {
		t.Fatalf("err = %v", err)
	}
}

// The real mlesd, offered a handover format it does not read, refuses it
// with a reply that names both formats, and exits 1 saying why.
func TestMlesdRefusesAnOfferInAnUnknownFormat(t *testing.T) {
	bin, err := mlestest.Build(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	mine, theirs, err := socketPair()
	if err != nil {
		t.Fatal(err)
	}
	sock, err := newSocket(mine)
	if err != nil {
		t.Fatal(err)
	}
	defer sock.close()
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	lf, _ := ln.(*net.TCPListener).File()
	defer lf.Close()
	addr := ln.Addr().String()
	var log mlestest.SyncBuffer
	cmd := exec.Command(bin, "--listen", addr)
	cmd.Env = append(os.Environ(), EnvFD+"=3", "MLES_KEY=k")
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.Stderr = &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	theirs.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	offer := Offer{Kind: kindOffer, Format: FormatVersion + 98, Sender: "v-future", PID: os.Getpid(),
		Files: []FileID{{RoleMles, addr}}}
	if err := sock.send(offer, []*os.File{lf}, time.Now().Add(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	b, files, err := sock.recv(time.Now().Add(10 * time.Second))
	closeFiles(files)
	if err != nil {
		t.Fatalf("no reply: %v\n%s", err, log.String())
	}
	reply, err := DecodeReply(b)
	if err != nil {
		t.Fatal(err)
	}
	if reply.Ready || !strings.Contains(reply.Error, "unknown handover format 99 (this build reads 1)") ||
		reply.Format != FormatVersion || reply.Version != "dev" {
		t.Fatalf("reply %+v, want a refusal naming format 99 and the format it reads", reply)
	}
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Fatalf("mlesd exit: %v, want 1", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("mlesd did not exit after refusing")
	}
	if !strings.Contains(log.String(), "refusing the handover") {
		t.Fatalf("log does not say it refused:\n%s", log.String())
	}
	// The refusal took nothing away: the old listener still accepts.
	go func() {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			_, _ = io.WriteString(c, "x")
			c.Close()
		}
	}()
	_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
	c, err := ln.Accept()
	if err != nil {
		t.Fatalf("the old listener no longer accepts: %v", err)
	}
	c.Close()
}
