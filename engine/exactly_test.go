package engine

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/router"
)

// Joiners that arrive while a publisher on another loop streams get every
// frame exactly once: the history replay up to their join, then the live
// stream, with no frame in flight at the join seen twice or never.
func TestJoinersMidStreamGetEveryFrameExactlyOnce(t *testing.T) {
	const n, joiners, burst = 20000, 40, 200
	ts := startServer(t, Config{Keys: sharedKeys, Loops: 2}, router.Config{HistoryLimit: 100})
	pub := ts.join(t, sharedKeys, "pub", "ch", nil)
	var wg sync.WaitGroup
	errs := make(chan error, joiners)
	go func() {
		// Large bursts: the server stores each as one batch and posts it
		// to the other loop after, which widens the window in which a
		// frame is in history and still on its way to the joiner's loop.
		for i := 0; i < n; i += burst {
			var b []byte
			for j := i; j < i+burst; j++ {
				b = append(b, pub.frame(seqMessage(uint32(j), 32))...)
			}
			pub.write(b)
			time.Sleep(time.Millisecond)
		}
	}()
	for k := 0; k < joiners; k++ {
		time.Sleep(3 * time.Millisecond)
		c := join(t, ts.addr, sharedKeys, "j"+strconv.Itoa(k), "ch", nil)
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- readExactlyOnce(c, "pub", n)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if d := ts.srv.Stats().Dropped; d != 0 {
		t.Fatalf("%d frames dropped: the test needs every joiner to keep up", d)
	}
}

// readExactlyOnce reads uid's frames until sequence n-1, requiring them to
// run on from the first one received without a gap or a repeat.
func readExactlyOnce(c *client, uid string, n int) error {
	next := -1
	for next != n {
		f, err := c.readFrame(20 * time.Second)
		if err != nil {
			return fmt.Errorf("%s: after sequence %d: %w", c.uid, next-1, err)
		}
		tr, err := codec.DecodeTriplet(f[codec.HeaderLen:])
		if err != nil {
			return err
		}
		if tr.UID != uid || len(tr.Message) == 0 {
			continue
		}
		seq := int(binary.BigEndian.Uint32(tr.Message))
		if next >= 0 && seq != next {
			return fmt.Errorf("%s: got sequence %d, want %d (a repeat or a gap)", c.uid, seq, next)
		}
		next = seq + 1
	}
	return nil
}
