package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/mlesd/mlesd/codec"
)

// scheme is how an address is reached.
type scheme int

const (
	schemeTCP scheme = iota
	schemeTLS
	schemeWS
	schemeWSS
)

// endpoint is a parsed server address.
type endpoint struct {
	scheme   scheme
	hostport string // host:port, port always present
	url      string // ws:// or wss:// URL
}

// ServerAddr returns addr with the Mles port 8077 added when it has none:
// "host" → "host:8077", "::1" → "[::1]:8077", "[::1]" → "[::1]:8077".
func ServerAddr(addr string) string { return withPort(addr, DefaultPort) }

func withPort(addr string, port int) string {
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return addr
	}
	host := strings.TrimSuffix(strings.TrimPrefix(addr, "["), "]")
	return net.JoinHostPort(host, strconv.Itoa(port))
}

// parseAddr understands "host[:port]" and "mles://host[:port]" (TCP, TLS
// when secure), "tls://host[:port]", and "ws://" or "wss://" URLs.
func parseAddr(addr string, secure bool) (endpoint, error) {
	if addr == "" {
		return endpoint{}, errors.New("mles client: empty server address")
	}
	i := strings.Index(addr, "://")
	if i < 0 {
		ep := endpoint{scheme: schemeTCP, hostport: ServerAddr(addr)}
		if secure {
			ep.scheme = schemeTLS
		}
		return ep, nil
	}
	u, err := url.Parse(addr)
	if err != nil {
		return endpoint{}, fmt.Errorf("mles client: server address: %w", err)
	}
	if u.Host == "" {
		return endpoint{}, fmt.Errorf("mles client: server address %q has no host", addr)
	}
	switch strings.ToLower(u.Scheme) {
	case "mles", "tcp":
		ep := endpoint{scheme: schemeTCP, hostport: ServerAddr(u.Host)}
		if secure {
			ep.scheme = schemeTLS
		}
		return ep, nil
	case "tls", "mless":
		return endpoint{scheme: schemeTLS, hostport: ServerAddr(u.Host)}, nil
	case "ws":
		u.Host = withPort(u.Host, DefaultWebSocketPort)
		return endpoint{scheme: schemeWS, hostport: u.Host, url: u.String()}, nil
	case "wss":
		u.Host = withPort(u.Host, 443)
		return endpoint{scheme: schemeWSS, hostport: u.Host, url: u.String()}, nil
	}
	return endpoint{}, fmt.Errorf("mles client: unknown scheme %q (want mles://, tls://, ws:// or wss://)", u.Scheme)
}

// transport is one live connection: a byte stream of frames (TCP or TLS),
// or a WebSocket whose binary messages are triplets without the header.
type transport struct {
	nc    net.Conn     // TCP or TLS; nil for WebSocket
	tcp   *net.TCPConn // the socket under nc (TCP_NODELAY, shutdowns)
	ws    *websocket.Conn
	r     io.Reader // the frame stream: nc, or wsFrames over ws
	local netip.AddrPort
}

// dial opens a transport to ep.
func dial(ctx context.Context, ep endpoint, o *Options) (*transport, error) {
	var d net.Dialer
	switch ep.scheme {
	case schemeTCP, schemeTLS:
		nc, err := d.DialContext(ctx, "tcp", ep.hostport)
		if err != nil {
			return nil, err
		}
		tc := nc.(*net.TCPConn)
		tc.SetNoDelay(true) // Mles frames are small and latency matters; we batch ourselves
		tr := &transport{nc: nc, tcp: tc, r: nc, local: localAddrPort(nc)}
		if ep.scheme == schemeTLS {
			cfg := o.tlsConfig().Clone()
			if cfg.ServerName == "" {
				host, _, _ := net.SplitHostPort(ep.hostport)
				cfg.ServerName = host
			}
			tc := tls.Client(nc, cfg)
			if err := tc.HandshakeContext(ctx); err != nil {
				nc.Close()
				return nil, fmt.Errorf("TLS handshake: %w", err)
			}
			tr.nc, tr.r = tc, tc
		}
		return tr, nil
	default:
		hc := &http.Client{Transport: &http.Transport{
			DialContext:     d.DialContext,
			TLSClientConfig: o.tlsConfig().Clone(),
		}}
		ws, resp, err := websocket.Dial(ctx, ep.url, &websocket.DialOptions{
			HTTPClient:      hc,
			Subprotocols:    []string{Subprotocol},
			CompressionMode: websocket.CompressionDisabled,
		})
		if err != nil {
			return nil, fmt.Errorf("WebSocket handshake: %w", err)
		}
		if resp != nil && resp.Body != nil {
			resp.Body.Close()
		}
		if ws.Subprotocol() != Subprotocol {
			ws.CloseNow()
			return nil, fmt.Errorf("WebSocket handshake: the server did not accept subprotocol %q", Subprotocol)
		}
		ws.SetReadLimit(codec.MaxPayloadLen)
		return &transport{ws: ws, r: &wsFrames{ws: ws}}, nil
	}
}

// localAddrPort is nc's local address in the form a client hashes: an
// IPv4-mapped IPv6 address is given as plain IPv4 (the server accepts that
// form from IPv4 clients of a dual-stack listener).
func localAddrPort(nc net.Conn) netip.AddrPort {
	ta, ok := nc.LocalAddr().(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}
	}
	ap := ta.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())
}

// writeMessage sends one frame over a WebSocket: its triplet only.
func (t *transport) writeMessage(frame []byte) error {
	return t.ws.Write(context.Background(), websocket.MessageBinary, frame[codec.HeaderLen:])
}

// interruptRead makes a blocked read return. Safe from any goroutine.
// Over WebSocket it closes the connection: the library cannot abandon a
// read otherwise.
func (t *transport) interruptRead() {
	if t.nc != nil {
		t.nc.SetReadDeadline(time.Unix(1, 0))
		return
	}
	t.ws.CloseNow()
}

// clearReadDeadline undoes interruptRead (stream transports).
func (t *transport) clearReadDeadline() {
	if t.nc != nil {
		t.nc.SetReadDeadline(time.Time{})
	}
}

func (t *transport) setWriteDeadline(d time.Time) {
	if t.nc != nil {
		t.nc.SetWriteDeadline(d)
	}
}

// closeRead shuts down the receive side (stream transports).
func (t *transport) closeRead() error {
	if t.tcp != nil {
		return t.tcp.CloseRead()
	}
	return nil
}

// closeWrite shuts down the sending side: a TCP FIN, a TLS close_notify
// followed by a FIN, or a WebSocket close frame.
func (t *transport) closeWrite() error {
	switch nc := t.nc.(type) {
	case *tls.Conn:
		if err := nc.CloseWrite(); err != nil { // close_notify
			return err
		}
		return t.tcp.CloseWrite() // and a FIN, which every server reads as the end
	case *net.TCPConn:
		return nc.CloseWrite()
	}
	if t.ws != nil {
		go t.ws.Close(websocket.StatusNormalClosure, "")
	}
	return nil
}

func (t *transport) close() {
	if t.nc != nil {
		t.nc.Close()
		return
	}
	t.ws.CloseNow()
}

// wsFrames turns a WebSocket's binary messages into the byte stream of
// frames a TCP connection would carry, with a header (CID and key 0: the
// gateway strips the real ones) in front of each triplet. Text messages
// and empty ones (which no frame can carry) are skipped. Owned by the
// reader.
type wsFrames struct {
	ws  *websocket.Conn
	buf []byte // the current frame
	off int    // how much of buf was read
}

func (w *wsFrames) Read(p []byte) (int, error) {
	for w.off == len(w.buf) {
		typ, r, err := w.ws.Reader(context.Background())
		if err != nil {
			return 0, err
		}
		if cap(w.buf) < codec.HeaderLen+512 {
			w.buf = make([]byte, codec.HeaderLen, 64<<10)
		}
		w.buf, w.off = w.buf[:codec.HeaderLen], 0
		for {
			if len(w.buf) == cap(w.buf) {
				w.buf = append(w.buf, 0)[:len(w.buf)]
			}
			n, err := r.Read(w.buf[len(w.buf):cap(w.buf)])
			w.buf = w.buf[:len(w.buf)+n]
			if err == io.EOF {
				break
			}
			if err != nil {
				return 0, err
			}
		}
		if typ != websocket.MessageBinary || len(w.buf) == codec.HeaderLen {
			w.buf = w.buf[:0]
			continue
		}
		codec.Header{Len: len(w.buf) - codec.HeaderLen}.Put(w.buf)
	}
	n := copy(p, w.buf[w.off:])
	w.off += n
	return n, nil
}
