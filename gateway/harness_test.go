package gateway_test

// Test harness: builds the real mlesd and mles binaries once, runs mlesd on
// loopback, and puts a gateway in front of it in each of the ways it is
// deployed (in-process, "mles proxy", and "mlesd --ws-listen" once mlesd has
// that flag). Every behaviour test runs against each setup.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/mlesd/mlesd/client"
	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/gateway"
	"github.com/mlesd/mlesd/internal/mlestest"
)

var mlesdBin, mlesBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "gateway-test-")
	if err != nil {
		panic(err)
	}
	for _, b := range []struct {
		path *string
		name string
	}{{&mlesdBin, "mlesd"}, {&mlesBin, "mles"}} {
		if *b.path, err = mlestest.BuildCommand(dir, b.name); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// keyEnv is the process environment for key mode key ("" = address keys).
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

func waitListening(t *testing.T, addr string, log *mlestest.SyncBuffer) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		nc, err := net.Dial("tcp", addr)
		if err == nil {
			nc.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listens on %s: %s", addr, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startProcess runs bin with args and env; it must listen on addr. At the
// end of the test it gets SIGTERM and must exit 0.
func startProcess(t *testing.T, env []string, addr string, bin string, args ...string) *mlestest.SyncBuffer {
	t.Helper()
	log := &mlestest.SyncBuffer{}
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Stderr = log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s exit after SIGTERM: %v\n%s", filepath.Base(bin), err, log)
			}
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			t.Errorf("%s did not exit within 15 s of SIGTERM", filepath.Base(bin))
		}
	})
	waitListening(t, addr, log)
	return log
}

// startMlesd runs mlesd on a free loopback port with history 10 and key
// mode key; extra args are appended.
func startMlesd(t *testing.T, key string, extra ...string) (addr string, log *mlestest.SyncBuffer) {
	t.Helper()
	addr = freeAddr(t)
	args := append([]string{"--listen", addr, "--history-limit", "10"}, extra...)
	return addr, startProcess(t, keyEnv(key), addr, mlesdBin, args...)
}

// harness is one running Mles server with a gateway in front of it.
type harness struct {
	mles string               // the Mles server's TCP address
	ws   string               // ws:// URL of the gateway
	log  *mlestest.SyncBuffer // the gateway's log
	key  string               // shared key, "" for address keys
}

// setup is one way of running the gateway. front puts it before any Mles
// server; a setup with builtin set starts mlesd with --ws-listen instead.
type setup struct {
	name    string
	builtin bool
	front   func(t *testing.T, server, key string) (wsURL string, log *mlestest.SyncBuffer)
}

func inProcess(t *testing.T, server, key string) (string, *mlestest.SyncBuffer) {
	log := &mlestest.SyncBuffer{}
	gw, err := gateway.Listen("127.0.0.1:0", gateway.Config{
		Server: server,
		Keys:   codec.KeyConfig{SharedKey: key},
		Demo:   true,
		Logger: slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := gw.Close(ctx); err != nil {
			t.Errorf("gateway close: %v", err)
		}
	})
	return "ws://" + gw.Addr().String() + "/", log
}

func mlesProxy(t *testing.T, server, key string) (string, *mlestest.SyncBuffer) {
	addr := freeAddr(t)
	log := startProcess(t, keyEnv(key), addr, mlesBin, "proxy", "--listen", addr, "--server", server, "--log-level", "debug")
	return "ws://" + addr + "/", log
}

var setups = []setup{
	{name: "in-process", front: inProcess},
	{name: "mles-proxy", front: mlesProxy},
	{name: "mlesd-ws-listen", builtin: true},
}

// forEachSetup runs body once per setup with a fresh mlesd in key mode key.
func forEachSetup(t *testing.T, key string, body func(t *testing.T, h harness)) {
	for _, s := range setups {
		t.Run(s.name, func(t *testing.T) {
			h := harness{key: key}
			if s.builtin {
				wsAddr := freeAddr(t)
				h.mles, h.log = startMlesd(t, key, "--ws-listen", wsAddr)
				waitListening(t, wsAddr, h.log)
				h.ws = "ws://" + wsAddr + "/"
			} else {
				h.mles, _ = startMlesd(t, key)
				h.ws, h.log = s.front(t, h.mles, key)
			}
			body(t, h)
		})
	}
}

// forEachFront runs body once per setup that can front any server.
func forEachFront(t *testing.T, body func(t *testing.T, s setup)) {
	for _, s := range setups {
		if s.front != nil {
			t.Run(s.name, func(t *testing.T) { body(t, s) })
		}
	}
}

func (h harness) keys() codec.KeyConfig { return codec.KeyConfig{SharedKey: h.key} }

// dialWS opens a WebSocket to url offering mles-websocket.
func dialWS(t *testing.T, url string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: []string{gateway.Subprotocol}})
	if err != nil {
		t.Fatalf("websocket dial %s: %v", url, err)
	}
	c.SetReadLimit(gateway.MaxMessage)
	t.Cleanup(func() { c.CloseNow() })
	return c
}

func sendWS(t testing.TB, c *websocket.Conn, payload []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageBinary, payload); err != nil {
		t.Fatalf("websocket write: %v", err)
	}
}

// readWS reads the next message, skipping empty-message join frames of
// other clients (a TCP client's join may reach the server after the
// WebSocket's); it fails the test on timeout or error.
func readWS(t *testing.T, c *websocket.Conn) []byte {
	t.Helper()
	for {
		b, err := readWSErr(c, 20*time.Second)
		if err != nil {
			t.Fatalf("websocket read: %v", err)
		}
		if tr, err := codec.DecodeTriplet(b); err == nil && len(tr.Message) == 0 {
			continue
		}
		return b
	}
}

func readWSErr(c *websocket.Conn, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	typ, b, err := c.Read(ctx)
	if err == nil && typ != websocket.MessageBinary {
		err = fmt.Errorf("got a %v message, want binary", typ)
	}
	return b, err
}

// dialTCP joins (uid, channel) as a plain Mles client with an empty join.
func dialTCP(t *testing.T, h harness, uid, channel string) *client.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.ConnectContext(ctx, h.mles, uid, channel, client.Keys(h.keys()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

// readTCP reads the next frame, skipping empty-message join frames, and
// returns its header and a copy of its payload.
func readTCP(t *testing.T, c *client.Conn) (codec.Header, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		m, err := c.Next(ctx)
		if err != nil && !errors.Is(err, client.ErrNotTriplet) {
			t.Fatalf("%s: tcp read: %v", c.UID(), err)
		}
		if err == nil && m.IsJoin() {
			continue
		}
		p := append([]byte(nil), m.Payload()...)
		return codec.Header{Len: len(p), CID: m.CID, Key: m.Key}, p
	}
}

// expectNoTCP asserts nothing but join frames arrive within d.
func expectNoTCP(t *testing.T, c *client.Conn, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for {
		m, err := c.Next(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil && !errors.Is(err, client.ErrNotTriplet) {
			t.Fatalf("%s: tcp read: %v", c.UID(), err)
		}
		if err == nil && m.IsJoin() {
			continue
		}
		t.Fatalf("%s: unexpected frame %q", c.UID(), m.Payload())
	}
}

func triplet(uid, channel string, msg []byte) []byte {
	return codec.AppendTriplet(nil, codec.Triplet{UID: uid, Channel: channel, Message: msg})
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var _ = io.EOF
var _ = strconv.Itoa
