package engine

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/router"
)

// readPublisherFrom is readPublisher for sequences from..from+n-1.
func readPublisherFrom(c *client, uid string, from uint32, n int) error {
	next := from
	for next < from+uint32(n) {
		f, err := c.readFrame(20 * time.Second)
		if err != nil {
			return err
		}
		tr, err := codec.DecodeTriplet(f[codec.HeaderLen:])
		if err != nil {
			return err
		}
		if tr.UID != uid || len(tr.Message) == 0 {
			continue
		}
		if seq := binary.BigEndian.Uint32(tr.Message); seq != next {
			return fmt.Errorf("%s: got sequence %d, want %d", c.uid, seq, next)
		}
		next++
	}
	return nil
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC() // a second cycle empties the frame pools' victim caches
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// After large frames were released, small frames held by the history and by
// receivers that do not read cannot pin large buffers: --max-pending and the
// history caps bound the memory frames hold. Twenty receivers stall, 64
// frames of 1 MiB fill the history and leave it as 65,536 small ones follow:
// the history and the stalled receivers then hold a few MiB, not the 64 MiB
// that a pool of any-size buffers let the small frames in history pin
// (measured on the previous main: 64.9 MiB).
func TestSmallFramesAfterLargeOnesCannotPassTheMemoryLimits(t *testing.T) {
	const maxPending = 2 << 20
	ts := startServer(t, Config{Keys: sharedKeys, MaxPending: maxPending}, router.Config{HistoryLimit: 64})
	reader := ts.join(t, sharedKeys, "reader", "ch", nil)
	pub := ts.join(t, sharedKeys, "pub", "ch", nil)
	reader.expect(pub.frame(nil))
	for i := 0; i < 20; i++ {
		ts.joinSmall(t, "stalled"+strconv.Itoa(i), "ch", 4<<10, 1400)
		if _, err := reader.readFrame(5 * time.Second); err != nil { // its join
			t.Fatal(err)
		}
	}
	before := heapInUse()
	big := make([]byte, 1<<20-1024) // with its header, in the 1 MiB class
	for i := 0; i < 64; i++ {       // kept by the history, released as small frames evict them
		reader.expect(pub.send(big))
	}
	const small, chunk = 65536, 4096
	// Published in chunks, each once the reader has the one before, so
	// that the reader (on this loaded machine) never falls past its own
	// limit; the stalled receivers take what their limits let them.
	for i := 0; i < small; i += chunk {
		var burst []byte
		for j := i; j < i+chunk; j++ {
			burst = append(burst, pub.frame(seqMessage(uint32(j), 4))...)
		}
		pub.write(burst)
		if err := readPublisherFrom(reader, "pub", uint32(i), chunk); err != nil {
			t.Fatal(err)
		}
	}
	held := int64(heapInUse()) - int64(before)
	t.Logf("heap in use beyond the start: %.1f MiB (20 stalled receivers, --max-pending %d MiB)", float64(held)/(1<<20), maxPending>>20)
	// Each stalled receiver holds at most maxPending of frame memory, and
	// they hold the same frames; generous room for everything else.
	if held > 24<<20 {
		t.Fatalf("%.1f MiB held after the small frames, want under 24 MiB", float64(held)/(1<<20))
	}
}
