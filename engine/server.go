// Package engine is the network side of mlesd: gnet v2 event loops that accept
// connections, run each connection's state machine (awaiting join → joined →
// closed), parse frames in place from the inbound buffer, and forward each
// frame, copied once into a shared reference-counted buffer, to the other
// members of its channel.
//
// Invariants:
//   - Everything about a connection is touched only on the event loop that
//     owns it. Frames for receivers on another loop travel as one task per
//     batch per loop (EventLoop.Execute), never as direct writes.
//   - The per-frame path takes no lock (with history off) and allocates
//     nothing in steady state; with history on it takes the channel's lock
//     once per batch.
//   - Each receiver's waiting bytes are bounded by Config.MaxPending; past it,
//     whole frames are dropped for that receiver alone and counted. Nothing
//     a receiver does slows the sender or other receivers.
//   - The server sends nothing of its own. Errors close the connection and are
//     logged once, rate-limited, with the reason.
package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/internal/ratelog"
	"github.com/mlesd/mlesd/router"
)

const levelWarn = slog.LevelWarn

// Server is a running (or ready to run) Mles server.
type Server struct {
	gnet.BuiltinEventEngine

	cfg    Config
	router *router.Router
	log    *slog.Logger
	rlog   *ratelog.Log
	resync *codec.ResyncDecoder

	eng gnet.Engine

	// Accepting (accept.go): our own listeners and one goroutine each.
	lnMu        sync.Mutex
	listeners   []net.Listener
	acceptWG    sync.WaitGroup
	acceptErrs  sync.Map   // reason → *atomic.Uint64
	registerMu  sync.Mutex // gnet's round-robin balancer is not safe from several goroutines
	engineDir   string     // private directory of gnet's own (never reachable) listener
	loopsUp     chan struct{}
	registering chan registration // hand-overs in flight (accept.go)
	collected   chan struct{}     // closed when collectRegistrations has ended
	shutdown    chan struct{}     // closed when gnet shuts the event loops down
	booted      atomic.Bool

	loopsMu sync.Mutex
	loops   []atomic.Pointer[loop]   // index = loop idx; set once when the loop is first seen
	byEL    map[gnet.EventLoop]*loop // Lock: loopsMu

	start time.Time // now() counts from it

	ready        chan struct{}
	boundMu      sync.Mutex
	bound        []net.Addr
	stopping     atomic.Bool
	openConns    atomic.Int64
	accepted     atomic.Uint64
	partialBytes atomic.Int64  // memory of incomplete frames, all connections
	partial      []partialLoop // index = loop idx
	uplinkEnds   sync.Map      // socketEnds → struct{}: the addresses of open uplinks
	uplinksOpen  atomic.Int32

	ipMu    sync.Mutex
	perIP   map[netip.Addr]int // Lock: ipMu; open connections per client IP
	refused sync.Map           // reason → *atomic.Uint64

	up upgradeState // a hitless upgrade's freeze, export and import (freeze.go)
}

// New makes a server for r; Serve starts it.
func New(cfg Config, r *router.Router) (*Server, error) {
	cfg.setDefaults()
	if cfg.Loops <= 0 {
		cfg.Loops = runtime.NumCPU()
	}
	s := &Server{
		cfg:         cfg,
		router:      r,
		log:         cfg.Logger,
		rlog:        ratelog.New(cfg.Logger, 5),
		resync:      codec.NewResyncDecoder(cfg.MaxResyncEntries),
		byEL:        make(map[gnet.EventLoop]*loop),
		perIP:       make(map[netip.Addr]int),
		loops:       make([]atomic.Pointer[loop], cfg.Loops),
		ready:       make(chan struct{}),
		loopsUp:     make(chan struct{}),
		registering: make(chan registration, maxRegistering),
		collected:   make(chan struct{}),
		shutdown:    make(chan struct{}),
		start:       time.Now(),
	}
	s.partial = s.newPartialLoops(cfg.Loops)
	for _, a := range cfg.Listen {
		if _, _, err := splitListen(a); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// splitListen checks a listen address, host:port. An unspecified host
// ("[::]" or empty) listens dual stack (Go's default for "[::]").
func splitListen(a string) (host, port string, err error) {
	host, port, err = net.SplitHostPort(a)
	if err != nil {
		return "", "", fmt.Errorf("listen address %q: %w", a, err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return "", "", fmt.Errorf("listen address %q: bad port", a)
	}
	if host == "" {
		host = "::"
	}
	return host, port, nil
}

// Serve runs the server until Stop; it returns the error that stopped it.
// A listen address that cannot be bound is reported at once, as the
// kernel's reason (for example "address already in use").
func (s *Server) Serve() error {
	err := s.serve()
	select {
	case <-s.ready:
	default:
		close(s.ready) // failed before boot: unblock waiters
	}
	return err
}

func (s *Server) serve() error {
	if err := s.listen(); err != nil {
		return err
	}
	defer s.closeListeners()
	dir, engineAddr, err := engineSocket()
	if err != nil {
		return fmt.Errorf("engine socket: %w", err)
	}
	s.engineDir = dir
	defer os.RemoveAll(dir)
	opts := []gnet.Option{
		gnet.WithMulticore(true),
		gnet.WithNumEventLoop(s.cfg.Loops),
		gnet.WithTicker(true),
		gnet.WithLogger(gnetLogger{s.log}),
	}
	err = gnet.Run(s, engineAddr, opts...)
	for i := range s.loops { // the loops have ended: nothing watches any more
		if l := s.loops[i].Load(); l != nil {
			l.writable.shutdown()
		}
	}
	s.closeListeners()
	s.acceptWG.Wait()
	close(s.registering)
	select {
	case <-s.loopsUp:
		<-s.collected
	default: // never served: no collector runs
	}
	return err
}

// Ready is closed once the server listens (or failed to start).
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addrs returns the bound listen addresses (after Ready).
func (s *Server) Addrs() []net.Addr {
	s.boundMu.Lock()
	defer s.boundMu.Unlock()
	return append([]net.Addr(nil), s.bound...)
}

// Stop shuts the server down: new connections are refused at once; for up
// to DrainTimeout (or half of ctx's time, if less) receivers keep being given
// their backlog as fast as their sockets take it (never by copying it: a
// receiver that does not read keeps its frames as shared references until
// the end); then every connection is closed and Stop returns when the event
// loops have ended or ctx is done. What a receiver gets is always a prefix
// of what it was sent: whole frames, in order.
func (s *Server) Stop(ctx context.Context) error {
	s.stopping.Store(true)
	drain := s.cfg.DrainTimeout
	if dl, ok := ctx.Deadline(); ok && time.Until(dl)/2 < drain {
		drain = time.Until(dl) / 2
	}
	deadline := time.Now().Add(drain)
	s.closeListeners()
	for time.Now().Before(deadline) && s.backlogged() {
		time.Sleep(5 * time.Millisecond)
	}
	if !s.booted.Load() {
		return nil // never started: nothing to stop
	}
	return s.eng.Stop(ctx)
}

// backlogged reports whether any receiver still has bytes waiting.
func (s *Server) backlogged() bool {
	for i := range s.loops {
		if l := s.loops[i].Load(); l != nil && l.writable.waiting.Load() > 0 {
			return true
		}
	}
	return false
}

// now is the time since the server started, in ns (monotonic; a vDSO
// call, cheap enough for every read event).
func (s *Server) now() int64 { return int64(time.Since(s.start)) }

// OnBoot records the engine. gnet has bound its own listener by now, so
// its private directory goes: nothing can ever connect to it. Serving starts
// on the first OnTick, when every event loop is registered.
func (s *Server) OnBoot(eng gnet.Engine) gnet.Action {
	s.eng = eng
	s.booted.Store(true)
	_ = os.RemoveAll(s.engineDir)
	if s.stopping.Load() {
		return gnet.Shutdown // Stop came first: do not start
	}
	return gnet.None
}

// serving runs once, on the first OnTick: gnet starts its ticker goroutine
// only after it has registered every event loop, so from here Register may
// be called. It starts the accept loops and closes Ready.
func (s *Server) serving() {
	var bound []net.Addr
	s.lnMu.Lock()
	for _, ln := range s.listeners {
		bound = append(bound, ln.Addr())
	}
	s.lnMu.Unlock()
	s.boundMu.Lock()
	s.bound = bound
	s.boundMu.Unlock()
	close(s.loopsUp)
	s.startAccepting()
	addrs := make([]string, len(bound))
	for i, a := range bound {
		addrs[i] = a.String()
	}
	s.log.Info("mlesd listening", slog.Any("addrs", addrs), slog.Int("loops", s.cfg.Loops),
		slog.Int("max_frame", s.cfg.MaxFrame), slog.Int("max_pending", s.cfg.MaxPending),
		slog.Int("history_limit", s.router.HistoryLimit()))
	close(s.ready)
}

// OnShutdown runs once the event loops are stopping: hand-overs still
// waiting for a loop will never be answered (accept.go).
func (s *Server) OnShutdown(gnet.Engine) { close(s.shutdown) }

// loopOf returns our state for c's event loop, creating it the first time.
func (s *Server) loopOf(gc gnet.Conn) *loop {
	el := gc.EventLoop()
	s.loopsMu.Lock()
	defer s.loopsMu.Unlock()
	if l := s.byEL[el]; l != nil {
		return l
	}
	idx := len(s.byEL)
	if idx >= len(s.loops) { // cannot happen: gnet makes exactly cfg.Loops loops
		panic("engine: more event loops than configured")
	}
	l := newLoop(idx, s, el, len(s.loops))
	s.loops[idx].Store(l)
	s.byEL[el] = l
	l.startResumer()
	return l
}

// adopted carries the client address of a connection handed over by Adopt,
// or the Uplink of one handed over by AdoptUplink.
type adopted struct {
	remote netip.AddrPort
	local  netip.AddrPort // this end's address: an uplink's own (for its key), or what a client reached
	uplink Uplink
	moved  *moved // set for a connection moved from another loop to join here
}

// Adopt hands an established connection to the engine as if it had been
// accepted from remote (the address used for address keys, limits and logs)
// on local (this server's address the client reached, which the engine
// uses to recognise its own uplinks coming back; may be zero).
// It is how transports the engine does not speak itself (TLS terminated in
// Go, say) join the same event loops, router and limits: nc must be a
// *net.TCPConn or *net.UnixConn (for example one end of a socketpair whose
// other end a TLS goroutine feeds). The engine takes a duplicate of nc's
// descriptor and closes nc itself.
// Safe from any goroutine once the server is Ready (before, it fails).
// Connections are spread round robin over the event loops, as accepted ones
// are (accept.go).
func (s *Server) Adopt(nc net.Conn, local, remote netip.AddrPort) error {
	return s.adopt(nc, &adopted{remote: remote, local: local})
}

// OnOpen sets up a connection's state; it waits for its join frame.
func (s *Server) OnOpen(gc gnet.Conn) ([]byte, gnet.Action) {
	l := s.loopOf(gc)
	if r, ok := gc.Context().(*resumer); ok { // the loop's own (resume.go)
		r.opened = true
		return nil, gnet.None
	}
	if !l.writable.started {
		// Made with the loop's first connection rather than its first
		// backlog, so the loop's descriptors are all there from the start
		// (an fd count taken after warm-up is a baseline). A failure is
		// retried by the first watch.
		_ = l.writable.start(l.el, l.writableRunnable)
	}
	if im, ok := gc.Context().(*imported); ok { // handed over by the old process (import.go)
		return nil, s.openImported(gc, l, im)
	}
	now := s.now()
	remote := addrPortOf(gc.RemoteAddr())
	a, _ := gc.Context().(*adopted)
	if a != nil {
		remote = a.remote
	}
	c := &conn{gc: gc, loop: l, remote: remote, opened: now, lastRead: now}
	if a != nil {
		c.local = a.local
	}
	gc.SetContext(c)
	l.conns[c] = struct{}{}
	l.sweepDue()                    // the join timeout applies to it
	if a == nil || a.moved == nil { // a moved one was counted where it arrived
		s.accepted.Add(1)
	}
	if a == nil && gc.LocalAddr() != nil && gc.LocalAddr().Network() == "unix" {
		// gnet's own listener, unreachable by design (accept.go): refuse.
		c.reason = "internal-listener"
		s.openConns.Add(1)
		return nil, gnet.Close
	}
	if a != nil && a.moved != nil { // from another loop, to join here (migrate.go)
		return nil, s.openMoved(c, a.moved)
	}
	if a != nil && a.uplink != nil { // ours: no client limits apply
		s.openConns.Add(1)
		if s.stopping.Load() {
			c.reason = "shutting-down"
			c.up = &uplinkState{u: a.uplink}
			return nil, gnet.Close
		}
		return nil, s.openUplink(c, a)
	}
	if s.cfg.SendBuffer > 0 {
		// A failure keeps the kernel's buffer: a cost, not an error.
		_ = unix.SetsockoptInt(gc.Fd(), unix.SOL_SOCKET, unix.SO_SNDBUF, s.cfg.SendBuffer)
	}
	if n := s.openConns.Add(1); s.stopping.Load() {
		c.reason = "shutting-down"
		return nil, gnet.Close
	} else if s.cfg.MaxConns > 0 && n > int64(s.cfg.MaxConns) {
		c.reason = "max-conns"
		return nil, gnet.Close
	}
	if ip := c.remote.Addr().Unmap(); s.cfg.MaxConnsPerIP > 0 && (s.cfg.LimitLoopback || !ip.IsLoopback()) {
		s.ipMu.Lock()
		n := s.perIP[ip]
		if n < s.cfg.MaxConnsPerIP {
			s.perIP[ip] = n + 1
			c.perIP = true
		}
		s.ipMu.Unlock()
		if !c.perIP {
			c.reason = "max-conns-per-ip"
			return nil, gnet.Close
		}
	}
	s.debug("connection opened", c)
	return nil, gnet.None
}

// OnClose leaves the channel and releases the connection's backlog.
func (s *Server) OnClose(gc gnet.Conn, err error) gnet.Action {
	if r, ok := gc.Context().(*resumer); ok {
		r.onClose()
		return gnet.None
	}
	c, _ := gc.Context().(*conn)
	if c == nil || c.state == closed {
		return gnet.None
	}
	wasJoined := c.state == joined
	c.state = closed
	delete(c.loop.conns, c)
	c.loop.writable.forget(c) // before gnet closes the fd, which may be reused
	s.openConns.Add(-1)
	if c.moved { // it lives on in another loop (migrate.go): only its descriptor here closes
		s.dropPartial(c)
		return gnet.None
	}
	if wasJoined && c.placed {
		c.loop.stats.members.Add(-1)
	}
	if c.ch != nil {
		c.loop.leaveSet(c)
		c.ch.Leave(c)
		if c.member { // whatever its state now (a failed write leaves it closing)
			s.cfg.Members.MemberLeft(c.ch)
		}
	}
	c.q.releaseAll()
	c.queued = 0
	s.dropPartial(c)
	if c.perIP {
		ip := c.remote.Addr().Unmap()
		s.ipMu.Lock()
		if s.perIP[ip]--; s.perIP[ip] <= 0 {
			delete(s.perIP, ip)
		}
		s.ipMu.Unlock()
	}
	if c.reason == reasonMoved { // it lives on in the new process (export.go)
		if c.up != nil {
			s.closeUplink(c, nil) // its owner learns that it moved, and does not redial
		}
		return gnet.None
	}
	if c.up != nil {
		if c.reason != "" {
			s.countRefused(c.reason) // logged by the peering package, with the reason
		}
		s.closeUplink(c, err)
		return gnet.None
	}
	switch {
	case c.reason != "":
		s.countRefused(c.reason)
		s.rlog.Log(reasonLevel(c.reason), c.reason, "connection closed by server", connAttrs(c)...)
	case err != nil && !errors.Is(err, io.EOF):
		s.debug("connection closed", c, slog.String("error", err.Error()))
	default:
		s.debug("connection closed", c, slog.Bool("was_joined", wasJoined))
	}
	return gnet.None
}

// failWrite handles a receiver whose socket failed (reset, broken pipe): it
// gets nothing more and is closed as soon as its loop is free. The close is
// asynchronous because write may run inside a gnet callback for c itself.
func (s *Server) failWrite(c *conn, err error) {
	c.state = closing
	c.q.releaseAll()
	c.queued, c.headOff = 0, 0
	s.debug("write failed", c, slog.String("error", err.Error()))
	_ = c.gc.Close()
}

// closeConn closes c now with reason. Must run on c's loop.
func (s *Server) closeConn(c *conn, reason string) {
	if c.state == closed {
		return
	}
	c.reason = reason
	_ = c.loop.el.Close(c.gc)
}

// reasonLevel is the log level of a close: warn when a server limit was hit
// (the operator may need to raise it), info for clients that broke the
// protocol or timed out.
func reasonLevel(reason string) slog.Level {
	switch reason {
	case "max-conns", "max-conns-per-ip", "out-of-fds", "partial-budget", "too-many-channels", "stalled-and-silent", "peer-is-self",
		"resync-too-large", "out-of-memory":
		return slog.LevelWarn
	}
	return slog.LevelInfo
}

func (s *Server) countRefused(reason string) { addCount(&s.refused, reason, 1) }

func (s *Server) countRefusedN(reason string, n uint64) {
	if n > 0 {
		addCount(&s.refused, reason, n)
	}
}

// addCount adds n to the counter under key in m (reason → *atomic.Uint64).
func addCount(m *sync.Map, key string, n uint64) {
	v, ok := m.Load(key)
	if !ok {
		v, _ = m.LoadOrStore(key, new(atomic.Uint64))
	}
	v.(*atomic.Uint64).Add(n)
}

// debug logs a connection event at debug level; free when debug is off.
func (s *Server) debug(msg string, c *conn, extra ...slog.Attr) {
	if !s.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	s.log.LogAttrs(context.Background(), slog.LevelDebug, msg, append(connAttrs(c), extra...)...)
}

func connAttrs(c *conn) []slog.Attr {
	attrs := make([]slog.Attr, 0, 6)
	attrs = append(attrs, slog.String("remote", c.remote.String()))
	if c.ch != nil {
		attrs = append(attrs, slog.String("channel", c.ch.Name()), slog.String("uid", c.uid),
			slog.String("cid", fmt.Sprintf("%08x", c.cid)))
	}
	if c.dropped > 0 {
		attrs = append(attrs, slog.Uint64("dropped_frames", c.dropped))
	}
	return attrs
}

// OnTraffic parses every whole frame buffered for c: the first is the join,
// the rest are forwarded without decoding, in batches.
func (s *Server) OnTraffic(gc gnet.Conn) gnet.Action {
	if r, ok := gc.Context().(*resumer); ok {
		return r.onTraffic(gc)
	}
	c := gc.Context().(*conn)
	l := c.loop
	if c.state >= closing {
		return gnet.Close
	}
	if heldBack(c) {
		return gnet.None // a handover: what was read waits in gnet's buffer (import.go)
	}
	in := inboundOf(c, gc)
	began := time.Now()
	defer l.stats.addBusy(began)
	c.lastRead = int64(began.Sub(s.start))
	batchBytes := 0
	action := gnet.None
	framed := false // a frame was completed: what is left begins a new one
	spare := &s.partial[l.idx].spare
	for {
		if c.state == joined && len(l.frames) == 0 && c.rd.want == 0 && s.cutThrough(c, in) > 0 { // engine/cutthrough.go
			framed = true
			continue
		}
		h, data, reason := c.rd.next(in, s.cfg.MaxFrame, ownedFrameMin, spare)
		if reason != "" {
			c.reason = reason
			action = gnet.Close
			break
		}
		if data == nil {
			break
		}
		total := len(data)
		framed = true
		if c.state == awaitingJoin {
			reason := s.join(c, h, data)
			c.rd.done(in, spare)
			if reason == reasonMovedLoop {
				action = gnet.Close
				break
			}
			if reason != "" {
				c.reason = reason
				action = gnet.Close
				break
			}
			continue
		}
		if c.up != nil {
			c.up.received++
			fp := c.up.seen.Fingerprint(data)                          // the log's own key (router.SeenLog)
			if c.up.replayLeft > 0 && c.up.skipReplayed(c, fp, data) { // engine/uplink.go
				c.rd.done(in, spare)
				continue
			}
			c.up.seen.AddFingerprint(fp)
		}
		f := router.NewFrame(data)
		c.rd.done(in, spare)
		l.frames = append(l.frames, f)
		batchBytes += total
		if len(l.frames) >= maxBatchFrames || batchBytes >= maxBatchBytes {
			s.dispatch(c, l)
			batchBytes = 0
		}
	}
	if len(l.frames) > 0 {
		s.dispatch(c, l)
	}
	l.flushSoon()
	if action == gnet.None {
		// The frame still arriving counts against a global budget and a clock.
		action = s.accountPartial(c, in, framed)
	}
	return action
}

// dispatch stores and fans out the frames read from c. Loop-owned; no
// allocation; one channel lock per batch when history is on.
func (s *Server) dispatch(c *conn, l *loop) {
	snap := c.ch.Append(l.frames...)
	var n uint64
	for i, f := range l.frames {
		n += uint64(f.Len())
		l.fanout(f, snap, c)
		f.Release()
		l.frames[i] = nil
	}
	l.stats.framesIn.Add(uint64(len(l.frames)))
	l.stats.bytesIn.Add(n)
	l.frames = l.frames[:0]
}

func headerReason(err error) string {
	switch {
	case errors.Is(err, codec.ErrBadMagic):
		return "bad-magic"
	case errors.Is(err, codec.ErrZeroLength):
		return "zero-length"
	default:
		return "bad-header"
	}
}

// join authenticates c's first frame and joins it to its channel. It returns
// "" or the reason to close c.
func (s *Server) join(c *conn, h codec.Header, data []byte) string {
	payload := data[codec.HeaderLen:]
	var (
		t      codec.Triplet
		key    uint64
		inner  [][]byte
		resync bool
	)
	entries, err := s.resync.Decode(payload)
	if errors.Is(err, codec.ErrResyncTooLarge) {
		return "resync-too-large"
	}
	if err == nil {
		// A resync: the first inner frame is the joiner's own join frame.
		resync = true
		inner = entries
		ih, err := codec.ParseHeader(entries[0])
		if err != nil || len(entries[0]) != codec.HeaderLen+ih.Len {
			return "bad-resync"
		}
		if t, err = codec.DecodeTriplet(entries[0][codec.HeaderLen:]); err != nil {
			return "bad-resync"
		}
		for _, e := range entries[1:] {
			eh, err := codec.ParseHeader(e)
			if err != nil || len(e) != codec.HeaderLen+eh.Len || eh.Len > s.cfg.MaxFrame {
				return "bad-resync"
			}
		}
		key, c.cid = ih.Key, ih.CID
	} else {
		if t, err = codec.DecodeTriplet(payload); err != nil {
			return "bad-join-frame"
		}
		key, c.cid = h.Key, h.CID
	}
	c.dupKey = uint64(c.cid)
	if len(t.UID) > s.cfg.MaxUIDLen {
		return "uid-too-long"
	}
	if len(t.Channel) > s.cfg.MaxChannelLen {
		return "channel-too-long"
	}
	if !s.cfg.Keys.Accepts(key, c.remote, t.UID, t.Channel) {
		return "wrong-key"
	}
	if s.isOwnUplink(c) {
		return "peer-is-self"
	}
	if !resync && s.moveForJoin(c, h, data, t.Channel) { // engine/migrate.go
		return reasonMovedLoop
	}
	// Before the router publishes c: memberUIDs (engine/uplink.go) reads them.
	c.uid, c.peerLink = t.UID, c.cid != codec.CIDOf(key)
	ch, hist, err := s.router.Join(t.Channel, c, nil)
	switch {
	case errors.Is(err, router.ErrDuplicateCID):
		return "duplicate-cid"
	case errors.Is(err, router.ErrTooManyChannels):
		return "too-many-channels"
	case err != nil:
		return "join-failed"
	}
	c.ch, c.state = ch, joined
	c.loop.stats.members.Add(1)
	c.placed = true
	// History first: the joiner gets it before any live frame.
	for _, f := range hist {
		c.deliver(f, true)
		f.Release()
	}
	if !resync {
		f := router.NewFrame(data)
		var snap *router.Snapshot
		if len(t.Message) > 0 {
			snap = ch.Append(f)
		} else {
			snap = ch.Snapshot() // a plain join is forwarded but not kept
		}
		c.loop.fanout(f, snap, c)
		f.Release()
	} else {
		s.mergeResync(c, t, inner)
	}
	// Last, so that the joiner's frames are in the history before any
	// uplink this opens can take it.
	if s.cfg.Members != nil {
		if resync {
			s.cfg.Members.MemberJoined(ch, inner[0])
		} else {
			s.cfg.Members.MemberJoined(ch, data)
		}
		c.member = true
	}
	// Counted last: a join counted (Stats.Joins, mlesd_joins_total) has
	// been forwarded to the members there were, so whoever waits for the
	// count and then joins is not one of them. Counted before the fan-out,
	// a member joining at that moment could get the join frame first
	// (TestUplinkHelloLiveFramesAndReplaySkip failed so, once, in CI).
	c.loop.stats.joins.Add(1)
	s.debug("joined", c)
	return ""
}

// mergeResync forwards the joiner's own join frame, then adds to history the
// inner frames not already held and forwards only those.
//
// It runs in one step on the loop, under the channel's lock: with the entry
// cap (Config.MaxResyncEntries), the decoder that stops at the entry past it
// and the linear merge, a resync costs its loop little enough not to be
// worth splitting. Measured (internal/hostile, one loop, 2 shared cores; CPU
// profile of mlesd): about 0.4 µs of loop time per entry plus 1.5 ms per MiB,
// so 10,000 entries filling a 16 MiB payload (the most the default cap
// lets through) take 25-35 ms and 60,000 tiny ones (a cap raised sixfold)
// 25 ms of CPU, 35-70 ms wall on the loaded machine; a pair on the same loop
// waited at most that long for a frame meanwhile. Chunking across loop
// iterations would have to hold back the joiner's later frames and keep the
// channel's history consistent between chunks; decoding off the loop would
// have to copy the frame out of the inbound buffer and hand the join back.
// Neither is needed at the default cap; a cap raised far past it brings the
// stall back in proportion (see DefaultMaxResyncEntries).
func (s *Server) mergeResync(c *conn, first codec.Triplet, inner [][]byte) {
	ch := c.ch
	jf := router.NewFrame(inner[0])
	frames := make([]*router.Frame, 0, len(inner))
	if len(first.Message) > 0 {
		frames = append(frames, jf)
	} else {
		c.loop.fanout(jf, ch.Snapshot(), c)
	}
	for _, e := range inner[1:] {
		frames = append(frames, router.NewFrame(e))
	}
	fresh, snap := s.mergeCatchUp(c, frames, len(first.Message) > 0) // engine/uplink.go
	for _, f := range fresh {
		c.loop.fanout(f, snap, c)
	}
	for _, f := range frames {
		f.Release()
	}
	if len(first.Message) == 0 {
		jf.Release()
	}
}

// OnTick, a few times a second, has every loop check
// timeouts. It runs on its own goroutine, so it only queues tasks on the
// loops. It polls nothing: receivers with a backlog are woken by their
// sockets (writable.go).
func (s *Server) OnTick() (time.Duration, gnet.Action) {
	select {
	case <-s.loopsUp:
	default:
		s.serving()
	}
	for i := range s.loops {
		l := s.loops[i].Load()
		if l == nil {
			continue
		}
		// An idle loop is not woken: each wake-up re-enters epoll_wait,
		// and the Go runtime's sysmon then polls for a while to take the
		// loop's P back (242 wake-ups a second measured with 1,000 idle
		// members when every tick woke both loops).
		if !l.sweepIdle.Load() {
			_ = l.el.Execute(context.Background(), l.sweepRunnable)
		}
		if l.foldDue.Swap(false) {
			_ = l.el.Execute(context.Background(), l.foldRunnable)
		}
	}
	return sweepInterval, gnet.None
}

// Stats is a point-in-time sum of the server's counters.
type Stats struct {
	OpenConns int64
	Accepted  uint64
	Joins     uint64
	// Moved counts connections moved at their join to the loop of their
	// small channel (migrate.go).
	Moved     uint64
	FramesIn  uint64
	BytesIn   uint64
	FramesOut uint64
	BytesOut  uint64
	Dropped   uint64
	// LoopQueueDropped counts frames one event loop could not queue for
	// another that was far behind (each also counts in Dropped, once per
	// member it was for).
	LoopQueueDropped uint64
	BusyNanos        uint64 // time the event loops spent handling traffic
	HistoryBytes     int64
	Channels         int
	ClosedByRule     map[string]uint64 // connections the server closed, by reason
	AcceptErrors     map[string]uint64 // accept errors, by reason (accept.go)
}

// Stats returns the current counters. Safe from any goroutine.
func (s *Server) Stats() Stats {
	st := Stats{OpenConns: s.openConns.Load(), Accepted: s.accepted.Load(), Channels: s.router.Channels(),
		HistoryBytes: s.router.HistoryBytes(),
		ClosedByRule: map[string]uint64{}, AcceptErrors: map[string]uint64{}}
	for i := range s.loops {
		l := s.loops[i].Load()
		if l == nil {
			continue
		}
		st.Joins += l.stats.joins.Load()
		st.Moved += l.stats.moved.Load()
		st.FramesIn += l.stats.framesIn.Load()
		st.BytesIn += l.stats.bytesIn.Load()
		st.FramesOut += l.stats.framesOut.Load()
		st.BytesOut += l.stats.bytesOut.Load()
		st.BusyNanos += l.stats.busyNanos.Load()
		st.Dropped += l.stats.dropped.Load()
		st.LoopQueueDropped += l.stats.inboxDropped.Load()
	}
	s.refused.Range(func(k, v any) bool {
		st.ClosedByRule[k.(string)] = v.(*atomic.Uint64).Load()
		return true
	})
	s.acceptErrs.Range(func(k, v any) bool {
		st.AcceptErrors[k.(string)] = v.(*atomic.Uint64).Load()
		return true
	})
	return s.up.base.withBase(st)
}
