package engine

import (
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/router"
)

// A thousand connections joining one channel at once are all members: a
// later joiner's join frame reaches every one of them, the last as well.
func TestJoinStormLeavesEveryJoinerAMember(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 2,000 sockets")
	}
	const n = 1000
	ts := startServer(t, Config{Keys: sharedKeys}, router.Config{HistoryLimit: router.Off})
	clients := make([]*client, n)
	var wg sync.WaitGroup
	var next sync.Mutex
	i := 0
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				next.Lock()
				k := i
				i++
				next.Unlock()
				if k >= n {
					return
				}
				clients[k] = join(t, ts.addr, sharedKeys, "m"+strconv.Itoa(k), "storm", nil)
			}
		}()
	}
	wg.Wait()
	ts.waitJoins(t, n)
	probe := ts.join(t, sharedKeys, "probe", "storm", nil)
	want := probe.frame(nil)
	for _, k := range []int{n - 1, 0, n / 2} {
		c := clients[k]
		for {
			f, err := c.readFrame(10 * time.Second)
			if err != nil {
				t.Fatalf("member %d never got the probe's join: %v", k, err)
			}
			tr, _ := codec.DecodeTriplet(f[codec.HeaderLen:])
			if tr.UID == "probe" {
				if string(f) != string(want) {
					t.Fatalf("member %d: the probe's join differs", k)
				}
				break
			}
		}
	}
}
