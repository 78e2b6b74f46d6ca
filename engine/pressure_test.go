package engine

import (
	"testing"
	"time"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/router"
)

// A receiver woken as writable whose socket then takes nothing (what the
// kernel does when TCP memory as a whole is exhausted, which epoll does not
// report) is not re-armed at once, which would wake it again at once, but
// by the next sweep; the event is logged, and the receiver still gets every
// frame once its socket drains.
func TestAWakeUpThatWritesNothingIsRetriedAtTheNextSweep(t *testing.T) {
	ts := startServer(t, Config{Keys: sharedKeys}, router.Config{HistoryLimit: router.Off})
	rx := ts.joinSmall(t, "rx", "pressure", 8<<10, 0)
	pub := ts.join(t, sharedKeys, "pub", "pressure", nil)
	rx.expect(pub.frame(nil))
	const n, size = 400, 4000
	for i := 0; i < n; i++ {
		pub.send(seqMessage(uint32(i), size))
	}
	// Its socket is full: a wake-up now writes nothing, as under tcp_mem.
	// The kernel may still open the window a little between the receiver
	// starting to wait and the wake-up injected here (a real wake-up that
	// writes): that attempt proves nothing and is made again.
	var tried, wroteNothing, deferred bool
	for attempt := 0; attempt < 50 && !wroteNothing; attempt++ {
		waitUntil(t, "the receiver to wait for room", 5*time.Second, func() bool { return ts.waiting() == 1 })
		ts.onLoops(t, func(l *loop) {
			for c := range l.conns {
				if c.uid != "rx" || !c.wArmed {
					continue
				}
				tried = true
				sent := c.sent
				c.wArmed = false // as fired does
				l.writable.waiting.Add(-1)
				c.woken = true
				l.write(c)
				wroteNothing = c.sent == sent
				deferred = c.pressured && len(l.pressured) == 1 && !c.wArmed
			}
		})
	}
	if !tried || !wroteNothing {
		t.Fatalf("no wake-up found the socket still full in 50 attempts (tried %v)", tried)
	}
	if !deferred {
		t.Fatal("a wake-up that wrote nothing re-armed the socket at once")
	}
	ts.log.waitFor(t, "TCP memory is exhausted")
	waitUntil(t, "the next sweep to re-arm it", 5*time.Second, func() bool { return ts.waiting() == 1 })
	for i := 0; i < n; i++ {
		f, err := rx.readFrame(10 * time.Second)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		tr, err := codec.DecodeTriplet(f[codec.HeaderLen:])
		if err != nil || seqOf(tr.Message) != uint32(i) {
			t.Fatalf("frame %d: not the one sent (err %v)", i, err)
		}
	}
}
