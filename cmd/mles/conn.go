package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/gateway/client"
)

// dialTimeout bounds connecting to the server.
const dialTimeout = 10 * time.Second

// connFlags are the flags shared by chat, pub and sub.
type connFlags struct {
	server, uid, channel, key string
}

func (c *connFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.server, "server", "localhost:8077", "Mles server `host[:port]` (port 8077 when omitted)")
	fs.StringVar(&c.uid, "uid", "", "user id (required)")
	fs.StringVar(&c.channel, "channel", "", "channel (required)")
	fs.StringVar(&c.key, "key", "", "shared key (default $MLES_KEY); must match the server's")
}

func (c *connFlags) check(_ *flag.FlagSet) error {
	switch {
	case c.uid == "":
		return usageErr("--uid is required")
	case c.channel == "":
		return usageErr("--channel is required")
	case c.server == "":
		return usageErr("--server is required")
	}
	return nil
}

// keys returns the key setting: --key, else MLES_KEY; MLES_ADDR_KEY as the
// server reads it (empty counts as unset).
func (c *connFlags) keys(e env) codec.KeyConfig {
	kc := codec.KeyConfig{SharedKey: e.getenv("MLES_KEY"), AddrKey: e.getenv("MLES_ADDR_KEY")}
	if c.key != "" {
		kc.SharedKey = c.key
	}
	return kc
}

func (c *connFlags) dial(e env) (*client.Conn, error) {
	ctx, cancel := context.WithTimeout(e.ctx, dialTimeout)
	defer cancel()
	conn, err := client.Dial(ctx, c.server, c.keys(e), c.uid, c.channel)
	if err != nil {
		return nil, fmt.Errorf("cannot connect to %s: %w", client.ServerAddr(c.server), err)
	}
	return conn, nil
}

// open dials like dial and also closes the connection when the process is
// told to stop; done, deferred by the caller, undoes both.
func (c *connFlags) open(e env) (conn *client.Conn, done func(), err error) {
	if conn, err = c.dial(e); err != nil {
		return nil, nil, err
	}
	stop := onStop(e, func() { conn.Close() })
	return conn, func() { stop(); conn.Close() }, nil
}

// closedErr explains a connection the server ended: the protocol has no
// error messages, so a wrong key and a server shutdown look the same.
func closedErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		strings.Contains(err.Error(), "connection reset") {
		return errors.New("the server closed the connection (wrong key? MLES_KEY/--key must match the server's; or the server stopped)")
	}
	return err
}

// serverAddr is the server address with port 8077 added when missing.
func serverAddr(s string) string { return client.ServerAddr(s) }
