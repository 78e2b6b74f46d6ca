package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/mlesd/mlesd/client"
	"github.com/mlesd/mlesd/codec"
)

// dialTimeout bounds connecting to the server.
const dialTimeout = 10 * time.Second

// connFlags are the connection flags shared by pub, sub, chat and bench.
type connFlags struct {
	server, uid, channel string
	mlesKey, mlesAddrKey string
	tls, insecure        bool
	ca, cert, key        string
	needUID              bool
}

const serverHelp = "Mles server: host[:port] (TCP), tls://host[:port] (TLS; port 8077 for both when omitted),\nor ws://host[:port]/ (a WebSocket gateway, port 8076)"

func (c *connFlags) register(e env, fs *flagSet, needUID bool) {
	c.needUID = needUID
	fs.String(&c.server, "server", "s", "URL", "localhost:8077", serverHelp)
	if needUID {
		fs.String(&c.uid, "uid", "u", "UID", "", "user id (required)")
		fs.String(&c.channel, "channel", "c", "CHANNEL", "", "channel (required)")
	}
	fs.String(&c.mlesKey, "mles-key", "", "KEY", "", "shared key, as the server's MLES_KEY (default $MLES_KEY)")
	fs.String(&c.mlesAddrKey, "mles-addr-key", "", "KEY", "", "mixed into address keys, as the server's MLES_ADDR_KEY (default $MLES_ADDR_KEY)")
	fs.Bool(&c.tls, "tls", "", "connect with TLS (implied by tls://, --ca, --cert and --insecure)")
	fs.File(&c.ca, "ca", "", "verify the server with the CA certificates in this PEM file (default: the system's roots)")
	fs.File(&c.cert, "cert", "", "PEM client certificate, for a server that requires one (with --key)")
	fs.File(&c.key, "key", "", "PEM private key of --cert")
	fs.Bool(&c.insecure, "insecure", "", "do not verify the server's certificate (tests only: open to a man in the middle)")
}

func (c *connFlags) check() error {
	switch {
	case c.needUID && c.uid == "":
		return usageErr("--uid is required")
	case c.needUID && c.channel == "":
		return usageErr("--channel is required")
	case c.server == "":
		return usageErr("--server is required")
	case (c.cert == "") != (c.key == ""):
		return usageErr("--cert and --key go together")
	}
	return nil
}

// keys returns the key setting: the flags, else MLES_KEY and MLES_ADDR_KEY
// (empty counts as unset, as the server reads them).
func (c *connFlags) keys(e env) codec.KeyConfig {
	kc := codec.KeyConfig{SharedKey: e.getenv("MLES_KEY"), AddrKey: e.getenv("MLES_ADDR_KEY")}
	if c.mlesKey != "" {
		kc.SharedKey = c.mlesKey
	}
	if c.mlesAddrKey != "" {
		kc.AddrKey = c.mlesAddrKey
	}
	return kc
}

// options are the client options the flags ask for.
func (c *connFlags) options(e env) []client.Option {
	opts := []client.Option{client.Keys(c.keys(e)), client.DialTimeout(dialTimeout)}
	if c.tls {
		opts = append(opts, client.Secure(nil))
	}
	if c.ca != "" {
		opts = append(opts, client.RootCAs(c.ca))
	}
	if c.cert != "" {
		opts = append(opts, client.ClientCert(c.cert, c.key))
	}
	if c.insecure {
		opts = append(opts, client.InsecureSkipVerify())
	}
	return opts
}

// connect joins (uid, channel) with the flags' options plus extra; the
// connection is closed when the process is told to stop. done, deferred by
// the caller, undoes both.
func (c *connFlags) connect(e env, uid string, extra ...client.Option) (conn *client.Conn, done func(), err error) {
	ctx, cancel := context.WithTimeout(e.ctx, dialTimeout)
	defer cancel()
	conn, err = client.ConnectContext(ctx, c.server, uid, c.channel, append(c.options(e), extra...)...)
	if err != nil {
		return nil, nil, fmt.Errorf("cannot connect to %s: %w", c.server, unwrapClient(err))
	}
	stop := context.AfterFunc(e.ctx, func() { conn.Close() })
	return conn, func() { stop(); conn.Close() }, nil
}

// unwrapClient drops the client's "connecting to ADDR" prefix, which the
// CLI's own message already says.
func unwrapClient(err error) error {
	s := err.Error()
	if rest, ok := strings.CutPrefix(s, "mles client: connecting to "); ok {
		if i := strings.Index(rest, ": "); i >= 0 {
			return errors.New(rest[i+2:])
		}
	}
	return err
}

// closedErr explains a connection the server ended: the protocol has no
// error messages, so a wrong key and a server shutdown look the same.
func closedErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || strings.Contains(err.Error(), "status = StatusBadGateway") {
		return errors.New("the server closed the connection (wrong key? MLES_KEY/--mles-key must match the server's; or the server stopped)")
	}
	return err
}
