package peering

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"testing"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/router"
)

// The public conformance vectors (made with the original's own libraries),
// shared with package codec.
type vectorFile struct {
	Vectors []struct {
		Kind   string          `json:"kind"`
		Name   string          `json:"name"`
		Input  json.RawMessage `json:"input"`
		Output json.RawMessage `json:"output"`
	} `json:"vectors"`
}

type keySource struct {
	SharedKey    *string `json:"shared_key"`
	LocalAddrStd *string `json:"local_addr_std"`
	AddrKey      *string `json:"addr_key"`
}

func (ks keySource) config() (codec.KeyConfig, netip.AddrPort) {
	var kc codec.KeyConfig
	var local netip.AddrPort
	if ks.SharedKey != nil {
		kc.SharedKey = *ks.SharedKey
	}
	if ks.AddrKey != nil {
		kc.AddrKey = *ks.AddrKey
	}
	if ks.LocalAddrStd != nil {
		local = netip.MustParseAddrPort(*ks.LocalAddrStd)
	}
	return kc, local
}

type frameInput struct {
	KeySource keySource `json:"key_source"`
	UID       string    `json:"uid"`
	Channel   string    `json:"channel"`
	Message   struct {
		Hex *string `json:"hex"`
	} `json:"message"`
}

func loadVectors(t *testing.T) vectorFile {
	t.Helper()
	b, err := os.ReadFile("../codec/testdata/mles-v1-vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var vf vectorFile
	if err := json.Unmarshal(b, &vf); err != nil {
		t.Fatal(err)
	}
	return vf
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// On its first connection without history, an uplink sends the first
// member's join frame rekeyed for itself: byte for byte the frame the
// original's client libraries make for the uplink's own address (or the
// shared key), whatever key the member's frame had.
func TestHelloRekeyedJoinMatchesVectors(t *testing.T) {
	n := 0
	for _, v := range loadVectors(t).Vectors {
		if v.Kind != "frame" {
			continue
		}
		var in frameInput
		var out struct {
			FrameHex *string `json:"frame_hex"`
			CIDHex   string  `json:"cid_hex"`
		}
		if err := json.Unmarshal(v.Input, &in); err != nil || json.Unmarshal(v.Output, &out) != nil {
			t.Fatalf("%s: %v", v.Name, err)
		}
		if out.FrameHex == nil || in.Message.Hex == nil {
			continue // summarised large vector
		}
		want := unhex(t, *out.FrameHex)
		t.Run(v.Name, func(t *testing.T) {
			tr := codec.Triplet{UID: in.UID, Channel: in.Channel, Message: unhex(t, *in.Message.Hex)}
			// The member joined from elsewhere, with its own key.
			memberJoin, err := codec.AppendFrame(nil, 0x1122334455667788, tr)
			if err != nil {
				t.Fatal(err)
			}
			kc, local := in.KeySource.config()
			key := kc.ClientKey(local, in.UID, in.Channel)
			got, err := hello(memberJoin, tr, key, codec.CIDOf(key), false, nil, quiet)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("hello\n got %x\nwant %x", got, want)
			}
			h, _ := codec.ParseHeader(got)
			if !bytes.Equal(got[4:8], got[12:16]) || h.CID != codec.CIDOf(h.Key) {
				t.Fatalf("CID %08x is not the low 32 bits of key %016x", h.CID, h.Key)
			}
		})
		n++
	}
	if n < 5 {
		t.Fatalf("only %d frame vectors checked", n)
	}
}

// With history, the uplink's first frame is a resync: the outer header has
// the uplink's key and CID; the first inner frame is its freshly keyed join
// (empty message) and the rest are the history frames byte for byte, in the
// original's ResyncMsg layout.
func TestHelloResyncMatchesVectors(t *testing.T) {
	n := 0
	for _, v := range loadVectors(t).Vectors {
		if v.Kind != "resync_msg" {
			continue
		}
		var in struct {
			Frames []frameInput `json:"frames"`
			Outer  frameInput   `json:"outer"`
		}
		var out struct {
			Frames []struct {
				FrameHex string `json:"frame_hex"`
			} `json:"frames"`
			CBORHex        string `json:"cbor_hex"`
			ResyncFrameHex string `json:"resync_frame_hex"`
		}
		if err := json.Unmarshal(v.Input, &in); err != nil || json.Unmarshal(v.Output, &out) != nil {
			t.Fatalf("%s: %v", v.Name, err)
		}
		if len(out.Frames) == 0 {
			continue // an empty history sends no resync
		}
		t.Run(v.Name, func(t *testing.T) {
			var hist []*router.Frame
			for _, f := range out.Frames {
				hist = append(hist, router.NewFrame(unhex(t, f.FrameHex)))
			}
			defer func() {
				for _, f := range hist {
					f.Release()
				}
			}()
			kc, local := in.Outer.KeySource.config()
			key := kc.ClientKey(local, in.Outer.UID, in.Outer.Channel)
			first := codec.Triplet{UID: in.Outer.UID, Channel: in.Outer.Channel, Message: []byte("presence")}
			memberJoin, _ := codec.AppendFrame(nil, 99, first)
			got, err := hello(memberJoin, first, key, codec.CIDOf(key), true, hist, quiet)
			if err != nil {
				t.Fatal(err)
			}
			wantOuter := unhex(t, out.ResyncFrameHex)
			if !bytes.Equal(got[4:16], wantOuter[4:16]) {
				t.Fatalf("outer CID and key %x, want %x", got[4:16], wantOuter[4:16])
			}
			h, err := codec.ParseHeader(got)
			if err != nil || h.Len != len(got)-codec.HeaderLen {
				t.Fatalf("outer header %+v (%v) for %d bytes", h, err, len(got))
			}
			inner, err := codec.DecodeResync(got[codec.HeaderLen:])
			if err != nil {
				t.Fatal(err)
			}
			wantJoin, _ := codec.AppendFrame(nil, key, codec.Triplet{UID: in.Outer.UID, Channel: in.Outer.Channel})
			if len(inner) != 1+len(out.Frames) || !bytes.Equal(inner[0], wantJoin) {
				t.Fatalf("inner[0] %x, want the fresh join %x (%d inner frames)", inner[0], wantJoin, len(inner))
			}
			for i, f := range out.Frames {
				if !bytes.Equal(inner[1+i], unhex(t, f.FrameHex)) {
					t.Fatalf("inner frame %d differs", i+1)
				}
			}
			// The same layout as the original's ResyncMsg: re-encoding the
			// history alone gives the vector's bytes.
			if re := codec.AppendResync(nil, inner[1:]); !bytes.Equal(re, unhex(t, out.CBORHex)) {
				t.Fatalf("ResyncMsg layout differs from the original's")
			}
		})
		n++
	}
	if n < 2 {
		t.Fatalf("only %d resync vectors checked", n)
	}
}

// On a reconnect without history the uplink sends a fresh empty join: the
// first member's message already went to the peer on the first connection.
// A static CID replaces the key's CID in every first frame.
func TestHelloReconnectAndStaticCID(t *testing.T) {
	first := codec.Triplet{UID: "alice", Channel: "ch", Message: []byte("hi")}
	join, _ := codec.AppendFrame(nil, 5, first)
	key := codec.Key("k", "alice", "ch")
	got, err := hello(join, first, key, 0x0badc0de, true, nil, quiet)
	if err != nil {
		t.Fatal(err)
	}
	h, _ := codec.ParseHeader(got)
	tr, err := codec.DecodeTriplet(got[codec.HeaderLen:])
	if err != nil || len(tr.Message) != 0 || tr.UID != "alice" || h.CID != 0x0badc0de || h.Key != key {
		t.Fatalf("reconnect hello %+v %+v (%v)", h, tr, err)
	}
	got, _ = hello(join, first, key, 0x0badc0de, false, nil, quiet)
	h, _ = codec.ParseHeader(got)
	if tr, _ := codec.DecodeTriplet(got[codec.HeaderLen:]); string(tr.Message) != "hi" || h.CID != 0x0badc0de || h.Key != key {
		t.Fatalf("first hello %+v %+v", h, tr)
	}
}

// A history too large for one frame loses its oldest frames, never the
// join, and the resync still fits the 24-bit length.
func TestHelloResyncTooLargeDropsOldest(t *testing.T) {
	first := codec.Triplet{UID: "alice", Channel: "ch"}
	join, _ := codec.AppendFrame(nil, 5, first)
	key := codec.Key("k", "alice", "ch")
	big := make([]byte, 6<<20)
	var hist []*router.Frame
	for i := range 4 { // 24 MiB of history
		big[0] = byte(i)
		f, _ := codec.AppendFrame(nil, key, codec.Triplet{UID: "alice", Channel: "ch", Message: big})
		hist = append(hist, router.NewFrame(f))
	}
	got, err := hello(join, first, key, codec.CIDOf(key), true, hist, quiet)
	if err != nil {
		t.Fatal(err)
	}
	h, err := codec.ParseHeader(got)
	if err != nil || h.Len > codec.MaxPayloadLen {
		t.Fatalf("header %+v %v", h, err)
	}
	inner, err := codec.DecodeResync(got[codec.HeaderLen:])
	if err != nil || len(inner) != 3 {
		t.Fatalf("%d inner frames (%v), want the join and the 2 newest", len(inner), err)
	}
	if !bytes.Equal(inner[1], hist[2].Bytes()) || !bytes.Equal(inner[2], hist[3].Bytes()) {
		t.Fatal("kept frames are not the newest, in order")
	}
}

func TestParsePeerAndCID(t *testing.T) {
	for in, want := range map[string]string{
		"example.org": "example.org:8077", "10.0.0.1:9000": "10.0.0.1:9000", "::1": "[::1]:8077",
		"[::1]": "[::1]:8077", "[fe80::1]:7000": "[fe80::1]:7000",
	} {
		if got, err := ParsePeer(in); err != nil || got != want {
			t.Errorf("ParsePeer(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "host:", "host:0", "host:99999", ":8077", "a:b:c]"} {
		if got, err := ParsePeer(bad); err == nil {
			t.Errorf("ParsePeer(%q) = %q, want an error", bad, got)
		}
	}
	if c, err := ParseCID("0x0badc0de"); err != nil || c != 0x0badc0de {
		t.Errorf("ParseCID: %x %v", c, err)
	}
	for _, bad := range []string{"", "0x", "123456789", "xyz"} {
		if _, err := ParseCID(bad); err == nil {
			t.Errorf("ParseCID(%q): want an error", bad)
		}
	}
}
