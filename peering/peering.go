package peering

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/internal/ratelog"
	"github.com/mlesd/mlesd/internal/tlsbridge"
	"github.com/mlesd/mlesd/router"
)

// Defaults (the flags of cmd/mlesd use them).
const (
	// DefaultPort is the IANA Mles port, used when a peer has none.
	DefaultPort = codec.DefaultPort
	// DefaultBackoff and DefaultBackoffMax are the original server's waits
	// before reconnecting: 5 s, doubled each time, at most 10 minutes.
	DefaultBackoff    = 5 * time.Second
	DefaultBackoffMax = 10 * time.Minute
	// DefaultLinger is how long a channel's uplinks outlive its last member,
	// so that a client that rejoins at once does not churn them.
	DefaultLinger = 2 * time.Second
	// DefaultDialTimeout bounds one connection attempt.
	DefaultDialTimeout = 5 * time.Second

	// stableAfter: an uplink that stayed up this long (or carried a frame
	// down) was accepted, so its next failure waits Backoff again. One that
	// the peer closes at once (a refusal: wrong key, duplicate CID) keeps
	// doubling its wait instead of hammering the peer.
	stableAfter = 5 * time.Second
	// keepAlive is the TCP keepalive period of uplinks, as for clients.
	keepAlive = 60 * time.Second
	// maxDialsPerPeer bounds the connection attempts in flight to one peer.
	// Each channel has its own uplink, so a peer that stops answering would
	// otherwise have one blocked dial (and goroutine) per channel, for up
	// to the dial timeout, at every retry; the rest wait in a queue.
	maxDialsPerPeer = 32
	// maxKeptJoinMessage bounds the first member's join message a channel
	// keeps for its uplinks' first connection (it is outside the history's
	// byte budgets). A longer one is not kept: uplinks then join with an
	// empty message, and the message reaches the peer through the resync
	// when history holds it.
	maxKeptJoinMessage = 64 << 10
)

// Off, given to a setting that can be off (Linger), turns it off. Any
// negative value means the same.
const Off = -1

// Config sets up a Manager. Adopt is required.
type Config struct {
	// Peers are the peer servers, host:port (see ParsePeer).
	Peers []string
	// Keys is this server's key setting; uplinks key their joins with it.
	Keys codec.KeyConfig
	// StaticCID, when set, is the CID of every uplink (see the package doc).
	StaticCID *uint32
	// Backoff is the first wait before redialling (0: DefaultBackoff),
	// BackoffMax its cap (0: DefaultBackoffMax; never below Backoff).
	// Neither can be off.
	Backoff, BackoffMax time.Duration
	// Linger keeps a channel's uplinks this long after its last member
	// left (0: DefaultLinger; Off: close them at once).
	Linger time.Duration
	// DialTimeout bounds one connection attempt (0: DefaultDialTimeout;
	// cannot be off).
	DialTimeout time.Duration
	// Adopt hands a dialled connection to the engine as the uplink u
	// (engine.Server.AdoptUplink); local and remote are the TCP
	// connection's addresses (nc is a socketpair end when TLS is on).
	Adopt func(nc net.Conn, local, remote netip.AddrPort, u *Uplink) error
	// TLS, when set, makes every uplink a TLS client with this
	// configuration (ServerName defaults to the peer's host); the engine
	// gets the plaintext through a socketpair, as for the TLS listener.
	TLS *tls.Config
	// Logger receives link up/down/retry lines; nil = slog.Default().
	Logger *slog.Logger
}

// ParsePeer normalises a --peer value: HOST, HOST:PORT, [IPv6]:PORT or a
// bare IPv6 address; the port defaults to DefaultPort.
func ParsePeer(s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", errors.New("empty peer address")
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil { // no port: a host name, an IP, or [IPv6]
		host, port = s, strconv.Itoa(DefaultPort)
		if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
			host = host[1 : len(host)-1]
		}
		if strings.ContainsAny(host, "[]") {
			return "", fmt.Errorf("peer %q: want HOST[:PORT]", s)
		}
		if strings.Contains(host, ":") {
			if _, err := netip.ParseAddr(host); err != nil {
				return "", fmt.Errorf("peer %q: want HOST[:PORT]", s)
			}
		}
	}
	if host == "" {
		return "", fmt.Errorf("peer %q: no host", s)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return "", fmt.Errorf("peer %q: bad port", s)
	}
	return net.JoinHostPort(host, port), nil
}

// ClientTLS builds the TLS configuration of uplinks: TLS 1.2 or later,
// peers verified against the CA certificates in caFile (the system's when
// empty), and, when certFile is set, that client certificate (for peers
// that require one, as mlesd's --tls-client-ca does).
func ClientTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pool, err := tlsbridge.LoadPool(caFile)
		if err != nil {
			return nil, fmt.Errorf("peer CA: %w", err)
		}
		cfg.RootCAs = pool
	}
	if certFile != "" || keyFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("peer client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// ParseCID parses a --cid value: 1 to 8 hex digits, "0x" allowed.
func ParseCID(s string) (uint32, error) {
	h := strings.TrimPrefix(strings.TrimPrefix(s, "0x"), "0X")
	if h == "" || len(h) > 8 {
		return 0, fmt.Errorf("cid %q: want 1 to 8 hex digits", s)
	}
	v, err := strconv.ParseUint(h, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("cid %q: want 1 to 8 hex digits", s)
	}
	return uint32(v), nil
}

// State is where an uplink is in its life.
type State uint8

// The states of an uplink.
const (
	Connecting State = iota // dialling, or handed to the engine
	Up                      // a member of its channel at this server, its first frame sent
	Backoff                 // waiting to dial again
	Closed                  // its channel has no members any more; gone
)

// Stats counts uplinks. Lingering ones (their channel has no members and
// they close when the linger ends) are counted in Linger and in their state.
type Stats struct {
	Connecting, Up, Backoff, Linger int
	Ups, Downs, DialFailures        uint64 // since start
}

// Manager keeps the uplinks of every channel. It implements
// engine.MemberObserver. Safe for concurrent use.
type Manager struct {
	cfg       Config
	log       *slog.Logger
	rlog      *ratelog.Log
	dialFn    func(ctx context.Context, from netip.AddrPort, addr string) (net.Conn, error) // dialTCP, or a test's
	netDialer net.Dialer
	ctx       context.Context // cancelled by Stop: ends dials in flight
	cancel    context.CancelFunc

	mu      sync.Mutex
	chans   map[string]*channelLinks // Lock: mu
	stopped bool                     // Lock: mu
	totals  Stats                    // Lock: mu; only the counters since start
	dialQ   map[string][]dialReq     // Lock: mu; per peer, attempts waiting for a dialler
	dialers map[string]int           // Lock: mu; per peer, diallers running
	pending sync.WaitGroup           // diallers running
}

// dialReq is one connection attempt of u, valid while u.gen is gen.
type dialReq struct {
	u   *Uplink
	gen uint64
}

// channelLinks is one channel's uplinks, one per peer. Lock: Manager.mu.
type channelLinks struct {
	name    string
	members int
	join    []byte        // the first member's join frame
	first   codec.Triplet // its triplet (Message aliases join)
	linger  *time.Timer   // set while the channel has no members
	links   []*Uplink
}

// New returns a Manager; it dials nothing until channels get members.
func New(cfg Config) (*Manager, error) {
	if cfg.Adopt == nil {
		return nil, errors.New("peering: Config.Adopt is required")
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = DefaultBackoff
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = DefaultBackoffMax
	}
	if cfg.BackoffMax < cfg.Backoff {
		cfg.BackoffMax = cfg.Backoff
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	switch {
	case cfg.Linger == 0:
		cfg.Linger = DefaultLinger
	case cfg.Linger < 0:
		cfg.Linger = 0 // off: at once
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	peers := make([]string, len(cfg.Peers))
	for i, p := range cfg.Peers {
		np, err := ParsePeer(p)
		if err != nil {
			return nil, err
		}
		peers[i] = np
	}
	cfg.Peers = peers
	m := &Manager{cfg: cfg, log: cfg.Logger, rlog: ratelog.New(cfg.Logger, 10), chans: make(map[string]*channelLinks),
		dialQ: make(map[string][]dialReq), dialers: make(map[string]int)}
	m.netDialer = net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: keepAlive}
	m.dialFn = m.dialTCP
	m.ctx, m.cancel = context.WithCancel(context.Background())
	return m, nil
}

// MemberJoined opens the channel's uplinks with its first member, or keeps
// lingering ones. Implements engine.MemberObserver.
func (m *Manager) MemberJoined(ch *router.Channel, join []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped {
		return
	}
	cl := m.chans[ch.Name()]
	if cl == nil {
		if cl = m.newLinksLocked(ch.Name(), join); cl == nil {
			return // cannot happen: the engine decoded it to join
		}
		for _, u := range cl.links {
			m.dialLocked(u)
		}
	}
	cl.members++
	if cl.linger != nil {
		cl.linger.Stop()
		cl.linger = nil
	}
}

// newLinksLocked makes channel's links, one per peer, none dialled yet,
// with join as the first member's join frame (nil if join is not one).
// Lock: m.mu.
func (m *Manager) newLinksLocked(channel string, join []byte) *channelLinks {
	if len(join) < codec.HeaderLen {
		return nil
	}
	t, err := codec.DecodeTriplet(join[codec.HeaderLen:])
	if err != nil {
		return nil
	}
	cl := &channelLinks{name: channel, join: append([]byte(nil), join...)}
	if len(t.Message) > maxKeptJoinMessage {
		h, _ := codec.ParseHeader(join)
		t.Message = nil
		cl.join = codec.AppendTriplet(codec.AppendHeader(nil, codec.Header{Len: codec.TripletLen(t), CID: h.CID, Key: h.Key}), t)
	}
	cl.first, _ = codec.DecodeTriplet(cl.join[codec.HeaderLen:])
	m.chans[cl.name] = cl
	for _, p := range m.cfg.Peers {
		cl.links = append(cl.links, &Uplink{m: m, cl: cl, peer: p, wait: m.cfg.Backoff})
	}
	return cl
}

// MovedUplink is an uplink the old process handed over on an upgrade: the
// same TCP connection to Peer, a member of Channel there, whose first
// member's join was Join, from the local address Local.
type MovedUplink struct {
	Channel, Peer string
	Join          []byte
	Local         netip.AddrPort
}

// AdoptMoved takes over the uplinks an upgrade handed over, before the
// members they serve rejoin (MemberJoined then only counts them): it
// returns the Uplink each connection now belongs to, in Connecting state
// as if just dialled and handed to the engine (its Up follows), its first
// frame marked sent, so it sends no Hello: the peer sees nothing. Nil for
// one it cannot take (its peer is no longer configured, or the channel's
// link to that peer exists already: a member that joined this process
// first had it dialled); the engine closes that connection. The channels'
// links to the other peers are dialled as usual.
func (m *Manager) AdoptMoved(moved []MovedUplink) []*Uplink {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*Uplink, len(moved))
	fresh := map[*channelLinks]bool{}
	taken := map[*Uplink]bool{}
	for i, mv := range moved {
		if m.stopped {
			break
		}
		cl := m.chans[mv.Channel]
		if cl == nil {
			if cl = m.newLinksLocked(mv.Channel, mv.Join); cl == nil {
				continue
			}
			fresh[cl] = true
		}
		if !fresh[cl] {
			continue
		}
		for _, u := range cl.links {
			if u.peer != mv.Peer || taken[u] {
				continue
			}
			taken[u] = true
			u.state, u.helloed = Connecting, true
			u.gen++
			u.setKeyLocked(mv.Local)
			u.local = mv.Local
			out[i] = u
			break
		}
	}
	for cl := range fresh {
		for _, u := range cl.links {
			if !taken[u] {
				m.dialLocked(u)
			}
		}
	}
	return out
}

// FirstJoin is the join frame the channel's uplinks replay (its first
// member's), nil when the channel has none here. A hitless upgrade hands
// it to the new process, whose manager then opens the channel's uplinks
// with the same join (engine/export.go).
func (m *Manager) FirstJoin(channel string) []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	if cl := m.chans[channel]; cl != nil {
		return append([]byte(nil), cl.join...)
	}
	return nil
}

// MemberLeft closes the channel's uplinks Linger after its last member left.
// Implements engine.MemberObserver.
func (m *Manager) MemberLeft(ch *router.Channel) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cl := m.chans[ch.Name()]
	if cl == nil || m.stopped {
		return
	}
	if cl.members--; cl.members > 0 {
		return
	}
	cl.linger = time.AfterFunc(m.cfg.Linger, func() { m.expire(cl) })
}

// expire closes a channel's uplinks if it still has no members.
func (m *Manager) expire(cl *channelLinks) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if cl.members > 0 || m.chans[cl.name] != cl {
		return
	}
	delete(m.chans, cl.name)
	cl.linger = nil
	for _, u := range cl.links {
		if u.state == Up {
			m.log.Info("peer uplink closed", slog.String("peer", u.peer), slog.String("channel", cl.name),
				slog.String("why", "the channel has no members"))
		}
		u.closeLocked()
	}
}

// Stop closes every uplink and dials none again. Call it before stopping
// the engine. It waits for dials in flight.
func (m *Manager) Stop() {
	m.mu.Lock()
	m.stopped = true
	for name, cl := range m.chans {
		if cl.linger != nil {
			cl.linger.Stop()
		}
		for _, u := range cl.links {
			u.closeLocked()
		}
		delete(m.chans, name)
	}
	m.mu.Unlock()
	m.cancel()
	m.pending.Wait()
}

// Stats returns the uplinks by state and the counters since start.
func (m *Manager) Stats() Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.totals
	for _, cl := range m.chans {
		for _, u := range cl.links {
			switch u.state {
			case Connecting:
				st.Connecting++
			case Up:
				st.Up++
			case Backoff:
				st.Backoff++
			}
			if cl.members == 0 {
				st.Linger++
			}
		}
	}
	return st
}

// dialLocked queues a connection attempt for u and makes sure a dialler
// for its peer runs (at most maxDialsPerPeer per peer). Lock: m.mu.
func (m *Manager) dialLocked(u *Uplink) {
	u.state = Connecting
	u.gen++
	m.dialQ[u.peer] = append(m.dialQ[u.peer], dialReq{u: u, gen: u.gen})
	if m.dialers[u.peer] >= maxDialsPerPeer {
		return
	}
	m.dialers[u.peer]++
	m.pending.Add(1)
	go m.dialer(u.peer)
}

// dialer makes the queued connection attempts to peer, one at a time,
// and ends when none is left (or the Manager stopped).
func (m *Manager) dialer(peer string) {
	defer m.pending.Done()
	for {
		m.mu.Lock()
		q := m.dialQ[peer]
		if len(q) == 0 || m.stopped {
			m.dialers[peer]--
			if len(q) == 0 {
				delete(m.dialQ, peer)
			}
			m.mu.Unlock()
			return
		}
		req := q[0]
		q[0] = dialReq{}
		m.dialQ[peer] = q[1:]
		m.mu.Unlock()
		m.dial(req.u, req.gen)
	}
}

// dial connects to u's peer and hands the connection to the engine, whose
// OnOpen then calls u.Hello and u.Up (or u.Down).
func (m *Manager) dial(u *Uplink, gen uint64) {
	m.mu.Lock()
	stale := u.gen != gen || u.state != Connecting
	m.mu.Unlock()
	if stale { // closed while it waited in the queue
		return
	}
	m.mu.Lock()
	from := u.reuseFrom
	m.mu.Unlock()
	nc, err := m.dialFn(m.ctx, from, u.peer)
	what := "dial"
	var engineSide net.Conn
	if err == nil {
		engineSide = nc
		if m.cfg.TLS != nil {
			what = "tls"
			engineSide, err = m.startTLS(nc, u.peer)
		}
	}
	m.mu.Lock()
	if u.gen != gen || u.state != Connecting { // closed meanwhile
		m.mu.Unlock()
		if engineSide != nil {
			engineSide.Close()
		}
		if nc != nil {
			nc.Close()
		}
		return
	}
	if err != nil {
		m.totals.DialFailures++
		m.failedLocked(u, what, err)
		m.mu.Unlock()
		return
	}
	local, remote := addrPortOf(nc.LocalAddr()), addrPortOf(nc.RemoteAddr())
	u.setKeyLocked(local)
	u.local, u.reuseFrom = local, netip.AddrPort{}
	m.mu.Unlock()
	if err := m.cfg.Adopt(engineSide, local, remote, u); err != nil {
		engineSide.Close()
		nc.Close()
		m.mu.Lock()
		if u.gen == gen && u.state == Connecting {
			m.failedLocked(u, "adopt", err)
		}
		m.mu.Unlock()
	}
}

// dialTCP connects to addr, from the local address from when it is set
// (see Uplink.reuseFrom), falling back to a fresh port when that one cannot
// be had.
func (m *Manager) dialTCP(ctx context.Context, from netip.AddrPort, addr string) (net.Conn, error) {
	if !from.IsValid() {
		return m.netDialer.DialContext(ctx, "tcp", addr)
	}
	d := m.netDialer
	d.LocalAddr = net.TCPAddrFromAddrPort(from)
	d.Control = func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		})
		return errors.Join(err, serr)
	}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if errors.Is(err, syscall.EADDRINUSE) || errors.Is(err, syscall.EADDRNOTAVAIL) {
		return m.netDialer.DialContext(ctx, "tcp", addr)
	}
	return nc, err
}

// startTLS runs the TLS handshake on nc (within DialTimeout) and returns
// the engine's end of a socketpair bridged to it (a bridge goroutine runs
// until either side closes). On error nc is closed.
func (m *Manager) startTLS(nc net.Conn, peer string) (net.Conn, error) {
	cfg := m.cfg.TLS.Clone()
	if cfg.ServerName == "" {
		cfg.ServerName, _, _ = net.SplitHostPort(peer)
	}
	tc := tls.Client(nc, cfg)
	ctx, cancel := context.WithTimeout(m.ctx, m.cfg.DialTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		nc.Close()
		return nil, err
	}
	bridged, engineSide, err := tlsbridge.Socketpair()
	if err != nil {
		tc.Close()
		return nil, err
	}
	go tlsbridge.Bridge(tc, bridged.(*net.UnixConn))
	return engineSide, nil
}

// failedLocked logs a failed or lost link and schedules the next attempt.
// Lock: m.mu.
func (m *Manager) failedLocked(u *Uplink, what string, err error) {
	if m.stopped || u.state == Closed {
		return
	}
	wait := u.wait
	// ±20 % jitter, so that a group of servers does not retry in step.
	wait = time.Duration(float64(wait) * (0.8 + 0.4*rand.Float64()))
	u.wait = min(2*u.wait, m.cfg.BackoffMax)
	u.state = Backoff
	u.retry = time.AfterFunc(wait, func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if u.state == Backoff && !m.stopped {
			m.dialLocked(u)
		}
	})
	attrs := []slog.Attr{slog.String("peer", u.peer), slog.String("channel", u.cl.name), slog.String("what", what)}
	if err != nil {
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	m.rlog.Log(slog.LevelWarn, "peer-"+what, "peer uplink retry", append(attrs, slog.Duration("wait", wait.Round(time.Millisecond)))...)
}
