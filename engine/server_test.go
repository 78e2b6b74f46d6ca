package engine

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/router"
)

func TestTwoClientsExchangeFramesByteForByte(t *testing.T) {
	ts := startServer(t, Config{Keys: sharedKeys}, router.Config{HistoryLimit: router.Off})
	a := ts.join(t, sharedKeys, "alice", "general", nil)
	b := ts.join(t, sharedKeys, "bob", "general", nil)
	other := ts.join(t, sharedKeys, "carol", "elsewhere", nil)
	a.expect(b.frame(nil)) // b's join frame is forwarded to a
	for i := 0; i < 50; i++ {
		a.expect(b.send([]byte{byte(i), 'b'}))
		b.expect(a.send([]byte{byte(i), 'a'}))
	}
	other.expectNothing(200 * time.Millisecond)
	a.expectNothing(50 * time.Millisecond) // never echoed to the sender
}

// rawHeader builds a 16-byte header with any length, magic and key.
func rawHeader(magic byte, length int, key uint64) []byte {
	h := make([]byte, codec.HeaderLen)
	binary.BigEndian.PutUint32(h[0:4], uint32(magic)<<24|uint32(length))
	binary.BigEndian.PutUint32(h[4:8], uint32(key))
	binary.BigEndian.PutUint64(h[8:16], key)
	return h
}

func TestBadInputClosesOnlyThatConnectionAndIsLogged(t *testing.T) {
	ts := startServer(t, Config{Keys: sharedKeys, MaxFrame: 1000}, router.Config{HistoryLimit: 10})
	a := ts.join(t, sharedKeys, "alice", "ch", nil)
	b := ts.join(t, sharedKeys, "bob", "ch", nil)
	a.expect(b.frame(nil))

	good := codec.Triplet{UID: "mallory", Channel: "ch", Message: []byte("hi")}
	cases := []struct {
		name, reason string
		bytes        func(nc net.Conn) []byte
	}{
		{"wrong key", "wrong-key", func(net.Conn) []byte {
			f, _ := codec.AppendFrame(nil, codec.Key("not-the-key", "mallory", "ch"), good)
			return f
		}},
		{"garbage CBOR on the first frame", "bad-join-frame", func(net.Conn) []byte {
			return append(rawHeader('M', 5, 1), 0xff, 0x00, 0x13, 0x37, 0x42)
		}},
		{"first byte not M", "bad-magic", func(net.Conn) []byte {
			f, _ := codec.AppendFrame(nil, codec.Key(sharedKeys.SharedKey, "mallory", "ch"), good)
			f[0] = 'N'
			return f
		}},
		{"length zero", "zero-length", func(net.Conn) []byte { return rawHeader('M', 0, 1) }},
		{"first frame over --max-frame", "frame-too-large", func(net.Conn) []byte {
			return append(rawHeader('M', 1001, 1), make([]byte, 1001)...)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			nc := dialRaw(t, ts.addr)
			if _, err := nc.Write(tc.bytes(nc)); err != nil {
				t.Fatal(err)
			}
			expectClosed(t, nc)
			ts.log.waitFor(t, "reason="+tc.reason)
			// Others keep working.
			b.expect(a.send([]byte("still here " + tc.name)))
		})
	}
	t.Run("later frame over --max-frame", func(t *testing.T) {
		m := ts.join(t, sharedKeys, "mallory", "ch", nil)
		a.expect(m.frame(nil))
		b.expect(m.frame(nil))
		m.write(append(rawHeader('M', 1001, 1), make([]byte, 1001)...))
		expectClosed(t, m.nc)
		ts.log.waitFor(t, "reason=frame-too-large")
		a.expect(b.send([]byte("after")))
	})
	if got := ts.srv.Stats().ClosedByRule["wrong-key"]; got != 1 {
		t.Errorf("wrong-key closes counted %d, want 1", got)
	}
}

func TestKeys(t *testing.T) {
	type tc struct {
		name   string
		listen string
		dial   string // host to dial, "" = the server's
		keys   codec.KeyConfig
	}
	cases := []tc{
		{"shared key", "127.0.0.1:0", "", codec.KeyConfig{SharedKey: "s3cret"}},
		{"address key over IPv4", "127.0.0.1:0", "", codec.KeyConfig{}},
		{"address key over IPv6", "[::1]:0", "", codec.KeyConfig{}},
		{"address key, IPv4 client on dual-stack listener", "[::]:0", "127.0.0.1", codec.KeyConfig{}},
		{"address key, IPv6 client on dual-stack listener", "[::]:0", "::1", codec.KeyConfig{}},
		{"MLES_ADDR_KEY", "127.0.0.1:0", "", codec.KeyConfig{AddrKey: "addr-secret"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ts := startServer(t, Config{Listen: []string{c.listen}, Keys: c.keys}, router.Config{HistoryLimit: router.Off})
			addr := ts.addr
			if c.dial != "" {
				_, port, _ := net.SplitHostPort(ts.addr)
				addr = net.JoinHostPort(c.dial, port)
			}
			a := ts.joinAt(t, addr, c.keys, "alice", "ch", nil)
			b := ts.joinAt(t, addr, c.keys, "bob", "ch", nil)
			a.expect(b.frame(nil))
			b.expect(a.send([]byte("hello")))
			// The same join under a different key setting is refused.
			wrong := c.keys
			if wrong.SharedKey != "" {
				wrong.SharedKey = "other"
			} else {
				wrong.AddrKey += "x"
			}
			m := ts.joinAt(t, addr, wrong, "mallory", "ch", nil)
			expectClosed(t, m.nc)
			ts.log.waitFor(t, "reason=wrong-key")
		})
	}
}

func TestIPv4MappedAddressKeyAcceptedInBothForms(t *testing.T) {
	ts := startServer(t, Config{Listen: []string{"[::]:0"}}, router.Config{HistoryLimit: router.Off})
	_, port, _ := net.SplitHostPort(ts.addr)
	addr := net.JoinHostPort("127.0.0.1", port)
	// Mapped form: what an IPv6 socket using a mapped address would hash.
	nc := dialRaw(t, addr)
	local := localAddrPort(nc)
	mapped := netipAddrPortFrom(local.Addr().As16(), local.Port())
	key := codec.Key(codec.AddrString(mapped), "u", "ch")
	f, _ := codec.AppendFrame(nil, key, codec.Triplet{UID: "u", Channel: "ch"})
	if _, err := nc.Write(f); err != nil {
		t.Fatal(err)
	}
	ts.waitJoins(t, 1)
	b := ts.joinAt(t, addr, codec.KeyConfig{}, "v", "ch", nil)
	c := &client{t: t, nc: nc, r: newReader(nc), uid: "u", channel: "ch", key: key}
	c.expect(b.frame(nil)) // u is joined: it receives v's join
}

func TestDuplicateCIDIsClosedFirstKeepsWorking(t *testing.T) {
	ts := startServer(t, Config{Keys: sharedKeys}, router.Config{HistoryLimit: router.Off})
	a := ts.join(t, sharedKeys, "alice", "ch", nil)
	b := ts.join(t, sharedKeys, "bob", "ch", nil)
	a.expect(b.frame(nil))
	dup := ts.join(t, sharedKeys, "alice", "ch", nil) // same key → same CID
	expectClosed(t, dup.nc)
	ts.log.waitFor(t, "reason=duplicate-cid")
	b.expect(a.send([]byte("first alice still works")))
	a.expect(b.send([]byte("and hears bob")))
}

func TestHistory(t *testing.T) {
	t.Run("replayed in order before live frames, evicted at the limit, empty joins not kept", func(t *testing.T) {
		ts := startServer(t, Config{Keys: sharedKeys}, router.Config{HistoryLimit: 3})
		pub := ts.join(t, sharedKeys, "pub", "ch", nil) // empty join: not stored
		var sent [][]byte
		for i := 1; i <= 5; i++ {
			sent = append(sent, pub.send([]byte(fmt.Sprintf("m%d", i))))
		}
		time.Sleep(100 * time.Millisecond) // let the server take them in
		sub := ts.join(t, sharedKeys, "sub", "ch", nil)
		for _, f := range sent[2:] {
			sub.expect(f)
		}
		pub.expect(sub.frame(nil))
		live := pub.send([]byte("live"))
		sub.expect(live)
		// A second joiner gets m4, m5, live: sub's empty join was not stored.
		sub2 := ts.join(t, sharedKeys, "sub2", "ch", nil)
		sub2.expect(sent[3])
		sub2.expect(sent[4])
		sub2.expect(live)
		sub2.expectNothing(100 * time.Millisecond)
	})
	t.Run("join frame with a message is kept", func(t *testing.T) {
		ts := startServer(t, Config{Keys: sharedKeys}, router.Config{HistoryLimit: 10})
		pub := ts.join(t, sharedKeys, "pub", "ch", []byte("hello as I join"))
		time.Sleep(50 * time.Millisecond)
		sub := ts.join(t, sharedKeys, "sub", "ch", nil)
		sub.expect(pub.frame([]byte("hello as I join")))
	})
	t.Run("limit 0 keeps nothing", func(t *testing.T) {
		ts := startServer(t, Config{Keys: sharedKeys}, router.Config{HistoryLimit: router.Off})
		pub := ts.join(t, sharedKeys, "pub", "ch", []byte("first"))
		pub.send([]byte("second"))
		time.Sleep(50 * time.Millisecond)
		sub := ts.join(t, sharedKeys, "sub", "ch", nil)
		sub.expectNothing(200 * time.Millisecond)
		pub.expect(sub.frame(nil))
	})
}

func TestResyncMergesHistoryWithoutDuplicates(t *testing.T) {
	ts := startServer(t, Config{Keys: sharedKeys}, router.Config{HistoryLimit: 10})
	a := ts.join(t, sharedKeys, "alice", "ch", nil)
	m1 := a.send([]byte("m1"))
	m2 := a.send([]byte("m2"))
	time.Sleep(50 * time.Millisecond)

	// A peer reconnects with history it holds: m1 (already here) and m3 (new).
	nc := dialRaw(t, ts.addr)
	peerKey := sharedKeys.ClientKey(localAddrPort(nc), "peer", "ch")
	peerJoin, _ := codec.AppendFrame(nil, peerKey, codec.Triplet{UID: "peer", Channel: "ch"})
	other := codec.Key("s3", "carol", "ch")
	m3, _ := codec.AppendFrame(nil, other, codec.Triplet{UID: "carol", Channel: "ch", Message: []byte("m3")})
	payload := codec.AppendResync(nil, [][]byte{peerJoin, m1, m3})
	frame := append(codec.AppendHeader(nil, codec.Header{Len: len(payload), CID: codec.CIDOf(peerKey), Key: peerKey}), payload...)
	if _, err := nc.Write(frame); err != nil {
		t.Fatal(err)
	}
	peer := &client{t: t, nc: nc, r: newReader(nc), uid: "peer", channel: "ch", key: peerKey}
	peer.expect(m1) // the resyncing connection gets the history too
	peer.expect(m2)
	a.expect(peerJoin)
	a.expect(m3)
	a.expectNothing(150 * time.Millisecond) // m1 not forwarded again

	late := ts.join(t, sharedKeys, "late", "ch", nil)
	late.expect(m1)
	late.expect(m2)
	late.expect(m3)
	late.expectNothing(100 * time.Millisecond)
	// The resyncing connection is a member like any other.
	peer.expect(late.frame(nil))
	a.expect(late.frame(nil))
	late.expect(peer.send([]byte("from peer")))
}

func TestMalformedResyncIsClosed(t *testing.T) {
	ts := startServer(t, Config{Keys: sharedKeys}, router.Config{HistoryLimit: 10})
	nc := dialRaw(t, ts.addr)
	key := sharedKeys.ClientKey(localAddrPort(nc), "peer", "ch")
	j, _ := codec.AppendFrame(nil, key, codec.Triplet{UID: "peer", Channel: "ch"})
	payload := codec.AppendResync(nil, [][]byte{j, []byte("Mnot a frame")})
	frame := append(codec.AppendHeader(nil, codec.Header{Len: len(payload), CID: codec.CIDOf(key), Key: key}), payload...)
	nc.Write(frame)
	expectClosed(t, nc)
	ts.log.waitFor(t, "reason=bad-resync")
}

func TestFrameSizesAndSplits(t *testing.T) {
	ts := startServer(t, Config{Keys: sharedKeys}, router.Config{HistoryLimit: router.Off})
	a := ts.join(t, sharedKeys, "alice", "ch", nil)
	b := ts.join(t, sharedKeys, "bob", "ch", nil)
	a.expect(b.frame(nil))

	t.Run("1-byte and 0xFFFFFF-byte payloads", func(t *testing.T) {
		one := append(rawHeader('M', 1, 7), 0x42)
		a.write(one)
		b.expect(one)
		big := append(rawHeader('M', codec.MaxPayloadLen, 7), bytes.Repeat([]byte{0xa5}, codec.MaxPayloadLen)...)
		for i := range big[codec.HeaderLen:] {
			big[codec.HeaderLen+i] = byte(i * 7)
		}
		go a.write(big)
		got, err := b.readFrame(30 * time.Second)
		if err != nil || !bytes.Equal(got, big) {
			t.Fatalf("16 MiB frame: err=%v equal=%v", err, bytes.Equal(got, big))
		}
	})
	t.Run("one byte per write", func(t *testing.T) {
		c := &client{t: t, uid: "carol", channel: "ch"}
		c.nc = dialRaw(t, ts.addr)
		c.r = newReader(c.nc)
		c.key = sharedKeys.ClientKey(localAddrPort(c.nc), "carol", "ch")
		stream := c.frame(nil)
		var frames [][]byte
		for i := 0; i < 3; i++ {
			f := c.frame([]byte(fmt.Sprintf("dripped %d", i)))
			frames = append(frames, f)
			stream = append(stream, f...)
		}
		for i := range stream {
			c.write(stream[i : i+1])
			time.Sleep(time.Millisecond / 4)
		}
		a.expect(c.frame(nil))
		b.expect(c.frame(nil))
		for _, f := range frames {
			a.expect(f)
			b.expect(f)
		}
	})
	t.Run("1000 frames in one write", func(t *testing.T) {
		var stream []byte
		var frames [][]byte
		for i := 0; i < 1000; i++ {
			f := a.frame([]byte(fmt.Sprintf("burst %04d", i)))
			frames = append(frames, f)
			stream = append(stream, f...)
		}
		a.write(stream)
		for _, f := range frames {
			b.expect(f)
		}
	})
}

func TestUsageErrorsAreClear(t *testing.T) {
	if _, _, err := splitListen("nonsense"); err == nil || !strings.Contains(err.Error(), "nonsense") {
		t.Fatalf("splitListen error = %v", err)
	}
	if host, _, _ := splitListen(":8077"); host != "::" {
		t.Fatalf("empty host is dual stack [::], got %q", host)
	}
}
