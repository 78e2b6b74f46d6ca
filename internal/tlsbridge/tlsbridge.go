// Package tlsbridge carries a TLS connection terminated in Go to the
// engine, which speaks only plain sockets: one end of a Unix socketpair
// goes to the engine (engine.Server.Adopt or AdoptUplink), and Bridge copies
// bytes between the other end and the TLS connection. Used by the TLS
// listener (package tlsserve) and by TLS uplinks to peers (package peering).
package tlsbridge

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// BufSize is each copy direction's buffer per connection: one TLS
// record's plaintext at most, so one read or write is one record.
const BufSize = 16 << 10

// CloseCheckInterval is how often a bridge whose TLS side sends nothing
// checks whether the engine has closed its side. It matters only while the
// engine-to-TLS copy is blocked on a peer that does not read: otherwise that
// copy sees the engine's EOF at once. A variable for tests.
var CloseCheckInterval = 5 * time.Second

// Bridge copies bytes both ways between tc and the socketpair end local
// (whose other end the engine has) until either ends, then closes both. It
// returns when both copies have ended; it runs one goroutine of its own.
func Bridge(tc *tls.Conn, local *net.UnixConn) {
	var once sync.Once
	closeBoth := func() {
		once.Do(func() {
			local.Close()
			tc.Close()
		})
	}
	done := make(chan struct{})
	go func() { // engine -> client
		defer close(done)
		buf := make([]byte, BufSize)
		_, _ = io.CopyBuffer(tc, onlyReader{local}, buf)
		closeBoth()
	}()
	// client -> engine, checking now and then (while the client is silent)
	// whether the engine closed its side: the other copy may be blocked
	// writing to a client that does not read, and would not notice.
	buf := make([]byte, BufSize)
	for {
		_ = tc.SetReadDeadline(time.Now().Add(CloseCheckInterval))
		n, err := tc.Read(buf)
		if n > 0 {
			if _, werr := local.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && !peerClosed(local) {
				continue // crypto/tls read timeouts are not fatal
			}
			break
		}
	}
	closeBoth()
	<-done
}

// onlyReader hides WriterTo so io.CopyBuffer uses our buffer.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// peerClosed reports whether the other end of a stream socket has closed
// (or shut down writing), without reading from it.
func peerClosed(c *net.UnixConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return true
	}
	hup := false
	_ = rc.Control(func(fd uintptr) {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
		if n, err := unix.Poll(pfd, 0); err == nil && n > 0 {
			hup = pfd[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR) != 0
		}
	})
	return hup
}

// Socketpair returns two connected Unix stream sockets (close-on-exec).
func Socketpair() (net.Conn, net.Conn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, os.NewSyscallError("socketpair", err)
	}
	a, err := fileConn(fds[0])
	if err != nil {
		syscall.Close(fds[1])
		return nil, nil, err
	}
	b, err := fileConn(fds[1])
	if err != nil {
		a.Close()
		return nil, nil, err
	}
	return a, b, nil
}

// fileConn wraps fd as a net.Conn (net.FileConn dups it; fd is closed).
func fileConn(fd int) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), "socketpair")
	defer f.Close()
	return net.FileConn(f)
}

// LoadPool reads a PEM file of CA certificates into a pool.
func LoadPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate in it", file)
	}
	return pool, nil
}
