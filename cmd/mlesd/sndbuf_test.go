package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mlesd/mlesd/internal/mlestest"
)

// sendQueue returns the bytes the server's socket to the client at
// clientPort holds unacknowledged (tx_queue in /proc/net/tcp), or -1 if
// that socket is not found.
func sendQueue(t *testing.T, serverPort, clientPort int) int {
	t.Helper()
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		t.Skipf("no /proc/net/tcp: %v", err)
	}
	defer f.Close()
	local, remote := fmt.Sprintf(":%04X", serverPort), fmt.Sprintf(":%04X", clientPort)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		// sl local_address rem_address st tx_queue:rx_queue ...
		if len(fields) < 5 || !strings.HasSuffix(fields[1], local) || !strings.HasSuffix(fields[2], remote) {
			continue
		}
		tx, _, _ := strings.Cut(fields[4], ":")
		n, err := strconv.ParseInt(tx, 16, 64)
		if err != nil {
			t.Fatalf("tx_queue %q: %v", fields[4], err)
		}
		return int(n)
	}
	return -1
}

// A client that stops reading holds at most --sndbuf (which the kernel
// doubles) in the server's kernel send queue: at the default, and at a
// larger value, which the queue then fills.
func TestSendBufferBoundsWhatAStalledSocketHolds(t *testing.T) {
	const slack = 64 << 10 // tx_queue counts payload; the kernel lets one write pass the bound
	for _, tc := range []struct {
		name   string
		args   []string
		sndbuf int
	}{{"default", nil, 256 << 10}, {"1MiB", []string{"--sndbuf", "1048576"}, 1 << 20}} {
		t.Run(tc.name, func(t *testing.T) {
			bound := 2 * tc.sndbuf
			p := startMlesd(t, append([]string{"--history-limit", "0"}, tc.args...)...)
			staller := mlestest.Join(t, p.Addr, key, "staller", "ch") // never reads
			pub := mlestest.Join(t, p.Addr, key, "pub", "ch")
			_, sp, _ := net.SplitHostPort(p.Addr)
			serverPort, _ := strconv.Atoi(sp)
			clientPort := staller.NC.LocalAddr().(*net.TCPAddr).Port
			for i := 0; i < 96; i++ { // 6 MiB: more than the kernel takes, less than --max-pending
				if err := pub.Send(mlestest.Seq(uint32(i), 64<<10)); err != nil {
					t.Fatal(err)
				}
			}
			// Wait until it has filled and stopped growing (20 readings in a
			// row the same: the server writes whenever the socket has room);
			// every reading on the way is checked against the bound.
			q, peak, same, last := 0, 0, 0, -1
			mlestest.WaitUntil(t, "the stalled socket's send queue to fill and settle", 15*time.Second, func() bool {
				q = sendQueue(t, serverPort, clientPort)
				peak = max(peak, q)
				if q == last {
					same++
				} else {
					same, last = 0, q
				}
				return same >= 20 && q >= bound/2
			})
			if peak > bound+slack {
				t.Fatalf("the stalled socket held %d bytes in the kernel, want at most %d", peak, bound+slack)
			}
			t.Logf("send queue %d KiB (bound %d KiB)", q>>10, bound>>10)
		})
	}
}
