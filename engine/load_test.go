package engine

import (
	"encoding/binary"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/router"
)

// readPublisher reads frames until it has n messages from uid, checking that
// their sequence numbers (first 4 bytes of the message) run 0..n-1. Frames
// from other uids (join frames of later joiners) are skipped.
func readPublisher(c *client, uid string, n int) error {
	next := uint32(0)
	for next < uint32(n) {
		f, err := c.readFrame(20 * time.Second)
		if err != nil {
			return fmt.Errorf("%s: after %d of %d frames: %w", c.uid, next, n, err)
		}
		t, err := codec.DecodeTriplet(f[codec.HeaderLen:])
		if err != nil {
			return fmt.Errorf("%s: undecodable frame: %w", c.uid, err)
		}
		if t.UID != uid || len(t.Message) == 0 {
			continue
		}
		if seq := binary.BigEndian.Uint32(t.Message); seq != next {
			return fmt.Errorf("%s: got sequence %d, want %d (loss or reorder)", c.uid, seq, next)
		}
		next++
	}
	return nil
}

func seqMessage(seq uint32, size int) []byte {
	m := make([]byte, size)
	binary.BigEndian.PutUint32(m, seq)
	return m
}

func TestThousandSubscribersEachReceiveEveryFrameInOrder(t *testing.T) {
	const subs, frames = 1000, 200
	ts := startServer(t, Config{Keys: sharedKeys}, router.Config{HistoryLimit: router.Off})
	clients := make([]*client, subs)
	for i := range clients {
		clients[i] = join(t, ts.addr, sharedKeys, fmt.Sprintf("sub%d", i), "fan", nil)
	}
	deadline := time.Now().Add(20 * time.Second)
	for ts.srv.Stats().Joins < subs && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := ts.srv.Stats().Joins; got != subs {
		t.Fatalf("%d joins, want %d", got, subs)
	}
	pub := ts.join(t, sharedKeys, "pub", "fan", nil)
	errs := make(chan error, subs)
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- readPublisher(c, "pub", frames)
		}()
	}
	var burst []byte
	for i := 0; i < frames; i++ {
		burst = append(burst, pub.frame(seqMessage(uint32(i), 64))...)
		if i%20 == 19 {
			pub.write(burst)
			burst = burst[:0]
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if d := ts.srv.Stats().Dropped; d != 0 {
		t.Fatalf("%d frames dropped for receivers that keep up", d)
	}
}

func TestStalledSilentReceiverIsClosedAndLogged(t *testing.T) {
	// The reader keeps up, but on a loaded machine it may be descheduled: an
	// 8 MiB backlog bound gives it 250 ms of slack at this rate, and the
	// staller passes it within the 16 MB published.
	ts := startServer(t, Config{Keys: sharedKeys, StallTimeout: 300 * time.Millisecond, MaxPending: 8 << 20},
		router.Config{HistoryLimit: router.Off})
	// The staller joins and then never reads or sends.
	staller := ts.join(t, sharedKeys, "staller", "ch", nil)
	nc := staller.nc
	reader := ts.join(t, sharedKeys, "reader", "ch", nil)
	pub := ts.join(t, sharedKeys, "pub", "ch", nil)
	reader.expect(pub.frame(nil))
	// Publish until the staller has been dropping frames past the timeout,
	// while the reader, which keeps up, gets every frame.
	done := make(chan error, 1)
	const n = 2000
	go func() { done <- readPublisher(reader, "pub", n) }()
	for i := 0; i < n; i++ {
		pub.send(seqMessage(uint32(i), 8192))
		if i%20 == 19 {
			time.Sleep(5 * time.Millisecond)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	ts.log.waitFor(t, "reason=stalled-and-silent")
	ts.log.waitFor(t, "receiver is not keeping up")
	expectClosed(t, nc)
	if ts.srv.Stats().Dropped == 0 {
		t.Fatal("no frames counted as dropped for the staller")
	}
	// The publisher, which never reads either but keeps sending, is still open.
	reader.expect(pub.send([]byte("publisher still here")))
}
