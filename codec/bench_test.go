package codec

import (
	"net/netip"
	"testing"
)

var (
	benchTriplet = Triplet{UID: "alice", Channel: "general", Message: make([]byte, 256)}
	benchSink    uint64
)

func BenchmarkParseHeader(b *testing.B) {
	frame, _ := AppendFrame(nil, 0x0123456789abcdef, benchTriplet)
	b.ReportAllocs()
	b.SetBytes(HeaderLen)
	for b.Loop() {
		h, err := ParseHeader(frame)
		if err != nil {
			b.Fatal(err)
		}
		benchSink += h.Key
	}
}

func BenchmarkKey(b *testing.B) {
	strs := []string{"[2001:db8:0:0:0:ff00:42:8329]:443", "alice", "general"}
	n := 0
	for _, s := range strs {
		n += len(s) + 1
	}
	b.ReportAllocs()
	b.SetBytes(int64(n))
	for b.Loop() {
		benchSink += Key(strs...)
	}
}

func BenchmarkAppendTriplet(b *testing.B) {
	buf := make([]byte, 0, TripletLen(benchTriplet))
	b.ReportAllocs()
	b.SetBytes(int64(TripletLen(benchTriplet)))
	for b.Loop() {
		buf = AppendTriplet(buf[:0], benchTriplet)
	}
}

func BenchmarkDecodeTriplet(b *testing.B) {
	payload := AppendTriplet(nil, benchTriplet)
	b.ReportAllocs()
	b.SetBytes(int64(len(payload)))
	for b.Loop() {
		t, err := DecodeTriplet(payload)
		if err != nil {
			b.Fatal(err)
		}
		benchSink += uint64(len(t.Message))
	}
}

func BenchmarkDecodeResyncOfTriplet(b *testing.B) {
	payload := AppendTriplet(nil, benchTriplet)
	b.ReportAllocs()
	b.SetBytes(int64(len(payload)))
	for b.Loop() {
		if _, err := DecodeResync(payload); err == nil {
			b.Fatal("triplet decoded as resync")
		}
	}
}

func BenchmarkAccepts(b *testing.B) {
	kc := KeyConfig{}
	remote := netip.MustParseAddrPort("[::ffff:192.168.1.254]:50123")
	key := kc.ClientKey(netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port()), "alice", "general")
	b.ReportAllocs()
	b.SetBytes(int64(len("192.168.1.254:50123alicegeneral") + 3))
	for b.Loop() {
		// Worst case for a mapped remote: the IPv6 form fails, the IPv4 form matches.
		if !kc.Accepts(key, remote, "alice", "general") {
			b.Fatal("rejected")
		}
	}
}

// BenchmarkResyncDecoder: a resync of 10,000 tiny entries (the default cap)
// through the hand scanner, and the same through the library (indefinite
// outer map, which the scanner leaves to it).
func BenchmarkResyncDecoder(b *testing.B) {
	d := NewResyncDecoder(10_000)
	canonical := resyncOf(10_000, false)
	library := append([]byte{0xbf}, canonical[1:]...)
	library = append(library, 0xff)
	for name, p := range map[string][]byte{"scanned": canonical, "library": library} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(p)))
			for b.Loop() {
				if out, err := d.Decode(p); err != nil || len(out) != 10_000 {
					b.Fatal(len(out), err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*10_000), "ns/entry")
		})
	}
}
