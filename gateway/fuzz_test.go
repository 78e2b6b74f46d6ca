package gateway_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/gateway"
)

// lingerlessDial closes with RST: a fuzz run opens thousands of connections
// and must not exhaust ports with TIME_WAIT.
func lingerlessDial(ctx context.Context, network, addr string) (net.Conn, error) {
	nc, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	return nc, err
}

// FuzzWebSocketMessage drives the gateway's inbound path with arbitrary
// binary WebSocket messages: a message that decodes as a triplet must reach
// the Mles server byte for byte behind a header with the right length and
// key; anything else must close the WebSocket with 1007. Never a panic,
// never a frame the server did not expect.
func FuzzWebSocketMessage(f *testing.F) {
	const sharedKey = "fuzz"
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	defer l.Close()
	frames := make(chan []byte, 1)
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer nc.Close()
				nc.(*net.TCPConn).SetLinger(0)
				nc.SetReadDeadline(time.Now().Add(5 * time.Second))
				hdr := make([]byte, codec.HeaderLen)
				if _, err := io.ReadFull(nc, hdr); err != nil {
					return
				}
				h, err := codec.ParseHeader(hdr)
				if err != nil {
					frames <- hdr
					return
				}
				payload := make([]byte, h.Len)
				if _, err := io.ReadFull(nc, payload); err != nil {
					return
				}
				frames <- append(hdr, payload...)
			}()
		}
	}()
	gw, err := gateway.New(gateway.Config{Server: l.Addr().String(), Keys: codec.KeyConfig{SharedKey: sharedKey}})
	if err != nil {
		f.Fatal(err)
	}
	defer gw.Close()
	hs := httptest.NewServer(gw)
	defer hs.Close()
	wsURL := "ws" + strings.TrimPrefix(hs.URL, "http")
	httpClient := &http.Client{Transport: &http.Transport{DialContext: lingerlessDial}}

	seed, _ := codec.AppendFrame(nil, 1, codec.Triplet{UID: "u", Channel: "c", Message: []byte("hello")})
	f.Add(seed[codec.HeaderLen:])
	f.Add([]byte{0xa0})
	f.Add([]byte("not cbor"))
	f.Add([]byte{0xa3, 0x63, 'u', 'i', 'd'})

	f.Fuzz(func(t *testing.T, msg []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ws, _, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{
			Subprotocols: []string{gateway.Subprotocol}, HTTPClient: httpClient})
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer ws.CloseNow()
		ws.SetReadLimit(-1)
		if err := ws.Write(ctx, websocket.MessageBinary, msg); err != nil {
			t.Fatalf("write: %v", err)
		}
		tr, decodeErr := codec.DecodeTriplet(msg)
		if decodeErr != nil {
			_, _, err := ws.Read(ctx)
			var ce websocket.CloseError
			if !errors.As(err, &ce) || ce.Code != websocket.StatusInvalidFramePayloadData {
				t.Fatalf("invalid triplet (%v): got %v, want close 1007", decodeErr, err)
			}
			return
		}
		select {
		case got := <-frames:
			key := codec.Key(sharedKey, tr.UID, tr.Channel)
			want := append(codec.AppendHeader(nil, codec.Header{Len: len(msg), CID: codec.CIDOf(key), Key: key}), msg...)
			if !bytes.Equal(got, want) {
				t.Fatalf("server got %x…, want %x…", got[:min(len(got), 32)], want[:min(len(want), 32)])
			}
		case <-ctx.Done():
			t.Fatalf("a valid triplet never reached the server")
		}
	})
}
