package codec

import "fmt"

type wireResyncEntry struct {
	Msg *wireBytes `cbor:"encoded_msg"`
}

type wireResync struct {
	Entries []wireResyncEntry `cbor:"resync_message"`
}

// DecodeResync decodes a resync payload,
// {"resync_message": [{"encoded_msg": <bytes>}, ...]}, and returns the
// encoded_msg byte strings in order. Each should be a whole frame (header
// plus triplet), but that is not checked here: the caller validates them.
// The returned slices are fresh copies: they do NOT alias payload.
//
// Anything that is not such a map with at least one entry, including an
// ordinary triplet payload, malformed CBOR, trailing bytes, an entry without
// encoded_msg, or an encoded_msg that is not a byte string, gives an error
// that wraps ErrNotResync, so callers can fall back to DecodeTriplet. Extra
// keys are ignored, as serde does. DecodeResync never panics.
func DecodeResync(payload []byte) ([][]byte, error) {
	var w wireResync
	if err := decMode.Unmarshal(payload, &w); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotResync, err)
	}
	if len(w.Entries) == 0 {
		return nil, ErrNotResync
	}
	out := make([][]byte, len(w.Entries))
	for i, e := range w.Entries {
		if e.Msg == nil {
			return nil, fmt.Errorf("%w: entry %d: missing field encoded_msg", ErrNotResync, i)
		}
		out[i] = []byte(*e.Msg)
	}
	return out, nil
}

// Encoded map keys of the resync payload, with their text-string heads.
const (
	keyResyncMessage = "\x6eresync_message"
	keyEncodedMsg    = "\x6bencoded_msg"
)

// ResyncLen returns the exact length of AppendResync's encoding of frames.
func ResyncLen(frames [][]byte) int {
	n := 1 + len(keyResyncMessage) + headLen(uint64(len(frames)))
	for _, f := range frames {
		n += 1 + len(keyEncodedMsg) + headLen(uint64(len(f))) + len(f)
	}
	return n
}

// AppendResync appends the resync payload carrying frames exactly as
// serde_cbor 0.11 writes the original ResyncMsg: a 1-entry map, key
// "resync_message", a definite array of 1-entry maps {"encoded_msg": bytes}.
// Zero frames give a valid (empty-array) encoding, which receivers treat as
// "not a resync". The caller checks the result against MaxPayloadLen.
func AppendResync(dst []byte, frames [][]byte) []byte {
	dst = append(dst, majMap|1)
	dst = append(dst, keyResyncMessage...)
	dst = appendHead(dst, majArray, uint64(len(frames)))
	for _, f := range frames {
		dst = append(dst, majMap|1)
		dst = append(dst, keyEncodedMsg...)
		dst = appendHead(dst, majBytes, uint64(len(f)))
		dst = append(dst, f...)
	}
	return dst
}
