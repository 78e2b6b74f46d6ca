package client

import "unicode/utf8"

// scanTriplet finds uid, channel and message in a triplet payload in
// place, for the form every Mles encoder writes: a definite map of three
// entries with the text keys "uid", "channel", "message" in that order,
// uid and channel as definite text strings, message as a definite byte
// string, nothing after it. Heads need not be shortest-form. Any other
// form (ok false) is left to codec.DecodeTriplet. Hot path: never
// allocates, never panics.
func scanTriplet(p []byte) (uid, channel, message []byte, ok bool) {
	if uid, channel, message, ok = scanTripletForm(p); !ok || !utf8.Valid(uid) || !utf8.Valid(channel) {
		return nil, nil, nil, false
	}
	return uid, channel, message, true
}

// scanTripletForm is scanTriplet without the UTF-8 check of uid and
// channel, which the caller must make.
func scanTripletForm(p []byte) (uid, channel, message []byte, ok bool) {
	if len(p) < 1+len(keyUID) || p[0] != 0xa3 || string(p[1:1+len(keyUID)]) != keyUID {
		return nil, nil, nil, false
	}
	i := 1 + len(keyUID)
	if uid, i, ok = scanString(p, i, 3); !ok || !hasKey(p, i, keyChannel) {
		return nil, nil, nil, false
	}
	if channel, i, ok = scanString(p, i+len(keyChannel), 3); !ok || !hasKey(p, i, keyMessage) {
		return nil, nil, nil, false
	}
	if message, i, ok = scanString(p, i+len(keyMessage), 2); !ok || i != len(p) {
		return nil, nil, nil, false
	}
	return uid, channel, message, true
}

// The map keys as every encoder writes them: text heads and names.
const (
	keyUID     = "\x63uid"
	keyChannel = "\x67channel"
	keyMessage = "\x67message"
)

// hasKey reports whether p[i:] starts with the encoded key k.
func hasKey(p []byte, i int, k string) bool {
	return len(p)-i >= len(k) && string(p[i:i+len(k)]) == k
}

// scanString reads a definite string of major type maj at p[i:].
func scanString(p []byte, i int, maj byte) ([]byte, int, bool) {
	if i >= len(p) || p[i]>>5 != maj {
		return nil, 0, false
	}
	ai := p[i] & 0x1f
	i++
	var n uint64
	switch {
	case ai < 24:
		n = uint64(ai)
	case ai <= 27:
		w := 1 << (ai - 24) // 1, 2, 4 or 8 bytes
		if len(p)-i < w {
			return nil, 0, false
		}
		for _, b := range p[i : i+w] {
			n = n<<8 | uint64(b)
		}
		i += w
	default: // reserved or indefinite length
		return nil, 0, false
	}
	if n > uint64(len(p)-i) {
		return nil, 0, false
	}
	end := i + int(n)
	return p[i:end:end], end, true
}
