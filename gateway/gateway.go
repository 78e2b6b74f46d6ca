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
//   - Memory for messages still arriving is bounded in real bytes (buffer
//     capacity): per session by MaxMessageBytes (past it: close 1009), over
//     all sessions by MaxUnfinishedBytes (when full, the session holding the
//     most is shed with close 1013). Buffers of large messages are memory
//     mappings, returned to the system as soon as the message is done.
//   - Sessions and pairs are bounded in all and per client IP address: a
//     handshake over a session bound is refused with 503, a pair over a
//     bound closes its session (1013 for the gateway's total, 1008 for the
//     client's share). Failing to open a pair (no descriptors, say) closes
//     that one session; nothing in the gateway ends the process.
//
// Because the gateway is an ordinary Mles client of the server, the server's
// limits, back-pressure, history and duplicate-CID rule apply to it
// unchanged; its connections to the server are github.com/mlesd/mlesd/client
// Conns.
//
// Config follows the project's one rule for settings: zero means the
// default, and Off (any negative value) turns a setting off where it can be.
package gateway

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/mlesd/mlesd/client"
	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/gateway/demo"
	"github.com/mlesd/mlesd/internal/ratelog"
	"github.com/mlesd/mlesd/internal/tlsbridge"
)

// Adopter takes over an established connection as if accepted from remote
// on local; engine.Server implements it.
type Adopter interface {
	Adopt(nc net.Conn, local, remote netip.AddrPort) error
}

// Config holds every setting of a Gateway. As in every Config of the
// project, zero takes the default (const.go), and Off (any negative value)
// turns a setting off where it can be off: the counts of sessions and
// pairs (MaxChannels, MaxSessions, MaxSessionsPerClient, MaxPairs,
// MaxPairsPerClient) then have no limit. The memory bounds and DialTimeout
// cannot be off: a negative value gives them their default too.
type Config struct {
	// Server is the Mles server's TCP address (host:port). Required unless
	// Adopter is set.
	Server string
	// Adopter, when set, is the Mles server in this process: each pair is
	// one end of a socketpair it adopts with the WebSocket client's address
	// (no TCP, no loopback address shared by every client).
	Adopter Adopter
	// Keys is how join keys are computed: it must match the server's
	// MLES_KEY / MLES_ADDR_KEY.
	Keys codec.KeyConfig
	// Demo serves the demo page at "/" to plain HTTP GET requests.
	Demo bool
	// QueueFrames and QueueBytes bound each WebSocket connection's
	// outbound queue (see DefaultQueueFrames, DefaultQueueBytes).
	QueueFrames int
	QueueBytes  int
	// MaxQueuedBytes bounds the frames waiting for WebSocket clients over
	// all sessions (see DefaultMaxQueuedBytes).
	MaxQueuedBytes int64
	// MaxChannels bounds the (uid, channel) pairs of one WebSocket connection.
	MaxChannels int
	// MaxMessageBytes bounds one session's unfinished message (at most
	// MaxMessage); MaxUnfinishedBytes bounds all sessions' together.
	MaxMessageBytes    int
	MaxUnfinishedBytes int64
	// MaxSessions and MaxPairs bound sessions and pairs in all;
	// the PerClient ones per client IP address.
	MaxSessions, MaxSessionsPerClient int
	MaxPairs, MaxPairsPerClient       int
	// DialTimeout bounds each TCP dial to the server.
	DialTimeout time.Duration
	// Logger receives connection-level events; nil discards them.
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	def := func(v *int, d int) { // a bound that cannot be off
		if *v <= 0 {
			*v = d
		}
	}
	count := func(v *int, d int) { // a count that can be off
		switch {
		case *v == 0:
			*v = d
		case *v < 0:
			*v = math.MaxInt
		}
	}
	def(&c.QueueFrames, DefaultQueueFrames)
	def(&c.QueueBytes, DefaultQueueBytes)
	count(&c.MaxChannels, DefaultMaxChannels)
	def(&c.MaxMessageBytes, DefaultMaxMessageBytes)
	c.MaxMessageBytes = min(c.MaxMessageBytes, MaxMessage)
	if c.MaxQueuedBytes <= 0 {
		c.MaxQueuedBytes = DefaultMaxQueuedBytes
	}
	if c.MaxUnfinishedBytes <= 0 {
		c.MaxUnfinishedBytes = DefaultMaxUnfinishedBytes
	}
	count(&c.MaxSessions, DefaultMaxSessions)
	count(&c.MaxSessionsPerClient, DefaultMaxSessionsPerClient)
	count(&c.MaxPairs, DefaultMaxPairs)
	count(&c.MaxPairsPerClient, DefaultMaxPairsPerClient)
	if c.DialTimeout <= 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Stats are the gateway's counters since it started.
type Stats struct {
	Sessions        int64  // WebSocket connections open now
	Uplinks         int64  // pairs: connections to the Mles server open now
	UnfinishedBytes int64  // memory held by messages still arriving (buffer capacity)
	QueuedBytes     int64  // frames queued or being written to WebSocket clients
	MessagesIn      uint64 // WebSocket messages forwarded to the server
	MessagesOut     uint64 // frames written to WebSocket clients
	Dropped         uint64 // frames dropped for WebSocket clients that did not keep up
	Refused         uint64 // handshakes refused (no subprotocol)
	// Sessions closed or refused by a limit, by reason: "max-sessions",
	// "max-sessions-per-client" (handshakes refused with 503), "max-pairs",
	// "max-pairs-per-client", "message-too-big", "memory-shed" (sessions
	// closed), "pair-failed" (a pair could not be opened: descriptors,
	// engine refusal, unreachable server).
	Limited map[string]uint64
}

// Reasons a session is refused or closed by a limit (Stats.Limited).
const (
	limitSessions       = "max-sessions"
	limitSessionsClient = "max-sessions-per-client"
	limitPairs          = "max-pairs"
	limitPairsClient    = "max-pairs-per-client"
	limitTooBig         = "message-too-big"
	limitShed           = "memory-shed"
	limitPairFailed     = "pair-failed"
	numLimits           = 7
)

var limitNames = [numLimits]string{limitSessions, limitSessionsClient, limitPairs, limitPairsClient,
	limitTooBig, limitShed, limitPairFailed}

// Gateway is an http.Handler serving the WebSocket endpoint (and, when
// Config.Demo is set, the demo page) on every path. Its methods are safe
// for concurrent use.
type Gateway struct {
	cfg  Config
	page http.Handler
	rlog *ratelog.Log

	mu       sync.Mutex // guards the fields up to wg
	sessions map[*session]struct{}
	admitted int                          // sessions admitted (handshaking or open)
	pairs    int                          // pairs open or opening
	clients  map[netip.Addr]*clientCounts // per client IP address
	closed   bool
	wg       sync.WaitGroup

	mem       memBudget
	outQueued atomic.Int64 // payload bytes queued or being written, all sessions

	nSessions, nUplinks               atomic.Int64
	msgsIn, msgsOut, dropped, refused atomic.Uint64
	limited                           [numLimits]atomic.Uint64
}

// clientCounts are one client address's sessions and pairs (Gateway.mu).
type clientCounts struct{ sessions, pairs int }

// New returns a Gateway for cfg.
func New(cfg Config) (*Gateway, error) {
	if cfg.Server == "" && cfg.Adopter == nil {
		return nil, errors.New("gateway: no Mles server address")
	}
	cfg.setDefaults()
	g := &Gateway{cfg: cfg, page: demo.Handler(), sessions: make(map[*session]struct{}),
		clients: make(map[netip.Addr]*clientCounts), rlog: ratelog.New(cfg.Logger, logBurst)}
	g.mem.init(cfg.MaxUnfinishedBytes)
	return g, nil
}

// Stats returns the current counters.
func (g *Gateway) Stats() Stats {
	st := Stats{
		Sessions:        g.nSessions.Load(),
		Uplinks:         g.nUplinks.Load(),
		UnfinishedBytes: g.mem.used.Load(),
		QueuedBytes:     g.outQueued.Load(),
		MessagesIn:      g.msgsIn.Load(),
		MessagesOut:     g.msgsOut.Load(),
		Dropped:         g.dropped.Load(),
		Refused:         g.refused.Load(),
		Limited:         make(map[string]uint64, numLimits),
	}
	for i, name := range limitNames {
		st.Limited[name] = g.limited[i].Load()
	}
	return st
}

func (g *Gateway) count(reason string) {
	for i, name := range limitNames {
		if name == reason {
			g.limited[i].Add(1)
			return
		}
	}
}

// ErrorLog is a log.Logger for net/http's own messages (accept errors such
// as running out of descriptors, which net/http retries): they go to the
// gateway's logger, rate-limited.
func (g *Gateway) ErrorLog() *log.Logger {
	return log.New(logWriter{g.rlog}, "", 0)
}

type logWriter struct{ rl *ratelog.Log }

func (w logWriter) Write(p []byte) (int, error) {
	w.rl.Log(slog.LevelWarn, "http-server", "websocket gateway http server",
		slog.String("error", strings.TrimSpace(string(p))))
	return len(p), nil
}

// Close closes every WebSocket connection (status 1001, going away) and
// their connections to the server, and waits for them to end. Later
// handshakes are refused with 503.
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

func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

// admit takes a session slot for a client at ip; it returns the limit that
// refuses it, or "".
func (g *Gateway) admit(ip netip.Addr) (refused string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return "shutting-down"
	}
	cc := g.clients[ip]
	switch {
	case g.admitted >= g.cfg.MaxSessions:
		return limitSessions
	case cc != nil && cc.sessions >= g.cfg.MaxSessionsPerClient:
		return limitSessionsClient
	}
	if cc == nil {
		cc = &clientCounts{}
		g.clients[ip] = cc
	}
	cc.sessions++
	g.admitted++
	g.wg.Add(1)
	return ""
}

// leave gives back a session slot taken by admit.
func (g *Gateway) leave(ip netip.Addr) {
	g.mu.Lock()
	g.admitted--
	g.forget(ip, -1, 0)
	g.mu.Unlock()
	g.wg.Done()
}

// forget adjusts ip's counts and drops them when both are zero. Lock: g.mu.
func (g *Gateway) forget(ip netip.Addr, sessions, pairs int) {
	cc := g.clients[ip]
	if cc == nil {
		return
	}
	cc.sessions += sessions
	cc.pairs += pairs
	if cc.sessions <= 0 && cc.pairs <= 0 {
		delete(g.clients, ip)
	}
}

// ServeHTTP answers a WebSocket handshake offering "mles-websocket" with a
// bridged session, a handshake without it with 400, one over a session
// limit with 503, and (with Demo) other GET requests with the demo page.
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
		g.rlog.Log(slog.LevelInfo, "no-subprotocol", "websocket handshake refused: no subprotocol", slog.String("remote", r.RemoteAddr))
		http.Error(w, "mles gateway: the WebSocket handshake must offer the subprotocol \""+Subprotocol+
			"\" in Sec-WebSocket-Protocol", http.StatusBadRequest)
		return
	}
	remote, _ := netip.ParseAddrPort(r.RemoteAddr)
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	ip := remote.Addr()
	if why := g.admit(ip); why != "" {
		if why == "shutting-down" {
			http.Error(w, "mles gateway: shutting down", http.StatusServiceUnavailable)
			return
		}
		g.count(why)
		g.rlog.Log(slog.LevelWarn, why, "websocket session refused: gateway limit reached", slog.String("remote", r.RemoteAddr))
		w.Header().Set("Retry-After", "10")
		http.Error(w, "mles gateway: too many sessions ("+why+"); try again later", http.StatusServiceUnavailable)
		return
	}
	defer g.leave(ip)
	hr := &hijackRecorder{ResponseWriter: w}
	ws, err := websocket.Accept(hr, r, &websocket.AcceptOptions{
		Subprotocols: []string{Subprotocol},
		// Mles has no cookies or ambient credentials, and the original
		// browser client is served from anywhere: any Origin may connect.
		InsecureSkipVerify: true,
		CompressionMode:    websocket.CompressionDisabled,
	})
	if err != nil {
		return // Accept has written the HTTP error
	}
	// The gateway enforces MaxMessageBytes itself, before it grows a
	// buffer; the library's limit is the same, as a second line.
	ws.SetReadLimit(int64(g.cfg.MaxMessageBytes))
	var local netip.AddrPort
	if la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		local = addrPortOf(la)
	}
	s := &session{
		g:       g,
		ws:      ws,
		remote:  remote,
		local:   local,
		out:     make(chan []byte, g.cfg.QueueFrames),
		done:    make(chan struct{}),
		uplinks: make(map[pair]*uplink),
	}
	if hr.conn != nil {
		s.cut = hr.conn.Close
	} else {
		s.cut = ws.CloseNow
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

// hijackRecorder keeps the connection websocket.Accept hijacks, so that a
// shed session can be cut at once even while its reader is blocked.
type hijackRecorder struct {
	http.ResponseWriter
	conn net.Conn
}

func (h *hijackRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	h.conn = c
	return c, brw, err
}

type pair struct{ uid, channel string }

// session is one WebSocket connection and its uplinks (pairs).
type session struct {
	g      *Gateway
	ws     *websocket.Conn
	remote netip.AddrPort // the WebSocket client's address
	local  netip.AddrPort // the gateway's address it reached

	// cut closes the connection under the WebSocket at once, which ends a
	// read blocked on it (a read context would cost a timer per read).
	cut func() error

	// The message being read: owned by the reader goroutine (run). held
	// and msgStart are read by other sessions choosing whom to shed.
	buf      msgBuf
	held     atomic.Int64 // bytes of buf counted in the budget
	msgStart atomic.Int64 // when the message being read began (UnixNano); 0: none
	shed     atomic.Bool  // told to give its memory back and end

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

// uplink is one connection to the Mles server for one (uid, channel).
type uplink struct {
	c *client.Conn
	p pair
}

// run reads WebSocket messages until the session ends, then waits for the
// writer and the uplink readers.
func (s *session) run() {
	log := s.g.cfg.Logger
	log.Debug("websocket session open", slog.String("remote", s.remote.String()))
	s.wg.Add(1)
	go s.writeLoop()
	for {
		err := s.readMessage()
		if err == nil {
			err = s.forward(s.buf.b)
			if err == nil {
				s.g.msgsIn.Add(1)
			}
		}
		s.releaseBuf()
		if err != nil {
			s.fail(err)
			break
		}
	}
	s.wg.Wait()
	s.discardQueued()
	if d := s.dropped.Load(); d > 0 {
		log.Info("websocket client dropped frames", slog.String("remote", s.remote.String()), slog.Uint64("dropped", d))
	}
	log.Debug("websocket session closed", slog.String("remote", s.remote.String()))
}

// fail ends the session for err, with the close code it calls for.
func (s *session) fail(err error) {
	var ce closeErr
	switch {
	case errors.As(err, &ce):
		if ce.limit != "" && ce.limit != limitPairFailed { // connect logged that one with its error
			s.g.count(ce.limit)
			s.g.rlog.Log(slog.LevelWarn, ce.limit, "websocket session closed: "+ce.reason, slog.String("remote", s.remote.String()))
		}
		s.shutdown(ce.code, ce.reason)
	case errors.Is(err, errShed):
		// shed by another session, which has closed it
	default:
		code := websocket.CloseStatus(err)
		if code == -1 {
			code = websocket.StatusAbnormalClosure
		}
		s.shutdown(code, "")
	}
}

type closeErr struct {
	code   websocket.StatusCode
	reason string
	limit  string // the limit that closed it (Stats.Limited), if any
}

func (e closeErr) Error() string { return e.reason }

// readMessage reads the next binary message into s.buf, within the
// session's and the gateway's memory bounds.
func (s *session) readMessage() error {
	typ, r, err := s.ws.Reader(context.Background())
	if err != nil {
		return err
	}
	if typ != websocket.MessageBinary {
		return closeErr{code: websocket.StatusUnsupportedData, reason: "mles-websocket carries binary CBOR triplets only; text message refused"}
	}
	s.msgStart.Store(time.Now().UnixNano())
	limit := s.g.cfg.MaxMessageBytes
	most := limit + 1 // one byte more tells a message too big
	for {
		b := s.buf.b
		if len(b) == cap(b) {
			if err := s.growBuf(nextCap(cap(b), most)); err != nil {
				return err
			}
			b = s.buf.b
		}
		n, err := r.Read(b[len(b):min(cap(b), most)])
		s.buf.b = b[:len(b)+n]
		if len(s.buf.b) > limit {
			return closeErr{code: websocket.StatusMessageTooBig, reason: fmt.Sprintf("message larger than %d bytes", limit), limit: limitTooBig}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			if errors.Is(err, websocket.ErrMessageTooBig) {
				return closeErr{code: websocket.StatusMessageTooBig, reason: fmt.Sprintf("message larger than %d bytes", limit), limit: limitTooBig}
			}
			if s.shed.Load() {
				return errShed
			}
			return err
		}
		if s.shed.Load() {
			return errShed
		}
	}
}

// growBuf grows s.buf to n bytes of capacity once the budget has room.
func (s *session) growBuf(n int) error {
	more := int64(n - cap(s.buf.b))
	if err := s.g.reserve(s, more); err != nil {
		if errors.Is(err, errBudget) {
			return closeErr{code: websocket.StatusTryAgainLater, reason: "the gateway's memory for unfinished messages is full; try again later", limit: limitShed}
		}
		return err
	}
	before := cap(s.buf.b)
	if err := s.buf.grow(n); err != nil {
		s.g.release(s, more)
		return closeErr{code: websocket.StatusTryAgainLater, reason: "the gateway is out of memory; try again later", limit: limitShed}
	}
	// A mapping is page-rounded: count what it really holds.
	if d := int64(cap(s.buf.b)-before) - more; d != 0 {
		s.held.Add(d)
		s.g.mem.used.Add(d)
	}
	return nil
}

// releaseBuf frees the message buffer and gives its bytes back.
func (s *session) releaseBuf() {
	s.msgStart.Store(0)
	s.buf.free()
	if h := s.held.Load(); h != 0 {
		s.g.release(s, h)
	}
}

// forward sends one WebSocket message to the server on the uplink of its
// (uid, channel), opening that uplink first if needed. It is only called
// from run's goroutine; data is not kept.
func (s *session) forward(data []byte) error {
	p, err := decodePair(data)
	if err != nil {
		return closeErr{code: websocket.StatusInvalidFramePayloadData, reason: "not a Mles triplet: " + err.Error()}
	}
	s.mu.Lock()
	u := s.uplinks[p]
	n := len(s.uplinks)
	s.mu.Unlock()
	if u == nil {
		if n >= s.g.cfg.MaxChannels {
			return closeErr{code: websocket.StatusPolicyViolation, reason: fmt.Sprintf("more than %d (uid, channel) pairs on one connection", s.g.cfg.MaxChannels)}
		}
		// The first message of a pair is its join, sent by connecting.
		_, err := s.open(p, data)
		return err
	}
	err = u.c.SendPayload(data)
	if err == nil {
		err = u.c.Flush()
	}
	if err != nil {
		return fmt.Errorf("mles server write failed for uid %q channel %q: %v", p.uid, p.channel, err)
	}
	return nil
}

// reservePair takes a pair slot for s's client; it returns the closeErr of
// the limit that refuses it.
func (s *session) reservePair() error {
	g := s.g
	ip := s.remote.Addr()
	g.mu.Lock()
	defer g.mu.Unlock()
	cc := g.clients[ip] // present: this session counts in it
	switch {
	case g.pairs >= g.cfg.MaxPairs:
		return closeErr{code: websocket.StatusTryAgainLater, reason: fmt.Sprintf("the gateway has %d (uid, channel) pairs open, its limit; try again later", g.cfg.MaxPairs), limit: limitPairs}
	case cc != nil && cc.pairs >= g.cfg.MaxPairsPerClient:
		return closeErr{code: websocket.StatusPolicyViolation, reason: fmt.Sprintf("more than %d (uid, channel) pairs from one address", g.cfg.MaxPairsPerClient), limit: limitPairsClient}
	}
	g.pairs++
	if cc != nil {
		cc.pairs++
	}
	return nil
}

func (s *session) releasePair() {
	s.g.mu.Lock()
	s.g.pairs--
	s.g.forget(s.remote.Addr(), 0, -1)
	s.g.mu.Unlock()
}

// open connects a pair for p, joining with join (the first message of p,
// passed unchanged), and starts its reader.
func (s *session) open(p pair, join []byte) (*uplink, error) {
	if err := s.reservePair(); err != nil {
		return nil, err
	}
	c, err := s.connect(p, join)
	if err != nil {
		s.releasePair()
		return nil, err
	}
	u := &uplink{c: c, p: p}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.CloseNow()
		s.releasePair()
		return nil, closeErr{code: websocket.StatusGoingAway, reason: "closing"}
	}
	s.uplinks[p] = u
	s.wg.Add(1)
	s.mu.Unlock()
	s.g.nUplinks.Add(1)
	go s.readLoop(u)
	return u, nil
}

// connect opens the connection for pair p and sends join, byte for byte,
// behind the header as its join frame: a socketpair end adopted by the
// engine, or a TCP connection to Config.Server. The pair's Conn flushes on
// each message (forward), so it has no flusher goroutine, and its buffers
// are small (pairBufSize).
func (s *session) connect(p pair, join []byte) (*client.Conn, error) {
	g := s.g
	ctx, cancel := context.WithTimeout(context.Background(), g.cfg.DialTimeout)
	defer cancel()
	opts := []client.Option{client.Keys(g.cfg.Keys), client.JoinPayload(join), client.ManualFlush(),
		client.BufferSizes(pairBufSize, pairBufSize)}
	if g.cfg.Adopter == nil {
		c, err := client.ConnectContext(ctx, g.cfg.Server, p.uid, p.channel, opts...)
		if err != nil {
			g.rlog.Log(slog.LevelWarn, limitPairFailed, "cannot reach mles server", slog.String("server", g.cfg.Server),
				slog.String("remote", s.remote.String()), slog.String("error", err.Error()))
			return nil, closeErr{code: websocket.StatusBadGateway, reason: "cannot reach the mles server", limit: limitPairFailed}
		}
		return c, nil
	}
	mine, engines, err := tlsbridge.Socketpair()
	if err == nil {
		if err = g.cfg.Adopter.Adopt(engines, s.local, s.remote); err != nil {
			engines.Close()
			mine.Close()
		}
	}
	var c *client.Conn
	if err == nil {
		// The engine sees the pair as coming from the WebSocket client's
		// address: address keys hash that one.
		opts = append(opts, client.Dialer(func(context.Context, string, string) (net.Conn, error) { return mine, nil }))
		if s.remote.IsValid() {
			opts = append(opts, client.KeyAddr(s.remote))
		}
		if c, err = client.ConnectContext(ctx, "engine", p.uid, p.channel, opts...); err != nil {
			mine.Close()
		}
	}
	if err != nil {
		// Out of descriptors, most likely: this session ends, the rest go on.
		g.rlog.Log(slog.LevelWarn, limitPairFailed, "cannot open a connection to the engine for a websocket pair",
			slog.String("remote", s.remote.String()), slog.String("error", err.Error()))
		return nil, closeErr{code: websocket.StatusTryAgainLater, reason: "the gateway cannot open a connection now; try again later", limit: limitPairFailed}
	}
	return c, nil
}

// readLoop moves frames from one uplink to the outbound queue. It never
// blocks on the WebSocket client: a frame that does not fit is dropped.
func (s *session) readLoop(u *uplink) {
	defer s.wg.Done()
	defer s.releasePair()
	defer s.g.nUplinks.Add(-1)
	defer u.c.CloseNow()
	// Frames pass byte for byte, not looked at (Frames). The queue keeps
	// its own copy.
	for m, err := range u.c.Frames(context.Background()) {
		if err != nil {
			reason := fmt.Sprintf("mles server closed uid %q channel %q", u.p.uid, u.p.channel)
			s.shutdown(websocket.StatusBadGateway, reason)
			return
		}
		s.enqueue(append([]byte(nil), m.Payload()...))
	}
}

// enqueue queues payload for the writer, or drops it (counted) when the
// queue is full. It never blocks.
//
// Past QueueBytes for this session, or MaxQueuedBytes for all sessions,
// the frame is dropped, unless this session's queue is empty: then every
// frame size passes, and a slow client holds at most one frame of the
// shared budget's overrun.
func (s *session) enqueue(payload []byte) {
	n := int64(len(payload))
	q := s.queued.Add(n)
	if q != n && q > int64(s.g.cfg.QueueBytes) {
		s.queued.Add(-n)
		s.drop()
		return
	}
	if t := s.g.outQueued.Add(n); q != n && t > s.g.cfg.MaxQueuedBytes {
		s.g.outQueued.Add(-n)
		s.queued.Add(-n)
		s.drop()
		return
	}
	select {
	case s.out <- payload:
	default:
		s.g.outQueued.Add(-n)
		s.queued.Add(-n)
		s.drop()
	}
}

// discardQueued forgets the frames left in the queue of an ended session.
// Only once the writer and the uplink readers have returned.
func (s *session) discardQueued() {
	for {
		select {
		case m := <-s.out:
			s.queued.Add(-int64(len(m)))
			s.g.outQueued.Add(-int64(len(m)))
		default:
			return
		}
	}
}

func (s *session) drop() {
	if s.dropped.Add(1) == 1 {
		s.g.cfg.Logger.Info("websocket client is not keeping up; dropping frames for it",
			slog.String("remote", s.remote.String()))
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
			err := s.ws.Write(context.Background(), websocket.MessageBinary, m)
			s.g.outQueued.Add(-int64(len(m))) // held until written
			if err != nil {
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
			u.c.CloseNow()
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
