package codec

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"
)

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
// It bounds nothing but what the payload's size does; servers use a
// ResyncDecoder.
func DecodeResync(payload []byte) ([][]byte, error) {
	return decodeResync(decMode, payload, 0)
}

// ResyncDecoder is DecodeResync with a cap on the entries of a resync, for
// servers: a resync of many entries must cost little to refuse and little
// to decode (issue 11).
//
// The encoding every known sender writes (serde_cbor's and AppendResync's:
// a definite 1-entry map, then a definite or indefinite array of 1-entry
// maps {"encoded_msg": definite byte string}) is scanned by hand in one pass
// that allocates only the result and stops at the entry past the cap. Any
// other encoding goes to the CBOR library, whose well-formedness pass, given
// the cap as its array limit, also stops at the entry past it. Safe for
// concurrent use.
type ResyncDecoder struct {
	max int
	dm  cbor.DecMode
}

// NewResyncDecoder returns a decoder that refuses a resync of more than
// maxEntries entries (inner frames) with ErrResyncTooLarge. maxEntries <= 0
// means no cap but the payload's size.
func NewResyncDecoder(maxEntries int) *ResyncDecoder {
	if maxEntries <= 0 {
		return &ResyncDecoder{dm: decMode}
	}
	if maxEntries >= decOptions.MaxArrayElements { // more than a payload can hold
		return &ResyncDecoder{max: maxEntries, dm: decMode}
	}
	opts := decOptions
	// fxamacker's smallest array cap is 16; decodeResync checks the count after.
	opts.MaxArrayElements = max(maxEntries, 16)
	dm, err := opts.DecMode()
	if err != nil {
		panic(err) // cannot happen: decMode's options with a valid array cap
	}
	return &ResyncDecoder{max: maxEntries, dm: dm}
}

// MaxEntries is the decoder's cap (0 = none).
func (d *ResyncDecoder) MaxEntries() int { return d.max }

// Decode is DecodeResync, except that
//   - a resync of more than the decoder's cap of entries gives an error that
//     wraps ErrResyncTooLarge (and not ErrNotResync: it is a resync, not
//     something to try as a triplet); so does, in an encoding other than the
//     usual one, a payload that holds the key "resync_message", is not a
//     triplet, and holds any array longer than the cap;
//   - the returned slices may alias payload.
func (d *ResyncDecoder) Decode(payload []byte) ([][]byte, error) {
	switch out, res := scanResync(payload, d.max); res {
	case scanned:
		return out, nil
	case scannedTooMany:
		return nil, fmt.Errorf("%w: more than %d entries", ErrResyncTooLarge, d.max)
	}
	out, err := decodeResync(d.dm, payload, d.max)
	var tooMany *cbor.MaxArrayElementsError
	if d.max > 0 && errors.As(err, &tooMany) && bytes.Contains(payload, []byte(keyResyncMessage)) {
		if _, terr := DecodeTriplet(payload); terr != nil {
			return nil, fmt.Errorf("%w: more than %d entries", ErrResyncTooLarge, d.max)
		}
	}
	return out, err
}

func decodeResync(dm cbor.DecMode, payload []byte, maxEntries int) ([][]byte, error) {
	var w wireResync
	if err := dm.Unmarshal(payload, &w); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotResync, err)
	}
	if len(w.Entries) == 0 {
		return nil, ErrNotResync
	}
	if maxEntries > 0 && len(w.Entries) > maxEntries {
		return nil, fmt.Errorf("%w: %d entries, the most is %d", ErrResyncTooLarge, len(w.Entries), maxEntries)
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

type scanResult int

const (
	notScanned     scanResult = iota // not the usual encoding (maybe not a resync): decode it
	scanned                          // a resync within the cap
	scannedTooMany                   // a resync past the cap (the rest unread)
)

// minScannedEntry is the shortest entry of the usual encoding: a 1-entry map,
// the key, an empty byte string.
const minScannedEntry = 1 + len(keyEncodedMsg) + 1

// scanResync reads a resync in the usual encoding (see ResyncDecoder),
// returning entries that alias p. Anything else, an empty array included,
// is notScanned: the CBOR library then decides, so that what is accepted,
// and how, stays exactly DecodeResync's.
func scanResync(p []byte, maxEntries int) ([][]byte, scanResult) {
	if len(p) < 1+len(keyResyncMessage)+1 || p[0] != majMap|1 || string(p[1:1+len(keyResyncMessage)]) != keyResyncMessage {
		return nil, notScanned
	}
	i := 1 + len(keyResyncMessage)
	indefinite := p[i] == majArray|31
	var n uint64
	if indefinite {
		i++
	} else {
		var ok bool
		if n, i, ok = readHead(p, i, majArray); !ok || n == 0 {
			return nil, notScanned
		}
		if maxEntries > 0 && n > uint64(maxEntries) {
			return nil, scannedTooMany
		}
		if n > uint64((len(p)-i)/minScannedEntry) {
			return nil, notScanned // cannot fit: malformed
		}
	}
	out := make([][]byte, 0, min(n, uint64((len(p)-i)/minScannedEntry)))
	for {
		if indefinite {
			if i < len(p) && p[i] == 0xff {
				i++
				break
			}
		} else if uint64(len(out)) == n {
			break
		}
		if maxEntries > 0 && len(out) == maxEntries {
			return nil, scannedTooMany
		}
		if len(p)-i < minScannedEntry || p[i] != majMap|1 || string(p[i+1:i+1+len(keyEncodedMsg)]) != keyEncodedMsg {
			return nil, notScanned
		}
		l, j, ok := readHead(p, i+1+len(keyEncodedMsg), majBytes)
		if !ok || l > uint64(len(p)-j) {
			return nil, notScanned
		}
		out = append(out, p[j:j+int(l):j+int(l)])
		i = j + int(l)
	}
	if i != len(p) || len(out) == 0 {
		return nil, notScanned
	}
	return out, scanned
}

// readHead reads a definite-length CBOR head of major type maj at p[i]
// (any length encoding, as the library accepts), returning its argument
// and the index after it.
func readHead(p []byte, i int, maj byte) (n uint64, next int, ok bool) {
	if i >= len(p) || p[i]&0xe0 != maj {
		return 0, i, false
	}
	ai := p[i] & 0x1f
	i++
	var size int
	switch {
	case ai < 24:
		return uint64(ai), i, true
	case ai == 24:
		size = 1
	case ai == 25:
		size = 2
	case ai == 26:
		size = 4
	case ai == 27:
		size = 8
	default:
		return 0, i, false // indefinite or reserved
	}
	if len(p)-i < size {
		return 0, i, false
	}
	for _, b := range p[i : i+size] {
		n = n<<8 | uint64(b)
	}
	return n, i + size, true
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
