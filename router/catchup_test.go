package router

import (
	"slices"
	"testing"
)

func historyOf(t *testing.T, ch *Channel) []string {
	t.Helper()
	var out []string
	reader := &fakeSub{cid: 999} // joins to be given the history
	_, hist, err := ch.router.Join(ch.Name(), reader, nil)
	if err != nil {
		t.Fatal(err)
	}
	ch.Leave(reader)
	for _, f := range hist {
		out = append(out, string(f.Bytes()))
		f.Release()
	}
	return out
}

func release(fs []*Frame) {
	for _, f := range fs {
		f.Release()
	}
}

// Older frames go in front of the held ones, only into the room left (the
// newest of them first), never twice, and never evict what is held.
func TestAddOlderFillsOnlyTheRoomInFront(t *testing.T) {
	r := New(Config{HistoryLimit: 5})
	ch, _, err := r.Join("ch", &fakeSub{cid: 1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	held := []*Frame{frameOf("n1"), frameOf("n2")}
	ch.Append(held...)
	release(held)
	older := []*Frame{frameOf("o1"), frameOf("o2"), frameOf("n1"), frameOf("o3"), frameOf("o3"), frameOf("o4")}
	if n := ch.AddOlder(older); n != 3 {
		t.Errorf("AddOlder stored %d frames, want 3 (the room left)", n)
	}
	release(older)
	if got, want := historyOf(t, ch), []string{"o2", "o3", "o4", "n1", "n2"}; !slices.Equal(got, want) {
		t.Fatalf("history %v, want %v", got, want)
	}
	more := []*Frame{frameOf("o0")}
	if n := ch.AddOlder(more); n != 0 {
		t.Errorf("a full history took %d older frames, want 0", n)
	}
	release(more)
	// Byte counts are what frames hold: each of these (2 bytes) holds 64.
	if frames, bytes := ch.HistoryLen(); frames != 5 || bytes != 5*64 || r.HistoryBytes() != 5*64 {
		t.Fatalf("history holds %d frames, %d bytes (router %d), want 5 and %d", frames, bytes, r.HistoryBytes(), 5*64)
	}
}

// The byte caps bound older frames too; with history off nothing is kept.
func TestAddOlderKeepsTheByteCaps(t *testing.T) {
	// Caps count what frames hold: each of these (2 bytes) holds 64.
	r := New(Config{HistoryLimit: 10, HistoryBytes: 3*64 + 32, MaxHistoryBytes: 100 * 64})
	ch, _, _ := r.Join("ch", &fakeSub{cid: 1}, nil)
	held := []*Frame{frameOf("n1")}
	ch.Append(held...)
	release(held)
	older := []*Frame{frameOf("o1"), frameOf("o2"), frameOf("o3")}
	if n := ch.AddOlder(older); n != 2 {
		t.Errorf("stored %d, want 2 (room for three frames and no more)", n)
	}
	release(older)
	if got, want := historyOf(t, ch), []string{"o2", "o3", "n1"}; !slices.Equal(got, want) {
		t.Fatalf("history %v, want %v", got, want)
	}

	off := New(Config{HistoryLimit: Off})
	ch, _, _ = off.Join("ch", &fakeSub{cid: 1}, nil)
	older = []*Frame{frameOf("o1")}
	if n := ch.AddOlder(older); n != 0 || off.HistoryBytes() != 0 {
		t.Fatalf("history off: stored %d, %d bytes", n, off.HistoryBytes())
	}
	release(older)
}
