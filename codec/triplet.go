package codec

import (
	"errors"
	"fmt"
	"slices"
	"unicode/utf8"

	"github.com/fxamacker/cbor/v2"
)

// Triplet is the payload of an ordinary Mles frame.
type Triplet struct {
	UID     string
	Channel string
	Message []byte
}

// decMode is the one CBOR decoder configuration of the package.
//
// uid and channel: text strings; byte strings holding valid UTF-8 are also
// accepted, as serde's String visitor does (ByteStringToStringAllowed plus
// our own UTF-8 check). message: a byte string only (see wireBytes).
var decMode = func() cbor.DecMode {
	dm, err := decOptions.DecMode()
	if err != nil {
		panic(err)
	}
	return dm
}()

// decOptions are decMode's options (a ResyncDecoder changes only its array cap).
var decOptions = cbor.DecOptions{
	DupMapKey:          cbor.DupMapKeyQuiet,
	MaxNestedLevels:    8,
	MaxArrayElements:   1 << 24, // a resync of a full 16 MiB payload cannot hold more
	MaxMapPairs:        1 << 24,
	IndefLength:        cbor.IndefLengthAllowed,
	TagsMd:             cbor.TagsAllowed,
	UTF8:               cbor.UTF8RejectInvalid,
	FieldNameMatching:  cbor.FieldNameMatchingCaseSensitive,
	ByteStringToString: cbor.ByteStringToStringAllowed,
}

var errNotByteString = errors.New("cbor: expected a byte string")

// wireBytes is a CBOR byte string (major type 2). fxamacker would also
// decode an array of small integers into a []byte; serde_bytes accepts
// sequences and text too, but this project accepts only byte strings
// (definite or indefinite length; a tagged byte string is rejected).
type wireBytes []byte

func (w *wireBytes) UnmarshalCBOR(data []byte) error {
	if len(data) == 0 || data[0]>>5 != 2 {
		return errNotByteString
	}
	var b []byte
	if err := decMode.Unmarshal(data, &b); err != nil {
		return err
	}
	if b == nil {
		b = []byte{}
	}
	*w = b
	return nil
}

type wireTriplet struct {
	UID     *string    `cbor:"uid"`
	Channel *string    `cbor:"channel"`
	Message *wireBytes `cbor:"message"`
}

// DecodeTriplet decodes a triplet payload. It accepts any well-formed CBOR
// map that carries the keys "uid" (text string), "channel" (text string) and
// "message" (byte string), in any order; other keys are ignored, key names
// are matched case-sensitively, and a duplicated key keeps its last value.
// uid and channel may also be byte strings if they hold valid UTF-8 (as
// serde's String visitor allows). A missing or null field, a wrong type,
// invalid UTF-8, malformed CBOR or bytes after the map give an error that
// wraps ErrNotTriplet. Message is never nil on success (it is empty for an
// empty byte string) and does not alias payload. DecodeTriplet never panics.
func DecodeTriplet(payload []byte) (Triplet, error) {
	var w wireTriplet
	if err := decMode.Unmarshal(payload, &w); err != nil {
		return Triplet{}, fmt.Errorf("%w: %w", ErrNotTriplet, err)
	}
	switch {
	case w.UID == nil:
		return Triplet{}, fmt.Errorf("%w: missing field uid", ErrNotTriplet)
	case w.Channel == nil:
		return Triplet{}, fmt.Errorf("%w: missing field channel", ErrNotTriplet)
	case w.Message == nil:
		return Triplet{}, fmt.Errorf("%w: missing field message", ErrNotTriplet)
	}
	// Text strings were already UTF-8 checked by the decoder; byte strings
	// decoded into a string were not.
	if !utf8.ValidString(*w.UID) || !utf8.ValidString(*w.Channel) {
		return Triplet{}, fmt.Errorf("%w: invalid UTF-8", ErrNotTriplet)
	}
	return Triplet{UID: *w.UID, Channel: *w.Channel, Message: []byte(*w.Message)}, nil
}

// CBOR major types, shifted into the high 3 bits of the initial byte.
const (
	majBytes = 2 << 5
	majText  = 3 << 5
	majArray = 4 << 5
	majMap   = 5 << 5
)

// headLen is the size of the shortest-form CBOR head for argument n.
func headLen(n uint64) int {
	switch {
	case n < 24:
		return 1
	case n <= 0xFF:
		return 2
	case n <= 0xFFFF:
		return 3
	case n <= 0xFFFFFFFF:
		return 5
	default:
		return 9
	}
}

// appendHead appends the shortest-form head for major type maj and argument n.
func appendHead(dst []byte, maj byte, n uint64) []byte {
	switch {
	case n < 24:
		return append(dst, maj|byte(n))
	case n <= 0xFF:
		return append(dst, maj|24, byte(n))
	case n <= 0xFFFF:
		return append(dst, maj|25, byte(n>>8), byte(n))
	case n <= 0xFFFFFFFF:
		return append(dst, maj|26, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	default:
		return append(dst, maj|27, byte(n>>56), byte(n>>48), byte(n>>40), byte(n>>32),
			byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
}

// Encoded map keys, with their text-string heads.
const (
	keyUID     = "\x63uid"
	keyChannel = "\x67channel"
	keyMessage = "\x67message"
)

// TripletLen returns the exact length of AppendTriplet's encoding of t.
func TripletLen(t Triplet) int {
	return 1 + len(keyUID) + headLen(uint64(len(t.UID))) + len(t.UID) +
		len(keyChannel) + headLen(uint64(len(t.Channel))) + len(t.Channel) +
		len(keyMessage) + headLen(uint64(len(t.Message))) + len(t.Message)
}

// AppendTriplet appends the CBOR encoding of t exactly as serde_cbor 0.11
// writes the original Msg struct: a 3-entry map with the text keys "uid",
// "channel", "message" in that order, uid and channel as text strings,
// message as a byte string (0x40 when empty or nil), all with definite,
// shortest-form heads. It does not check that UID and Channel are valid
// UTF-8. It does not allocate when dst has room for TripletLen(t) more bytes.
func AppendTriplet(dst []byte, t Triplet) []byte {
	dst = append(dst, majMap|3)
	dst = append(dst, keyUID...)
	dst = appendHead(dst, majText, uint64(len(t.UID)))
	dst = append(dst, t.UID...)
	dst = append(dst, keyChannel...)
	dst = appendHead(dst, majText, uint64(len(t.Channel)))
	dst = append(dst, t.Channel...)
	dst = append(dst, keyMessage...)
	dst = appendHead(dst, majBytes, uint64(len(t.Message)))
	return append(dst, t.Message...)
}

// AppendFrame appends a whole frame for t to dst: the header (Len = the
// triplet's encoded length, CID = CIDOf(key), Key = key) and the triplet.
// If the triplet would encode to more than MaxPayloadLen bytes it returns
// dst unchanged and ErrPayloadTooLarge.
func AppendFrame(dst []byte, key uint64, t Triplet) ([]byte, error) {
	n := TripletLen(t)
	if n > MaxPayloadLen {
		return dst, ErrPayloadTooLarge
	}
	dst = slices.Grow(dst, HeaderLen+n)
	dst = AppendHeader(dst, Header{Len: n, CID: CIDOf(key), Key: key})
	return AppendTriplet(dst, t), nil
}
