package harness

import (
	"bytes"
	"context"
	"errors"
	"math"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestPacerSchedulesExactlyTheWindowsMessages(t *testing.T) {
	for _, c := range []struct {
		rate, phase float64
		window      time.Duration
		want        uint64
	}{
		{100, 0, time.Second, 100},           // k/100 < 1 s: k = 0…99
		{100, 0.5, time.Second, 100},         // (k+0.5)/100 < 1 s: k = 0…99
		{100, 0.999, time.Second, 100},       // the last one just fits
		{10, 0, 250 * time.Millisecond, 3},   // 0, 0.1, 0.2
		{10, 0.6, 250 * time.Millisecond, 2}, // 0.06, 0.16 (0.26 is out)
		{0, 0, time.Second, 0},
		{100, 0, 0, 0},
	} {
		if got := newPacer(c.rate, c.phase, c.window).total; got != c.want {
			t.Errorf("rate %v phase %v window %v: %d messages, want %d", c.rate, c.phase, c.window, got, c.want)
		}
	}
}

func TestPacerSendsEachMessageAtItsTime(t *testing.T) {
	p := newPacer(100, 0.25, time.Second)
	if p.dueBy(0) != 0 || p.dueBy(2*time.Millisecond) != 0 {
		t.Fatalf("a message is due before the first time (2.5 ms): %d at 2 ms", p.dueBy(2*time.Millisecond))
	}
	for k := uint64(0); k < p.total; k++ {
		at := p.at(k)
		if got := p.dueBy(at + time.Microsecond); got != k+1 {
			t.Fatalf("just after message %d's time %v, %d due; want %d", k, at, got, k+1)
		}
		if k > 0 && p.dueBy(at-time.Microsecond) != k {
			t.Fatalf("just before message %d's time %v, %d due; want %d", k, at, p.dueBy(at-time.Microsecond), k)
		}
	}
	if got := p.dueBy(time.Hour); got != p.total {
		t.Errorf("long after the window %d due, want the total %d", got, p.total)
	}
}

// Publishers sharing a rate are staggered, so that at any time the messages
// due in all are the total rate times the time (to within one), not every
// publisher's next message at once.
func TestSharedPacersSpreadTheRateEvenly(t *testing.T) {
	const pubs, rate = 1000, 100_000.0
	window := 3 * time.Second
	ps := make([]pacer, pubs)
	var total uint64
	for i := range ps {
		ps[i] = sharedPacer(rate, i, pubs, window)
		total += ps[i].total
	}
	if total != uint64(rate*window.Seconds()) {
		t.Fatalf("%d messages scheduled in all, want %v", total, rate*window.Seconds())
	}
	for _, at := range []time.Duration{10 * time.Millisecond, 10*time.Millisecond + 37*time.Microsecond, 1234567 * time.Microsecond, 2999 * time.Millisecond} {
		var due uint64
		for _, p := range ps {
			due += p.dueBy(at)
		}
		want := math.Floor(rate*at.Seconds()) + 1
		if math.Abs(float64(due)-want) > 1 {
			t.Errorf("at %v: %d due in all, want %v (± 1)", at, due, want)
		}
	}
}

// fakePub records what it is sent, when, and can be made to fail.
type fakePub struct {
	mu      sync.Mutex
	seqs    []uint64
	times   []time.Time
	flushes int
	fail    error
}

func (f *fakePub) Send(t Trailer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	f.seqs = append(f.seqs, t.Seq)
	f.times = append(f.times, time.Now())
	return nil
}
func (f *fakePub) Flush() error                { f.mu.Lock(); defer f.mu.Unlock(); f.flushes++; return nil }
func (f *fakePub) Drain(context.Context) error { return nil }

func TestRatePublisherSendsItsScheduleInOrderOnTime(t *testing.T) {
	fp := &fakePub{}
	r := &ratePub{p: fp, id: 3, pace: newPacer(200, 0.5, 200*time.Millisecond)} // 40 messages, every 5 ms
	start := time.Now()
	if err := r.run(start, start.Add(5*time.Second), make(chan struct{})); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if len(fp.seqs) != 40 || r.sent.Load() != 40 {
		t.Fatalf("%d messages sent (sent counter %d), want 40", len(fp.seqs), r.sent.Load())
	}
	for i, s := range fp.seqs {
		if s != uint64(i) {
			t.Fatalf("message %d has sequence number %d", i, s)
		}
	}
	if took < r.pace.at(39) {
		t.Errorf("all sent after %v, before the last one's time %v", took, r.pace.at(39))
	}
	if took > 2*time.Second {
		t.Errorf("40 messages over 200 ms took %v", took)
	}
	// However late the goroutine runs on a busy machine, no message goes
	// out before its time.
	for k, at := range fp.times {
		if due := start.Add(r.pace.at(uint64(k))); at.Before(due) {
			t.Fatalf("message %d sent %v before its time", k, due.Sub(at))
		}
	}
}

func TestRatePublisherCatchesUpAllThatIsDue(t *testing.T) {
	fp := &fakePub{}
	r := &ratePub{p: fp, pace: newPacer(1000, 0, time.Second)}
	start := time.Now().Add(-2 * time.Second) // it begins two seconds late: everything is due
	if err := r.run(start, time.Now().Add(time.Second), make(chan struct{})); err != nil {
		t.Fatal(err)
	}
	if len(fp.seqs) != 1000 || fp.flushes > 3 {
		t.Errorf("late by the whole window: %d sent in %d flushes, want 1000 in one or two", len(fp.seqs), fp.flushes)
	}
	if lag := time.Duration(r.maxLag.Load()); lag < 1900*time.Millisecond {
		t.Errorf("max lag %v, want about 2 s", lag)
	}
}

func TestRatePublisherStopsOnStopAndOnError(t *testing.T) {
	fp := &fakePub{}
	r := &ratePub{p: fp, pace: newPacer(10, 0, time.Hour)}
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- r.run(time.Now(), time.Now().Add(time.Hour), stop) }()
	time.Sleep(150 * time.Millisecond)
	close(stop)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the publisher did not stop")
	}
	boom := errors.New("boom")
	r = &ratePub{p: &fakePub{fail: boom}, pace: newPacer(10, 0, time.Hour)}
	if err := r.run(time.Now(), time.Now().Add(time.Hour), make(chan struct{})); !errors.Is(err, boom) {
		t.Errorf("a failing send returned %v", err)
	}
}

// The collector of fanin-rate proves every frame arrived exactly once and in
// order per publisher: any gap, duplicate or reordering is a bad delivery.
func TestCollectorProvesEachFrameExactlyOnceInOrder(t *testing.T) {
	mk := func() *Receiver { return NewReceiver(0, 0, 1) }
	good := mk()
	for s := uint64(0); s < 100; s++ {
		good.Observe(Trailer{Pub: 0, Seq: s})
		good.Observe(Trailer{Pub: 1, Seq: s})
	}
	if d := Tally([]*Receiver{good}, []uint64{100, 100}); d.Bad() || d.Received != 200 {
		t.Fatalf("interleaved publishers, each in order: %+v", d)
	}
	for name, feed := range map[string]func(r *Receiver){
		"gap":       func(r *Receiver) { r.Observe(Trailer{Seq: 0}); r.Observe(Trailer{Seq: 2}) },
		"duplicate": func(r *Receiver) { r.Observe(Trailer{Seq: 0}); r.Observe(Trailer{Seq: 1}); r.Observe(Trailer{Seq: 1}) },
		"reordered": func(r *Receiver) { r.Observe(Trailer{Seq: 1}); r.Observe(Trailer{Seq: 0}); r.Observe(Trailer{Seq: 2}) },
		"tail lost": func(r *Receiver) { r.Observe(Trailer{Seq: 0}); r.Observe(Trailer{Seq: 1}) },
	} {
		r := mk()
		feed(r)
		if d := Tally([]*Receiver{r}, []uint64{3, 0}); !d.Bad() {
			t.Errorf("%s: not counted bad: %+v", name, d)
		}
	}
}

func TestJoinstormSizesAreVariantsWithTheirOwnConns(t *testing.T) {
	cfg := DefaultConfig()
	if vs := scenarioVariants("joinstorm", cfg); len(vs) != 1 || vs[0].label != "" || vs[0].cfg.JoinstormConns != 5000 {
		t.Errorf("default joinstorm: %+v", vs)
	}
	cfg.JoinstormSizes = []int{2000}
	if vs := scenarioVariants("joinstorm", cfg); len(vs) != 1 || vs[0].label != "" || vs[0].cfg.JoinstormConns != 2000 {
		t.Errorf("one size: %+v", vs)
	}
	cfg.JoinstormSizes = []int{1000, 5000, 15000}
	vs := scenarioVariants("joinstorm", cfg)
	if len(vs) != 3 {
		t.Fatalf("%d variants, want 3", len(vs))
	}
	for i, n := range cfg.JoinstormSizes {
		if vs[i].key != "conns" || vs[i].cfg.JoinstormConns != n || vs[i].label != strings.TrimSpace(vs[i].label) {
			t.Errorf("variant %d: %+v", i, vs[i])
		}
	}
	if vs := scenarioVariants("fanin", cfg); len(vs) != 1 || vs[0].label != "" {
		t.Errorf("fanin has variants: %+v", vs)
	}
}

func joinstormRows() []*Result {
	mk := func(server, conns string, perJoin float64) *Result {
		r := &Result{Scenario: "joinstorm", Server: server, VariantKey: "conns", Variant: conns,
			Params: map[string]string{"conns": conns, "ping-rate": "200"}}
		r.SetPrimary("per join", "µs", perJoin, false)
		r.Add("ping p99", "s", 0.002, false)
		return r
	}
	return []*Result{
		mk("mlesd", "1000", 10), mk("mlesd", "15000", 12),
		mk("nats", "1000", 20), mk("nats", "15000", 40),
	}
}

func TestVariantRowsAreComparedWithNATSAtTheSameSize(t *testing.T) {
	rs := joinstormRows()
	FillRatios(rs)
	want := []float64{2, 40.0 / 12, 1, 1}
	for i, r := range rs {
		if math.Abs(r.VsNATS-want[i]) > 1e-9 {
			t.Errorf("%s at %s: ×NATS %v, want %v", r.Server, r.Variant, r.VsNATS, want[i])
		}
	}
}

func TestVariantScalingIsEachServersFigureOverItsFirstSize(t *testing.T) {
	rs := joinstormRows()
	addVariantScaling(rs, "joinstorm", variant{key: "conns", label: "1000"})
	want := []float64{1, 1.2, 1, 2}
	for i, r := range rs {
		m, ok := r.Metric("per join ÷ at 1000")
		if !ok || math.Abs(m.Value-want[i]) > 1e-9 {
			t.Errorf("%s at %s: %+v (%v), want %v", r.Server, r.Variant, m, ok, want[i])
		}
		if r.Metrics[1].Name != "per join ÷ at 1000" {
			t.Errorf("the ratio is not next to the primary figure: %v", r.Metrics)
		}
	}
}

func TestVariantTableHasASizeColumnAndOnlyCommonParamsInItsTitle(t *testing.T) {
	rs := joinstormRows()
	FillRatios(rs)
	var b bytes.Buffer
	WriteTable(&b, "joinstorm", rs)
	out := b.String()
	if !strings.Contains(out, "== joinstorm (ping-rate=200)\n") {
		t.Errorf("title should carry the common params only:\n%s", out)
	}
	lines := strings.Split(out, "\n")
	var hdr []string
	rows := 0
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) > 1 && f[0] == "server" {
			hdr = f
		}
		if len(f) > 1 && (f[0] == "mlesd" || f[0] == "nats") {
			rows++
			if f[1] != "1000" && f[1] != "15000" {
				t.Errorf("row without its size in the second column: %q", l)
			}
		}
	}
	if len(hdr) < 2 || hdr[1] != "conns" || rows != 4 {
		t.Errorf("header %q, %d rows:\n%s", hdr, rows, out)
	}
	if !strings.Contains(out, "at the same conns") {
		t.Errorf("the note does not say ratios are per size:\n%s", out)
	}
}

func TestFaninReadIsNotRunForRedis(t *testing.T) {
	if Supports("fanin-read", "redis") || !Supports("fanin-read", "nats") || !Supports("fanin-read", "mlesd") || !Supports("fanin-rate", "redis") {
		t.Error("fanin-read: Redis cannot publish on a subscribed connection; everything else runs it, and fanin-rate runs everywhere")
	}
}

func TestFaninWindowStaysUnderTheReceiversPendingBound(t *testing.T) {
	cfg := DefaultConfig()
	for _, c := range []struct {
		payload, pubs int
		want          uint64
	}{
		{128, 1, 4096},    // fanout, pairs: the whole window
		{128, 1000, 16},   // fanin: --min-window each, 16,000 in all
		{128, 10_000, 3},  // 10,000 publishers: 30,000 in all, not 160,000
		{128, 100_000, 1}, // never below one
		{1 << 20, 1, 16},  // big messages: the byte window, at least --min-window
	} {
		if got := cfg.windowFor(c.payload, c.pubs); got != c.want {
			t.Errorf("payload %d, %d publishers: window %d, want %d", c.payload, c.pubs, got, c.want)
		}
	}
}

func TestEveryListedScenarioIsRegisteredOnce(t *testing.T) {
	seen := map[string]bool{}
	for _, s := range append(append([]string(nil), ScenarioOrder...), ExtraScenarios...) {
		if Scenarios[s] == nil || seen[s] {
			t.Errorf("%s: registered %v, listed twice %v", s, Scenarios[s] != nil, seen[s])
		}
		seen[s] = true
	}
	if len(seen) != len(Scenarios) {
		t.Errorf("%d scenarios listed, %d registered", len(seen), len(Scenarios))
	}
}
