package codec

import (
	"testing"

	"github.com/fxamacker/cbor/v2"
)

// Reference encodings with fxamacker/cbor's default (struct field order,
// shortest-form) encoder, nil byte slices as empty byte strings.
var refEncMode = func() cbor.EncMode {
	em, err := cbor.EncOptions{NilContainers: cbor.NilContainerAsEmpty}.EncMode()
	if err != nil {
		panic(err)
	}
	return em
}()

type refMsg struct {
	UID     string `cbor:"uid"`
	Channel string `cbor:"channel"`
	Message []byte `cbor:"message"`
}

type refMsgVec struct {
	EncodedMsg []byte `cbor:"encoded_msg"`
}

type refResync struct {
	ResyncMessage []refMsgVec `cbor:"resync_message"`
}

func fxamackerTriplet(t testing.TB, tr Triplet) []byte {
	t.Helper()
	b, err := refEncMode.Marshal(refMsg(tr))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func fxamackerResync(t testing.TB, frames [][]byte) []byte {
	t.Helper()
	r := refResync{ResyncMessage: []refMsgVec{}}
	for _, f := range frames {
		r.ResyncMessage = append(r.ResyncMessage, refMsgVec{EncodedMsg: f})
	}
	b, err := refEncMode.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
