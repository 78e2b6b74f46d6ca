package harness

import "testing"

func observeAll(s *Stream, seqs ...uint64) {
	for _, q := range seqs {
		s.Observe(q)
	}
}

func TestStreamInOrderIsClean(t *testing.T) {
	var s Stream
	for q := range uint64(10000) {
		s.Observe(q)
	}
	if d := s.Verdict(10000); d.Bad() || d.Received != 10000 {
		t.Fatalf("verdict %+v", d)
	}
}

func TestStreamCountsLoss(t *testing.T) {
	var s Stream
	observeAll(&s, 0, 1, 2, 5, 6, 9) // 3, 4, 7, 8 and 10..11 missing
	d := s.Verdict(12)
	if d.Lost != 6 || d.Dup != 0 || d.Reordered != 0 || !d.Bad() {
		t.Fatalf("verdict %+v", d)
	}
}

func TestStreamCountsLossAtTheTail(t *testing.T) {
	var s Stream
	observeAll(&s, 0, 1, 2)
	if d := s.Verdict(5); d.Lost != 2 {
		t.Fatalf("verdict %+v", d)
	}
}

func TestStreamCountsDuplicates(t *testing.T) {
	var s Stream
	observeAll(&s, 0, 1, 1, 2, 0, 3)
	d := s.Verdict(4)
	if d.Dup != 2 || d.Lost != 0 || d.Reordered != 0 {
		t.Fatalf("verdict %+v", d)
	}
}

func TestStreamCountsReorderingWithoutLoss(t *testing.T) {
	var s Stream
	observeAll(&s, 0, 2, 1, 3, 5, 4)
	d := s.Verdict(6)
	if d.Reordered != 2 || d.Lost != 0 || d.Dup != 0 {
		t.Fatalf("verdict %+v", d)
	}
}

func TestStreamTellsLateFromDuplicateAcrossAGap(t *testing.T) {
	var s Stream
	observeAll(&s, 0, 1, 500, 2, 2) // 2 arrives late once, then again
	d := s.Verdict(501)
	if d.Reordered != 1 || d.Dup != 1 || d.Lost != 501-4 {
		t.Fatalf("verdict %+v", d)
	}
}

func TestStreamBeyondTheWindowIsTooLate(t *testing.T) {
	var s Stream
	observeAll(&s, 0, reorderWindow*3, 0, 1)
	d := s.Verdict(reorderWindow*3 + 1)
	if d.TooLate != 2 || !d.Bad() {
		t.Fatalf("verdict %+v", d)
	}
}

func TestStreamWindowSlidesWithoutStaleBits(t *testing.T) {
	var s Stream
	// Seen 0..9; jump so that slot of 3 now stands for 3+reorderWindow, which
	// has not arrived: it must read as late, not duplicate.
	for q := range uint64(10) {
		s.Observe(q)
	}
	s.Observe(reorderWindow + 5)
	s.Observe(reorderWindow + 3)
	d := s.Verdict(reorderWindow + 6)
	if d.Dup != 0 || d.Reordered != 1 {
		t.Fatalf("verdict %+v", d)
	}
}

func TestReceiverCountsForeignAndUnknownPublishers(t *testing.T) {
	r := NewReceiver(0, 1)
	msg := make([]byte, 40)
	PutTrailer(msg, Trailer{Pub: 1, Seq: 0})
	r.ObserveMessage(msg)
	PutTrailer(msg, Trailer{Pub: 7, Seq: 0}) // not expected here
	r.ObserveMessage(msg)
	r.ObserveMessage([]byte("join frame, no trailer"))
	d := Tally([]*Receiver{r}, []uint64{0, 1})
	if d.Received != 1 || d.Foreign != 2 || d.Bad() {
		t.Fatalf("verdict %+v", d)
	}
}

func TestTallySumsPerPublisherAndReceiver(t *testing.T) {
	a, b := NewReceiver(0, 0, 1), NewReceiver(1, 0, 1)
	for q := range uint64(5) {
		a.Observe(Trailer{Pub: 0, Seq: q})
		a.Observe(Trailer{Pub: 1, Seq: q})
		b.Observe(Trailer{Pub: 0, Seq: q})
	}
	b.Observe(Trailer{Pub: 1, Seq: 4}) // b lost 0..3 of publisher 1
	d := Tally([]*Receiver{a, b}, []uint64{5, 5})
	if d.Expected != 20 || d.Received != 16 || d.Lost != 4 {
		t.Fatalf("verdict %+v", d)
	}
}

func TestTrailerRoundTrip(t *testing.T) {
	msg := make([]byte, 100)
	want := Trailer{Pub: 42, Seq: 1 << 40, TS: -5}
	PutTrailer(msg, want)
	got, ok := ReadTrailer(msg)
	if !ok || got != want {
		t.Fatalf("got %+v %v", got, ok)
	}
	if _, ok := ReadTrailer(msg[:10]); ok {
		t.Fatal("short message read as carrying a trailer")
	}
	if _, ok := ReadTrailer(make([]byte, 100)); ok {
		t.Fatal("zero message read as carrying a trailer")
	}
}

func BenchmarkStreamObserve(b *testing.B) {
	b.ReportAllocs()
	var s Stream
	for i := range b.N {
		s.Observe(uint64(i))
	}
}
