package codec

import (
	"net/netip"
	"testing"

	"github.com/dchest/siphash"
)

func keyOfBytesRef(in []byte) uint64 { return siphash.Hash(0, 0, in) }

func TestZeroAllocs(t *testing.T) {
	if testing.Short() {
		t.Skip("allocation counts")
	}
	tr := Triplet{UID: "alice", Channel: "general", Message: make([]byte, 300)}
	buf := make([]byte, 0, 1024)
	frame, _ := AppendFrame(nil, 1, tr)
	ap4 := netip.MustParseAddrPort("127.0.0.1:50123")
	mapped := netip.MustParseAddrPort("[::ffff:127.0.0.1]:50123")
	ap6 := netip.MustParseAddrPort("[2001:db8::ff00:42:8329]:443")
	kc := KeyConfig{AddrKey: "secret"}
	long := string(make([]byte, 900))
	tail := string(make([]byte, 116)) // 901 + 6 + 117 = 1024 bytes of input
	wrong := Key("x")
	var sink uint64
	var ok bool
	for name, f := range map[string]func(){
		"Key":            func() { sink = Key("mles-shared-key", "alice", "general") },
		"Key 1 KiB":      func() { sink = Key(long, "alice", tail) },
		"ClientKey":      func() { sink = kc.ClientKey(ap6, "alice", "general") },
		"Accepts v4":     func() { ok = kc.Accepts(wrong, ap4, "alice", "general") },
		"Accepts mapped": func() { ok = kc.Accepts(wrong, mapped, "alice", "general") },
		"Accepts v6":     func() { ok = kc.Accepts(wrong, ap6, "alice", "general") },
		"Accepts shared": func() { ok = KeyConfig{SharedKey: "k"}.Accepts(wrong, ap4, "alice", "general") },
		"ParseHeader":    func() { h, _ := ParseHeader(frame); sink = h.Key },
		"AppendHeader":   func() { buf = AppendHeader(buf[:0], Header{Len: 5, CID: 1, Key: 2}) },
		"Put":            func() { Header{Len: 5}.Put(buf[:HeaderLen]) },
		"AppendTriplet":  func() { buf = AppendTriplet(buf[:0], tr) },
		"AppendFrame":    func() { buf, _ = AppendFrame(buf[:0], 7, tr) },
		"AppendAddr v4":  func() { buf = AppendAddr(buf[:0], ap4) },
		"AppendAddr v6":  func() { buf = AppendAddr(buf[:0], ap6) },
		"AppendResync":   func() { buf = AppendResync(buf[:0], [][]byte{frame[:100], frame[:50]}) },
		"TripletLen":     func() { sink = uint64(TripletLen(tr)) },
		"CIDOf":          func() { sink = uint64(CIDOf(sink)) },
	} {
		if n := testing.AllocsPerRun(100, f); n != 0 {
			t.Errorf("%s: %v allocs per run, want 0", name, n)
		}
	}
	_, _ = sink, ok
}
