package gateway

import (
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/fxamacker/cbor/v2"

	"github.com/mlesd/mlesd/codec"
)

// pairMode decodes a triplet exactly as codec.DecodeTriplet does (the same
// options; FuzzDecodePairMatchesDecodeTriplet holds the two together), but
// the message is only checked, never copied: the gateway needs just
// (uid, channel) to route a message of up to 16 MiB, and a copy per
// message would be garbage of that size.
var pairMode = func() cbor.DecMode {
	dm, err := cbor.DecOptions{
		DupMapKey:          cbor.DupMapKeyQuiet,
		MaxNestedLevels:    8,
		MaxArrayElements:   1 << 24,
		MaxMapPairs:        1 << 24,
		IndefLength:        cbor.IndefLengthAllowed,
		TagsMd:             cbor.TagsAllowed,
		UTF8:               cbor.UTF8RejectInvalid,
		FieldNameMatching:  cbor.FieldNameMatchingCaseSensitive,
		ByteStringToString: cbor.ByteStringToStringAllowed,
	}.DecMode()
	if err != nil {
		panic(err)
	}
	return dm
}()

var errNotByteString = errors.New("cbor: expected a byte string")

// byteString checks that a field is a CBOR byte string (definite or
// indefinite length, untagged) without keeping it. The decoder has checked
// the whole input is well formed before it calls UnmarshalCBOR, and an
// indefinite-length byte string may only hold byte-string chunks.
type byteString bool

func (b *byteString) UnmarshalCBOR(data []byte) error {
	if len(data) == 0 || data[0]>>5 != 2 {
		return errNotByteString
	}
	*b = true
	return nil
}

type pairFields struct {
	UID     *string     `cbor:"uid"`
	Channel *string     `cbor:"channel"`
	Message *byteString `cbor:"message"`
}

// decodePair returns the (uid, channel) of a triplet payload, with the
// same acceptance as codec.DecodeTriplet; errors wrap codec.ErrNotTriplet.
// It does not retain payload.
func decodePair(payload []byte) (pair, error) {
	var f pairFields
	if err := pairMode.Unmarshal(payload, &f); err != nil {
		return pair{}, fmt.Errorf("%w: %w", codec.ErrNotTriplet, err)
	}
	switch {
	case f.UID == nil:
		return pair{}, fmt.Errorf("%w: missing field uid", codec.ErrNotTriplet)
	case f.Channel == nil:
		return pair{}, fmt.Errorf("%w: missing field channel", codec.ErrNotTriplet)
	case f.Message == nil:
		return pair{}, fmt.Errorf("%w: missing field message", codec.ErrNotTriplet)
	}
	if !utf8.ValidString(*f.UID) || !utf8.ValidString(*f.Channel) {
		return pair{}, fmt.Errorf("%w: invalid UTF-8", codec.ErrNotTriplet)
	}
	return pair{*f.UID, *f.Channel}, nil
}
