package codec

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"testing"
)

// seedFromVectors adds every frame and CBOR payload of the vector file.
func seedFromVectors(f *testing.F) {
	vf := loadVectors(f)
	for _, v := range vf.Vectors {
		var out map[string]any
		if err := json.Unmarshal(v.Output, &out); err != nil {
			f.Fatal(err)
		}
		for _, k := range []string{"cbor_hex", "frame_hex", "header_hex", "resync_frame_hex"} {
			if s, ok := out[k].(string); ok {
				b, err := hex.DecodeString(s)
				if err != nil {
					f.Fatal(err)
				}
				f.Add(b)
				if len(b) > HeaderLen && (k == "frame_hex" || k == "resync_frame_hex") {
					f.Add(b[HeaderLen:])
				}
			}
		}
	}
	f.Add([]byte{})
	f.Add(cb(0xa3, 0x67, "message", 0x41, "m", 0x67, "channel", 0x61, "c", 0x63, "uid", 0x61, "u"))
}

func FuzzParseHeader(f *testing.F) {
	seedFromVectors(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHeader(b)
		if err != nil {
			if h != (Header{}) {
				t.Fatalf("error %v with non-zero header %+v", err, h)
			}
			return
		}
		if h.Len < 1 || h.Len > MaxPayloadLen {
			t.Fatalf("bad length %d", h.Len)
		}
		if got := AppendHeader(nil, h); !bytes.Equal(got, b[:HeaderLen]) {
			t.Fatalf("re-encoded %x, input %x", got, b[:HeaderLen])
		}
	})
}

func FuzzDecodeTriplet(f *testing.F) {
	seedFromVectors(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		tr, err := DecodeTriplet(b)
		if err != nil {
			if !errors.Is(err, ErrNotTriplet) {
				t.Fatalf("error %v does not wrap ErrNotTriplet", err)
			}
			return
		}
		enc := AppendTriplet(nil, tr)
		if len(enc) != TripletLen(tr) {
			t.Fatalf("TripletLen %d, encoded %d", TripletLen(tr), len(enc))
		}
		if ref := fxamackerTriplet(t, tr); !bytes.Equal(enc, ref) {
			t.Fatalf("AppendTriplet %x, fxamacker %x", enc, ref)
		}
		tr2, err := DecodeTriplet(enc)
		if err != nil {
			t.Fatalf("re-decode of %x: %v", enc, err)
		}
		if !tripletEqual(tr, tr2) {
			t.Fatalf("round trip %+v -> %+v", tr, tr2)
		}
	})
}

func FuzzDecodeResync(f *testing.F) {
	seedFromVectors(f)
	for _, n := range []int{1, 3, 4, 20} {
		f.Add(resyncOf(n, false))
		f.Add(resyncOf(n, true))
	}
	capped := []*ResyncDecoder{NewResyncDecoder(0), NewResyncDecoder(3), NewResyncDecoder(17)}
	f.Fuzz(func(t *testing.T, b []byte) {
		frames, err := DecodeResync(b)
		for _, d := range capped {
			checkResyncDecoder(t, d, b, frames, err)
		}
		if err != nil {
			if !errors.Is(err, ErrNotResync) || frames != nil {
				t.Fatalf("%d frames, error %v", len(frames), err)
			}
			return
		}
		if len(frames) == 0 {
			t.Fatal("no error and no frames")
		}
		enc := AppendResync(nil, frames)
		if len(enc) != ResyncLen(frames) {
			t.Fatalf("ResyncLen %d, encoded %d", ResyncLen(frames), len(enc))
		}
		again, err := DecodeResync(enc)
		if err != nil || len(again) != len(frames) {
			t.Fatalf("re-decode: %d frames, %v", len(again), err)
		}
		for i := range frames {
			if !bytes.Equal(frames[i], again[i]) {
				t.Fatalf("frame %d differs after round trip", i)
			}
		}
	})
}

// checkResyncDecoder checks that d decodes b as DecodeResync did (frames,
// err), except for its cap.
func checkResyncDecoder(t *testing.T, d *ResyncDecoder, b []byte, frames [][]byte, err error) {
	t.Helper()
	got, gotErr := d.Decode(b)
	tooMany := d.MaxEntries() > 0 && len(frames) > d.MaxEntries()
	switch {
	case errors.Is(gotErr, ErrResyncTooLarge):
		if got != nil || errors.Is(gotErr, ErrNotResync) {
			t.Fatalf("cap %d: %d frames with %v", d.MaxEntries(), len(got), gotErr)
		}
		if _, terr := DecodeTriplet(b); terr == nil && !tooMany {
			t.Fatalf("cap %d: a triplet refused as a resync too large", d.MaxEntries())
		}
		if err == nil && !tooMany {
			t.Fatalf("cap %d: %d entries refused as too many", d.MaxEntries(), len(frames))
		}
	case gotErr != nil:
		if !errors.Is(gotErr, ErrNotResync) || got != nil {
			t.Fatalf("cap %d: %d frames, error %v", d.MaxEntries(), len(got), gotErr)
		}
		if err == nil && !(tooMany && triplet(b)) {
			t.Fatalf("cap %d: DecodeResync took %d entries, Decode: %v", d.MaxEntries(), len(frames), gotErr)
		}
	default:
		if err != nil || tooMany || len(got) != len(frames) {
			t.Fatalf("cap %d: Decode gave %d entries, DecodeResync %d, %v", d.MaxEntries(), len(got), len(frames), err)
		}
		for i := range got {
			if !bytes.Equal(got[i], frames[i]) {
				t.Fatalf("cap %d: entry %d is %x, DecodeResync's %x", d.MaxEntries(), i, got[i], frames[i])
			}
		}
	}
}

func triplet(b []byte) bool {
	_, err := DecodeTriplet(b)
	return err == nil
}
