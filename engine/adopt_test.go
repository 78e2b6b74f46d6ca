package engine

import (
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/router"
)

// socketpair returns two connected Unix stream sockets.
func socketpair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	a, b := conn(fds[0]), conn(fds[1])
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// An adopted connection is a member like any other, and its address key is
// computed from the address given to Adopt, not from the socket.
func TestAdoptedConnectionUsesTheGivenClientAddress(t *testing.T) {
	keys := codec.KeyConfig{} // address keys
	ts := startServer(t, Config{Keys: keys}, router.Config{HistoryLimit: router.Off})
	tcp := ts.join(t, keys, "tcp-client", "ch", nil)

	serverEnd, clientEnd := socketpair(t)
	remote := netip.MustParseAddrPort("192.0.2.7:40000")
	if err := ts.srv.Adopt(serverEnd, netip.AddrPort{}, remote); err != nil {
		t.Fatal(err)
	}
	c := joinOver(t, clientEnd, keys, "adopted", "ch", remote)
	ts.waitJoins(t, 2)
	tcp.expect(c.frame(nil))
	c.expect(tcp.send([]byte("to the adopted one")))
	tcp.expect(c.send([]byte("and back")))
}
