package client

import (
	"context"
	"net"
	"net/netip"
	"testing"

	"github.com/mlesd/mlesd/codec"
)

func TestServerAddrAddsTheMlesPortOnlyWhenMissing(t *testing.T) {
	for in, want := range map[string]string{
		"example.org":      "example.org:8077",
		"example.org:9000": "example.org:9000",
		"127.0.0.1":        "127.0.0.1:8077",
		"::1":              "[::1]:8077",
		"[::1]":            "[::1]:8077",
		"[::1]:9000":       "[::1]:9000",
	} {
		if got := ServerAddr(in); got != want {
			t.Errorf("ServerAddr(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestDialKeysWithTheConnectionsOwnAddress(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		if nc, err := l.Accept(); err == nil {
			defer nc.Close()
			var b [1]byte
			nc.Read(b[:])
		}
	}()
	c, err := Dial(context.Background(), l.Addr().String(), codec.KeyConfig{AddrKey: "x"}, "u", "ch")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	local := c.NetConn().LocalAddr().String() // "127.0.0.1:port"
	if want := codec.Key(local, "x", "u", "ch"); c.Key() != want {
		t.Fatalf("key %#x, want Key(%q, x, u, ch) = %#x", c.Key(), local, want)
	}
	shared, err := Dial(context.Background(), l.Addr().String(), codec.KeyConfig{SharedKey: "K", AddrKey: "x"}, "u", "ch")
	if err != nil {
		t.Fatal(err)
	}
	defer shared.Close()
	if want := codec.Key("K", "u", "ch"); shared.Key() != want {
		t.Fatalf("shared key %#x, want %#x", shared.Key(), want)
	}
}

// NewAs keys with the address the server sees for the connection (an
// IPv4-mapped one in its IPv4 form), not the connection's own.
func TestNewAsKeysWithTheGivenAddress(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	keys := codec.KeyConfig{AddrKey: "x"}
	seen := netip.MustParseAddrPort("[::ffff:192.0.2.7]:4242")
	c := NewAs(a, seen, 0, keys, "u", "ch")
	if want := keys.ClientKey(netip.MustParseAddrPort("192.0.2.7:4242"), "u", "ch"); c.Key() != want {
		t.Fatalf("key %#x, want %#x (keyed with 192.0.2.7:4242)", c.Key(), want)
	}
	if !keys.Accepts(c.Key(), seen, "u", "ch") {
		t.Fatal("a server seeing the mapped address does not accept the key")
	}
}
