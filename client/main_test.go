package client_test

// The package's tests run against a real mlesd, built once in TestMain and
// started per test on free loopback ports.

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/mlesd/mlesd/internal/mlestest"
)

var mlesdBin string

// exampleAddr is the server the examples talk to (shared key "secret").
var exampleAddr string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mles-client-test-")
	if err != nil {
		panic(err)
	}
	if mlesdBin, err = mlestest.Build(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// The examples' server: a process of its own for the whole run.
	port, err := freePort()
	if err != nil {
		panic(err)
	}
	exampleAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	srv := exec.Command(mlesdBin, "--listen", exampleAddr, "--log-level", "warn")
	srv.Env = append(os.Environ(), "MLES_KEY=secret")
	srv.Stderr = os.Stderr
	if err := srv.Start(); err != nil {
		panic(err)
	}
	if err := waitListening(exampleAddr, 10*time.Second); err != nil {
		srv.Process.Kill()
		panic(err)
	}
	code := m.Run()
	srv.Process.Signal(syscall.SIGTERM)
	srv.Wait()
	os.RemoveAll(dir)
	os.Exit(code)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitListening dials addr until it accepts, for at most d.
func waitListening(addr string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		nc, err := net.Dial("tcp", addr)
		if err == nil {
			nc.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s never accepted: %w", addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// server starts mlesd with env and args and waits for extra listeners too.
func server(t testing.TB, env []string, args ...string) *mlestest.Proc {
	t.Helper()
	p := mlestest.Start(t, mlesdBin, append([]string{"MLES_KEY=", "MLES_ADDR_KEY="}, env...), append([]string{"--log-level", "warn"}, args...)...)
	return p
}

func freeAddr(t testing.TB) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(mlestest.FreePort(t)))
}

func waitFor(t testing.TB, addr string) {
	t.Helper()
	if err := waitListening(addr, 10*time.Second); err != nil {
		t.Fatal(err)
	}
}

func ctxFor(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
