package router

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
)

type fakeSub struct {
	cid  uint32
	key  uint64 // DupKey when non-zero, else cid
	loop int
	got  int
	set  *LoopSet
	idx  int
	seq  uint64
	Membership
}

// Joined lists the fake in its loop's set, as the engine does.
func (s *fakeSub) Joined(set *LoopSet, seq uint64) {
	s.set, s.seq = set, seq
	s.idx = set.Add(s)
}

// leave takes s out of its loop's set, as the engine does, and leaves ch.
func leave(ch *Channel, s *fakeSub) {
	if s.set != nil && s.idx >= 0 {
		if moved := s.set.Remove(s.idx); moved != nil {
			moved.(*fakeSub).idx = s.idx
		}
		s.idx = -1
	}
	ch.Leave(s)
}

func (s *fakeSub) DupKey() uint64 {
	if s.key != 0 {
		return s.key
	}
	return uint64(s.cid)
}
func (s *fakeSub) Loop() int { return s.loop }

func frameOf(s string) *Frame { return NewFrame([]byte(s)) }

// An uplink replaying a member's join shares that member's CID: it is
// admitted, and with the peer bit set it refuses nobody. An uplink with a
// static group CID is admitted too, but refuses joiners with that CID.
func TestUplinkDupKeys(t *testing.T) {
	r := New(Config{HistoryLimit: Off})
	if _, _, err := r.Join("ch", &fakeSub{cid: 7}, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.JoinUplink("ch", &fakeSub{cid: 7, key: 7 | 1<<32}, nil); err != nil {
		t.Fatalf("uplink with a member's CID refused: %v", err)
	}
	if _, _, err := r.Join("ch", &fakeSub{cid: 8}, nil); err != nil {
		t.Fatalf("other CID refused: %v", err)
	}
	if _, _, err := r.JoinUplink("ch", &fakeSub{cid: 0xc0de}, nil); err != nil {
		t.Fatalf("static-CID uplink refused: %v", err)
	}
	if _, _, err := r.Join("ch", &fakeSub{cid: 0xc0de}, nil); !errors.Is(err, ErrDuplicateCID) {
		t.Fatalf("joiner with the group CID: got %v, want ErrDuplicateCID", err)
	}
	if _, _, err := r.Join("ch", &fakeSub{cid: 7}, nil); !errors.Is(err, ErrDuplicateCID) {
		t.Fatalf("second member with CID 7: got %v, want ErrDuplicateCID", err)
	}
}

func TestJoinGroupsSubscribersByLoop(t *testing.T) {
	r := New(Config{HistoryLimit: Off})
	subs := []*fakeSub{{cid: 1, loop: 0}, {cid: 2, loop: 1}, {cid: 3, loop: 0}}
	var ch *Channel
	for _, s := range subs {
		c, _, err := r.Join("ch", s, nil)
		if err != nil {
			t.Fatal(err)
		}
		ch = c
	}
	snap := ch.Snapshot()
	if ch.Members() != 3 || len(snap.Groups) != 2 {
		t.Fatalf("snapshot %+v", snap)
	}
	for _, g := range snap.Groups {
		for _, s := range g.Set.Members {
			if s.Loop() != g.Loop {
				t.Fatalf("sub on loop %d in group %d", s.Loop(), g.Loop)
			}
		}
	}
	leave(ch, subs[1]) // loop 1 loses its only member
	if ch.Members() != 2 || len(snap.Groups) != 2 || len(ch.Snapshot().Groups) != 1 {
		t.Fatal("a loop's last leave must republish without it, and leave older snapshots as they were")
	}
}

func TestDuplicateCIDIsRefused(t *testing.T) {
	r := New(Config{HistoryLimit: Off})
	if _, _, err := r.Join("ch", &fakeSub{cid: 7}, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.Join("ch", &fakeSub{cid: 7, loop: 1}, nil); !errors.Is(err, ErrDuplicateCID) {
		t.Fatalf("err = %v, want ErrDuplicateCID", err)
	}
	if _, _, err := r.Join("other", &fakeSub{cid: 7}, nil); err != nil {
		t.Fatalf("same CID on another channel: %v", err)
	}
}

func TestEmptyChannelWithoutHistoryIsForgotten(t *testing.T) {
	r := New(Config{HistoryLimit: Off})
	s := &fakeSub{cid: 1}
	ch, _, _ := r.Join("ch", s, nil)
	if r.Channels() != 1 {
		t.Fatal("channel not counted")
	}
	leave(ch, s)
	if r.Channels() != 0 {
		t.Fatal("empty channel without history kept")
	}
	// With history on, a channel is kept while its history holds frames,
	// and forgotten when it holds none (its members only joined).
	r2 := New(Config{HistoryLimit: 5})
	ch2, _, _ := r2.Join("ch", s, nil)
	f := frameOf("kept")
	ch2.Append(f)
	f.Release()
	leave(ch2, s)
	if r2.Channels() != 1 {
		t.Fatal("channel with history forgotten")
	}
	ch3, _, _ := r2.Join("joins-only", s, nil)
	leave(ch3, s)
	if r2.Channels() != 1 {
		t.Fatal("channel with an empty history kept after its last member left")
	}
	_, hist, _ := r2.Join("ch", &fakeSub{cid: 2}, nil)
	if len(hist) != 1 || string(hist[0].Bytes()) != "kept" {
		t.Fatalf("history of the kept channel: %d frames", len(hist))
	}
	hist[0].Release()
}

func TestHistoryKeepsTheLastNInOrder(t *testing.T) {
	r := New(Config{HistoryLimit: 3})
	ch, _, _ := r.Join("ch", &fakeSub{cid: 1}, nil)
	for i := 1; i <= 5; i++ {
		f := frameOf(fmt.Sprintf("m%d", i))
		ch.Append(f)
		f.Release()
	}
	_, hist, _ := r.Join("ch", &fakeSub{cid: 2}, nil)
	var got []string
	for _, f := range hist {
		got = append(got, string(f.Bytes()))
		f.Release()
	}
	if fmt.Sprint(got) != "[m3 m4 m5]" {
		t.Fatalf("history %v", got)
	}
}

func TestMergeResyncAddsOnlyNewFrames(t *testing.T) {
	r := New(Config{HistoryLimit: 10})
	ch, _, _ := r.Join("ch", &fakeSub{cid: 1}, nil)
	held := frameOf("m1")
	ch.Append(held)
	held.Release()
	in := []*Frame{frameOf("m1"), frameOf("m2"), frameOf("m2")}
	fresh, _ := ch.MergeResync(in, nil)
	if len(fresh) != 1 || !bytes.Equal(fresh[0].Bytes(), []byte("m2")) {
		t.Fatalf("fresh = %d frames", len(fresh))
	}
	for _, f := range in {
		f.Release()
	}
	if n, _ := ch.HistoryLen(); n != 2 {
		t.Fatalf("history holds %d, want 2", n)
	}
}

func TestFrameIsRecycledAfterLastRelease(t *testing.T) {
	f := frameOf("x")
	f.Ref()
	f.Release()
	if f.Len() != 1 {
		t.Fatal("frame released early")
	}
	f.Release()
	defer func() {
		if recover() == nil {
			t.Fatal("over-release did not panic")
		}
	}()
	g := frameOf("y")
	g.Release()
	g.Release()
}

func TestConcurrentJoinLeaveAndAppend(t *testing.T) {
	r := New(Config{HistoryLimit: 4})
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 500; i++ {
				s := &fakeSub{cid: uint32(w<<16 | i), loop: w} // one loop per goroutine, as LoopSet requires
				ch, hist, err := r.Join(fmt.Sprintf("ch%d", i%3), s, nil)
				if err != nil {
					t.Error(err)
					return
				}
				for _, f := range hist {
					f.Release()
				}
				f := frameOf("data")
				ch.Append(f)
				f.Release()
				leave(ch, s)
			}
		}()
	}
	wg.Wait()
	r.Close()
}

// BenchmarkFanout100: store a frame and walk the snapshot of 100 subscribers
// on two loops, as the engine does per frame. Must report 0 allocs/op.
func BenchmarkFanout100(b *testing.B) {
	for _, limit := range []int{Off, 100} {
		b.Run(fmt.Sprintf("history=%d", limit), func(b *testing.B) {
			r := New(Config{HistoryLimit: limit})
			var ch *Channel
			subs := make([]*fakeSub, 100)
			for i := range subs {
				subs[i] = &fakeSub{cid: uint32(i), loop: i % 2}
				ch, _, _ = r.Join("bench", subs[i], nil)
			}
			data := bytes.Repeat([]byte{'M'}, 128)
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				f := NewFrame(data)
				snap := ch.Append(f)
				for gi := range snap.Groups {
					for _, s := range snap.Groups[gi].Set.Members {
						f.Ref()
						s.(*fakeSub).got++
						f.Release()
					}
				}
				f.Release()
			}
		})
	}
}

// History caps count the memory a frame holds (its size class, Size),
// not its length: 64 bytes for these small frames, 128 for a 100-byte one.
func TestHistoryByteCaps(t *testing.T) {
	t.Run("per channel", func(t *testing.T) {
		r := New(Config{HistoryLimit: 100, HistoryBytes: 130})
		ch, _, _ := r.Join("ch", &fakeSub{cid: 1}, nil)
		for _, m := range []string{"aaaa", "bbbb", "cccc", string(make([]byte, 200))} {
			f := frameOf(m)
			ch.Append(f)
			f.Release()
		}
		if n, b := ch.HistoryLen(); n != 2 || b != 128 {
			t.Fatalf("held %d frames, %d bytes; want 2, 128 (bbbb cccc, 64 bytes each)", n, b)
		}
	})
	t.Run("all channels", func(t *testing.T) {
		r := New(Config{HistoryLimit: 100, MaxHistoryBytes: 3 * 64})
		a, _, _ := r.Join("a", &fakeSub{cid: 1}, nil)
		b, _, _ := r.Join("b", &fakeSub{cid: 2}, nil)
		for _, ch := range []*Channel{a, a, b, b} {
			f := frameOf("xxxx")
			ch.Append(f)
			f.Release()
		}
		if got := r.HistoryBytes(); got > 3*64 {
			t.Fatalf("history holds %d bytes, over the %d-byte budget", got, 3*64)
		}
		if n, _ := b.HistoryLen(); n != 1 {
			t.Fatalf("b holds %d frames; want 1 (its own oldest evicted to fit)", n)
		}
		r.Close()
		if got := r.HistoryBytes(); got != 0 {
			t.Fatalf("after Close, %d history bytes counted", got)
		}
	})
}

// A frame's memory is under twice its length whatever was released before:
// a small frame never holds a large frame's buffer.
func TestFrameSizeFollowsItsLengthNotThePool(t *testing.T) {
	big := make([]byte, 1<<20)
	for i := 0; i < 8; i++ {
		frameOf(string(big)).Release()
	}
	for _, n := range []int{1, 17, 64, 65, 1000, 1 << 20, 1<<20 + 1, 16 + 0xFFFFFF} {
		f := NewFrame(make([]byte, n))
		if f.Len() != n || f.Size() < n || (n > 64 && f.Size() >= 2*n) || (n <= 64 && f.Size() != 64) {
			t.Errorf("frame of %d bytes holds %d", n, f.Size())
		}
		f.Release()
	}
}

// A SeenLog keeps the fingerprints of the last n frames, counting repeats.
func TestSeenLogKeepsTheLastFrames(t *testing.T) {
	var l SeenLog
	l.Add([]byte("x")) // before Init: nothing
	if l.Len() != 0 {
		t.Fatal("uninitialised log holds a frame")
	}
	l.Init(3)
	l.Init(100) // only the first Init sizes it
	for _, s := range []string{"a", "b", "b", "c"} {
		l.Add([]byte(s))
	}
	counts := map[uint64]int32{}
	l.Count(counts)
	if l.Len() != 3 || counts[l.Fingerprint([]byte("a"))] != 0 || counts[l.Fingerprint([]byte("b"))] != 2 ||
		counts[l.Fingerprint([]byte("c"))] != 1 {
		t.Fatalf("len %d counts %v: want the last 3 (b, b, c)", l.Len(), counts)
	}
	if l.Fingerprint([]byte("a")) == l.Fingerprint([]byte("b")) {
		t.Fatal("fingerprints collide")
	}

	// It grows as frames cross, keeping the newest in order, up to its size.
	var g SeenLog
	g.Init(40)
	for i := range 100 {
		g.Add([]byte(strconv.Itoa(i)))
		if want := min(i+1, 40); g.Len() != want {
			t.Fatalf("after %d frames it holds %d, want %d", i+1, g.Len(), want)
		}
	}
	counts = map[uint64]int32{}
	g.Count(counts)
	for i := range 100 {
		if held := counts[g.Fingerprint([]byte(strconv.Itoa(i)))] == 1; held != (i >= 60) {
			t.Fatalf("frame %d held: %v; want the last 40 (60..99)", i, held)
		}
	}
}

// A SeenLog moves to another process (a hitless upgrade) as its key and
// fingerprints: the restored log matches the same frames, and keeps the
// newest as many as it holds.
func TestSeenLogRestoredElsewhereMatchesTheSameFrames(t *testing.T) {
	var old SeenLog
	old.Init(40)
	for i := range 100 {
		old.Add([]byte(strconv.Itoa(i)))
	}
	key, fps := old.Export()
	if len(fps) != 40 || fps[0] != old.Fingerprint([]byte("60")) || fps[39] != old.Fingerprint([]byte("99")) {
		t.Fatalf("exported %d fingerprints, want 60..99 oldest first", len(fps))
	}
	var other SeenLog // another log, as in a new process: its own key
	other.Init(40)
	if other.Fingerprint([]byte("60")) == old.Fingerprint([]byte("60")) {
		t.Fatal("two logs share a key")
	}
	var small SeenLog
	small.Init(10)
	if !small.Restore(key, fps) {
		t.Fatal("an empty log refused the restore")
	}
	counts := map[uint64]int32{}
	small.Count(counts)
	for i := range 100 {
		if held := counts[small.Fingerprint([]byte(strconv.Itoa(i)))] == 1; held != (i >= 90) {
			t.Fatalf("frame %d held after the restore: %v; want the newest 10 (90..99)", i, held)
		}
	}
	small.Add([]byte("new"))
	if small.Len() != 10 {
		t.Fatalf("holds %d after one more, want 10", small.Len())
	}
	// A log that holds frames already keeps them and its key.
	before := small.Fingerprint([]byte("x"))
	if small.Restore([2]uint64{1, 2}, []uint64{7}) || small.Fingerprint([]byte("x")) != before {
		t.Fatal("a restore replaced the key of a log in use")
	}
}

// Zero takes each default and Off turns each setting off, which inside the
// router is a length or cap of 0.
func TestConfigZeroIsTheDefaultAndOffIsOff(t *testing.T) {
	if got, want := (Config{}).resolved(), (Config{HistoryLimit: DefaultHistoryLimit, MaxChannels: DefaultMaxChannels,
		HistoryBytes: DefaultHistoryBytes, MaxHistoryBytes: DefaultMaxHistoryBytes}); got != want {
		t.Fatalf("zero Config resolves to %+v, want the defaults %+v", got, want)
	}
	if got := (Config{HistoryLimit: Off, MaxChannels: Off, HistoryBytes: -5, MaxHistoryBytes: Off}).resolved(); got != (Config{}) {
		t.Fatalf("Off resolves to %+v, want every setting off (0 inside)", got)
	}
	if got := (Config{HistoryLimit: 7, MaxChannels: 8, HistoryBytes: 9, MaxHistoryBytes: 10}).resolved(); got.HistoryLimit != 7 ||
		got.MaxChannels != 8 || got.HistoryBytes != 9 || got.MaxHistoryBytes != 10 {
		t.Fatalf("explicit values changed: %+v", got)
	}
	if n := New(Config{}).HistoryLimit(); n != DefaultHistoryLimit {
		t.Fatalf("New(Config{}) keeps %d frames of history, want %d", n, DefaultHistoryLimit)
	}
	if n := New(Config{HistoryLimit: Off}).HistoryLimit(); n != 0 {
		t.Fatalf("New with HistoryLimit Off keeps %d frames, want none", n)
	}
}
