package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/mlesd/mlesd/codec"
)

// Options holds every setting of a Conn. Connect fills it from the
// defaults (const.go) and then applies each Option in order.
type Options struct {
	// Keys is how the join key is computed; it must match the server's
	// MLES_KEY / MLES_ADDR_KEY. Unused over WebSocket, where the gateway
	// computes the key.
	Keys codec.KeyConfig
	// JoinMessage is the message of the first frame (the join). Empty is a
	// plain join, which the server does not keep in its history.
	JoinMessage []byte
	// JoinPayload, when set, is the join frame's whole payload, sent byte
	// for byte instead of an encoding of (uid, channel, JoinMessage).
	JoinPayload []byte
	// SendOnly shuts down the receive side after the join.
	SendOnly bool
	// ManualFlush leaves flushing to the caller (Flush) and to a full buffer.
	ManualFlush bool
	// TLSConfig, when set, makes a tcp address a TLS one (and is used for
	// tls:// and wss:// addresses).
	TLSConfig *tls.Config
	// Dialer, when set, opens the byte stream of tcp and tls addresses
	// instead of a net.Dialer.
	Dialer func(ctx context.Context, network, addr string) (net.Conn, error)
	// KeyAddr, when valid, is the address the server sees this client
	// at, hashed by address keys instead of the connection's own.
	KeyAddr netip.AddrPort
	// DialTimeout bounds connecting (0: only the context does).
	DialTimeout time.Duration
	// ReadBufferSize and WriteBufferSize size the buffers.
	ReadBufferSize, WriteBufferSize int
	// MaxReconnects is how many attempts a Conn makes after losing its
	// connection before it gives up (0: none, the default; <0: forever).
	MaxReconnects int
	// ReconnectWait and MaxReconnectWait shape the back-off.
	ReconnectWait, MaxReconnectWait time.Duration
	// HistoryWindow is how many delivered and sent frames are remembered
	// to skip history replayed after a reconnect.
	HistoryWindow int
	// Handlers run one at a time, in order, on a goroutine of their own
	// (never while the Conn holds a lock); they may call any method of the
	// Conn, Close included.
	DisconnectErrHandler func(*Conn, error)
	ReconnectHandler     func(*Conn)
	ClosedHandler        func(*Conn)
}

// Option changes one setting of Options.
type Option func(*Options) error

func defaultOptions() Options {
	return Options{
		DialTimeout:      DefaultDialTimeout,
		ReadBufferSize:   DefaultReadBufferSize,
		WriteBufferSize:  DefaultWriteBufferSize,
		MaxReconnects:    DefaultMaxReconnects,
		ReconnectWait:    DefaultReconnectWait,
		MaxReconnectWait: DefaultMaxReconnectWait,
		HistoryWindow:    DefaultHistoryWindow,
	}
}

// SharedKey sets the shared key (the server's MLES_KEY): the join key is
// SipHash(key, uid, channel). An empty key means address keys.
func SharedKey(key string) Option {
	return func(o *Options) error { o.Keys.SharedKey = key; return nil }
}

// AddrKey sets the server's MLES_ADDR_KEY, mixed into address keys (used
// only without a shared key). Address keys hash this connection's own
// local address, so they only work where the server sees that address
// (not behind NAT).
func AddrKey(x string) Option {
	return func(o *Options) error { o.Keys.AddrKey = x; return nil }
}

// Keys sets both key settings at once (codec.KeyConfigFromEnv reads them
// from MLES_KEY and MLES_ADDR_KEY).
func Keys(kc codec.KeyConfig) Option {
	return func(o *Options) error { o.Keys = kc; return nil }
}

// JoinMessage makes msg the message of the join frame, so that the first
// thing others receive is that message instead of an empty join (the
// original browser client joins with a presence message). A rejoin after a
// reconnect is always a plain, empty join.
func JoinMessage(msg []byte) Option {
	return func(o *Options) error { o.JoinMessage = msg; return nil }
}

// JoinPayload makes payload, an already encoded CBOR triplet for this
// Conn's (uid, channel), the join frame's payload, byte for byte (for a
// gateway that must pass its clients' bytes unchanged). It is checked to
// be a triplet of this (uid, channel). A rejoin after a reconnect is
// still a plain, empty join.
func JoinPayload(payload []byte) Option {
	return func(o *Options) error { o.JoinPayload = payload; return nil }
}

// SendOnly makes the Conn send-only: after the join it shuts down its
// receive side, the protocol's way to say so. Next and Msgs then return
// ErrSendOnly. Over WebSocket the gateway cannot be told; the Conn reads
// and discards instead.
func SendOnly() Option {
	return func(o *Options) error { o.SendOnly = true; return nil }
}

// ManualFlush turns the background flusher off: Send only buffers, and
// frames go out when the write buffer is full, on Flush, or on Close. For
// publishers that send in bursts and flush at the end of each: fewer,
// larger writes than the flusher's "soon after each Send". Without it a
// frame sent alone goes out at once.
func ManualFlush() Option {
	return func(o *Options) error { o.ManualFlush = true; return nil }
}

// Secure sets the TLS configuration (nil: a default one). With it a plain
// host:port address is dialled with TLS.
func Secure(cfg *tls.Config) Option {
	return func(o *Options) error {
		if cfg == nil {
			cfg = &tls.Config{}
		}
		o.TLSConfig = cfg.Clone()
		return nil
	}
}

func (o *Options) tlsConfig() *tls.Config {
	if o.TLSConfig == nil {
		o.TLSConfig = &tls.Config{}
	}
	return o.TLSConfig
}

// RootCAs verifies the server's certificate against the CA certificates
// in the given PEM files instead of the system's roots. It implies TLS.
func RootCAs(files ...string) Option {
	return func(o *Options) error {
		pool := x509.NewCertPool()
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				return fmt.Errorf("mles client: CA file: %w", err)
			}
			if !pool.AppendCertsFromPEM(b) {
				return fmt.Errorf("mles client: CA file %s: no PEM certificate", f)
			}
		}
		o.tlsConfig().RootCAs = pool
		return nil
	}
}

// ClientCert presents the certificate and key in the PEM files to a server
// that requires client certificates. It implies TLS.
func ClientCert(certFile, keyFile string) Option {
	return func(o *Options) error {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return fmt.Errorf("mles client: client certificate: %w", err)
		}
		o.tlsConfig().Certificates = []tls.Certificate{cert}
		return nil
	}
}

// InsecureSkipVerify accepts any server certificate. For tests only: it
// makes TLS open to a man in the middle. It implies TLS.
func InsecureSkipVerify() Option {
	return func(o *Options) error { o.tlsConfig().InsecureSkipVerify = true; return nil }
}

// Dialer makes the Conn open the byte stream of tcp and tls addresses
// (for the first connection and every reconnect) with dial instead of a
// net.Dialer: through a proxy, in another network namespace, or to a
// server in the same process over a socketpair (the gateway hands one end
// to mlesd's engine). dial gets the address as "host:port". The stream is
// used as it is: TCP_NODELAY is set only on a *net.TCPConn, and a send-only
// or draining Conn shuts down one direction only of a stream that has
// CloseRead and CloseWrite (*net.TCPConn, *net.UnixConn). Unused over
// WebSocket.
func Dialer(dial func(ctx context.Context, network, addr string) (net.Conn, error)) Option {
	return func(o *Options) error { o.Dialer = dial; return nil }
}

// KeyAddr makes address keys hash addr, the address the server sees this
// client at, instead of the connection's own local address: for a stream
// from Dialer that the server is told comes from addr (a socketpair the
// engine adopts with the WebSocket client's address). An IPv4-mapped
// address is hashed in its IPv4 form, as the server accepts. Unused with a
// shared key.
func KeyAddr(addr netip.AddrPort) Option {
	return func(o *Options) error {
		if !addr.IsValid() {
			return errors.New("mles client: KeyAddr wants a valid address and port")
		}
		o.KeyAddr = addr
		return nil
	}
}

// DialTimeout bounds connecting (0: DefaultDialTimeout; Off: only the
// context given to Connect bounds it).
func DialTimeout(d time.Duration) Option {
	return func(o *Options) error {
		switch {
		case d == 0:
			d = DefaultDialTimeout
		case d < 0:
			d = 0 // off
		}
		o.DialTimeout = d
		return nil
	}
}

// BufferSizes sets the read and write buffer sizes (defaults
// DefaultReadBufferSize, DefaultWriteBufferSize); 0 keeps a default.
// Buffers cannot be off: a negative size is an error.
func BufferSizes(read, write int) Option {
	return func(o *Options) error {
		if read < 0 || write < 0 {
			return errors.New("mles client: buffer sizes must not be negative")
		}
		if read > 0 {
			o.ReadBufferSize = max(read, codec.HeaderLen)
		}
		if write > 0 {
			o.WriteBufferSize = write
		}
		return nil
	}
}

// MaxReconnects turns reconnecting on: after losing its connection the Conn
// makes up to n attempts (n < 0: forever) with a growing wait, rejoins the
// same (uid, channel), and skips replayed history it has already delivered
// (see the package documentation for exactly what is guaranteed). n = 0
// is the default, DefaultMaxReconnects: no reconnecting; a negative n
// (Off, the limit off) reconnects forever.
func MaxReconnects(n int) Option {
	return func(o *Options) error { o.MaxReconnects = n; return nil }
}

// ReconnectWait sets the first wait before reconnecting and its cap; each
// failed attempt doubles the wait. 0 keeps a default (DefaultReconnectWait,
// DefaultMaxReconnectWait); neither can be off.
func ReconnectWait(first, maxWait time.Duration) Option {
	return func(o *Options) error {
		if first == 0 {
			first = DefaultReconnectWait
		}
		if maxWait == 0 {
			maxWait = max(DefaultMaxReconnectWait, first)
		}
		if first < 0 || maxWait < first {
			return errors.New("mles client: ReconnectWait wants 0 < first <= max")
		}
		o.ReconnectWait, o.MaxReconnectWait = first, maxWait
		return nil
	}
}

// HistoryWindow sets how many delivered and sent frames are remembered to
// skip replayed history after a reconnect; it should be at least the
// server's --history-limit (0: DefaultHistoryWindow; Off: none remembered,
// so a reconnect delivers the whole replay again).
func HistoryWindow(n int) Option {
	return func(o *Options) error {
		switch {
		case n == 0:
			n = DefaultHistoryWindow
		case n < 0:
			n = 0 // off
		}
		o.HistoryWindow = n
		return nil
	}
}

// DisconnectErrHandler is called when the connection is lost, with the
// reason, before any reconnect attempt.
func DisconnectErrHandler(f func(*Conn, error)) Option {
	return func(o *Options) error { o.DisconnectErrHandler = f; return nil }
}

// ReconnectHandler is called after a reconnect has rejoined.
func ReconnectHandler(f func(*Conn)) Option {
	return func(o *Options) error { o.ReconnectHandler = f; return nil }
}

// ClosedHandler is called once when the Conn is finally closed: by Close,
// or when the connection is lost and not (or no longer) reconnected.
func ClosedHandler(f func(*Conn)) Option {
	return func(o *Options) error { o.ClosedHandler = f; return nil }
}
