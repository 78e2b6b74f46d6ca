package gateway_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/gateway"
)

// keyModes: the server with a shared key, and with address keys (the
// gateway then hashes its own TCP connection's local address).
var keyModes = []struct{ name, key string }{{"shared-key", "sekrit"}, {"address-key", ""}}

func TestWebSocketAndTCPClientExchangeByteExactTriplets(t *testing.T) {
	for _, km := range keyModes {
		t.Run(km.name, func(t *testing.T) {
			forEachSetup(t, km.key, func(t *testing.T, h harness) {
				tcp := dialTCP(t, h, "tcpuser", "chat")
				ws := dialWS(t, h.ws)
				if got := ws.Subprotocol(); got != gateway.Subprotocol {
					t.Fatalf("negotiated subprotocol %q, want %q", got, gateway.Subprotocol)
				}

				// WebSocket → TCP: a valid triplet in a non-canonical form
				// (keys reordered, an extra key) passes byte for byte.
				fromWS := append([]byte{0xa4}, cborText("message")...)
				fromWS = append(fromWS, cborBytes([]byte{0, 1, 0xfe, 0xff, 'w'})...)
				fromWS = append(fromWS, cborText("extra")...)
				fromWS = append(fromWS, cborText("ignored by Mles")...)
				fromWS = append(fromWS, cborText("channel")...)
				fromWS = append(fromWS, cborText("chat")...)
				fromWS = append(fromWS, cborText("uid")...)
				fromWS = append(fromWS, cborText("wsuser")...)
				if _, err := codec.DecodeTriplet(fromWS); err != nil {
					t.Fatalf("test payload is not a triplet: %v", err)
				}
				sendWS(t, ws, fromWS)
				hdr, got := readTCP(t, tcp)
				if !bytes.Equal(got, fromWS) {
					t.Fatalf("TCP client got payload\n%x\nwant\n%x", got, fromWS)
				}
				if hdr.CID != codec.CIDOf(hdr.Key) {
					t.Errorf("CID %#x is not the low half of key %#x", hdr.CID, hdr.Key)
				}
				if h.key != "" && hdr.Key != codec.Key(h.key, "wsuser", "chat") {
					t.Errorf("header key %#x, want Key(K, uid, channel) %#x", hdr.Key, codec.Key(h.key, "wsuser", "chat"))
				}

				// TCP → WebSocket: the payload without its header, byte for byte.
				msg := []byte("from tcp \x00\xff")
				if err := tcp.Send(msg); err != nil {
					t.Fatal(err)
				}
				if got, want := readWS(t, ws), triplet("tcpuser", "chat", msg); !bytes.Equal(got, want) {
					t.Fatalf("WebSocket client got\n%x\nwant\n%x", got, want)
				}
			})
		})
	}
}

func TestTwoChannelsMultiplexedOnOneWebSocket(t *testing.T) {
	forEachSetup(t, "k", func(t *testing.T, h harness) {
		red := dialTCP(t, h, "r", "red")
		blue := dialTCP(t, h, "b", "blue")
		ws := dialWS(t, h.ws)

		sendWS(t, ws, triplet("w", "red", []byte("hi red")))
		sendWS(t, ws, triplet("w", "blue", []byte("hi blue")))
		if _, p := readTCP(t, red); !bytes.Equal(p, triplet("w", "red", []byte("hi red"))) {
			t.Fatalf("red got %q", p)
		}
		if _, p := readTCP(t, blue); !bytes.Equal(p, triplet("w", "blue", []byte("hi blue"))) {
			t.Fatalf("blue got %q", p)
		}
		sendWS(t, ws, triplet("w", "blue", []byte("only blue")))
		if _, p := readTCP(t, blue); !bytes.Equal(p, triplet("w", "blue", []byte("only blue"))) {
			t.Fatalf("blue got %q", p)
		}
		expectNoTCP(t, red, 300*time.Millisecond)

		if err := red.Send([]byte("r1")); err != nil {
			t.Fatal(err)
		}
		if err := blue.Send([]byte("b1")); err != nil {
			t.Fatal(err)
		}
		want := map[string]bool{
			string(triplet("r", "red", []byte("r1"))):  true,
			string(triplet("b", "blue", []byte("b1"))): true,
		}
		for range 2 {
			p := readWS(t, ws)
			if !want[string(p)] {
				t.Fatalf("WebSocket got unexpected %q", p)
			}
			delete(want, string(p))
		}
	})
}

func TestHandshakeWithoutTheSubprotocolIsRefused(t *testing.T) {
	forEachSetup(t, "k", func(t *testing.T, h harness) {
		for _, offered := range []string{"", "chat, superchat"} {
			req, _ := http.NewRequest("GET", "http://"+strings.TrimPrefix(h.ws, "ws://"), nil)
			req.Header.Set("Connection", "Upgrade")
			req.Header.Set("Upgrade", "websocket")
			req.Header.Set("Sec-WebSocket-Version", "13")
			req.Header.Set("Sec-WebSocket-Key", base64.StdEncoding.EncodeToString([]byte("0123456789abcdef")))
			if offered != "" {
				req.Header.Set("Sec-WebSocket-Protocol", offered)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), `"mles-websocket"`) {
				t.Errorf("offering %q: got %s %q, want 400 naming mles-websocket", offered, resp.Status, body)
			}
		}
		// A regular client library gets the same refusal.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, resp, err := websocket.Dial(ctx, h.ws, nil)
		if err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
			t.Errorf("dial without subprotocol: err %v, resp %v; want HTTP 400", err, resp)
		}
	})
}

func TestWebSocketClientThatStopsReadingDoesNotStallTheChannel(t *testing.T) {
	forEachSetup(t, "k", func(t *testing.T, h harness) {
		const frames, size = 4000, 8 << 10 // 32 MiB: more than socket buffers and the gateway queue
		slow := dialWS(t, h.ws)
		sendWS(t, slow, triplet("slow", "flood", nil)) // join, then never read
		sub := dialTCP(t, h, "sub", "flood")
		pub := dialTCP(t, h, "pub", "flood")
		time.Sleep(100 * time.Millisecond) // let the joins land before the flood

		// The publisher stays at most window frames ahead of the subscriber,
		// so that the server never has to drop for the subscriber itself.
		const window = 256
		var received atomic.Int64
		errc := make(chan error, 1)
		go func() {
			msg := make([]byte, size)
			for i := range frames {
				for int64(i)-received.Load() >= window {
					time.Sleep(time.Millisecond)
				}
				copy(msg, fmt.Sprintf("%08d", i))
				if err := pub.Send(msg); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
		start := time.Now()
		for i := range frames {
			_, p := readTCP(t, sub)
			tr, err := codec.DecodeTriplet(p)
			if err != nil || string(tr.Message[:8]) != fmt.Sprintf("%08d", i) {
				t.Fatalf("frame %d: got %q (%v)", i, p[:min(len(p), 64)], err)
			}
			received.Add(1)
		}
		if err := <-errc; err != nil {
			t.Fatalf("publisher: %v", err)
		}
		t.Logf("%d frames of %d bytes reached the TCP subscriber in %v", frames, size, time.Since(start))
		waitFor(t, "the gateway to log dropping frames for the slow client", func() bool {
			return strings.Contains(h.log.String(), "dropping frames")
		})
	})
}

func TestLargestMessagePassesBothWays(t *testing.T) {
	forEachSetup(t, "k", func(t *testing.T, h harness) {
		tcp := dialTCP(t, h, "tcpuser", "big")
		ws := dialWS(t, h.ws)
		sendWS(t, ws, triplet("w", "big", []byte("hello")))
		readTCP(t, tcp)

		over := codec.TripletLen(codec.Triplet{UID: "w", Channel: "big", Message: make([]byte, 0x100000)}) - 0x100000
		n := codec.MaxPayloadLen - over // the whole payload is exactly 0xFFFFFF bytes
		big := make([]byte, n)
		for i := range big {
			big[i] = byte(i * 7)
		}
		p := triplet("w", "big", big)
		if len(p) != codec.MaxPayloadLen {
			t.Fatalf("test payload is %d bytes, want %d", len(p), codec.MaxPayloadLen)
		}
		sendWS(t, ws, p)
		if _, got := readTCP(t, tcp); !bytes.Equal(got, p) {
			t.Fatalf("TCP client got %d bytes, want the %d sent", len(got), len(p))
		}
		q := triplet("tcpuser", "big", big[:n-8])
		if err := tcp.SendPayload(q); err != nil {
			t.Fatal(err)
		}
		if got := readWS(t, ws); !bytes.Equal(got, q) {
			t.Fatalf("WebSocket client got %d bytes, want the %d sent", len(got), len(q))
		}
	})
}

func TestNonTripletMessagesCloseTheWebSocket(t *testing.T) {
	forEachSetup(t, "k", func(t *testing.T, h harness) {
		for _, tc := range []struct {
			name string
			typ  websocket.MessageType
			msg  []byte
			code websocket.StatusCode
		}{
			{"not CBOR", websocket.MessageBinary, []byte("hello"), websocket.StatusInvalidFramePayloadData},
			{"CBOR without channel", websocket.MessageBinary, append(append([]byte{0xa1}, cborText("uid")...), cborText("u")...), websocket.StatusInvalidFramePayloadData},
			{"text message", websocket.MessageText, triplet("u", "c", []byte("x")), websocket.StatusUnsupportedData},
		} {
			ws := dialWS(t, h.ws)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := ws.Write(ctx, tc.typ, tc.msg); err != nil {
				t.Fatal(err)
			}
			_, err := readWSErr(ws, 10*time.Second)
			cancel()
			var ce websocket.CloseError
			if !errors.As(err, &ce) || ce.Code != tc.code || ce.Reason == "" {
				t.Errorf("%s: got %v, want close %d with a reason", tc.name, err, tc.code)
			} else {
				t.Logf("%s: closed %d %q", tc.name, ce.Code, ce.Reason)
			}
		}
	})
}

// fakeServer accepts Mles connections and hands them to the test.
func fakeServer(t *testing.T) (addr string, conns <-chan net.Conn) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	ch := make(chan net.Conn, 16)
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { nc.Close() })
			ch <- nc
		}
	}()
	return l.Addr().String(), ch
}

func accept(t *testing.T, conns <-chan net.Conn) net.Conn {
	t.Helper()
	select {
	case nc := <-conns:
		return nc
	case <-time.After(10 * time.Second):
		t.Fatal("the gateway did not connect to the server")
		return nil
	}
}

func TestClosingTheWebSocketClosesItsTCPConnections(t *testing.T) {
	forEachFront(t, func(t *testing.T, s setup) {
		server, conns := fakeServer(t)
		wsURL, _ := s.front(t, server, "k")
		ws := dialWS(t, wsURL)
		sendWS(t, ws, triplet("u", "one", nil))
		sendWS(t, ws, triplet("u", "two", nil))
		a, b := accept(t, conns), accept(t, conns)
		ws.Close(websocket.StatusNormalClosure, "bye")
		for _, nc := range []net.Conn{a, b} {
			nc.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.Copy(io.Discard, nc); err != nil {
				t.Errorf("server side: want EOF, got %v", err)
			}
		}
	})
}

func TestServerClosingTheTCPConnectionClosesTheWebSocket(t *testing.T) {
	forEachFront(t, func(t *testing.T, s setup) {
		server, conns := fakeServer(t)
		wsURL, _ := s.front(t, server, "k")
		ws := dialWS(t, wsURL)
		sendWS(t, ws, triplet("u", "one", nil))
		nc := accept(t, conns)
		var hdr [codec.HeaderLen]byte
		io.ReadFull(nc, hdr[:])
		if h, err := codec.ParseHeader(hdr[:]); err != nil || h.Key != codec.Key("k", "u", "one") {
			t.Errorf("join header %x: %v, want the key of (k, u, one)", hdr, err)
		}
		nc.Close()
		_, err := readWSErr(ws, 10*time.Second)
		var ce websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.StatusBadGateway || !strings.Contains(ce.Reason, `"one"`) {
			t.Fatalf("got %v, want close 1014 naming the channel", err)
		}
	})
}

func TestUnreachableServerClosesTheWebSocket(t *testing.T) {
	forEachFront(t, func(t *testing.T, s setup) {
		wsURL, _ := s.front(t, freeAddr(t), "k") // nothing listens there
		ws := dialWS(t, wsURL)
		sendWS(t, ws, triplet("u", "c", nil))
		_, err := readWSErr(ws, 10*time.Second)
		var ce websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.StatusBadGateway {
			t.Fatalf("got %v, want close 1014", err)
		}
	})
}

func TestDemoPageIsServed(t *testing.T) {
	forEachSetup(t, "k", func(t *testing.T, h harness) {
		base := "http://" + strings.TrimPrefix(h.ws, "ws://")
		for path, want := range map[string]string{"": "Mles demo", "demo.js": "mles-websocket", "cbor-x.min.js": "CBOR"} {
			resp, err := http.Get(base + path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.Contains(string(body), want) {
				t.Errorf("GET /%s: %s, body lacks %q", path, resp.Status, want)
			}
		}
	})
}

// cborText and cborBytes encode a short text or byte string (< 24 bytes).
func cborText(s string) []byte  { return append([]byte{0x60 | byte(len(s))}, s...) }
func cborBytes(b []byte) []byte { return append([]byte{0x40 | byte(len(b))}, b...) }

var _ sync.Mutex

func TestAddressKeysWorkThroughADualStackListener(t *testing.T) {
	// mlesd on [::] sees the gateway's IPv4 loopback connection as
	// ::ffff:127.0.0.1 and accepts the plain IPv4 key a client computes
	// (the spec's Decisions); this is how mlesd --ws-listen reaches the
	// default [::]:8077 listener.
	l, err := net.Listen("tcp", "[::]:0")
	if err != nil {
		t.Skipf("no dual-stack listener here: %v", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	listen := fmt.Sprintf("[::]:%d", port)
	server := fmt.Sprintf("127.0.0.1:%d", port)
	startProcess(t, keyEnv(""), server, mlesdBin, "--listen", listen, "--history-limit", "10")
	h := harness{mles: server}
	forEachFront(t, func(t *testing.T, s setup) {
		h.ws, h.log = s.front(t, server, "")
		ch := "dual-" + s.name // own channel: no history from the other setup
		tcp := dialTCP(t, h, "tcp", ch)
		ws := dialWS(t, h.ws)
		sendWS(t, ws, triplet("ws", ch, []byte("over IPv4 to [::]")))
		if _, p := readTCP(t, tcp); !bytes.Equal(p, triplet("ws", ch, []byte("over IPv4 to [::]"))) {
			t.Fatalf("TCP client got %q", p)
		}
	})
}

func TestPingsAreAnswered(t *testing.T) {
	forEachFront(t, func(t *testing.T, s setup) {
		server, _ := fakeServer(t)
		wsURL, _ := s.front(t, server, "k")
		ws := dialWS(t, wsURL)
		ctx := ws.CloseRead(context.Background()) // the client must read to see the pong
		for range 3 {
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := ws.Ping(pctx)
			cancel()
			if err != nil {
				t.Fatalf("ping: %v", err)
			}
		}
	})
}
