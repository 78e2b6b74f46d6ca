package codec

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

func TestParseHeaderErrors(t *testing.T) {
	good := AppendHeader(nil, Header{Len: 1, CID: 2, Key: 3})
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"nil", nil, ErrShortHeader},
		{"15 bytes", good[:15], ErrShortHeader},
		{"bad magic", append([]byte{'m'}, good[1:]...), ErrBadMagic},
		{"zero magic", make([]byte, 16), ErrBadMagic},
		{"zero length", append([]byte{'M', 0, 0, 0}, good[4:]...), ErrZeroLength},
	} {
		if _, err := ParseHeader(tc.in); err != tc.want {
			t.Errorf("%s: error %v, want %v", tc.name, err, tc.want)
		}
	}
	if h, err := ParseHeader(append(good, 0xa3, 0x00)); err != nil || h != (Header{Len: 1, CID: 2, Key: 3}) {
		t.Errorf("ParseHeader with trailing payload = %+v, %v", h, err)
	}
}

func TestHeaderRoundTrip(t *testing.T) {
	for _, h := range []Header{
		{Len: 1},
		{Len: 23, CID: 0x89abcdef, Key: 0x0123456789abcdef},
		{Len: 0x1234, CID: 1, Key: 1<<63 | 1},
		{Len: MaxPayloadLen, CID: 0xffffffff, Key: ^uint64(0)},
	} {
		b := AppendHeader([]byte{1, 2}, h)
		if len(b) != 2+HeaderLen || b[2] != Magic {
			t.Fatalf("AppendHeader(%+v) = %x", h, b)
		}
		var put [HeaderLen + 1]byte
		h.Put(put[:])
		if !bytes.Equal(put[:HeaderLen], b[2:]) || put[HeaderLen] != 0 {
			t.Errorf("Put(%+v) = %x, AppendHeader %x", h, put, b[2:])
		}
		got, err := ParseHeader(b[2:])
		if err != nil || got != h {
			t.Errorf("round trip %+v -> %+v, %v", h, got, err)
		}
	}
	b := AppendHeader(nil, Header{Len: MaxPayloadLen})
	if !bytes.Equal(b[:4], []byte{'M', 0xff, 0xff, 0xff}) {
		t.Errorf("max length header %x", b)
	}
	if CIDOf(0x0123456789abcdef) != 0x89abcdef {
		t.Errorf("CIDOf")
	}
}

func TestAppendFrameTooLarge(t *testing.T) {
	// Overhead of uid="", channel="" and the 4-byte message head: 23+4 bytes.
	overhead := TripletLen(Triplet{Message: make([]byte, 1<<16)}) - 1<<16
	msg := make([]byte, MaxPayloadLen-overhead)
	dst := []byte("prefix")
	f, err := AppendFrame(dst, 42, Triplet{Message: msg})
	if err != nil {
		t.Fatalf("max payload: %v", err)
	}
	if h, err := ParseHeader(f[6:]); err != nil || h.Len != MaxPayloadLen || len(f) != 6+HeaderLen+MaxPayloadLen {
		t.Fatalf("max payload header %+v, %v, frame len %d", h, err, len(f))
	}
	f, err = AppendFrame(dst, 42, Triplet{UID: "u", Message: msg})
	if err != ErrPayloadTooLarge || string(f) != "prefix" {
		t.Errorf("too large: %q..., %v", f[:min(len(f), 8)], err)
	}
}

// cb builds CBOR test input from pieces: byte values and strings.
func cb(parts ...any) []byte {
	var b []byte
	for _, p := range parts {
		switch p := p.(type) {
		case int:
			b = append(b, byte(p))
		case string:
			b = append(b, p...)
		case []byte:
			b = append(b, p...)
		default:
			panic(p)
		}
	}
	return b
}

func TestDecodeTripletLiberal(t *testing.T) {
	want := Triplet{UID: "u", Channel: "c", Message: []byte("m")}
	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{"canonical", AppendTriplet(nil, want)},
		{"reversed", cb(0xa3, 0x67, "message", 0x41, "m", 0x67, "channel", 0x61, "c", 0x63, "uid", 0x61, "u")},
		{"extra keys", cb(0xa5, 0x63, "uid", 0x61, "u", 0x61, "x", 0x82, 1, 2, 0x67, "channel", 0x61, "c",
			0x01, 0xf5, 0x67, "message", 0x41, "m")},
		{"non-shortest heads", cb(0xb8, 3, 0x78, 3, "uid", 0x79, 0, 1, "u", 0x67, "channel", 0x61, "c", 0x67, "message", 0x58, 1, "m")},
		{"indefinite map and strings", cb(0xbf, 0x63, "uid", 0x7f, 0x61, "u", 0xff, 0x67, "channel", 0x61, "c",
			0x67, "message", 0x5f, 0x41, "m", 0xff, 0xff)},
		{"uid as UTF-8 byte string", cb(0xa3, 0x63, "uid", 0x41, "u", 0x67, "channel", 0x41, "c", 0x67, "message", 0x41, "m")},
	} {
		got, err := DecodeTriplet(tc.in)
		if err != nil || !tripletEqual(got, want) {
			t.Errorf("%s: %+v, %v", tc.name, got, err)
		}
	}
	got, err := DecodeTriplet(AppendTriplet(nil, Triplet{UID: "u", Channel: "c"}))
	if err != nil || got.Message == nil || len(got.Message) != 0 {
		t.Errorf("empty message: %#v, %v", got, err)
	}
}

func TestDecodeTripletRejects(t *testing.T) {
	valid := AppendTriplet(nil, Triplet{UID: "u", Channel: "c", Message: []byte("m")})
	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{"empty", nil},
		{"missing uid", cb(0xa2, 0x67, "channel", 0x61, "c", 0x67, "message", 0x41, "m")},
		{"missing channel", cb(0xa2, 0x63, "uid", 0x61, "u", 0x67, "message", 0x41, "m")},
		{"missing message", cb(0xa2, 0x63, "uid", 0x61, "u", 0x67, "channel", 0x61, "c")},
		{"key case", cb(0xa3, 0x63, "UID", 0x61, "u", 0x67, "channel", 0x61, "c", 0x67, "message", 0x41, "m")},
		{"uid int", cb(0xa3, 0x63, "uid", 0x01, 0x67, "channel", 0x61, "c", 0x67, "message", 0x41, "m")},
		{"uid null", cb(0xa3, 0x63, "uid", 0xf6, 0x67, "channel", 0x61, "c", 0x67, "message", 0x41, "m")},
		{"channel array", cb(0xa3, 0x63, "uid", 0x61, "u", 0x67, "channel", 0x80, 0x67, "message", 0x41, "m")},
		{"message array", cb(0xa3, 0x63, "uid", 0x61, "u", 0x67, "channel", 0x61, "c", 0x67, "message", 0x81, 0x6d)},
		{"message text", cb(0xa3, 0x63, "uid", 0x61, "u", 0x67, "channel", 0x61, "c", 0x67, "message", 0x61, "m")},
		{"message null", cb(0xa3, 0x63, "uid", 0x61, "u", 0x67, "channel", 0x61, "c", 0x67, "message", 0xf6)},
		{"invalid UTF-8 text", cb(0xa3, 0x63, "uid", 0x61, 0xff, 0x67, "channel", 0x61, "c", 0x67, "message", 0x41, "m")},
		{"invalid UTF-8 bytes as uid", cb(0xa3, 0x63, "uid", 0x41, 0xff, 0x67, "channel", 0x61, "c", 0x67, "message", 0x41, "m")},
		{"surrogate in channel", cb(0xa3, 0x63, "uid", 0x61, "u", 0x67, "channel", 0x63, 0xed, 0xa0, 0x80, 0x67, "message", 0x41, "m")},
		{"truncated", valid[:len(valid)-1]},
		{"truncated head", valid[:1]},
		{"trailing garbage", append(append([]byte{}, valid...), 0x00)},
		{"two triplets", append(append([]byte{}, valid...), valid...)},
		{"array not map", cb(0x83, 0x61, "u", 0x61, "c", 0x41, "m")},
		{"text not map", cb(0x61, "u")},
		{"frame with header", append(AppendHeader(nil, Header{Len: len(valid)}), valid...)},
		{"resync", AppendResync(nil, [][]byte{valid})},
	} {
		got, err := DecodeTriplet(tc.in)
		if !errors.Is(err, ErrNotTriplet) {
			t.Errorf("%s: got %+v, %v; want ErrNotTriplet", tc.name, got, err)
		}
	}
}

func TestAppendTripletMatchesFxamacker(t *testing.T) {
	long := strings.Repeat("ä", 40000) // 80000 bytes: 4-byte length head
	for _, tr := range []Triplet{
		{},
		{UID: "u", Channel: "c", Message: nil},
		{UID: "u", Channel: "c", Message: []byte{}},
		{UID: strings.Repeat("x", 23), Channel: strings.Repeat("y", 24), Message: make([]byte, 255)},
		{UID: strings.Repeat("x", 255), Channel: strings.Repeat("y", 256), Message: make([]byte, 65535)},
		{UID: long, Channel: "\x00", Message: make([]byte, 65536)},
	} {
		got := AppendTriplet([]byte{0xee}, tr)
		if got[0] != 0xee {
			t.Fatal("AppendTriplet clobbered dst")
		}
		got = got[1:]
		if want := fxamackerTriplet(t, tr); !bytes.Equal(got, want) {
			t.Errorf("AppendTriplet(uid len %d, channel len %d, message len %d) differs from fxamacker",
				len(tr.UID), len(tr.Channel), len(tr.Message))
		}
		if TripletLen(tr) != len(got) {
			t.Errorf("TripletLen %d, encoded %d", TripletLen(tr), len(got))
		}
	}
}

func TestResync(t *testing.T) {
	f1, _ := AppendFrame(nil, Key("k", "a", "c"), Triplet{UID: "a", Channel: "c", Message: []byte("1")})
	f2, _ := AppendFrame(nil, Key("k", "b", "c"), Triplet{UID: "b", Channel: "c"})
	big := make([]byte, 70000)
	frames := [][]byte{f1, f2, {}, big}
	payload := AppendResync(nil, frames)
	if want := fxamackerResync(t, frames); !bytes.Equal(payload, want) {
		t.Fatalf("AppendResync differs from fxamacker")
	}
	got, err := DecodeResync(payload)
	if err != nil || len(got) != len(frames) {
		t.Fatalf("DecodeResync: %d, %v", len(got), err)
	}
	for i := range got {
		if !bytes.Equal(got[i], frames[i]) {
			t.Errorf("frame %d differs", i)
		}
	}
	// The result does not alias the payload.
	got[0][0] = 'X'
	if again, _ := DecodeResync(payload); again[0][0] != 'M' {
		t.Errorf("DecodeResync result aliases payload")
	}

	// Liberal: extra keys at both levels.
	liberal := cb(0xa2, 0x61, "x", 0x01, 0x6e, "resync_message", 0x81,
		0xa2, 0x6b, "encoded_msg", 0x42, "hi", 0x61, "y", 0xf6)
	if got, err := DecodeResync(liberal); err != nil || len(got) != 1 || string(got[0]) != "hi" {
		t.Errorf("liberal resync: %q, %v", got, err)
	}

	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{"empty payload", nil},
		{"empty resync", AppendResync(nil, nil)},
		{"triplet", f1[HeaderLen:]},
		{"triplet with resync-like key", cb(0xa4, 0x63, "uid", 0x61, "u", 0x67, "channel", 0x61, "c", 0x67, "message", 0x40, 0x6e, "resync_message", 0x80)},
		{"resync_message not array", cb(0xa1, 0x6e, "resync_message", 0x41, 0x00)},
		{"entry missing encoded_msg", cb(0xa1, 0x6e, "resync_message", 0x81, 0xa0)},
		{"encoded_msg as array", cb(0xa1, 0x6e, "resync_message", 0x81, 0xa1, 0x6b, "encoded_msg", 0x81, 0x01)},
		{"encoded_msg as text", cb(0xa1, 0x6e, "resync_message", 0x81, 0xa1, 0x6b, "encoded_msg", 0x61, "M")},
		{"truncated", payload[:len(payload)-1]},
		{"trailing", append(append([]byte{}, payload...), 0)},
		{"key case", cb(0xa1, 0x6e, "Resync_message", 0x81, 0xa1, 0x6b, "encoded_msg", 0x41, "M")},
	} {
		if got, err := DecodeResync(tc.in); !errors.Is(err, ErrNotResync) {
			t.Errorf("%s: %q, %v; want ErrNotResync", tc.name, got, err)
		}
	}
}

func TestKey(t *testing.T) {
	if Key() != 0x1e924b9d737700d7 {
		t.Errorf("Key() = %016x", Key())
	}
	// The 0xFF separators make the split points matter.
	if Key("ab", "c") == Key("a", "bc") || Key("a") == Key("a", "") {
		t.Errorf("split points do not matter")
	}
	// Long inputs (pooled buffer path) agree with a hand-built input.
	long := strings.Repeat("y", 5000)
	for _, strs := range [][]string{{long}, {long, "a", long}, {strings.Repeat("z", 1023)}, {strings.Repeat("z", 1024)}} {
		var in []byte
		for _, s := range strs {
			in = append(append(in, s...), 0xFF)
		}
		if got, want := Key(strs...), keyOfBytesRef(in); got != want {
			t.Errorf("Key(len %d) = %016x, want %016x", len(in), got, want)
		}
	}
}

func TestAddrString(t *testing.T) {
	for in, want := range map[string]string{
		"1.2.3.4:5":                  "1.2.3.4:5",
		"[::1]:8077":                 "[0:0:0:0:0:0:0:1]:8077",
		"[::ffff:10.11.12.13]:80":    "[0:0:0:0:0:ffff:a0b:c0d]:80",
		"[fe80::ABCD%eth0]:1":        "[fe80:0:0:0:0:0:0:abcd]:1",
		"[1:0:0:0:0:0:0:0]:65535":    "[1:0:0:0:0:0:0:0]:65535",
		"[::ffff:0.0.0.0]:0":         "[0:0:0:0:0:ffff:0:0]:0",
		"[2001:db8:0:1:1:1:1:1]:443": "[2001:db8:0:1:1:1:1:1]:443",
	} {
		ap := netip.MustParseAddrPort(in)
		if got := AddrString(ap); got != want {
			t.Errorf("AddrString(%s) = %q, want %q", in, got, want)
		}
	}
	if got := AddrString(netip.AddrPort{}); got != "" {
		t.Errorf("AddrString(zero) = %q", got)
	}
}

func TestAccepts(t *testing.T) {
	const uid, ch = "alice", "general"
	v4 := netip.MustParseAddrPort("10.11.12.13:4000")
	mapped := netip.MustParseAddrPort("[::ffff:10.11.12.13]:4000")
	v6 := netip.MustParseAddrPort("[::1]:50124")

	for _, kc := range []KeyConfig{{}, {AddrKey: "secret"}} {
		v4Key := Key(append([]string{"10.11.12.13:4000"}, addrList(kc, uid, ch)...)...)
		mappedKey := Key(append([]string{"[0:0:0:0:0:ffff:a0b:c0d]:4000"}, addrList(kc, uid, ch)...)...)
		v6Key := Key(append([]string{"[0:0:0:0:0:0:0:1]:50124"}, addrList(kc, uid, ch)...)...)
		wrongPort := Key(append([]string{"10.11.12.13:4001"}, addrList(kc, uid, ch)...)...)

		if kc.ClientKey(v4, uid, ch) != v4Key || kc.ClientKey(mapped, uid, ch) != mappedKey || kc.ClientKey(v6, uid, ch) != v6Key {
			t.Errorf("%+v: ClientKey does not match the key list", kc)
		}
		for _, tc := range []struct {
			name   string
			key    uint64
			remote netip.AddrPort
			uid    string
			want   bool
		}{
			{"v4", v4Key, v4, uid, true},
			{"v4 with mapped key", mappedKey, v4, uid, false},
			{"v4 wrong port", wrongPort, v4, uid, false},
			{"v4 wrong uid", v4Key, v4, "bob", false},
			{"mapped, v4 key", v4Key, mapped, uid, true},
			{"mapped, mapped key", mappedKey, mapped, uid, true},
			{"mapped, wrong port", wrongPort, mapped, uid, false},
			{"v6", v6Key, v6, uid, true},
			{"v6 other key", v4Key, v6, uid, false},
			{"invalid remote", Key("", uid, ch), netip.AddrPort{}, uid, false},
		} {
			if got := kc.Accepts(tc.key, tc.remote, tc.uid, ch); got != tc.want {
				t.Errorf("%+v %s: Accepts = %v, want %v", kc, tc.name, got, tc.want)
			}
		}
	}

	// A shared key ignores the address (and the address key).
	shared := KeyConfig{SharedKey: "mles-shared-key", AddrKey: "unused"}
	k := Key("mles-shared-key", uid, ch)
	if k != 0x56f31072ba8f7197 {
		t.Fatalf("shared key %016x", k)
	}
	for _, remote := range []netip.AddrPort{v4, mapped, v6, {}} {
		if !shared.Accepts(k, remote, uid, ch) || shared.Accepts(k, remote, uid, "other") {
			t.Errorf("shared key from %v", remote)
		}
		if shared.ClientKey(remote, uid, ch) != k {
			t.Errorf("shared ClientKey from %v", remote)
		}
		if shared.Accepts(Key(AddrString(remote), uid, ch), remote, uid, ch) {
			t.Errorf("shared key config accepts an address key from %v", remote)
		}
	}
}

func addrList(kc KeyConfig, uid, ch string) []string {
	if kc.AddrKey != "" {
		return []string{kc.AddrKey, uid, ch}
	}
	return []string{uid, ch}
}

func TestKeyConfigFromEnv(t *testing.T) {
	t.Setenv("MLES_KEY", "")
	t.Setenv("MLES_ADDR_KEY", "x")
	kc := KeyConfigFromEnv()
	if kc != (KeyConfig{AddrKey: "x"}) {
		t.Fatalf("KeyConfigFromEnv = %+v", kc)
	}
	// Empty MLES_KEY counts as unset: the address key scheme applies.
	ap := netip.MustParseAddrPort("127.0.0.1:50123")
	if kc.ClientKey(ap, "u", "c") != Key("127.0.0.1:50123", "x", "u", "c") {
		t.Errorf("empty MLES_KEY not treated as unset")
	}
	if !kc.Accepts(Key("127.0.0.1:50123", "x", "u", "c"), ap, "u", "c") || kc.Accepts(Key("", "u", "c"), ap, "u", "c") {
		t.Errorf("Accepts with empty MLES_KEY")
	}
	// Empty MLES_ADDR_KEY counts as unset too.
	t.Setenv("MLES_ADDR_KEY", "")
	if kc := KeyConfigFromEnv(); kc.ClientKey(ap, "u", "c") != Key("127.0.0.1:50123", "u", "c") {
		t.Errorf("empty MLES_ADDR_KEY not treated as unset")
	}
	t.Setenv("MLES_KEY", "k")
	if kc := KeyConfigFromEnv(); kc.SharedKey != "k" || kc.ClientKey(ap, "u", "c") != Key("k", "u", "c") {
		t.Errorf("MLES_KEY not read: %+v", kc)
	}
}

// resyncOf returns a resync payload of n distinct tiny entries; indefinite
// makes its array indefinite-length.
func resyncOf(n int, indefinite bool) []byte {
	frames := make([][]byte, n)
	for i := range frames {
		frames[i] = []byte(fmt.Sprintf("e%d", i))
	}
	p := AppendResync(nil, frames)
	if !indefinite {
		return p
	}
	// Replace the definite array head after the key with 0x9f ... 0xff.
	head := 1 + len(keyResyncMessage)
	out := append([]byte{}, p[:head]...)
	out = append(out, 0x9f)
	out = append(out, p[head+headLen(uint64(n)):]...)
	return append(out, 0xff)
}

func TestResyncDecoderRefusesMoreEntriesThanItsCap(t *testing.T) {
	for _, cap := range []int{3, 16, 100} {
		d := NewResyncDecoder(cap)
		for _, indefinite := range []bool{false, true} {
			got, err := d.Decode(resyncOf(cap, indefinite))
			if err != nil || len(got) != cap || string(got[cap-1]) != fmt.Sprintf("e%d", cap-1) {
				t.Errorf("cap %d, indefinite %v: %d entries at the cap: %v", cap, indefinite, len(got), err)
			}
			got, err = d.Decode(resyncOf(cap+1, indefinite))
			if !errors.Is(err, ErrResyncTooLarge) || errors.Is(err, ErrNotResync) || got != nil {
				t.Errorf("cap %d, indefinite %v: one past the cap gave %d entries, %v; want ErrResyncTooLarge",
					cap, indefinite, len(got), err)
			}
		}
	}
	if got, err := NewResyncDecoder(0).Decode(resyncOf(1000, true)); err != nil || len(got) != 1000 {
		t.Errorf("no cap: %d entries, %v", len(got), err)
	}
}

func TestResyncDecoderStillLetsATripletWithALongArrayJoin(t *testing.T) {
	long := []byte{0x98, 20}
	for i := range 20 {
		long = append(long, byte(i%20))
	}
	plain := cb(0xa4, 0x63, "uid", 0x61, "u", 0x67, "channel", 0x61, "c", 0x67, "message", 0x41, "m",
		0x61, "x", long)
	withResyncKey := cb(0xa4, 0x63, "uid", 0x61, "u", 0x67, "channel", 0x61, "c", 0x67, "message", 0x41, "m",
		0x6e, "resync_message", long)
	d := NewResyncDecoder(4)
	for name, p := range map[string][]byte{"extra key": plain, "extra resync_message key": withResyncKey} {
		if _, err := d.Decode(p); !errors.Is(err, ErrNotResync) {
			t.Errorf("%s: %v, want ErrNotResync", name, err)
		}
		if tr, err := DecodeTriplet(p); err != nil || tr.UID != "u" {
			t.Errorf("%s: DecodeTriplet %+v, %v", name, tr, err)
		}
	}
}

// TestResyncDecoderRefusesAHugeResyncWithoutDecodingIt: a full payload of
// empty entries (about 1.2 million) in an indefinite array is refused after
// reading cap+1 of them. The scanner's early stop is proved without a clock:
// past entry cap+1 the payload is not CBOR at all, so a decoder that read
// further would fail with another error. (How long each way takes is for
// BenchmarkResyncDecoder, not a test.)
func TestResyncDecoderRefusesAHugeResyncWithoutDecodingIt(t *testing.T) {
	const limit = 10_000
	entry := cb(0xa1, keyEncodedMsg, 0x40)
	p := cb(0xa1, keyResyncMessage, 0x9f)
	for len(p)+len(entry)+1 <= MaxPayloadLen {
		p = append(p, entry...)
	}
	p = append(p, 0xff)
	d := NewResyncDecoder(limit)
	if _, err := d.Decode(p); !errors.Is(err, ErrResyncTooLarge) {
		t.Fatalf("%v, want ErrResyncTooLarge", err)
	}
	// Entries cap+2 onwards replaced by bytes that are no CBOR item (0xff
	// "break" out of place, then reserved 0x1c): only an early stop passes.
	head := len(cb(0xa1, keyResyncMessage, 0x9f)) + (limit+1)*len(entry)
	broken := append(append([]byte(nil), p[:head]...), bytes.Repeat([]byte{0x1c}, len(p)-head)...)
	if _, err := d.Decode(broken); !errors.Is(err, ErrResyncTooLarge) {
		t.Fatalf("with garbage after entry %d: %v, want ErrResyncTooLarge (the decoder read past the cap)", limit+1, err)
	}
	// The same in an encoding the scanner leaves to the library (an
	// indefinite-length outer map): refused too.
	q := append([]byte{0xbf}, p[1:]...)
	q = append(q, 0xff)
	if _, err := d.Decode(q); !errors.Is(err, ErrResyncTooLarge) {
		t.Fatalf("indefinite map: %v, want ErrResyncTooLarge", err)
	}
	if all, err := DecodeResync(p); err != nil || len(all) < 1_000_000 {
		t.Fatalf("uncapped: %d entries, %v", len(all), err)
	}
}
