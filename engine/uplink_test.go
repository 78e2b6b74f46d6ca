package engine

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/router"
	"github.com/mlesd/mlesd/upgrade"
)

// fakeUplink is an engine.Uplink whose Hello is a fixed frame; it records
// what the engine told it.
type fakeUplink struct {
	channel string
	cid     uint32
	dupKey  uint64
	hello   []byte

	seen     router.SeenLog
	mu       sync.Mutex
	hist     [][]byte
	local    netip.AddrPort
	closeFn  func()
	down     chan string
	received uint64
}

func (u *fakeUplink) Channel() string { return u.channel }
func (u *fakeUplink) CID() uint32     { return u.cid }
func (u *fakeUplink) DupKey() uint64  { return u.dupKey }
func (u *fakeUplink) Hello(local netip.AddrPort, hist []*router.Frame) ([]byte, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.local = local
	for _, f := range hist {
		u.hist = append(u.hist, append([]byte(nil), f.Bytes()...))
	}
	return u.hello, nil
}
func (u *fakeUplink) Seen() *router.SeenLog { return &u.seen }
func (u *fakeUplink) Peer() string          { return "peer:1" } // as peering's: a handover exports it
func (u *fakeUplink) Up(closeFn func())     { u.mu.Lock(); u.closeFn = closeFn; u.mu.Unlock() }
func (u *fakeUplink) Down(reason string, err error, received uint64) {
	u.mu.Lock()
	u.received = received
	u.mu.Unlock()
	u.down <- reason
}

// openUplink makes an uplink of channel "ch" with the given CID and DupKey
// and connects it (connectUplink).
func openUplink(t *testing.T, ts *testServer, cid uint32, dupKey uint64) (*fakeUplink, *client) {
	t.Helper()
	hello, _ := codec.AppendFrame(nil, 7, codec.Triplet{UID: "alice", Channel: "ch"})
	u := &fakeUplink{channel: "ch", cid: cid, dupKey: dupKey, hello: hello, down: make(chan string, 1)}
	return u, connectUplink(t, ts, u)
}

// connectUplink dials a fake peer listening on loopback, hands the
// connection to ts as the uplink u (a reconnect when u was connected
// before: its Seen log carries over, as in the peering package) and returns
// the peer's side, which has already read the Hello.
func connectUplink(t *testing.T, ts *testServer, u *fakeUplink) *client {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	pc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	peer := &client{t: t, nc: pc, r: bufio.NewReader(pc), uid: "peer-side", channel: "ch", key: 42}
	if err := ts.srv.AdoptUplink(nc, localAddrPort(nc), nc.RemoteAddr().(*net.TCPAddr).AddrPort(), u); err != nil {
		t.Fatal(err)
	}
	peer.expect(u.hello)
	return peer
}

// An uplink gets the channel's history (taken as it joins) for its Hello,
// which the peer receives first; then members' frames go up, the peer's
// frames come down to every member and never back up, and frames the peer
// replays that the server already holds are not forwarded again.
func TestUplinkHelloLiveFramesAndReplaySkip(t *testing.T) {
	ts := startServer(t, Config{Keys: sharedKeys}, router.Config{HistoryLimit: 10})
	a := ts.join(t, sharedKeys, "alice", "ch", nil)
	b := ts.join(t, sharedKeys, "bob", "ch", nil)
	a.expect(b.frame(nil))
	f1 := a.send([]byte("one"))
	f2 := a.send([]byte("two"))
	b.expect(f1)
	b.expect(f2)

	u, peer := openUplink(t, ts, codec.CIDOf(a.key), 1<<32|uint64(codec.CIDOf(a.key)))
	u.mu.Lock()
	if len(u.hist) != 2 || !bytes.Equal(u.hist[0], f1) || !bytes.Equal(u.hist[1], f2) {
		t.Fatalf("Hello got history %d frames, want [one two]", len(u.hist))
	}
	if want := peer.nc.RemoteAddr().(*net.TCPAddr).AddrPort(); u.local != want {
		t.Fatalf("Hello got local %v, want the uplink socket's %v", u.local, want)
	}
	u.mu.Unlock()

	// Live: a member's frame goes up.
	f3 := b.send([]byte("three"))
	a.expect(f3)
	peer.expect(f3)

	// The peer replays its history (f1 and f2, held here) then a new frame.
	remote := &client{t: t, uid: "carol", channel: "ch", key: codec.Key("test-key", "carol", "ch")}
	g := remote.frame([]byte("from the peer"))
	peer.write(append(append(append([]byte(nil), f1...), f2...), g...))
	a.expect(g) // f1 and f2 were not forwarded again
	b.expect(g)
	peer.expectNothing(200 * time.Millisecond) // not echoed up
	a.expectNothing(50 * time.Millisecond)

	// Closing the uplink (the peering package's linger) ends it with Down.
	u.mu.Lock()
	closeFn := u.closeFn
	u.mu.Unlock()
	closeFn()
	select {
	case <-u.down:
	case <-time.After(5 * time.Second):
		t.Fatal("Down not called after close")
	}
	expectClosed(t, peer.nc)
	u.mu.Lock()
	if u.received != 3 {
		t.Errorf("Down got received=%d, want 3", u.received)
	}
	u.mu.Unlock()
}

// Frames the peer sends that equal held ones are skipped only within the
// replay window: the history limit, at least the default 100 (the most a
// peer with default settings replays) frames after the uplink joined.
func TestUplinkReplayWindowIsBounded(t *testing.T) {
	ts := startServer(t, Config{Keys: sharedKeys}, router.Config{HistoryLimit: 2})
	a := ts.join(t, sharedKeys, "alice", "ch", nil)
	f1 := a.send([]byte("one"))

	_, peer := openUplink(t, ts, 1, 1<<32)
	remote := &client{t: t, uid: "carol", channel: "ch", key: codec.Key("test-key", "carol", "ch")}
	var news [][]byte
	var burst []byte
	for i := range router.DefaultHistoryLimit {
		f := remote.frame([]byte("new " + itoa(i)))
		news = append(news, f)
		burst = append(burst, f...)
	}
	// 100 new frames fill the window; then f1 is live traffic again.
	peer.write(append(burst, f1...))
	for _, f := range news {
		a.expect(f)
	}
	a.expect(f1)
}

// With no history here, what crossed the uplink before a reconnect is still
// recognised when the peer replays it: the uplink's log of crossed frames
// (both ways) outlives its connections.
func TestUplinkRecognisesReplayAcrossReconnectsWithoutHistory(t *testing.T) {
	ts := startServer(t, Config{Keys: sharedKeys}, router.Config{HistoryLimit: router.Off})
	a := ts.join(t, sharedKeys, "alice", "ch", nil)
	u, peer := openUplink(t, ts, 1, 1<<32)
	up := a.send([]byte("went up"))
	peer.expect(up)
	remote := &client{t: t, uid: "carol", channel: "ch", key: codec.Key("test-key", "carol", "ch")}
	down := remote.frame([]byte("came down"))
	peer.write(down)
	a.expect(down)

	// The peer drops the link; the same Uplink reconnects.
	peer.nc.Close()
	<-u.down
	peer2 := connectUplink(t, ts, u)
	// The peer replays its history (both frames), then a new one.
	fresh := remote.frame([]byte("new after the reconnect"))
	peer2.write(append(append(append([]byte(nil), up...), down...), fresh...))
	a.expect(fresh) // up and down were not forwarded again
	a.expectNothing(100 * time.Millisecond)
}

// An uplink handed over within its replay window, the peer's replay half
// down: the new server skips the rest of the replay, as the old one would
// have (same log key, same fingerprints), and forwards what is new.
func TestAnUplinkHandedOverMidReplaySkipsTheRestOfIt(t *testing.T) {
	old := startServer(t, Config{Keys: sharedKeys}, router.Config{HistoryLimit: router.Off})
	nw := startServer(t, Config{Keys: sharedKeys}, router.Config{HistoryLimit: router.Off})
	a := old.join(t, sharedKeys, "alice", "ch", nil)
	u, peer := openUplink(t, old, 1, 1<<32)
	remote := &client{t: t, uid: "carol", channel: "ch", key: codec.Key("test-key", "carol", "ch")}
	var crossed [][]byte
	for i := range 3 {
		f := remote.frame(fmt.Appendf(nil, "crossed %d", i))
		peer.write(f)
		a.expect(f)
		crossed = append(crossed, f)
	}
	// The link drops and comes back; the peer replays the first frame, then
	// a new one (which shows the first was skipped, not lost in flight).
	peer.nc.Close()
	<-u.down
	peer2 := connectUplink(t, old, u)
	fresh := remote.frame([]byte("new after the reconnect"))
	peer2.write(append(append([]byte(nil), crossed[0]...), fresh...))
	a.expect(fresh)

	if err := old.srv.Freeze(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	ex, err := old.srv.Export(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var st *upgrade.UplinkState
	for _, m := range ex.Conns {
		if m.State.Uplink != nil {
			st = m.State.Uplink
		}
	}
	if st == nil || st.ReplayLeft == 0 || len(st.Replay) != 2 || len(st.Seen) == 0 {
		t.Fatalf("the uplink's exported state %+v: want its log and the 2 frames of the replay it still expects", st)
	}
	adopted := &fakeUplink{channel: "ch", cid: 1, dupKey: 1 << 32, hello: u.hello, down: make(chan string, 1)}
	adopt := func(moved []MovedUplink) []Uplink { return []Uplink{adopted} }
	if n := handOver(t, old, nw, ex, adopt); n != 2 {
		t.Fatalf("imported %d of 2", n)
	}
	// The rest of the replay comes down to the new server, then a new frame.
	after := remote.frame([]byte("new after the handover"))
	peer2.write(append(append(append([]byte(nil), crossed[1]...), crossed[2]...), after...))
	a.expect(after)
	a.expectNothing(100 * time.Millisecond)
}

// A static group CID held by an uplink refuses a joiner with that CID; an
// uplink's own join is never refused.
func TestUplinkWithStaticCIDRefusesGroupJoiners(t *testing.T) {
	ts := startServer(t, Config{Keys: sharedKeys}, router.Config{HistoryLimit: router.Off})
	a := ts.join(t, sharedKeys, "alice", "ch", nil)
	const group = 0x0badc0de
	u, _ := openUplink(t, ts, group, group)

	// Another group member's uplink joins here with the group CID: refused.
	other := dialRaw(t, ts.addr)
	key := codec.Key("test-key", "dave", "ch")
	jf := codec.AppendHeader(nil, codec.Header{Len: codec.TripletLen(codec.Triplet{UID: "dave", Channel: "ch"}), CID: group, Key: key})
	jf = codec.AppendTriplet(jf, codec.Triplet{UID: "dave", Channel: "ch"})
	if _, err := other.Write(jf); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, other)
	ts.log.waitFor(t, "duplicate-cid")

	// Once the uplink is gone, the group CID is free again.
	u.mu.Lock()
	u.closeFn()
	u.mu.Unlock()
	<-u.down
	c2 := dialRaw(t, ts.addr)
	if _, err := c2.Write(jf); err != nil {
		t.Fatal(err)
	}
	a.expect(jf)
}

// An uplink that comes back to its own server (a --peer naming this server)
// is refused even when its key and CID are valid, as with address keys.
func TestUplinkToItselfIsRefused(t *testing.T) {
	keys := codec.KeyConfig{} // address keys: the CID changes per hop, so only this check stops the loop
	ts := startServer(t, Config{Keys: keys}, router.Config{HistoryLimit: router.Off})
	a := ts.join(t, keys, "alice", "ch", nil)
	nc, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	key := keys.ClientKey(localAddrPort(nc), "alice", "ch")
	hello, _ := codec.AppendFrame(nil, key, codec.Triplet{UID: "alice", Channel: "ch"})
	u := &fakeUplink{channel: "ch", cid: codec.CIDOf(key), dupKey: 1<<32 | uint64(codec.CIDOf(key)), hello: hello,
		down: make(chan string, 1)}
	if err := ts.srv.AdoptUplink(nc, localAddrPort(nc), nc.RemoteAddr().(*net.TCPAddr).AddrPort(), u); err != nil {
		t.Fatal(err)
	}
	select {
	case <-u.down:
	case <-time.After(5 * time.Second):
		t.Fatal("the uplink to itself was not closed")
	}
	ts.log.waitFor(t, "peer-is-self")
	a.expectNothing(200 * time.Millisecond)
	a2 := ts.join(t, keys, "bob", "ch", nil)
	a.expect(a2.frame(nil))
}

// Garbage coming down an uplink closes the uplink (its owner redials), like
// any connection's, and reaches no member.
func TestGarbageFromThePeerClosesTheUplink(t *testing.T) {
	ts := startServer(t, Config{Keys: sharedKeys}, router.Config{HistoryLimit: 10})
	a := ts.join(t, sharedKeys, "alice", "ch", nil)
	u, peer := openUplink(t, ts, 1, 1<<32)
	peer.write([]byte("GET / HTTP/1.1\r\n\r\n"))
	select {
	case reason := <-u.down:
		if reason != "bad-magic" {
			t.Fatalf("Down reason %q, want bad-magic", reason)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("uplink not closed after garbage")
	}
	a.expectNothing(100 * time.Millisecond)
	b := ts.join(t, sharedKeys, "bob", "ch", nil)
	a.expect(b.frame(nil))
}
