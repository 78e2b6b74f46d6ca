package peering_test

import (
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mlesd/mlesd/internal/mlestest"
)

// metric returns the value of an unlabelled metric from the server's
// /metrics, or -1 when it is absent.
func (s *server) metric(t *testing.T, name string) float64 {
	t.Helper()
	resp, err := metricsClient.Get("http://" + s.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("%s: %q", name, line)
			}
			return f
		}
	}
	return -1
}

// A peer that accepts the uplink and then never reads (a black hole): the
// members of the channel on A are not slowed or harmed, A's memory stays
// bounded, and the frames the uplink cannot take are dropped for it alone
// and counted.
func TestPeeringBlackHolePeerHarmsNoMember(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		held  []net.Conn
		wg    sync.WaitGroup
		close = func() {
			ln.Close()
			mu.Lock()
			for _, c := range held {
				c.Close()
			}
			mu.Unlock()
			wg.Wait()
		}
	)
	wg.Add(1)
	go func() { // accept and hold; never read
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(close)

	A := startServer(t, "A", sharedEnv, "--peer", ln.Addr().String(), "--history-limit", "0")
	baseline := A.Status(t, "VmRSS")
	// A long uid makes each frame about 1 KiB (the suite's messages are
	// the sequence number and the sender's uid).
	uid := "pub-" + strings.Repeat("x", 1000)
	pub := mlestest.Join(t, A.Addr, sharedKey, uid, "hole")
	sub := join(t, A.Addr, "sub", "hole")
	A.waitUp(t, 1)

	const n = 20000 // 40 MB (the uid is in the message and the triplet): more than the uplink may have pending (8 MiB) plus socket buffers
	// In windows the subscriber keeps up with (it reads under -race), so
	// that only the uplink falls behind.
	const window = 500
	deadline := time.Now().Add(60 * time.Second)
	for seq := uint32(0); seq < n; seq++ {
		if err := pub.Send(dataMsg(uid, seq)); err != nil {
			t.Fatal(err)
		}
		if (seq+1)%window != 0 {
			continue
		}
		for sub.count(uid) < int(seq+1) {
			if time.Now().After(deadline) {
				t.Fatalf("the subscriber got %d of %d frames while the peer did not read", sub.count(uid), seq+1)
			}
			time.Sleep(time.Millisecond)
		}
	}
	sub.mu.Lock()
	problems, seqs := sub.problems, sub.data[uid]
	sub.mu.Unlock()
	if len(problems) > 0 {
		t.Fatalf("subscriber: %v", problems)
	}
	for i, s := range seqs {
		if s != uint32(i) {
			t.Fatalf("subscriber got frame %d at position %d", s, i)
		}
	}
	d := A.metric(t, "mlesd_frames_dropped_total")
	if d <= 0 {
		t.Fatalf("mlesd_frames_dropped_total = %v: the uplink to a peer that never reads cannot have taken 20 MB", d)
	}
	grew := A.Status(t, "VmRSS") - baseline // kB
	if grew > 96<<10 {
		t.Fatalf("RSS grew %d kB with one stalled uplink", grew)
	}
	t.Logf("dropped for the uplink: %v frames; RSS grew %d kB", d, grew)
	if !A.Alive() {
		t.Fatal("A died")
	}
}
