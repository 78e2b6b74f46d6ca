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
	"sync"
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
	nc    net.Conn // TCP or TLS (or a Dialer's stream); nil for WebSocket
	ws    *websocket.Conn
	wsr   *wsPump // WebSocket messages as frames, started by the first receive
	local netip.AddrPort
}

// halfCloser is a stream that can shut down one direction (*net.TCPConn,
// *net.UnixConn).
type halfCloser interface {
	CloseRead() error
	CloseWrite() error
}

// dial opens a transport to ep.
func dial(ctx context.Context, ep endpoint, o *Options) (*transport, error) {
	var d net.Dialer
	dialStream := d.DialContext
	if o.Dialer != nil {
		dialStream = o.Dialer
	}
	switch ep.scheme {
	case schemeTCP, schemeTLS:
		nc, err := dialStream(ctx, "tcp", ep.hostport)
		if err != nil {
			return nil, err
		}
		tr := &transport{nc: nc, local: localAddrPort(nc)}
		if tc, ok := nc.(*net.TCPConn); ok {
			tc.SetNoDelay(true) // Mles frames are small and latency matters; we batch ourselves
		}
		if o.KeyAddr.IsValid() {
			tr.local = netip.AddrPortFrom(o.KeyAddr.Addr().Unmap().WithZone(""), o.KeyAddr.Port())
		}
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
			tr.nc = tc
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
		return &transport{ws: ws, wsr: newWSPump(ws, o.ReadBufferSize)}, nil
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

// interruptRead makes a blocked read of a stream return (a deadline in
// the past; the reader resumes a half-read frame later). Safe from any
// goroutine. A WebSocket receive waits on a channel beside the context
// instead, so that a cancelled receive leaves the connection open.
func (t *transport) interruptRead() {
	if t.nc != nil {
		t.nc.SetReadDeadline(time.Unix(1, 0))
	}
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
	nc := t.nc
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	if h, ok := nc.(halfCloser); ok {
		return h.CloseRead()
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
		if h, ok := nc.NetConn().(halfCloser); ok {
			return h.CloseWrite() // and a FIN, which every server reads as the end
		}
		return nil
	case halfCloser:
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
	t.wsr.stop()
}

// wsPump reads a WebSocket's messages on a goroutine of its own and hands
// them to the receiver as frames: a header (CID and key 0: the gateway
// strips the real ones) and the triplet, read straight into one of two
// buffers that the two sides pass back and forth. So a receive waits on a
// channel beside its context, and a cancelled one leaves the connection
// open and the message in progress for the next receive (coder/websocket
// closes a connection whose read context ends), and in steady state
// nothing allocates. Text messages and empty ones (which no frame can
// carry) are skipped.
type wsPump struct {
	ws       *websocket.Conn
	size     int           // a buffer's first capacity, and the most a grown one keeps
	free     chan []byte   // buffers for the pump (capacity 2)
	full     chan wsResult // a frame, or the error that ended the pump (capacity 1)
	quit     chan struct{} // closed by stop
	start    sync.Once
	stopOnce sync.Once
}

type wsResult struct {
	frame []byte
	err   error
}

func newWSPump(ws *websocket.Conn, size int) *wsPump {
	return &wsPump{ws: ws, size: max(size, codec.HeaderLen+512), free: make(chan []byte, 2),
		full: make(chan wsResult, 1), quit: make(chan struct{})}
}

// run starts the pump once, with two buffers.
func (w *wsPump) run() {
	w.start.Do(func() {
		w.free <- nil // made on first use, at the size of the first message
		w.free <- nil
		go w.loop()
	})
}

func (w *wsPump) stop() { w.stopOnce.Do(func() { close(w.quit) }) }

func (w *wsPump) loop() {
	for {
		var buf []byte
		select {
		case buf = <-w.free:
		case <-w.quit:
			return
		}
		frame, err := w.readMessage(buf)
		select {
		case w.full <- wsResult{frame, err}:
		case <-w.quit:
			return
		}
		if err != nil {
			return
		}
	}
}

// readMessage reads the next binary message into buf behind a header.
func (w *wsPump) readMessage(buf []byte) ([]byte, error) {
	if cap(buf) > w.size && cap(buf) > 1<<20 {
		buf = nil // do not keep a huge message's buffer
	}
	if cap(buf) < w.size {
		buf = make([]byte, 0, w.size)
	}
	for {
		typ, r, err := w.ws.Reader(context.Background())
		if err != nil {
			return buf[:0], err
		}
		buf = buf[:codec.HeaderLen]
		for {
			if len(buf) == cap(buf) {
				buf = append(buf, 0)[:len(buf)]
			}
			n, err := r.Read(buf[len(buf):cap(buf)])
			buf = buf[:len(buf)+n]
			if err == io.EOF {
				break
			}
			if err != nil {
				return buf[:0], err
			}
		}
		if typ == websocket.MessageBinary && len(buf) > codec.HeaderLen {
			codec.Header{Len: len(buf) - codec.HeaderLen}.Put(buf)
			return buf, nil
		}
	}
}
