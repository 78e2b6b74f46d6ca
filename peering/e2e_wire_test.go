package peering_test

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/internal/mlestest"
)

// rawPeer accepts uplinks and reads what mlesd sends them, as the
// original server would see it.
type rawPeer struct {
	ln    net.Listener
	conns chan net.Conn
}

func startRawPeer(t *testing.T) *rawPeer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &rawPeer{ln: ln, conns: make(chan net.Conn, 16)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(p.conns)
				return
			}
			p.conns <- c
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		for c := range p.conns {
			c.Close()
		}
	})
	return p
}

// next waits for the next uplink and reads its first frame.
func (p *rawPeer) next(t *testing.T) (net.Conn, []byte) {
	t.Helper()
	select {
	case c := <-p.conns:
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		r := bufio.NewReader(c)
		hdr := make([]byte, codec.HeaderLen)
		if _, err := io.ReadFull(r, hdr); err != nil {
			t.Fatal(err)
		}
		h, err := codec.ParseHeader(hdr)
		if err != nil {
			t.Fatalf("uplink's first header %x: %v", hdr, err)
		}
		f := append(hdr, make([]byte, h.Len)...)
		if _, err := io.ReadFull(r, f[codec.HeaderLen:]); err != nil {
			t.Fatal(err)
		}
		return c, f
	case <-time.After(10 * time.Second):
		t.Fatal("no uplink dialled the peer")
	}
	return nil, nil
}

// checkJoin requires f to be a join frame for (uid, ch) that a Mles server
// with keys accepts from the uplink's address, with the CID the original
// writes (the key's low 32 bits) or the static one; it returns the triplet.
func checkJoin(t *testing.T, f []byte, keys codec.KeyConfig, from net.Conn, uid, ch string, static uint32) codec.Triplet {
	t.Helper()
	h, err := codec.ParseHeader(f)
	if err != nil || h.Len != len(f)-codec.HeaderLen {
		t.Fatalf("join header %+v (%v) for %d bytes", h, err, len(f))
	}
	tr, err := codec.DecodeTriplet(f[codec.HeaderLen:])
	if err != nil || tr.UID != uid || tr.Channel != ch {
		t.Fatalf("join triplet %+v (%v), want uid %q channel %q", tr, err, uid, ch)
	}
	if enc := codec.AppendTriplet(nil, tr); !bytes.Equal(enc, f[codec.HeaderLen:]) {
		t.Fatalf("triplet bytes are not the original's encoding:\n got %x\nwant %x", f[codec.HeaderLen:], enc)
	}
	remote := from.RemoteAddr().(*net.TCPAddr).AddrPort()
	if !keys.Accepts(h.Key, remote, uid, ch) {
		t.Fatalf("key %016x is not accepted from %v for (%s, %s)", h.Key, remote, uid, ch)
	}
	want := codec.CIDOf(h.Key)
	if static != 0 {
		want = static
	}
	if h.CID != want {
		t.Fatalf("CID %08x, want %08x", h.CID, want)
	}
	return tr
}

// checkResync requires f to be a resync whose first inner frame is the
// uplink's fresh join (empty message) under the outer header's CID and key,
// in the original's ResyncMsg layout, followed by want byte for byte.
func checkResync(t *testing.T, f []byte, keys codec.KeyConfig, from net.Conn, static uint32, want ...[]byte) {
	t.Helper()
	entries, err := codec.DecodeResync(f[codec.HeaderLen:])
	if err != nil {
		t.Fatalf("not a resync: %v", err)
	}
	if re := codec.AppendResync(nil, entries); !bytes.Equal(re, f[codec.HeaderLen:]) {
		t.Fatal("resync bytes are not the original's ResyncMsg layout")
	}
	if tr := checkJoin(t, entries[0], keys, from, "alice", "wire", static); len(tr.Message) != 0 {
		t.Fatalf("resync's first inner frame has message %q, want a fresh empty join", tr.Message)
	}
	oh, _ := codec.ParseHeader(f)
	ih, _ := codec.ParseHeader(entries[0])
	if oh.Key != ih.Key || oh.CID != ih.CID || oh.Len != len(f)-codec.HeaderLen {
		t.Fatalf("outer header %+v does not carry the inner join's CID and key (%08x/%016x)", oh, ih.CID, ih.Key)
	}
	if len(entries) != 1+len(want) {
		t.Fatalf("resync carries %d frames after the join, want %d", len(entries)-1, len(want))
	}
	for i, w := range want {
		if !bytes.Equal(entries[1+i], w) {
			t.Fatalf("resync frame %d is not the member's frame byte for byte", i+1)
		}
	}
}

// What a real mlesd uplink puts on the wire, read by a raw peer, under each
// key setting. With history (the default) the first frame is a resync of
// the history: the uplink's fresh join, then the members' frames as they
// sent them; after the peer drops the link, the reconnect resyncs again with
// everything since. Without history the first frame is the first member's
// join (message kept) rekeyed for the uplink, and a reconnect sends a fresh
// empty join (the message was delivered once). Members' frames go up byte
// for byte.
func TestPeeringUplinkWireFormat(t *testing.T) {
	for _, tc := range []struct {
		name   string
		env    []string
		keys   codec.KeyConfig
		args   []string
		static uint32
	}{
		{"shared key", sharedEnv, codec.KeyConfig{SharedKey: sharedKey}, nil, 0},
		{"address keys", addrEnv, codec.KeyConfig{}, nil, 0},
		{"address keys with MLES_ADDR_KEY", []string{"MLES_KEY=", "MLESD_KEY=", "MLES_ADDR_KEY=s3cret"},
			codec.KeyConfig{AddrKey: "s3cret"}, nil, 0},
		{"static CID", sharedEnv, codec.KeyConfig{SharedKey: sharedKey}, []string{"--cid", "0badc0de"}, 0x0badc0de},
	} {
		for _, history := range []bool{true, false} {
			name := tc.name + ", history"
			if !history {
				name = tc.name + ", no history"
			}
			t.Run(name, func(t *testing.T) {
				peer := startRawPeer(t)
				args := append([]string{"--peer", peer.ln.Addr().String()}, tc.args...)
				if !history {
					args = append(args, "--history-limit", "0")
				}
				A := startServer(t, "A", tc.env, args...)
				// alice joins with a presence message (as the browser client does).
				nc := mlestest.Dial(t, A.Addr)
				ap := nc.LocalAddr().(*net.TCPAddr).AddrPort()
				alice := &mlestest.Client{NC: nc, R: bufio.NewReader(nc), UID: "alice", Ch: "wire",
					Key: tc.keys.ClientKey(ap, "alice", "wire")}
				aliceJoin := append([]byte(nil), alice.Frame([]byte("presence"))...)
				if _, err := nc.Write(aliceJoin); err != nil {
					t.Fatal(err)
				}

				up, first := peer.next(t)
				if history {
					checkResync(t, first, tc.keys, up, tc.static, aliceJoin)
				} else if tr := checkJoin(t, first, tc.keys, up, "alice", "wire", tc.static); string(tr.Message) != "presence" {
					t.Fatalf("first uplink frame's message %q, want the first member's %q", tr.Message, "presence")
				}
				if err := alice.Send([]byte("live")); err != nil {
					t.Fatal(err)
				}
				live := append([]byte(nil), alice.Frame([]byte("live"))...)
				got := make([]byte, len(live))
				if _, err := io.ReadFull(up, got); err != nil || !bytes.Equal(got, live) {
					t.Fatalf("live frame up the uplink %x (%v), want alice's bytes %x", got, err, live)
				}

				up.Close() // the peer drops the link
				up2, again := peer.next(t)
				if history {
					checkResync(t, again, tc.keys, up2, tc.static, aliceJoin, live)
				} else if tr := checkJoin(t, again, tc.keys, up2, "alice", "wire", tc.static); len(tr.Message) != 0 {
					t.Fatalf("reconnect's join has message %q, want a fresh empty join", tr.Message)
				}
			})
		}
	}
}
