package codec

import (
	"encoding/binary"
	"errors"
)

const (
	// HeaderLen is the length of the frame header in bytes.
	HeaderLen = 16
	// Magic is byte 0 of every frame.
	Magic = 'M'
	// MaxPayloadLen is the largest payload the 24-bit length field can carry.
	MaxPayloadLen = 0xFFFFFF
	// DefaultPort is the IANA port of Mles.
	DefaultPort = 8077
)

var (
	// ErrShortHeader: fewer than HeaderLen bytes were given to ParseHeader.
	ErrShortHeader = errors.New("mles: short frame header")
	// ErrBadMagic: the first byte of a frame is not 'M'.
	ErrBadMagic = errors.New("mles: bad frame magic")
	// ErrZeroLength: the frame header announces a payload of length 0.
	ErrZeroLength = errors.New("mles: zero payload length")
	// ErrPayloadTooLarge: an encoder was asked to emit a payload longer than MaxPayloadLen.
	ErrPayloadTooLarge = errors.New("mles: payload too large")
	// ErrNotTriplet: a payload is not a valid (uid, channel, message) triplet.
	ErrNotTriplet = errors.New("mles: payload is not a triplet")
	// ErrNotResync: a payload is not a resync message with at least one entry.
	ErrNotResync = errors.New("mles: payload is not a resync")
	// ErrResyncTooLarge: a resync holds more entries than a ResyncDecoder's cap.
	ErrResyncTooLarge = errors.New("mles: resync has too many entries")
)

// Header is a decoded frame header.
type Header struct {
	Len int    // payload length, 1..MaxPayloadLen
	CID uint32 // connection id
	Key uint64 // SipHash key
}

// ParseHeader decodes the header in b[0:HeaderLen]. Bytes after the header
// are ignored. It never panics and does not allocate.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderLen {
		return Header{}, ErrShortHeader
	}
	if b[0] != Magic {
		return Header{}, ErrBadMagic
	}
	n := int(b[1])<<16 | int(b[2])<<8 | int(b[3])
	if n == 0 {
		return Header{}, ErrZeroLength
	}
	return Header{
		Len: n,
		CID: binary.BigEndian.Uint32(b[4:8]),
		Key: binary.BigEndian.Uint64(b[8:16]),
	}, nil
}

// Put writes the 16 header bytes into dst[0:HeaderLen]; the caller
// guarantees len(dst) >= HeaderLen. Only the low 24 bits of h.Len are
// written; h.Len is not validated (callers that build frames use
// AppendFrame, which does).
func (h Header) Put(dst []byte) {
	_ = dst[HeaderLen-1]
	dst[0] = Magic
	dst[1] = byte(h.Len >> 16)
	dst[2] = byte(h.Len >> 8)
	dst[3] = byte(h.Len)
	binary.BigEndian.PutUint32(dst[4:8], h.CID)
	binary.BigEndian.PutUint64(dst[8:16], h.Key)
}

// AppendHeader appends the 16 header bytes of h to dst.
func AppendHeader(dst []byte, h Header) []byte {
	dst = append(dst, Magic, byte(h.Len>>16), byte(h.Len>>8), byte(h.Len))
	dst = binary.BigEndian.AppendUint32(dst, h.CID)
	return binary.BigEndian.AppendUint64(dst, h.Key)
}

// CIDOf returns the CID that belongs to a key: its low 32 bits.
func CIDOf(key uint64) uint32 { return uint32(key) }
