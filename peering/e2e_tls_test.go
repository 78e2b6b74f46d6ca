package peering_test

import (
	"testing"
	"time"

	"github.com/mlesd/mlesd/tlsserve/tlstest"
)

// Uplinks over TLS (--peer-tls) to a peer's --tls-listen port: clients on
// both servers exchange every frame exactly once, with a shared key and
// with address keys (the uplink keys its join for its own TCP address, which
// the peer's TLS listener hands to its engine); with a peer that requires
// client certificates; and a peer whose certificate is not signed by the
// CA given is never joined (a TLS failure, retried with back-off) while
// local clients keep talking.
func TestPeeringOverTLS(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "peers")
	serverPair := ca.Server(t, dir, "b")
	clientPair := ca.Client(t, dir, "a")
	other := tlstest.NewCA(t, dir, "other")

	for _, tc := range []struct {
		name       string
		env        []string
		clientCert bool
		addrKeys   bool
	}{
		{"shared key", sharedEnv, false, false},
		{"address keys", addrEnv, false, true},
		{"client certificate required", sharedEnv, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tlsAddr := staticAddr(t, "127.0.0.1")
			argsB := []string{"--tls-listen", tlsAddr, "--tls-cert", serverPair.CertFile, "--tls-key", serverPair.KeyFile}
			argsA := []string{"--peer", tlsAddr, "--peer-tls", "--peer-tls-ca", ca.File}
			if tc.clientCert {
				argsB = append(argsB, "--tls-client-ca", ca.File)
				argsA = append(argsA, "--peer-tls-cert", clientPair.CertFile, "--peer-tls-key", clientPair.KeyFile)
			}
			B := startServer(t, "B", tc.env, argsB...)
			A := startServer(t, "A", tc.env, argsA...)
			joinOn := join
			if tc.addrKeys {
				joinOn = joinAddrKey
			}
			clients := []*client{joinOn(t, A.Addr, "a1", "tls"), joinOn(t, A.Addr, "a2", "tls"), joinOn(t, B.Addr, "b1", "tls")}
			meshSync(t, clients...)
			sent := ledger{}
			sent.send(t, 0, frames, clients...)
			sent.deliver(t, 20*time.Second, clients...)
			A.waitUp(t, 1)
		})
	}

	// A --peer naming this server's own TLS port, with address keys (each
	// hop a new CID): the uplink comes back through the TLS listener and is
	// refused as the server's own, so nothing loops.
	t.Run("peer is this server", func(t *testing.T) {
		tlsAddr := staticAddr(t, "127.0.0.1")
		A := startServer(t, "A", addrEnv, "--tls-listen", tlsAddr, "--tls-cert", serverPair.CertFile,
			"--tls-key", serverPair.KeyFile, "--peer", tlsAddr, "--peer-tls", "--peer-tls-ca", ca.File)
		a1, a2 := joinAddrKey(t, A.Addr, "a1", "self"), joinAddrKey(t, A.Addr, "a2", "self")
		A.waitLogCount(t, 1, 10*time.Second, "peer-is-self")
		meshSync(t, a1, a2)
		sent := ledger{}
		sent.send(t, 0, 50, a1, a2)
		sent.deliver(t, 10*time.Second, a1, a2)
	})

	t.Run("peer certificate from another CA", func(t *testing.T) {
		tlsAddr := staticAddr(t, "127.0.0.1")
		foreign := other.Server(t, dir, "foreign")
		B := startServer(t, "B", sharedEnv, "--tls-listen", tlsAddr, "--tls-cert", foreign.CertFile, "--tls-key", foreign.KeyFile)
		A := startServer(t, "A", sharedEnv, "--peer", tlsAddr, "--peer-tls", "--peer-tls-ca", ca.File)
		a1, a2 := join(t, A.Addr, "a1", "tls"), join(t, A.Addr, "a2", "tls")
		b1 := join(t, B.Addr, "b1", "tls")
		A.waitLogCount(t, 2, 10*time.Second, `msg="peer uplink retry"`, `what=tls`, `certificate signed by unknown authority`)
		meshSync(t, a1, a2)
		sent := ledger{}
		sent.send(t, 0, 50, a1, a2)
		sent.deliver(t, 10*time.Second, a1, a2)
		if n := A.countLog(`msg="peer uplink up"`); n != 0 {
			t.Fatalf("A's uplink came up %d times to a peer it cannot verify", n)
		}
		b1.mu.Lock()
		got := len(b1.data)
		b1.mu.Unlock()
		if got != 0 {
			t.Fatal("a frame reached the peer that A could not verify")
		}
	})
}
