package codec

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"strconv"
	"testing"
)

type vectorFile struct {
	Format        string         `json:"format"`
	FormatVersion int            `json:"format_version"`
	Count         int            `json:"count"`
	Counts        map[string]int `json:"counts"`
	Vectors       []vector       `json:"vectors"`
}

type vector struct {
	Kind   string          `json:"kind"`
	Name   string          `json:"name"`
	Input  json.RawMessage `json:"input"`
	Output json.RawMessage `json:"output"`
}

// msgInput is a byte-string input in one of its three forms.
type msgInput struct {
	Hex     *string `json:"hex"`
	Pattern string  `json:"pattern"`
	Modulus int     `json:"modulus"`
	Byte    int     `json:"byte"`
	Len     int     `json:"len"`
	SHA256  string  `json:"sha256"`
}

func (m msgInput) bytes(t *testing.T) []byte {
	t.Helper()
	var b []byte
	switch {
	case m.Hex != nil:
		b = mustHex(t, *m.Hex)
	case m.Pattern == "mod":
		b = make([]byte, m.Len)
		for i := range b {
			b[i] = byte(i % m.Modulus)
		}
	case m.Pattern == "fill":
		b = bytes.Repeat([]byte{byte(m.Byte)}, m.Len)
	default:
		t.Fatalf("unknown message form %+v", m)
	}
	if len(b) != m.Len {
		t.Fatalf("message len %d, want %d", len(b), m.Len)
	}
	if m.SHA256 != "" {
		if got := sha256.Sum256(b); hex.EncodeToString(got[:]) != m.SHA256 {
			t.Fatalf("message sha256 mismatch")
		}
	}
	return b
}

type keySource struct {
	SharedKey    *string `json:"shared_key"`
	LocalAddr    *string `json:"local_addr"`
	LocalAddrStd *string `json:"local_addr_std"`
	AddrKey      *string `json:"addr_key"`
}

func (ks keySource) config() KeyConfig {
	var kc KeyConfig
	if ks.SharedKey != nil {
		kc.SharedKey = *ks.SharedKey
	}
	if ks.AddrKey != nil {
		kc.AddrKey = *ks.AddrKey
	}
	return kc
}

// clientKey computes the key via KeyConfig.ClientKey, and checks that the
// address string form matches local_addr.
func (ks keySource) clientKey(t *testing.T, uid, channel string) uint64 {
	t.Helper()
	var local netip.AddrPort
	if ks.LocalAddrStd != nil {
		var err error
		local, err = netip.ParseAddrPort(*ks.LocalAddrStd)
		if err != nil {
			t.Fatalf("local_addr_std: %v", err)
		}
		if ks.LocalAddr == nil || AddrString(local) != *ks.LocalAddr {
			t.Errorf("AddrString(%v) = %q, want %v", local, AddrString(local), ks.LocalAddr)
		}
	}
	kc := ks.config()
	k := kc.ClientKey(local, uid, channel)
	// The server side must accept what the client computed.
	if !kc.Accepts(k, local, uid, channel) {
		t.Errorf("Accepts rejects the client's own key")
	}
	if kc.Accepts(k^1, local, uid, channel) {
		t.Errorf("Accepts accepts a wrong key")
	}
	return k
}

type frameInput struct {
	KeySource keySource `json:"key_source"`
	UID       string    `json:"uid"`
	Channel   string    `json:"channel"`
	Message   msgInput  `json:"message"`
}

// checkBytes compares got with an output field X given as X_hex, or
// summarised as X_len/X_sha256/X_head_hex/X_tail_hex.
func checkBytes(t *testing.T, out map[string]json.RawMessage, name string, got []byte) {
	t.Helper()
	var n int
	if raw, ok := out[name+"_len"]; ok {
		if err := json.Unmarshal(raw, &n); err != nil {
			t.Fatal(err)
		}
		if len(got) != n {
			t.Errorf("%s: len %d, want %d", name, len(got), n)
		}
	}
	if raw, ok := out[name+"_hex"]; ok {
		if want := mustHex(t, jsonString(t, raw)); !bytes.Equal(got, want) {
			t.Errorf("%s:\n got %x\nwant %x", name, got, want)
		}
		return
	}
	raw, ok := out[name+"_sha256"]
	if !ok {
		t.Fatalf("%s: neither _hex nor _sha256 in output", name)
	}
	if sum := sha256.Sum256(got); hex.EncodeToString(sum[:]) != jsonString(t, raw) {
		t.Errorf("%s: sha256 mismatch", name)
	}
	if raw, ok := out[name+"_head_hex"]; ok {
		want := mustHex(t, jsonString(t, raw))
		if !bytes.HasPrefix(got, want) {
			t.Errorf("%s: head mismatch", name)
		}
	}
	if raw, ok := out[name+"_tail_hex"]; ok {
		want := mustHex(t, jsonString(t, raw))
		if !bytes.HasSuffix(got, want) {
			t.Errorf("%s: tail mismatch", name)
		}
	}
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad hex %q: %v", s, err)
	}
	return b
}

func jsonString(t *testing.T, raw json.RawMessage) string {
	t.Helper()
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

func mustUnmarshal(t *testing.T, raw json.RawMessage, v any) {
	t.Helper()
	if err := json.Unmarshal(raw, v); err != nil {
		t.Fatal(err)
	}
}

func loadVectors(t testing.TB) vectorFile {
	t.Helper()
	data, err := os.ReadFile("testdata/mles-v1-vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var vf vectorFile
	if err := json.Unmarshal(data, &vf); err != nil {
		t.Fatal(err)
	}
	if vf.Format != "mles-v1-vectors" || vf.FormatVersion != 1 {
		t.Fatalf("unexpected vector file format %q v%d", vf.Format, vf.FormatVersion)
	}
	if len(vf.Vectors) != vf.Count {
		t.Fatalf("file says %d vectors, holds %d", vf.Count, len(vf.Vectors))
	}
	return vf
}

func checkKeyOutputs(t *testing.T, out map[string]json.RawMessage, key uint64) {
	t.Helper()
	if got, want := hex.EncodeToString(be64(key)), jsonString(t, out["key_hex"]); got != want {
		t.Errorf("key_hex %s, want %s", got, want)
	}
	if got, want := strconv.FormatUint(key, 10), jsonString(t, out["key_u64"]); got != want {
		t.Errorf("key_u64 %s, want %s", got, want)
	}
	checkCID(t, out, CIDOf(key))
}

func checkCID(t *testing.T, out map[string]json.RawMessage, cid uint32) {
	t.Helper()
	if got, want := hex.EncodeToString(be32(cid)), jsonString(t, out["cid_hex"]); got != want {
		t.Errorf("cid_hex %s, want %s", got, want)
	}
	var u uint32
	mustUnmarshal(t, out["cid_u32"], &u)
	if cid != u {
		t.Errorf("cid_u32 %d, want %d", cid, u)
	}
}

func be64(v uint64) []byte {
	return []byte{byte(v >> 56), byte(v >> 48), byte(v >> 40), byte(v >> 32), byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}
}

func be32(v uint32) []byte { return []byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)} }

// checkFrame builds the frame of fi, checks it against out, and returns it.
func checkFrame(t *testing.T, fi frameInput, out map[string]json.RawMessage) []byte {
	t.Helper()
	key := fi.KeySource.clientKey(t, fi.UID, fi.Channel)
	tr := Triplet{UID: fi.UID, Channel: fi.Channel, Message: fi.Message.bytes(t)}
	if _, ok := out["key_hex"]; ok {
		checkKeyOutputs(t, out, key)
	}
	if raw, ok := out["key_strings"]; ok {
		var strs []string
		mustUnmarshal(t, raw, &strs)
		if k := Key(strs...); k != key {
			t.Errorf("Key(key_strings) = %016x, ClientKey = %016x", k, key)
		}
	}
	frame, err := AppendFrame(nil, key, tr)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := out["cbor_len"]; ok {
		checkBytes(t, out, "cbor", frame[HeaderLen:])
	}
	if raw, ok := out["header_hex"]; ok {
		if want := mustHex(t, jsonString(t, raw)); !bytes.Equal(frame[:HeaderLen], want) {
			t.Errorf("header %x, want %x", frame[:HeaderLen], want)
		}
	}
	checkBytes(t, out, "frame", frame)
	h, err := ParseHeader(frame)
	if err != nil || h.Len != len(frame)-HeaderLen || h.Key != key || h.CID != CIDOf(key) {
		t.Errorf("ParseHeader(frame) = %+v, %v", h, err)
	}
	back, err := DecodeTriplet(frame[HeaderLen:])
	if err != nil || !tripletEqual(back, tr) {
		t.Errorf("DecodeTriplet(frame payload) = %+v, %v", back, err)
	}
	return frame
}

func tripletEqual(a, b Triplet) bool {
	return a.UID == b.UID && a.Channel == b.Channel && bytes.Equal(a.Message, b.Message)
}

func TestConformanceVectors(t *testing.T) {
	vf := loadVectors(t)
	checked := map[string]int{}
	for _, v := range vf.Vectors {
		var out map[string]json.RawMessage
		if err := json.Unmarshal(v.Output, &out); err != nil {
			t.Fatal(err)
		}
		ok := t.Run(v.Kind+"/"+v.Name, func(t *testing.T) {
			switch v.Kind {
			case "addr_string":
				checkAddrString(t, v.Input, out)
			case "siphash_key":
				var in struct {
					Strings []string `json:"strings"`
				}
				mustUnmarshal(t, v.Input, &in)
				var input []byte
				for _, s := range in.Strings {
					input = append(append(input, s...), 0xFF)
				}
				if want := jsonString(t, out["hash_input_hex"]); hex.EncodeToString(input) != want {
					t.Errorf("hash input %x, want %s", input, want)
				}
				checkKeyOutputs(t, out, Key(in.Strings...))
			case "cid":
				var in struct {
					KeyHex string `json:"key_hex"`
					KeyU64 string `json:"key_u64"`
				}
				mustUnmarshal(t, v.Input, &in)
				key, err := strconv.ParseUint(in.KeyU64, 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				if hex.EncodeToString(be64(key)) != in.KeyHex {
					t.Fatalf("input key_hex/key_u64 disagree")
				}
				checkCID(t, out, CIDOf(key))
				want := jsonString(t, out["peer_upstream_conn_id_hex"])
				if got := hex.EncodeToString(be64(uint64(CIDOf(key)) | 1<<32)); got != want {
					t.Errorf("peer upstream conn id %s, want %s", got, want)
				}
			case "header":
				var in struct {
					PayloadLen int    `json:"payload_len"`
					CIDHex     string `json:"cid_hex"`
					KeyHex     string `json:"key_hex"`
				}
				mustUnmarshal(t, v.Input, &in)
				cid, _ := strconv.ParseUint(in.CIDHex, 16, 32)
				key, _ := strconv.ParseUint(in.KeyHex, 16, 64)
				h := Header{Len: in.PayloadLen, CID: uint32(cid), Key: key}
				want := mustHex(t, jsonString(t, out["header_hex"]))
				if got := AppendHeader(nil, h); !bytes.Equal(got, want) {
					t.Errorf("AppendHeader %x, want %x", got, want)
				}
				var put [HeaderLen]byte
				h.Put(put[:])
				if !bytes.Equal(put[:], want) {
					t.Errorf("Put %x, want %x", put, want)
				}
				if fw := jsonString(t, out["first_word_hex"]); hex.EncodeToString(want[:4]) != fw {
					t.Errorf("first word %x, want %s", want[:4], fw)
				}
				if got, err := ParseHeader(want); err != nil || got != h {
					t.Errorf("ParseHeader = %+v, %v; want %+v", got, err, h)
				}
			case "cbor_msg":
				var in struct {
					UID     string   `json:"uid"`
					Channel string   `json:"channel"`
					Message msgInput `json:"message"`
				}
				mustUnmarshal(t, v.Input, &in)
				tr := Triplet{UID: in.UID, Channel: in.Channel, Message: in.Message.bytes(t)}
				enc := AppendTriplet(nil, tr)
				checkBytes(t, out, "cbor", enc)
				if TripletLen(tr) != len(enc) {
					t.Errorf("TripletLen %d, encoded %d", TripletLen(tr), len(enc))
				}
				if ref := fxamackerTriplet(t, tr); !bytes.Equal(ref, enc) {
					t.Errorf("fxamacker encodes %x", ref)
				}
				back, err := DecodeTriplet(enc)
				if err != nil || !tripletEqual(back, tr) {
					t.Errorf("DecodeTriplet = %+v, %v", back, err)
				}
				if _, err := DecodeResync(enc); !errors.Is(err, ErrNotResync) {
					t.Errorf("DecodeResync(triplet) error %v, want ErrNotResync", err)
				}
			case "frame":
				var in frameInput
				mustUnmarshal(t, v.Input, &in)
				checkFrame(t, in, out)
			case "resync_msg":
				checkResync(t, v.Input, out)
			default:
				t.Fatalf("unknown vector kind %q", v.Kind)
			}
		})
		if ok {
			checked[v.Kind]++
		}
	}
	for kind, n := range vf.Counts {
		if checked[kind] != n {
			t.Errorf("kind %s: %d vectors passed, file has %d", kind, checked[kind], n)
		}
	}
	for _, kind := range []string{"addr_string", "siphash_key", "cid", "header", "cbor_msg", "frame", "resync_msg"} {
		if checked[kind] == 0 {
			t.Errorf("kind %s: no vector checked", kind)
		}
	}
	t.Logf("vectors passed per kind: %v", checked)
}

func checkAddrString(t *testing.T, input json.RawMessage, out map[string]json.RawMessage) {
	var in struct {
		Family  string `json:"family"`
		IP      string `json:"ip"`
		Port    uint16 `json:"port"`
		ScopeID uint32 `json:"scope_id"`
	}
	mustUnmarshal(t, input, &in)
	addr, err := netip.ParseAddr(in.IP)
	if err != nil {
		t.Fatal(err)
	}
	if in.Family == "ipv4" && !addr.Is4() || in.Family == "ipv6" && !addr.Is6() {
		t.Fatalf("family %s does not match %v", in.Family, addr)
	}
	if in.ScopeID != 0 {
		// The scope must not show up in the string.
		addr = addr.WithZone(strconv.FormatUint(uint64(in.ScopeID), 10))
	}
	ap := netip.AddrPortFrom(addr, in.Port)
	want := jsonString(t, out["addr_string"])
	if got := AddrString(ap); got != want {
		t.Errorf("AddrString(%v) = %q, want %q", ap, got, want)
	}
	if got := AppendAddr([]byte("x"), ap); string(got) != "x"+want {
		t.Errorf("AppendAddr = %q", got)
	}
}

func checkResync(t *testing.T, input json.RawMessage, out map[string]json.RawMessage) {
	var in struct {
		Frames []frameInput `json:"frames"`
		Outer  struct {
			KeySource keySource `json:"key_source"`
			UID       string    `json:"uid"`
			Channel   string    `json:"channel"`
		} `json:"outer"`
	}
	mustUnmarshal(t, input, &in)
	var outFrames []map[string]json.RawMessage
	mustUnmarshal(t, out["frames"], &outFrames)
	if len(outFrames) != len(in.Frames) {
		t.Fatalf("%d input frames, %d output frames", len(in.Frames), len(outFrames))
	}
	var frames [][]byte
	for i, fi := range in.Frames {
		frames = append(frames, checkFrame(t, fi, outFrames[i]))
	}
	payload := AppendResync(nil, frames)
	checkBytes(t, out, "cbor", payload)
	if ResyncLen(frames) != len(payload) {
		t.Errorf("ResyncLen %d, encoded %d", ResyncLen(frames), len(payload))
	}
	if ref := fxamackerResync(t, frames); !bytes.Equal(ref, payload) {
		t.Errorf("fxamacker encodes %x", ref)
	}
	outerKey := in.Outer.KeySource.clientKey(t, in.Outer.UID, in.Outer.Channel)
	if want := jsonString(t, out["outer_key_hex"]); hex.EncodeToString(be64(outerKey)) != want {
		t.Errorf("outer key %016x, want %s", outerKey, want)
	}
	rf := AppendHeader(nil, Header{Len: len(payload), CID: CIDOf(outerKey), Key: outerKey})
	rf = append(rf, payload...)
	checkBytes(t, out, "resync_frame", rf)

	got, err := DecodeResync(payload)
	if len(frames) == 0 {
		if !errors.Is(err, ErrNotResync) {
			t.Errorf("DecodeResync(empty) error %v, want ErrNotResync", err)
		}
		if _, err := DecodeTriplet(payload); !errors.Is(err, ErrNotTriplet) {
			t.Errorf("DecodeTriplet(empty resync) error %v, want ErrNotTriplet", err)
		}
		return
	}
	if err != nil || len(got) != len(frames) {
		t.Fatalf("DecodeResync = %d frames, %v; want %d", len(got), err, len(frames))
	}
	for i := range got {
		if !bytes.Equal(got[i], frames[i]) {
			t.Errorf("DecodeResync frame %d = %x, want %x", i, got[i], frames[i])
		}
	}
	if _, err := DecodeTriplet(payload); !errors.Is(err, ErrNotTriplet) {
		t.Errorf("DecodeTriplet(resync) error %v, want ErrNotTriplet", err)
	}
}
