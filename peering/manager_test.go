package peering

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/router"
)

// fakeEngine stands in for engine.Server.AdoptUplink: it takes the dialled
// connection and runs the uplink's Hello and Up at once; closing it calls
// Down like the engine's OnClose.
type fakeEngine struct {
	mu     sync.Mutex
	adopts int
	hellos [][]byte
	locals []netip.AddrPort
	closes int
}

func (e *fakeEngine) adopt(nc net.Conn, local, _ netip.AddrPort, u *Uplink) error {
	hello, err := u.Hello(local, nil)
	if err != nil {
		return err
	}
	e.mu.Lock()
	e.adopts++
	e.hellos = append(e.hellos, hello)
	e.locals = append(e.locals, local)
	e.mu.Unlock()
	var once sync.Once
	u.Up(func() {
		once.Do(func() {
			nc.Close()
			e.mu.Lock()
			e.closes++
			e.mu.Unlock()
			u.Down("", net.ErrClosed, 0)
		})
	})
	return nil
}

func (e *fakeEngine) counts() (adopts, closes int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.adopts, e.closes
}

// listenPeer accepts and holds connections until the test ends.
func listenPeer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return ln.Addr().String()
}

type member struct {
	cid uint32
	router.Membership
}

func (m *member) DupKey() uint64                 { return uint64(m.cid) }
func (m *member) Loop() int                      { return 0 }
func (m *member) Joined(*router.LoopSet, uint64) {}

func newChannel(t *testing.T, name string) *router.Channel {
	t.Helper()
	ch, _, err := router.New(router.Config{HistoryLimit: router.Off}).Join(name, &member{cid: 1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

func waitStats(t *testing.T, m *Manager, what string, ok func(Stats) bool) Stats {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := m.Stats()
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: stats %+v", what, st)
		}
		time.Sleep(time.Millisecond)
	}
}

func newManager(t *testing.T, e *fakeEngine, cfg Config) *Manager {
	t.Helper()
	cfg.Adopt = e.adopt
	cfg.Logger = quiet
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	return m
}

// A channel's uplink opens with its first member, survives members coming
// and going, lingers after the last one left, is kept by a rejoin within
// the linger, and closes when a linger passes without one.
func TestManagerOpensAndLingers(t *testing.T) {
	e := &fakeEngine{}
	m := newManager(t, e, Config{Peers: []string{listenPeer(t)}, Keys: codec.KeyConfig{SharedKey: "k"},
		Linger: 100 * time.Millisecond})
	ch := newChannel(t, "ch")
	join, _ := codec.AppendFrame(nil, codec.Key("k", "alice", "ch"), codec.Triplet{UID: "alice", Channel: "ch"})
	m.MemberJoined(ch, join)
	m.MemberJoined(ch, join)
	waitStats(t, m, "one uplink up", func(s Stats) bool { return s.Up == 1 })
	m.MemberLeft(ch)
	if st := m.Stats(); st.Linger != 0 || st.Up != 1 {
		t.Fatalf("one member left of two: %+v", st)
	}
	m.MemberLeft(ch)
	if st := m.Stats(); st.Linger != 1 || st.Up != 1 {
		t.Fatalf("last member left: %+v, want up and lingering", st)
	}
	m.MemberJoined(ch, join) // back within the linger
	time.Sleep(200 * time.Millisecond)
	if st := m.Stats(); st.Up != 1 || st.Linger != 0 {
		t.Fatalf("rejoined within the linger: %+v", st)
	}
	if adopts, closes := e.counts(); adopts != 1 || closes != 0 {
		t.Fatalf("adopts %d closes %d, want 1 and 0", adopts, closes)
	}
	m.MemberLeft(ch)
	waitStats(t, m, "no uplinks", func(s Stats) bool { return s.Up+s.Connecting+s.Backoff+s.Linger == 0 })
	deadline := time.Now().Add(5 * time.Second)
	for _, closes := e.counts(); closes != 1; _, closes = e.counts() {
		if time.Now().After(deadline) {
			t.Fatal("the uplink was not closed after the linger")
		}
		time.Sleep(time.Millisecond)
	}
	if st := m.Stats(); st.Ups != 1 || st.Downs != 0 {
		t.Fatalf("counters %+v: a linger close is not a down", st)
	}
}

// Each failure doubles the wait up to the cap; a link that carried frames
// starts it over. A peer that does not answer is a dial failure.
func TestManagerBackoff(t *testing.T) {
	e := &fakeEngine{}
	m := newManager(t, e, Config{Peers: []string{listenPeer(t)}, Keys: codec.KeyConfig{SharedKey: "k"},
		Backoff: 10 * time.Millisecond, BackoffMax: 40 * time.Millisecond, Linger: Off})
	ch := newChannel(t, "ch")
	join, _ := codec.AppendFrame(nil, codec.Key("k", "alice", "ch"), codec.Triplet{UID: "alice", Channel: "ch"})
	m.MemberJoined(ch, join)
	u := m.chans["ch"].links[0]
	wait := func() time.Duration { m.mu.Lock(); defer m.mu.Unlock(); return u.wait }
	for i, want := range []time.Duration{20, 40, 40, 40} {
		waitStats(t, m, "up", func(s Stats) bool { return s.Up == 1 })
		u.Down("", nil, 0) // refused: closed at once, nothing received
		if got := wait(); got != want*time.Millisecond {
			t.Fatalf("after failure %d the next wait is %v, want %v", i+1, got, want*time.Millisecond)
		}
	}
	waitStats(t, m, "up", func(s Stats) bool { return s.Up == 1 })
	u.Down("", nil, 5) // it carried frames: accepted, start over
	if got := wait(); got != 20*time.Millisecond {
		t.Fatalf("after a link that worked the wait is %v, want the first (10ms) doubled once: 20ms", got)
	}
	waitStats(t, m, "up", func(s Stats) bool { return s.Up == 1 && s.Downs == 5 })

	// A peer nobody listens on: dial failures, counted, in back-off.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	m2 := newManager(t, &fakeEngine{}, Config{Peers: []string{dead}, Backoff: 10 * time.Millisecond, BackoffMax: 20 * time.Millisecond, Linger: Off})
	m2.MemberJoined(ch, join)
	waitStats(t, m2, "dial failures", func(s Stats) bool { return s.DialFailures >= 3 && s.Up == 0 })
}

// The first frame: the first member's join rekeyed on the first connection,
// a fresh empty join after; with address keys the key is the uplink
// socket's own.
func TestManagerHelloKeys(t *testing.T) {
	e := &fakeEngine{}
	m := newManager(t, e, Config{Peers: []string{listenPeer(t)}, Backoff: 10 * time.Millisecond, BackoffMax: 10 * time.Millisecond, Linger: Off})
	ch := newChannel(t, "ch")
	join, _ := codec.AppendFrame(nil, 12345, codec.Triplet{UID: "alice", Channel: "ch", Message: []byte("hi")})
	m.MemberJoined(ch, join)
	u := m.chans["ch"].links[0]
	waitStats(t, m, "up", func(s Stats) bool { return s.Up == 1 })
	u.Down("", nil, 1)
	waitStats(t, m, "up again", func(s Stats) bool { return s.Up == 1 && s.Ups == 2 })
	e.mu.Lock()
	defer e.mu.Unlock()
	for i, want := range []string{"hi", ""} {
		h, _ := codec.ParseHeader(e.hellos[i])
		tr, err := codec.DecodeTriplet(e.hellos[i][codec.HeaderLen:])
		if err != nil || string(tr.Message) != want || tr.UID != "alice" {
			t.Fatalf("hello %d: %+v %v, want message %q", i, tr, err, want)
		}
		if h.Key == 12345 || h.CID != codec.CIDOf(h.Key) {
			t.Fatalf("hello %d not rekeyed: %+v", i, h)
		}
		// The peer sees the uplink's local address and accepts the key.
		if !(codec.KeyConfig{}).Accepts(h.Key, e.locals[i], "alice", "ch") {
			t.Fatalf("hello %d key is not the address key of %v", i, e.locals[i])
		}
	}
}

// A peer that does not answer holds at most maxDialsPerPeer attempts (and
// goroutines) at a time, however many channels want an uplink to it; the
// others wait in a queue and all are made in the end.
func TestManagerBoundsDialsPerPeer(t *testing.T) {
	m := newManager(t, &fakeEngine{}, Config{Peers: []string{"127.0.0.1:1"}, Backoff: time.Hour})
	var (
		mu             sync.Mutex
		inFlight, most int
		attempts       int
		release        = make(chan struct{})
	)
	m.dialFn = func(ctx context.Context, _ netip.AddrPort, _ string) (net.Conn, error) {
		mu.Lock()
		inFlight++
		attempts++
		most = max(most, inFlight)
		mu.Unlock()
		select {
		case <-release:
		case <-ctx.Done():
		}
		mu.Lock()
		inFlight--
		mu.Unlock()
		return nil, errors.New("no answer")
	}
	const channels = 200
	join, _ := codec.AppendFrame(nil, 1, codec.Triplet{UID: "u", Channel: "c"})
	for i := range channels {
		m.MemberJoined(newChannel(t, fmt.Sprintf("ch%d", i)), join)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := inFlight
		mu.Unlock()
		if n == maxDialsPerPeer {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d dials in flight, want %d", n, maxDialsPerPeer)
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	close(release)
	waitStats(t, m, "every channel's dial made and failed", func(s Stats) bool { return s.DialFailures == channels })
	mu.Lock()
	defer mu.Unlock()
	if most != maxDialsPerPeer || attempts != channels {
		t.Fatalf("at most %d dials at once (want %d), %d attempts (want %d)", most, maxDialsPerPeer, attempts, channels)
	}
}

// A first member's join message over maxKeptJoinMessage is not kept for the
// uplinks: the first connection joins with an empty message instead.
func TestManagerDoesNotKeepAHugeJoinMessage(t *testing.T) {
	e := &fakeEngine{}
	m := newManager(t, e, Config{Peers: []string{listenPeer(t)}, Keys: codec.KeyConfig{SharedKey: "k"}})
	big := make([]byte, maxKeptJoinMessage+1)
	join, _ := codec.AppendFrame(nil, codec.Key("k", "alice", "ch"), codec.Triplet{UID: "alice", Channel: "ch", Message: big})
	m.MemberJoined(newChannel(t, "ch"), join)
	waitStats(t, m, "up", func(s Stats) bool { return s.Up == 1 })
	m.mu.Lock()
	kept := len(m.chans["ch"].join)
	m.mu.Unlock()
	e.mu.Lock()
	defer e.mu.Unlock()
	tr, err := codec.DecodeTriplet(e.hellos[0][codec.HeaderLen:])
	if err != nil || len(tr.Message) != 0 || tr.UID != "alice" || kept > 100 {
		t.Fatalf("hello %+v (%v), %d bytes kept: want an empty join and no copy of the message", tr, err, kept)
	}
}

// A redial after a failure comes from the last connection's address when
// that is free, and from a fresh port when it is not.
func TestRedialReusesTheLastLocalAddressWhenFree(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	m := newManager(t, &fakeEngine{}, Config{Peers: []string{ln.Addr().String()}})
	// From an address of its own, so that no other connection of a busy
	// test machine takes the port in between.
	m.netDialer.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 77)}
	first, err := m.dialTCP(context.Background(), netip.AddrPort{}, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	m.netDialer.LocalAddr = nil
	from := addrPortOf(first.LocalAddr())
	first.(*net.TCPConn).SetLinger(0) // a reset: no TIME_WAIT left on the port
	first.Close()
	again, err := m.dialTCP(context.Background(), from, ln.Addr().String())
	if err != nil {
		t.Fatalf("redial from %v: %v", from, err)
	}
	if got := addrPortOf(again.LocalAddr()); got != from {
		t.Errorf("redial came from %v, want the last connection's %v", got, from)
	}
	again.Close()

	taken, err := net.Listen("tcp", "127.0.0.1:0") // a port that cannot be bound again
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	busy := addrPortOf(taken.Addr())
	fresh, err := m.dialTCP(context.Background(), busy, ln.Addr().String())
	if err != nil {
		t.Fatalf("redial from a taken address did not fall back to a fresh port: %v", err)
	}
	if got := addrPortOf(fresh.LocalAddr()); got == busy {
		t.Errorf("redial came from the taken address %v", got)
	}
	fresh.Close()
}
