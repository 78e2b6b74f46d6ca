package hostile

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/internal/mlestest"
)

// hostileResync returns a resync frame for (uid, channel) under the shared
// key: its own join, then n-1 distinct inner frames of entryLen bytes each
// (header included), the shape of issue 11's attack.
func hostileResync(t *testing.T, uid, channel string, n, entryLen int) ([]byte, [][]byte) {
	t.Helper()
	k := codec.Key(key, uid, channel)
	join, err := codec.AppendFrame(nil, k, codec.Triplet{UID: uid, Channel: channel})
	if err != nil {
		t.Fatal(err)
	}
	entries := make([][]byte, 0, n)
	entries = append(entries, join)
	block := make([]byte, 0, (n-1)*entryLen)
	for i := 1; i < n; i++ {
		start := len(block)
		block = codec.AppendHeader(block, codec.Header{Len: entryLen - codec.HeaderLen, CID: 7, Key: uint64(i)})
		block = binary.BigEndian.AppendUint64(block, uint64(i))
		block = block[:start+entryLen]
		entries = append(entries, block[start:start+entryLen])
	}
	payload := codec.AppendResync(nil, entries)
	if len(payload) > codec.MaxPayloadLen {
		t.Fatalf("resync of %d entries is %d bytes, over the maximum payload", n, len(payload))
	}
	return append(header(len(payload), k), payload...), entries
}

// pingPong keeps two clients exchanging numbered frames, each waiting for
// the other's, until stop; it returns the longest wait for a frame and
// the number of round trips.
type pingPong struct {
	a, b   *mlestest.Client
	stop   chan struct{}
	done   chan struct{}
	mu     sync.Mutex
	maxGap time.Duration
	rounds int
	err    error
}

func startPingPong(t *testing.T, addr, channel string) *pingPong {
	a := mlestest.Join(t, addr, key, "ping", channel)
	b := mlestest.Join(t, addr, key, "pong", channel)
	mlestest.Sync(t, a, b)
	mlestest.Sync(t, b, a)
	pp := &pingPong{a: a, b: b, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(pp.done)
		last := time.Now()
		for seq := uint32(0); ; seq++ {
			select {
			case <-pp.stop:
				return
			default:
			}
			for _, hop := range [][2]*mlestest.Client{{a, b}, {b, a}} {
				if err := hop[0].Send(mlestest.Seq(seq, 8)); err != nil {
					pp.fail(err)
					return
				}
				for {
					tr, err := hop[1].Read(10 * time.Second)
					if err != nil {
						pp.fail(fmt.Errorf("round %d: %w", seq, err))
						return
					}
					if !mlestest.IsSync(tr.Message) && mlestest.SeqOf(tr.Message) == seq {
						break
					}
				}
				now := time.Now()
				pp.mu.Lock()
				pp.maxGap = max(pp.maxGap, now.Sub(last))
				pp.mu.Unlock()
				last = now
			}
			pp.mu.Lock()
			pp.rounds++
			pp.mu.Unlock()
			time.Sleep(2 * time.Millisecond)
		}
	}()
	return pp
}

func (pp *pingPong) fail(err error) {
	pp.mu.Lock()
	pp.err = err
	pp.mu.Unlock()
}

func (pp *pingPong) count() int {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	return pp.rounds
}

// waitRounds waits until n more round trips are done.
func (pp *pingPong) waitRounds(t *testing.T, n int) {
	t.Helper()
	want := pp.count() + n
	deadline := time.Now().Add(10 * time.Second)
	for pp.count() < want {
		if time.Now().After(deadline) {
			t.Fatalf("ping-pong stuck at %d rounds: %v", pp.count(), pp.err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (pp *pingPong) finish(t *testing.T) (time.Duration, int) {
	t.Helper()
	close(pp.stop)
	<-pp.done
	pp.a.NC.Close()
	pp.b.NC.Close()
	if pp.err != nil {
		t.Fatalf("ping-pong: %v", pp.err)
	}
	return pp.maxGap, pp.rounds
}

// busySeconds reads the event loops' busy time from /metrics.
func busySeconds(t *testing.T, metricsAddr string) float64 {
	return metric(t, metricsAddr, "mlesd_event_loop_busy_seconds_total")
}

// metric reads the sample called name (labels included) from /metrics.
func metric(t *testing.T, metricsAddr, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == name {
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	t.Fatalf("no %s in /metrics", name)
	return 0
}

// resyncHoldsNoLoop sends the hostile resync while a pair on another
// channel of the same (only) event loop keeps exchanging, and checks that
// the pair never waits 500 ms, that the resync was applied (a late joiner
// gets its last frames as history) and that the server still serves.
// slackKiB is the RSS the server may keep afterwards.
func resyncHoldsNoLoop(t *testing.T, entries, entryLen, slackKiB int, args ...string) {
	metrics := net.JoinHostPort("127.0.0.1", strconv.Itoa(mlestest.FreePort(t)))
	p, base := start(t, append([]string{"--loops", "1", "--metrics", metrics}, args...)...)
	frame, inner := hostileResync(t, "refill", "refilled", entries, entryLen)
	pp := startPingPong(t, p.Addr, "bystanders")
	pp.waitRounds(t, 20)

	busyBefore := busySeconds(t, metrics)
	began := time.Now()
	nc := mlestest.Dial(t, p.Addr)
	if _, err := nc.Write(frame); err != nil {
		t.Fatal(err)
	}
	// The merge is done when a joiner gets the resync's last frames as
	// history (the channel keeps the last 100).
	var applied time.Duration
	for deadline := time.Now().Add(30 * time.Second); ; {
		late := mlestest.Join(t, p.Addr, key, "late", "refilled")
		got, last := readRaw(t, late.NC, 100)
		late.NC.Close()
		if got == 100 && string(last) == string(inner[len(inner)-1]) {
			applied = time.Since(began)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the resync was not applied: a joiner got %d history frames\n%s", got, p.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	busy := busySeconds(t, metrics) - busyBefore
	pp.waitRounds(t, 20)
	gap, rounds := pp.finish(t)
	t.Logf("%d entries of %d bytes (%d-byte frame): applied %v after sending; loop busy %.1f ms meanwhile; "+
		"pair: %d round trips, longest wait %v", entries, entryLen, len(frame), applied.Round(time.Millisecond),
		busy*1000, rounds, gap.Round(time.Millisecond))
	if gap >= 500*time.Millisecond {
		t.Fatalf("a pair on the same loop waited %v for a frame during the resync", gap)
	}
	nc.Close()
	recovered(t, p, base, slackKiB)
}

// readRaw reads up to n frames from nc (stopping after 1 s of silence) and
// returns how many it read and the last one, whole.
func readRaw(t *testing.T, nc net.Conn, n int) (int, []byte) {
	t.Helper()
	r := bufio.NewReader(nc)
	var last []byte
	for i := 0; i < n; i++ {
		_ = nc.SetReadDeadline(time.Now().Add(time.Second))
		var hdr [codec.HeaderLen]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return i, last
		}
		h, err := codec.ParseHeader(hdr[:])
		if err != nil {
			t.Fatalf("history frame %d: %v", i, err)
		}
		last = make([]byte, codec.HeaderLen+h.Len)
		copy(last, hdr[:])
		if _, err := io.ReadFull(r, last[codec.HeaderLen:]); err != nil {
			return i, last
		}
	}
	return n, last
}

// Issue 11: a resync of 60,000 tiny distinct entries froze its event loop
// for about 8 s (the merge compared each entry with every earlier one).
func TestResyncOfManyTinyEntriesDoesNotStallTheLoop(t *testing.T) {
	resyncHoldsNoLoop(t, 60_000, codec.HeaderLen+8, 32<<10, "--max-resync-entries", "60000")
}

// The largest resync the default cap lets through at the largest payload:
// 10,000 entries filling 16 MiB.
func TestLargestResyncUnderTheDefaultCapDoesNotStallTheLoop(t *testing.T) {
	n := 10_000
	entryLen := (codec.MaxPayloadLen-64)/n - (1 + 12 + 3)
	// The 16 MiB frame went through the connection's inbound buffer and
	// the frame pool; the Go runtime returns such memory to the system
	// slowly, so the RSS bound is loose here (the history keeps 166 KB).
	resyncHoldsNoLoop(t, n, entryLen, 112<<10)
}

func TestResyncOverTheDefaultCapIsClosed(t *testing.T) {
	metrics := net.JoinHostPort("127.0.0.1", strconv.Itoa(mlestest.FreePort(t)))
	p, base := start(t, "--metrics", metrics)
	pp := startPingPong(t, p.Addr, "bystanders")
	frame, _ := hostileResync(t, "refill", "refilled", 10_001, codec.HeaderLen+8)
	nc := mlestest.Dial(t, p.Addr)
	if _, err := nc.Write(frame); err != nil {
		t.Fatal(err)
	}
	mlestest.ExpectClosed(t, nc)
	p.WaitLog(t, "reason=resync-too-large")
	// At the cap it is a resync like any other.
	frame, _ = hostileResync(t, "refill", "refilled", 10_000, codec.HeaderLen+8)
	ok := mlestest.Dial(t, p.Addr)
	if _, err := ok.Write(frame); err != nil {
		t.Fatal(err)
	}
	late := mlestest.Join(t, p.Addr, key, "late", "refilled")
	if got, _ := readRaw(t, late.NC, 100); got != 100 {
		t.Fatalf("a resync at the cap was not applied: a joiner got %d history frames", got)
	}
	if strings.Count(p.Log(), "reason=resync-too-large") != 1 {
		t.Fatalf("want one resync-too-large close in the log:\n%s", p.Log())
	}
	if n := metric(t, metrics, `mlesd_connections_closed_by_server_total{reason="resync-too-large"}`); n != 1 {
		t.Fatalf("resync-too-large closes counted: %v, want 1", n)
	}
	pp.waitRounds(t, 10)
	if gap, _ := pp.finish(t); gap >= 500*time.Millisecond {
		t.Fatalf("a pair waited %v for a frame", gap)
	}
	ok.Close()
	late.NC.Close()
	recovered(t, p, base, 16<<10)
}
