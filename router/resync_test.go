package router

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// oldMergeResync is MergeResync as it was before the index: every frame is
// compared with the history and with every earlier fresh frame. It is the
// reference the new one must match exactly.
func oldMergeResync(c *Channel, frames []*Frame, fresh []*Frame) []*Frame {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range frames {
		if c.hist.limit() > 0 && c.hist.contains(f.Bytes()) {
			continue
		}
		dup := false
		for _, g := range fresh {
			if string(g.Bytes()) == string(f.Bytes()) {
				dup = true
				break
			}
		}
		if dup {
			continue
		}
		c.hist.add(f)
		fresh = append(fresh, f)
	}
	return fresh
}

// mergeCase is one merge: a history, then a resync, as frame contents.
type mergeCase struct {
	name      string
	cfg       Config
	history   []string
	resync    []string
	freshIn   []string // passed as MergeResync's fresh
	wantFresh []string // nil: only compare with the old algorithm
}

func framesOf(ss []string) []*Frame {
	out := make([]*Frame, len(ss))
	for i, s := range ss {
		out[i] = frameOf(s)
	}
	return out
}

func contents(fs []*Frame) []string {
	out := make([]string, len(fs))
	for i, f := range fs {
		out[i] = string(f.Bytes())
	}
	return out
}

// runMerge sets up a channel with tc's history, merges tc's resync with
// merge, and returns the fresh frames and the history after, as contents.
func runMerge(tc mergeCase, merge func(*Channel, []*Frame, []*Frame) []*Frame) (fresh, hist []string) {
	r := New(tc.cfg)
	defer r.Close()
	ch, _, _ := r.Join("ch", &fakeSub{cid: 1}, nil)
	for _, s := range tc.history {
		f := frameOf(s)
		ch.Append(f)
		f.Release()
	}
	in := framesOf(tc.resync)
	freshIn := framesOf(tc.freshIn)
	out := merge(ch, in, freshIn)
	fresh = contents(out)
	for _, f := range append(in, freshIn...) {
		f.Release()
	}
	_, h, _ := r.Join("ch", &fakeSub{cid: 2}, nil)
	hist = contents(h)
	for _, f := range h {
		f.Release()
	}
	return fresh, hist
}

func newMerge(c *Channel, frames, fresh []*Frame) []*Frame {
	out, _ := c.MergeResync(frames, fresh)
	return out
}

func checkSameAsOld(t *testing.T, tc mergeCase) {
	t.Helper()
	gotFresh, gotHist := runMerge(tc, newMerge)
	wantFresh, wantHist := runMerge(tc, oldMergeResync)
	if !slices.Equal(gotFresh, wantFresh) || !slices.Equal(gotHist, wantHist) {
		t.Fatalf("%s: fresh %q history %q; old algorithm: fresh %q history %q",
			tc.name, gotFresh, gotHist, wantFresh, wantHist)
	}
	if tc.wantFresh != nil && !slices.Equal(gotFresh, tc.wantFresh) {
		t.Fatalf("%s: fresh %q, want %q", tc.name, gotFresh, tc.wantFresh)
	}
}

// long200 is a frame of 200 bytes (it holds 256).
var long200 = strings.Repeat("L", 200)

var mergeCases = []mergeCase{
	{name: "all new, in order", cfg: Config{HistoryLimit: 10},
		resync: []string{"a", "b", "c"}, wantFresh: []string{"a", "b", "c"}},
	{name: "duplicates within the resync keep the first", cfg: Config{HistoryLimit: 10},
		resync: []string{"a", "b", "a", "c", "b", "a"}, wantFresh: []string{"a", "b", "c"}},
	{name: "entries already held are skipped", cfg: Config{HistoryLimit: 10},
		history: []string{"m1", "m2"}, resync: []string{"m1", "x", "m2", "y"}, wantFresh: []string{"x", "y"}},
	{name: "a peer replaying exactly our history adds nothing", cfg: Config{HistoryLimit: 3},
		history: []string{"a", "b", "c"}, resync: []string{"a", "b", "c"}, wantFresh: []string{}},
	{name: "history with duplicate frames", cfg: Config{HistoryLimit: 4},
		history: []string{"a", "a", "b"}, resync: []string{"a", "c", "a", "b"}, wantFresh: []string{"c"}},
	{name: "held frame evicted by the merge itself counts as new again", cfg: Config{HistoryLimit: 2},
		history: []string{"a", "b"}, resync: []string{"x", "y", "a", "b"}, wantFresh: []string{"x", "y", "a", "b"}},
	{name: "evicted fresh frame still counts as seen", cfg: Config{HistoryLimit: 1},
		resync: []string{"a", "b", "a"}, wantFresh: []string{"a", "b"}},
	{name: "history off: every distinct frame is fresh", cfg: Config{HistoryLimit: Off},
		resync: []string{"a", "b", "a"}, wantFresh: []string{"a", "b"}},
	{name: "frames passed in fresh count as seen", cfg: Config{HistoryLimit: 10},
		freshIn: []string{"p"}, resync: []string{"p", "q"}, wantFresh: []string{"p", "q"}},
	// Byte caps count what frames hold (Size: frames of up to 64 bytes
	// hold 64, a 200-byte one 256), so these caps are in those units.
	{name: "frame over the channel's byte cap is fresh but not kept", cfg: Config{HistoryLimit: 10, HistoryBytes: 2 * 64},
		history: []string{"ab"}, resync: []string{long200, "ab", long200, "cd"}, wantFresh: []string{long200, "cd"}},
	{name: "byte cap evicts held frames during the merge", cfg: Config{HistoryLimit: 10, HistoryBytes: 2 * 64},
		history: []string{"ab", "cd"}, resync: []string{"ef", "ab", "cd"}, wantFresh: []string{"ef", "ab", "cd"}},
	{name: "global budget evicts even the frame just added", cfg: Config{HistoryLimit: 10, MaxHistoryBytes: 64 + 32},
		history: []string{"ab"}, resync: []string{"cd", "ab", "cd", "e"}, wantFresh: []string{"cd", "ab", "e"}},
}

// offIfZero turns a drawn history length of 0 into Off (Config's 0 is the
// default).
func offIfZero(n int) int {
	if n == 0 {
		return Off
	}
	return n
}

func TestMergeResyncMatchesTheQuadraticAlgorithm(t *testing.T) {
	for _, tc := range mergeCases {
		checkSameAsOld(t, tc)
	}
}

// TestMergeResyncMatchesTheQuadraticAlgorithmOnRandomInput compares the two
// on random histories and resyncs drawn from a small alphabet, so that
// repeats, held frames and evictions during the merge all happen.
func TestMergeResyncMatchesTheQuadraticAlgorithmOnRandomInput(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	word := func(alphabet int) string {
		return "f" + strconv.Itoa(rng.IntN(alphabet)) + strings.Repeat("x", rng.IntN(3))
	}
	for i := 0; i < 3000; i++ {
		tc := mergeCase{name: fmt.Sprintf("random %d", i)}
		tc.cfg.HistoryLimit = offIfZero(rng.IntN(6))
		if rng.IntN(4) == 0 {
			tc.cfg.HistoryBytes = 2 + rng.IntN(12)
		}
		if rng.IntN(6) == 0 {
			tc.cfg.MaxHistoryBytes = int64(2 + rng.IntN(12))
		}
		alphabet := 1 + rng.IntN(10)
		for range rng.IntN(8) {
			tc.history = append(tc.history, word(alphabet))
		}
		for range rng.IntN(3) {
			tc.freshIn = append(tc.freshIn, word(alphabet))
		}
		for range 1 + rng.IntN(20) {
			tc.resync = append(tc.resync, word(alphabet))
		}
		checkSameAsOld(t, tc)
	}
}

// TestMergeResyncIsExactWhenFingerprintsCollide makes every frame have the
// same fingerprint: the index must still tell frames apart by their bytes.
func TestMergeResyncIsExactWhenFingerprintsCollide(t *testing.T) {
	defer func(fp func([]byte) uint64) { resyncFingerprint = fp }(resyncFingerprint)
	resyncFingerprint = func(b []byte) uint64 { return uint64(len(b) % 2) }
	for _, tc := range mergeCases {
		checkSameAsOld(t, tc)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 500; i++ {
		tc := mergeCase{name: fmt.Sprintf("colliding %d", i), cfg: Config{HistoryLimit: offIfZero(rng.IntN(5))}}
		for range rng.IntN(6) {
			tc.history = append(tc.history, strconv.Itoa(rng.IntN(20)))
		}
		for range 1 + rng.IntN(15) {
			tc.resync = append(tc.resync, strconv.Itoa(rng.IntN(20)))
		}
		checkSameAsOld(t, tc)
	}
}

// distinctFrames returns n distinct tiny frames, the shape of issue 11's
// hostile resync.
func distinctFrames(n int) []*Frame {
	out := make([]*Frame, n)
	for i := range out {
		out[i] = NewFrame([]byte("frame-" + strconv.Itoa(i)))
	}
	return out
}

// TestMergeResyncOfManyDistinctFramesKeepsEveryOne: 100,000 distinct frames
// (issue 11's hostile shape, which took minutes with the quadratic merge)
// are all fresh and the history keeps the newest. How fast is for
// BenchmarkMergeResync and internal/hostile's loop-gap tests.
func TestMergeResyncOfManyDistinctFramesKeepsEveryOne(t *testing.T) {
	r := New(Config{HistoryLimit: DefaultHistoryLimit})
	defer r.Close()
	ch, _, _ := r.Join("ch", &fakeSub{cid: 1}, nil)
	in := distinctFrames(100_000)
	fresh, _ := ch.MergeResync(in, nil)
	if len(fresh) != len(in) {
		t.Fatalf("%d fresh, want %d", len(fresh), len(in))
	}
	for _, f := range in {
		f.Release()
	}
	if n, _ := ch.HistoryLen(); n != DefaultHistoryLimit {
		t.Fatalf("history holds %d, want %d", n, DefaultHistoryLimit)
	}
}

func BenchmarkMergeResync(b *testing.B) {
	for _, n := range []int{1_000, 10_000, 100_000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			r := New(Config{HistoryLimit: DefaultHistoryLimit})
			defer r.Close()
			ch, _, _ := r.Join("ch", &fakeSub{cid: 1}, nil)
			in := distinctFrames(n)
			fresh := make([]*Frame, 0, n)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				fresh, _ = ch.MergeResync(in, fresh[:0])
				if len(fresh) == 0 { // the second run finds the last 100 held
					b.Fatal("nothing fresh")
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/entry")
			for _, f := range in {
				f.Release()
			}
		})
	}
}
