package engine

import (
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/internal/mlestest"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
	binDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// mlesdBinary builds cmd/mlesd once per test run.
func mlesdBinary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "engine-mlesd-")
		if binErr == nil {
			binPath, binErr = mlestest.Build(binDir)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// joinSmallAt joins uid to channel at addr over a socket with a receive
// buffer of rcvbuf bytes (0 = default) and a WAN-sized MSS (no in-process
// server to wait on). On loopback's 64 KiB MSS the server's send buffer to a
// receiver that never reads grows to about 1.1 MB; a thousand of those put
// the kernel under TCP memory pressure, which real networks do not.
func joinSmallAt(t testing.TB, addr, uid, channel string, rcvbuf int) *client {
	t.Helper()
	return joinOver(t, dialSmall(t, addr, rcvbuf, 1400), sharedKeys, uid, channel, netip.AddrPort{})
}

// metric reads one unlabelled sample from a Prometheus text endpoint.
func metric(t testing.TB, addr, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, _ := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

// Fan-in at fleet scale, against the real binary: a thousand devices that
// publish and never read (each member receives the others' frames until its
// socket is full, then reads its channel's log as a lagger) and one collector that reads: the
// collector gets every frame of every device, in each device's order.
func TestThousandSendOnlyPublishersAndOneCollectorLoseNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 1,000 sockets and runs mlesd")
	}
	// 4,000 frames/s offered for 2.5 s: each device gets about 2.5 MB,
	// its socket fills, it lags, and the log (1 MiB) drops what it cannot hold.
	const devs, frames, size, interval = 1000, 10, 200, 250 * time.Millisecond
	metricsAddr := "127.0.0.1:" + strconv.Itoa(mlestest.FreePort(t))
	p := mlestest.Start(t, mlesdBinary(t), nil, "--key", sharedKeys.SharedKey, "--history-limit", "0",
		"--max-pending", strconv.Itoa(1<<20), "--metrics", metricsAddr)
	// The collector's kernel buffer is large: on this shared machine the
	// test process may be descheduled for a while, which no server can
	// make up for.
	collector := joinSmallAt(t, p.Addr, "collector", "fleet", 4<<20)
	mlestest.WaitUntil(t, "the collector's join", 5*time.Second, func() bool { return metric(t, metricsAddr, "mlesd_joins_total") == 1 })
	devices := make([]*client, devs)
	for i := range devices {
		devices[i] = joinSmallAt(t, p.Addr, "dev"+strconv.Itoa(i), "fleet", 0)
	}
	for i := 0; i < devs; i++ { // every device's join has reached the collector
		if _, err := collector.readFrame(10 * time.Second); err != nil {
			t.Fatalf("join %d: %v", i, err)
		}
	}
	next := map[string]uint32{}
	done := make(chan error, 1)
	go func() {
		for total := 0; total < devs*frames; total++ {
			f, err := collector.readFrame(20 * time.Second)
			if err != nil {
				done <- fmt.Errorf("after %d of %d frames: %w", total, devs*frames, err)
				return
			}
			tr, err := codec.DecodeTriplet(f[codec.HeaderLen:])
			if err != nil {
				done <- err
				return
			}
			if got := binary.BigEndian.Uint32(tr.Message); got != next[tr.UID] {
				done <- fmt.Errorf("%s: sequence %d, want %d (loss or reorder)", tr.UID, got, next[tr.UID])
				return
			}
			next[tr.UID]++
		}
		done <- nil
	}()
	var wg sync.WaitGroup
	for _, d := range devices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < frames; i++ {
				d.send(seqMessage(uint32(i), size))
				time.Sleep(interval)
			}
		}()
	}
	wg.Wait()
	if err := <-done; err != nil {
		t.Fatalf("%v (server counted %v frames in, %v dropped, busy %vs; closed: %s)", err, metric(t, metricsAddr, "mlesd_frames_in_total"), metric(t, metricsAddr, "mlesd_frames_dropped_total"), metric(t, metricsAddr, "mlesd_event_loop_busy_seconds_total"), mlestest.MetricLines(metricsAddr, "closed_by_server"))
	}
	dropped := metric(t, metricsAddr, "mlesd_frames_dropped_total")
	t.Logf("collector got all %d frames; %v frames counted dropped for the devices", devs*frames, dropped)
	if dropped == 0 {
		t.Fatal("no frame dropped for the devices: their backlogs never filled, the test proves nothing")
	}
}
