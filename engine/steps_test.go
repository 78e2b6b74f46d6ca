package engine

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/router"
)

// step runs the tasks queued before it began and keeps the ones they queue
// for the next step: as the resume pair makes gnet do (resume.go), where a
// task queued again would otherwise run in the same pass.
func (m *manualLoop) step() {
	now := append([]gnet.Runnable(nil), m.tasks...)
	m.tasks = m.tasks[:0]
	for _, r := range now {
		_ = r.Run(context.Background())
	}
}

// A big channel's work is done in bounded steps, and a pair on another
// channel of the same loop is served between them: a drain of the
// cross-loop inbox stops after about drainStepDeliveries deliveries, a
// flush writes to at most flushStepBigWrites members of a big set, and what
// is left is done at later steps, every member getting every frame at the
// end (their order over real sockets: TestJoinStormLeavesEveryJoinerAMember
// and the fleet tests).
func TestBigChannelWorkIsDoneInBoundedSteps(t *testing.T) {
	srv, _ := New(Config{Loops: 2, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, router.New(router.Config{HistoryLimit: router.Off}))
	els := []*manualLoop{{}, {}}
	for i := range els {
		srv.loops[i].Store(newLoop(i, srv, els[i], 2))
	}
	l0, l1 := srv.loops[0].Load(), srv.loops[1].Load()
	cid := uint32(0)
	mk := func(channel string, loop int) *conn {
		cid++
		c := &conn{gc: &sinkConn{fd: devNull}, loop: srv.loops[loop].Load(), cid: cid, dupKey: uint64(cid), state: joined}
		ch, _, err := srv.router.Join(channel, c, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.ch = ch
		return c
	}
	const members, frames, size = 300, 1000, 64 // 300,000 deliveries on loop 1
	sender := mk("big", 0)
	var far []*conn
	for range members {
		mk("big", 0)
		far = append(far, mk("big", 1))
	}
	pairSender, pairReceiver := mk("pair", 1), mk("pair", 1)

	data := bytes.Repeat([]byte{0x5a}, size)
	for range frames {
		l0.frames = append(l0.frames, router.NewFrame(data))
		srv.dispatch(sender, l0)
	}
	l0.flush()
	els[0].run()
	if l1.inboxFrames.Load() != frames {
		t.Fatalf("loop 1's inbox holds %d frames, want %d", l1.inboxFrames.Load(), frames)
	}

	els[1].step() // the drain: one slice, one bounded flush
	if l1.pend == nil {
		t.Fatal("the first drain delivered all 300,000 deliveries in one step")
	}
	if n := l1.inboxFrames.Load(); n == 0 {
		t.Fatal("after the first step the inbox counts no frame: those not yet delivered must count against post's bound")
	}
	var written, queued int
	for _, c := range far {
		if c.sent > 0 {
			written++
		}
		queued += c.q.len()
	}
	if written != flushStepBigWrites {
		t.Fatalf("the first flush wrote to %d members of the big channel, want %d", written, flushStepBigWrites)
	}
	if delivered := queued + int(sumSent(far)/size); delivered > drainStepDeliveries+members || delivered < drainStepDeliveries-members {
		t.Fatalf("the first drain made %d deliveries, want about %d", delivered, drainStepDeliveries)
	}

	// The pair's frame, read now, is written in this step's flush, before
	// the big channel's rest.
	l1.frames = append(l1.frames, router.NewFrame(data))
	srv.dispatch(pairSender, l1)
	l1.flushSoon()
	els[1].step()
	if pairReceiver.sent != size {
		t.Fatalf("the pair's receiver has %d bytes after a step, want its frame (%d)", pairReceiver.sent, size)
	}
	if sumSent(far) == uint64(members*frames*size) {
		t.Fatal("the big channel was done in two steps: nothing bounded them")
	}

	steps := 2
	for len(els[1].tasks) > 0 {
		if steps++; steps > 100 {
			t.Fatal("the big channel's work did not end within 100 steps")
		}
		els[1].step()
	}
	for i, c := range far {
		if c.sent != frames*size || c.dropped != 0 {
			t.Fatalf("member %d on loop 1: %d bytes, %d dropped; want %d and 0", i, c.sent, c.dropped, frames*size)
		}
	}
	if l1.pend != nil || len(l1.dirty) != 0 || l1.inboxFrames.Load() != 0 {
		t.Fatalf("after the last step: inbox left %v, %d dirty, %d queued", l1.pend != nil, len(l1.dirty), l1.inboxFrames.Load())
	}
	if steps < 5 {
		t.Fatalf("300,000 deliveries took %d steps, want at least 5 at %d a step", steps, drainStepDeliveries)
	}
}

func sumSent(cs []*conn) (n uint64) {
	for _, c := range cs {
		n += c.sent
	}
	return n
}

// A loop's own frames to a big channel: once a round has made
// drainStepDeliveries deliveries, the walks wait for later steps; later
// frames for that channel wait behind them even after the round's budget is
// back, so every member gets them in order; and no more than
// maxDeferredDeliveries wait (past it the loop walks at once).
func TestOwnFramesToABigChannelWaitInOrderAndBounded(t *testing.T) {
	srv, _ := New(Config{Loops: 1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, router.New(router.Config{HistoryLimit: router.Off}))
	el := &manualLoop{}
	srv.loops[0].Store(newLoop(0, srv, el, 1))
	l := srv.loops[0].Load()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	if err := unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_SNDBUF, 8<<20); err != nil {
		t.Fatal(err)
	}
	cid := uint32(0)
	mk := func(fd int) *conn {
		cid++
		c := &conn{gc: &sinkConn{fd: fd}, loop: l, cid: cid, dupKey: uint64(cid), state: joined}
		ch, _, err := srv.router.Join("big", c, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.ch = ch
		return c
	}
	const members, size = 300, 64
	sender := mk(devNull)
	recorder := mk(fds[0])
	var rest []*conn
	for range members - 1 {
		rest = append(rest, mk(devNull))
	}
	sent := 0
	round := func(n int) {
		for range n {
			data := make([]byte, size)
			binary.BigEndian.PutUint64(data, uint64(sent))
			sent++
			l.frames = append(l.frames, router.NewFrame(data))
		}
		srv.dispatch(sender, l)
		if l.deferredCost > maxDeferredDeliveries+members+1 {
			t.Fatalf("%d deliveries deferred, past the bound %d", l.deferredCost, maxDeferredDeliveries)
		}
		l.flush() // the end of the round: its budget is back
	}
	waiting := func() int { return len(l.deferred) - l.deferredAt }

	round(256)
	first := waiting()
	if first == 0 || first == 256 {
		t.Fatalf("%d of the round's 256 walks to %d members deferred, want those past %d deliveries", first, members, drainStepDeliveries)
	}
	round(10)
	if waiting() != first+10 {
		t.Fatalf("%d walks wait after a second round, want %d: a frame passed those already waiting", waiting(), first+10)
	}
	for range 20 { // far more than maxDeferredDeliveries: bounded, checked in round
		round(256)
	}
	for steps := 0; len(el.tasks) > 0 || l.pending(); steps++ {
		if steps > 1000 {
			t.Fatal("the deferred walks did not end within 1,000 steps")
		}
		if len(el.tasks) == 0 {
			t.Fatal("walks wait and no step is due to do them")
		}
		el.step()
	}

	got := make([]byte, 0, sent*size)
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(fds[1], buf)
		if n <= 0 || err != nil {
			break
		}
		got = append(got, buf[:n]...)
	}
	if len(got) != sent*size {
		t.Fatalf("the recorded member got %d bytes, want %d frames of %d", len(got), sent, size)
	}
	for i := 0; i < sent; i++ {
		if seq := binary.BigEndian.Uint64(got[i*size:]); seq != uint64(i) {
			t.Fatalf("frame %d is frame %d: reordered", i, seq)
		}
	}
	for i, c := range rest {
		if c.sent != uint64(sent*size) {
			t.Fatalf("member %d got %d bytes, want %d", i, c.sent, sent*size)
		}
	}
	if sender.sent != 0 || l.deferredCost != 0 || recorder.dropped != 0 {
		t.Fatalf("sender got %d bytes of its own, %d deliveries still counted deferred, recorder dropped %d", sender.sent, l.deferredCost, recorder.dropped)
	}
}

// Over real sockets, a burst into a channel of 300 on one loop is done in
// steps that the loop's resume pair wakes (not tasks, which gnet would run
// before reading again), and every member gets every frame, in order.
func TestResumePairWakesTheStepsOfABigChannelOverTCP(t *testing.T) {
	ts := startServer(t, Config{Loops: 1}, router.Config{HistoryLimit: router.Off})
	const members, frames = 300, 2000
	keys := codec.KeyConfig{}
	recv := make([]*client, members)
	for i := range recv {
		recv[i] = ts.join(t, keys, fmt.Sprintf("r%d", i), "big", nil)
	}
	pub := ts.join(t, keys, "pub", "big", nil)

	errs := make(chan error, members)
	for _, c := range recv {
		go func() {
			next := uint64(0)
			for next < frames {
				f, err := c.readFrame(20 * time.Second)
				if err != nil {
					errs <- fmt.Errorf("%s after %d frames: %v", c.uid, next, err)
					return
				}
				tr, err := codec.DecodeTriplet(f[codec.HeaderLen:])
				if err != nil || len(tr.Message) == 0 {
					continue // a later member's join
				}
				if seq := binary.BigEndian.Uint64(tr.Message); seq != next {
					errs <- fmt.Errorf("%s: frame %d where %d was due", c.uid, seq, next)
					return
				}
				next++
			}
			errs <- nil
		}()
	}
	// One write, so that the server reads hundreds of frames a round: 256
	// of them to 301 members are past one step's deliveries.
	var burst []byte
	for i := range frames {
		msg := make([]byte, 16)
		binary.BigEndian.PutUint64(msg, uint64(i))
		burst = append(burst, pub.frame(msg)...)
	}
	pub.write(burst)
	for range members {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	var wakes uint64
	if err := ts.srv.onLoops(time.Now().Add(5*time.Second), func(l *loop) {
		if l.resumer != nil {
			wakes += l.resumer.wakes
		}
	}); err != nil {
		t.Fatal(err)
	}
	if wakes == 0 {
		t.Fatal("the burst was delivered without a step woken by the resume pair")
	}
}
