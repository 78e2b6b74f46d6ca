// Package client is one Mles client connection over TCP, as the protocol
// defines it: dial, compute the join key the way a client does (shared key,
// or the connection's own local address), send triplets with the 16-byte
// header, and read whole frames.
//
// One Conn serves exactly one (uid, channel), like a Mles connection. The
// first frame sent is the join. A Conn is not safe for concurrent use by
// several writers or several readers; one writer goroutine and one reader
// goroutine at a time is fine.
package client

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/mlesd/mlesd/codec"
)

// readBufferSize is the buffered reader's size; frames larger than this
// are read straight into their own payload slice.
const readBufferSize = 64 << 10

// Conn is a Mles connection joined (after its first Send) to one
// (uid, channel).
type Conn struct {
	nc      net.Conn
	br      *bufio.Reader
	uid     string
	channel string
	key     uint64
	wbuf    []byte
	hdr     [codec.HeaderLen]byte
}

// ServerAddr returns addr with the Mles port 8077 added when it has none:
// "host" → "host:8077", "::1" → "[::1]:8077", "[::1]" → "[::1]:8077".
func ServerAddr(addr string) string {
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return addr
	}
	host := strings.TrimSuffix(strings.TrimPrefix(addr, "["), "]")
	return net.JoinHostPort(host, strconv.Itoa(codec.DefaultPort))
}

// Dial opens a TCP connection to the Mles server at addr (port 8077 when
// addr has none) for (uid, channel) and computes its key with keys: the
// shared key when set, else the connection's own local address as the
// server sees it (plus keys.AddrKey when set). It sends nothing; the first
// Send or SendPayload is the join.
func Dial(ctx context.Context, addr string, keys codec.KeyConfig, uid, channel string) (*Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", ServerAddr(addr))
	if err != nil {
		return nil, err
	}
	return New(nc, keys, uid, channel), nil
}

// New wraps an open connection to a Mles server (see Dial).
func New(nc net.Conn, keys codec.KeyConfig, uid, channel string) *Conn {
	return &Conn{
		nc:      nc,
		br:      bufio.NewReaderSize(nc, readBufferSize),
		uid:     uid,
		channel: channel,
		key:     keys.ClientKey(LocalAddrPort(nc), uid, channel),
	}
}

// NewAs wraps nc, a connection the Mles server sees as coming from addr
// (for example one end of a socketpair whose other end was handed to the
// engine with addr as the client's address): the key is computed with
// addr instead of nc's local address. readBuf is the read buffer's size
// (0: the default); frames larger than it are read straight into their
// payload, so a small buffer costs nothing but system calls.
func NewAs(nc net.Conn, addr netip.AddrPort, readBuf int, keys codec.KeyConfig, uid, channel string) *Conn {
	if readBuf <= 0 {
		readBuf = readBufferSize
	}
	return &Conn{
		nc:      nc,
		br:      bufio.NewReaderSize(nc, readBuf),
		uid:     uid,
		channel: channel,
		key:     keys.ClientKey(netip.AddrPortFrom(addr.Addr().Unmap().WithZone(""), addr.Port()), uid, channel),
	}
}

// LocalAddrPort is nc's local address in the form a client hashes: an
// IPv4-mapped IPv6 address is given as plain IPv4 (the server accepts that
// form from IPv4 clients of a dual-stack listener, and an IPv4 listener
// sees nothing else).
func LocalAddrPort(nc net.Conn) netip.AddrPort {
	ta, ok := nc.LocalAddr().(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}
	}
	ap := ta.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())
}

// Key is the 64-bit key of this connection's frames; its low half is the CID.
func (c *Conn) Key() uint64 { return c.key }

// UID and Channel name the connection's (uid, channel).
func (c *Conn) UID() string     { return c.uid }
func (c *Conn) Channel() string { return c.channel }

// NetConn is the underlying TCP connection.
func (c *Conn) NetConn() net.Conn { return c.nc }

// Send sends one frame carrying the triplet (uid, channel, msg). msg may be
// empty (a plain join, when it is the first frame).
func (c *Conn) Send(msg []byte) error {
	f, err := codec.AppendFrame(c.wbuf[:0], c.key, codec.Triplet{UID: c.uid, Channel: c.channel, Message: msg})
	if err != nil {
		return err
	}
	if cap(f) <= 1<<20 {
		c.wbuf = f // keep moderate buffers for the next frame
	}
	_, err = c.nc.Write(f)
	return err
}

// SendPayload sends payload, an already encoded CBOR triplet, byte for
// byte behind a header carrying this connection's key and CID. It does not
// copy payload (header and payload go out in one writev).
func (c *Conn) SendPayload(payload []byte) error {
	if len(payload) == 0 {
		return codec.ErrZeroLength
	}
	if len(payload) > codec.MaxPayloadLen {
		return codec.ErrPayloadTooLarge
	}
	codec.Header{Len: len(payload), CID: codec.CIDOf(c.key), Key: c.key}.Put(c.hdr[:])
	bufs := net.Buffers{c.hdr[:], payload}
	_, err := bufs.WriteTo(c.nc)
	return err
}

// ErrBadFrame wraps a header the server sent that is not a valid frame header.
var ErrBadFrame = errors.New("mles client: bad frame from server")

// ReadFrame reads the next whole frame and returns its header and its
// payload (a fresh slice the caller may keep). At the end of the stream
// it returns io.EOF (or io.ErrUnexpectedEOF inside a frame).
func (c *Conn) ReadFrame() (codec.Header, []byte, error) {
	var hb [codec.HeaderLen]byte
	if _, err := io.ReadFull(c.br, hb[:]); err != nil {
		return codec.Header{}, nil, err
	}
	h, err := codec.ParseHeader(hb[:])
	if err != nil {
		return codec.Header{}, nil, fmt.Errorf("%w: %w", ErrBadFrame, err)
	}
	payload := make([]byte, h.Len)
	if _, err := io.ReadFull(c.br, payload); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return codec.Header{}, nil, err
	}
	return h, payload, nil
}

// ReadTriplet reads the next frame and decodes its triplet.
func (c *Conn) ReadTriplet() (codec.Header, codec.Triplet, error) {
	h, p, err := c.ReadFrame()
	if err != nil {
		return h, codec.Triplet{}, err
	}
	t, err := codec.DecodeTriplet(p)
	return h, t, err
}

// CloseWrite shuts down the sending side (the server then closes the
// connection once it has handled everything sent before).
func (c *Conn) CloseWrite() error {
	if tc, ok := c.nc.(*net.TCPConn); ok {
		return tc.CloseWrite()
	}
	return c.nc.Close()
}

// Close closes the connection.
func (c *Conn) Close() error { return c.nc.Close() }
