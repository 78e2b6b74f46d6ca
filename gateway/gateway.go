// Package gateway bridges WebSocket clients (subprotocol "mles-websocket")
// to a Mles server over TCP, as the original Mles WebSocket proxy did.
//
// Each binary WebSocket message is one CBOR (uid, channel, message)
// triplet without the 16-byte header. For each (uid, channel) first seen on
// a WebSocket connection the gateway opens one TCP connection to the Mles
// server, computes the join key as a client would (the shared key, or that
// TCP connection's own local address, the one the server sees) and sends
// the message with the header in front: that first message is the join.
// Later messages for the same (uid, channel) go on the same TCP connection,
// byte for byte, behind the same header. Frames coming back have their
// header stripped and are sent as one binary message each, byte for byte.
// Several (uid, channel) pairs may share one WebSocket connection.
//
// Invariants a caller relies on:
//   - The gateway never looks inside a message beyond finding (uid, channel);
//     payload bytes pass unchanged in both directions.
//   - A WebSocket client that does not read never slows a channel: each
//     connection has a bounded outbound queue, and frames that do not fit are
//     dropped for that connection alone, whole, and counted.
//   - Closing the WebSocket closes all its TCP connections; a TCP connection
//     closed by the server closes the WebSocket (status 1014, with the
//     (uid, channel) in the reason), as a browser client expects to rejoin
//     after any close.
//   - Text messages are a protocol error (close 1003), as is a binary message
//     that is not a triplet (close 1007), and more than MaxChannels pairs
//     (close 1008).
//
// Because the gateway is an ordinary Mles client of the server, the server's
// limits, back-pressure, history and duplicate-CID rule apply to it unchanged.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/gateway/client"
	"github.com/mlesd/mlesd/gateway/demo"
)

// Config holds every setting of a Gateway. Zero values take the defaults
// in const.go.
type Config struct {
	// Server is the Mles server's TCP address (host:port). Required.
	Server string
	// Keys is how join keys are computed: it must match the server's
	// MLES_KEY / MLES_ADDR_KEY.
	Keys codec.KeyConfig
	// Demo serves the demo page at "/" to plain HTTP GET requests.
	Demo bool
	// QueueFrames and QueueBytes bound each WebSocket connection's
	// outbound queue (see DefaultQueueFrames, DefaultQueueBytes).
	QueueFrames int
	QueueBytes  int
	// MaxChannels bounds the (uid, channel) pairs of one WebSocket connection.
	MaxChannels int
	// DialTimeout bounds each TCP dial to the server.
	DialTimeout time.Duration
	// Logger receives connection-level events; nil discards them.
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.QueueFrames <= 0 {
		c.QueueFrames = DefaultQueueFrames
	}
	if c.QueueBytes <= 0 {
		c.QueueBytes = DefaultQueueBytes
	}
	if c.MaxChannels <= 0 {
		c.MaxChannels = DefaultMaxChannels
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Stats are the gateway's counters since it started.
type Stats struct {
	Sessions    int64  // WebSocket connections open now
	Uplinks     int64  // TCP connections to the server open now
	MessagesIn  uint64 // WebSocket messages forwarded to the server
	MessagesOut uint64 // frames written to WebSocket clients
	Dropped     uint64 // frames dropped for WebSocket clients that did not keep up
	Refused     uint64 // handshakes refused (no subprotocol)
}

// Gateway is an http.Handler serving the WebSocket endpoint (and, when
// Config.Demo is set, the demo page) on every path. Its methods are safe
// for concurrent use.
type Gateway struct {
	cfg  Config
	page http.Handler

	mu       sync.Mutex
	sessions map[*session]struct{}
	closed   bool
	wg       sync.WaitGroup

	nSessions, nUplinks               atomic.Int64
	msgsIn, msgsOut, dropped, refused atomic.Uint64
}

// New returns a Gateway for cfg.
func New(cfg Config) (*Gateway, error) {
	if cfg.Server == "" {
		return nil, errors.New("gateway: no Mles server address")
	}
	cfg.setDefaults()
	return &Gateway{cfg: cfg, page: demo.Handler(), sessions: make(map[*session]struct{})}, nil
}

// Stats returns the current counters.
func (g *Gateway) Stats() Stats {
	return Stats{
		Sessions:    g.nSessions.Load(),
		Uplinks:     g.nUplinks.Load(),
		MessagesIn:  g.msgsIn.Load(),
		MessagesOut: g.msgsOut.Load(),
		Dropped:     g.dropped.Load(),
		Refused:     g.refused.Load(),
	}
}

// Close closes every WebSocket connection (status 1001, going away) and
// their TCP connections, and waits for them to end. Later handshakes are
// refused with 503.
func (g *Gateway) Close() {
	g.mu.Lock()
	g.closed = true
	ss := make([]*session, 0, len(g.sessions))
	for s := range g.sessions {
		ss = append(ss, s)
	}
	g.mu.Unlock()
	for _, s := range ss {
		s.shutdown(websocket.StatusGoingAway, "gateway shutting down")
	}
	g.wg.Wait()
}

// offersSubprotocol reports whether the request's Sec-WebSocket-Protocol
// headers name the mles-websocket subprotocol.
func offersSubprotocol(r *http.Request) bool {
	for _, h := range r.Header.Values("Sec-WebSocket-Protocol") {
		for _, p := range strings.Split(h, ",") {
			if strings.TrimSpace(p) == Subprotocol {
				return true
			}
		}
	}
	return false
}

func isUpgrade(r *http.Request) bool {
	for _, v := range r.Header.Values("Upgrade") {
		if strings.EqualFold(strings.TrimSpace(v), "websocket") {
			return true
		}
	}
	return false
}

// ServeHTTP answers a WebSocket handshake offering "mles-websocket" with a
// bridged session, a handshake without it with 400, and (with Demo) other
// GET requests with the demo page.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !isUpgrade(r) {
		if g.cfg.Demo {
			g.page.ServeHTTP(w, r)
			return
		}
		http.Error(w, "mles gateway: WebSocket endpoint; connect with subprotocol \""+Subprotocol+"\"", http.StatusUpgradeRequired)
		return
	}
	if !offersSubprotocol(r) {
		g.refused.Add(1)
		g.cfg.Logger.Info("websocket handshake refused: no subprotocol", slog.String("remote", r.RemoteAddr))
		http.Error(w, "mles gateway: the WebSocket handshake must offer the subprotocol \""+Subprotocol+
			"\" in Sec-WebSocket-Protocol", http.StatusBadRequest)
		return
	}
	g.mu.Lock()
	closed := g.closed
	if !closed {
		g.wg.Add(1)
	}
	g.mu.Unlock()
	if closed {
		http.Error(w, "mles gateway: shutting down", http.StatusServiceUnavailable)
		return
	}
	defer g.wg.Done()
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		Subprotocols: []string{Subprotocol},
		// Mles has no cookies or ambient credentials, and the original
		// browser client is served from anywhere: any Origin may connect.
		InsecureSkipVerify: true,
		CompressionMode:    websocket.CompressionDisabled,
	})
	if err != nil {
		return // Accept has written the HTTP error
	}
	ws.SetReadLimit(MaxMessage)
	s := &session{
		g:       g,
		ws:      ws,
		remote:  r.RemoteAddr,
		out:     make(chan []byte, g.cfg.QueueFrames),
		done:    make(chan struct{}),
		uplinks: make(map[pair]*uplink),
	}
	g.mu.Lock()
	g.sessions[s] = struct{}{}
	g.mu.Unlock()
	g.nSessions.Add(1)
	s.run()
	g.nSessions.Add(-1)
	g.mu.Lock()
	delete(g.sessions, s)
	g.mu.Unlock()
}

type pair struct{ uid, channel string }

// session is one WebSocket connection and its TCP uplinks.
type session struct {
	g      *Gateway
	ws     *websocket.Conn
	remote string

	out    chan []byte  // frames for the writer; never closed
	queued atomic.Int64 // payload bytes in out

	once sync.Once
	done chan struct{} // closed by shutdown

	mu      sync.Mutex // guards uplinks and closed
	uplinks map[pair]*uplink
	closed  bool
	wg      sync.WaitGroup // writer and uplink readers

	dropped atomic.Uint64
}

// uplink is one TCP connection to the Mles server for one (uid, channel).
type uplink struct {
	c *client.Conn
	p pair
}

// run reads WebSocket messages until the session ends, then waits for the
// writer and the uplink readers.
func (s *session) run() {
	log := s.g.cfg.Logger
	log.Debug("websocket session open", slog.String("remote", s.remote))
	s.wg.Add(1)
	go s.writeLoop()
	for {
		typ, data, err := s.ws.Read(context.Background())
		if err != nil {
			code := websocket.CloseStatus(err)
			if code == -1 {
				code = websocket.StatusAbnormalClosure
			}
			s.shutdown(code, "")
			break
		}
		if typ != websocket.MessageBinary {
			s.shutdown(websocket.StatusUnsupportedData, "mles-websocket carries binary CBOR triplets only; text message refused")
			break
		}
		if err := s.forward(data); err != nil {
			var ce closeErr
			if errors.As(err, &ce) {
				s.shutdown(ce.code, ce.reason)
			} else {
				s.shutdown(websocket.StatusBadGateway, err.Error())
			}
			break
		}
	}
	s.wg.Wait()
	if d := s.dropped.Load(); d > 0 {
		log.Info("websocket client dropped frames", slog.String("remote", s.remote), slog.Uint64("dropped", d))
	}
	log.Debug("websocket session closed", slog.String("remote", s.remote))
}

type closeErr struct {
	code   websocket.StatusCode
	reason string
}

func (e closeErr) Error() string { return e.reason }

// forward sends one WebSocket message to the server on the uplink of its
// (uid, channel), opening that uplink first if needed. It is only called
// from run's goroutine.
func (s *session) forward(data []byte) error {
	t, err := codec.DecodeTriplet(data)
	if err != nil {
		return closeErr{websocket.StatusInvalidFramePayloadData, "not a Mles triplet: " + err.Error()}
	}
	p := pair{t.UID, t.Channel}
	s.mu.Lock()
	u := s.uplinks[p]
	n := len(s.uplinks)
	s.mu.Unlock()
	if u == nil {
		if n >= s.g.cfg.MaxChannels {
			return closeErr{websocket.StatusPolicyViolation, fmt.Sprintf("more than %d (uid, channel) pairs on one connection", s.g.cfg.MaxChannels)}
		}
		if u, err = s.open(p); err != nil {
			return err
		}
	}
	if err := u.c.SendPayload(data); err != nil {
		return fmt.Errorf("mles server write failed for uid %q channel %q: %v", p.uid, p.channel, err)
	}
	s.g.msgsIn.Add(1)
	return nil
}

// open dials the server for p and starts its reader.
func (s *session) open(p pair) (*uplink, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.g.cfg.DialTimeout)
	defer cancel()
	c, err := client.Dial(ctx, s.g.cfg.Server, s.g.cfg.Keys, p.uid, p.channel)
	if err != nil {
		s.g.cfg.Logger.Warn("cannot reach mles server", slog.String("server", s.g.cfg.Server), slog.String("error", err.Error()))
		return nil, closeErr{websocket.StatusBadGateway, "cannot reach the mles server"}
	}
	u := &uplink{c: c, p: p}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.Close()
		return nil, closeErr{websocket.StatusGoingAway, "closing"}
	}
	s.uplinks[p] = u
	s.wg.Add(1)
	s.mu.Unlock()
	s.g.nUplinks.Add(1)
	go s.readLoop(u)
	return u, nil
}

// readLoop moves frames from one uplink to the outbound queue. It never
// blocks on the WebSocket client: a frame that does not fit is dropped.
func (s *session) readLoop(u *uplink) {
	defer s.wg.Done()
	defer s.g.nUplinks.Add(-1)
	defer u.c.Close()
	for {
		_, payload, err := u.c.ReadFrame()
		if err != nil {
			reason := fmt.Sprintf("mles server closed uid %q channel %q", u.p.uid, u.p.channel)
			s.shutdown(websocket.StatusBadGateway, reason)
			return
		}
		s.enqueue(payload)
	}
}

// enqueue queues payload for the writer, or drops it (counted) when the
// queue is full. It never blocks.
func (s *session) enqueue(payload []byte) {
	n := int64(len(payload))
	if q := s.queued.Add(n); q != n && q > int64(s.g.cfg.QueueBytes) {
		s.queued.Add(-n)
		s.drop()
		return
	}
	select {
	case s.out <- payload:
	default:
		s.queued.Add(-n)
		s.drop()
	}
}

func (s *session) drop() {
	if s.dropped.Add(1) == 1 {
		s.g.cfg.Logger.Info("websocket client is not keeping up; dropping frames for it",
			slog.String("remote", s.remote))
	}
	s.g.dropped.Add(1)
}

// writeLoop writes queued frames to the WebSocket, one binary message each.
func (s *session) writeLoop() {
	defer s.wg.Done()
	for {
		select {
		case <-s.done:
			return
		case m := <-s.out:
			s.queued.Add(-int64(len(m)))
			if err := s.ws.Write(context.Background(), websocket.MessageBinary, m); err != nil {
				s.shutdown(websocket.StatusAbnormalClosure, "")
				return
			}
			s.g.msgsOut.Add(1)
		}
	}
}

// shutdown ends the session once: it closes every uplink and closes the
// WebSocket with code and reason (in the background, as the close
// handshake may wait for the peer). Safe from any goroutine.
func (s *session) shutdown(code websocket.StatusCode, reason string) {
	s.once.Do(func() {
		close(s.done)
		s.mu.Lock()
		s.closed = true
		for _, u := range s.uplinks {
			u.c.Close()
		}
		s.mu.Unlock()
		if len(reason) > maxCloseReason {
			reason = strings.ToValidUTF8(reason[:maxCloseReason], "")
		}
		if code == websocket.StatusAbnormalClosure || code == websocket.StatusNoStatusRcvd {
			go s.ws.CloseNow()
			return
		}
		go s.ws.Close(code, reason)
	})
}
