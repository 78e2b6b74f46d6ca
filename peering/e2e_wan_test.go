package peering_test

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

// WAN timings of the fault test: what the link does, and the servers'
// reconnect settings (the back-off the uplink must come back within).
const (
	wanDelay       = 50 * time.Millisecond // one way
	wanLoss        = 0.01                  // each way
	wanPartition   = 10 * time.Second
	wanBackoff     = 200 * time.Millisecond
	wanBackoffMax  = time.Second
	wanDialTimeout = 3 * time.Second
	// wanSynRetry is the kernel's first SYN retransmission, which a
	// redial from the same port needs (see peering.Uplink.reuseFrom).
	wanSynRetry = time.Second
)

// requireWAN skips unless the WAN fault tests were asked for (make wan sets
// MLESD_WAN=1) and can run: they build network namespaces, which needs root.
func requireWAN(t *testing.T) {
	t.Helper()
	if os.Getenv("MLESD_WAN") == "" {
		t.Skip("WAN fault test: builds network namespaces, so it runs only when asked for, as root: make wan (sets MLESD_WAN=1)")
	}
	if os.Geteuid() != 0 {
		t.Skip("WAN fault test needs root (network namespaces, veth pairs, raw packet sockets): run make wan as root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatalf("MLESD_WAN is set but %v: install iproute2 (make wan does)", errNoIP)
	}
}

// Two servers in their own network namespaces, B peered to A over a link
// with 50 ms of delay each way and 1 % packet loss; two clients on each.
// Frames cross exactly once. Then the link is cut for 10 s (every packet
// dropped) while every client keeps sending: each side's clients keep
// getting each other's frames; once the link heals, every frame sent during
// the partition reaches the other side exactly once, in order (both keep
// 1000 frames of history, more than was sent), nothing loops, and if the
// uplink went down it is back within the back-off (plus the dial).
func TestPeeringWANDelayLossAndPartition(t *testing.T) {
	requireWAN(t)
	w := newWAN(t, wanDelay, wanLoss)
	addrA, addrB := w.ipA+":8077", w.ipB+":8077"
	common := []string{"--history-limit", "1000", "--peer-backoff", wanBackoff.String(),
		"--peer-backoff-max", wanBackoffMax.String(), "--peer-dial-timeout", wanDialTimeout.String()}
	startInNS(t, w.nsA, "A", sharedEnv, append([]string{"--listen", addrA}, common...)...)
	B := startInNS(t, w.nsB, "B", sharedEnv, append([]string{"--listen", addrB, "--peer", addrA}, common...)...)
	a1, a2 := joinInNS(t, w.nsA, addrA, "a1", "wan"), joinInNS(t, w.nsA, addrA, "a2", "wan")
	b1, b2 := joinInNS(t, w.nsB, addrB, "b1", "wan"), joinInNS(t, w.nsB, addrB, "b2", "wan")
	all := []*client{a1, a2, b1, b2}
	meshSync(t, all...)
	B.waitLogCount(t, 1, time.Second, `msg="peer uplink up"`)

	// Paced, so that the loss hits frames: each crosses in packets of its own.
	began := time.Now()
	sent := ledger{}
	sent.sendPaced(t, 0, 500, 2*time.Millisecond, all...)
	sent.deliver(t, 20*time.Second, all...)
	t.Logf("500 frames from each of 4 clients, one every 2 ms, crossed the link exactly once in %v (quiet window included); %d packets lost, %d passed",
		time.Since(began).Round(time.Millisecond), w.lost.Load(), w.passed.Load())

	downs, ups := B.countLog(`msg="peer uplink down"`), B.countLog(`msg="peer uplink up"`)
	w.cut.Store(true)
	cut := time.Now()
	// Every client sends during the partition, at its start and halfway.
	sent.send(t, 500, 600, all...)
	onA, onB := ledger{"a1": sent["a1"], "a2": sent["a2"]}, ledger{"b1": sent["b1"], "b2": sent["b2"]}
	waitArrived(t, onA, a1, a2)
	waitArrived(t, onB, b1, b2)
	time.Sleep(wanPartition/2 - time.Since(cut))
	sent.send(t, 600, 700, all...)
	time.Sleep(wanPartition - time.Since(cut))
	w.cut.Store(false)
	healed := time.Now()

	wentDown := B.countLog(`msg="peer uplink down"`) > downs
	if wentDown {
		// Down during the partition: the next dial after the heal must
		// work, so the uplink is back within one back-off cap (+20 %
		// jitter), one dial timeout and a few round trips.
		limit := wanBackoffMax*12/10 + wanDialTimeout + 10*wanDelay
		took := B.waitLogCount(t, ups+1, limit, `msg="peer uplink up"`)
		t.Logf("the uplink went down during the partition and was back %v after the heal (limit %v)", took.Round(time.Millisecond), limit)
	}
	sent.deliver(t, 30*time.Second, all...)
	t.Logf("every frame of the partition delivered exactly once %v after the heal (quiet window included); uplink went down: %v; packets lost %d, cut %d, passed %d",
		time.Since(healed).Round(time.Millisecond), wentDown, w.lost.Load(), w.dropped.Load(), w.passed.Load())

	// And the link still works both ways.
	sent.send(t, 700, 750, all...)
	sent.deliver(t, 20*time.Second, all...)
}

// As above, but the partition also resets B's uplink (its socket is
// destroyed on B's side, as when a NAT or firewall forgets a connection),
// while A still holds its end of it, and with it the uplink's CID; and
// only B's clients send during the partition, so A has nothing to send on
// that stale end and would not learn it is dead for minutes (keepalive).
// B redials through the partition with back-off; once the link heals, its
// uplink must be accepted again within the back-off (a redial from the
// same port clears A's stale end), and every frame sent during the
// partition reaches A's clients exactly once, through the resync.
func TestPeeringWANPartitionThatResetsTheUplink(t *testing.T) {
	requireWAN(t)
	w := newWAN(t, wanDelay, wanLoss)
	addrA, addrB := w.ipA+":8077", w.ipB+":8077"
	common := []string{"--history-limit", "1000", "--peer-backoff", wanBackoff.String(),
		"--peer-backoff-max", wanBackoffMax.String(), "--peer-dial-timeout", wanDialTimeout.String()}
	A := startInNS(t, w.nsA, "A", sharedEnv, append([]string{"--listen", addrA}, common...)...)
	B := startInNS(t, w.nsB, "B", sharedEnv, append([]string{"--listen", addrB, "--peer", addrA}, common...)...)
	a1, a2 := joinInNS(t, w.nsA, addrA, "a1", "wanreset"), joinInNS(t, w.nsA, addrA, "a2", "wanreset")
	b1, b2 := joinInNS(t, w.nsB, addrB, "b1", "wanreset"), joinInNS(t, w.nsB, addrB, "b2", "wanreset")
	all := []*client{a1, a2, b1, b2}
	meshSync(t, all...)
	sent := ledger{}
	sent.send(t, 0, 100, all...)
	sent.deliver(t, 20*time.Second, all...)
	time.Sleep(time.Second) // every byte acknowledged: A has nothing left to send on the link

	downs := B.countLog(`msg="peer uplink down"`)
	w.cut.Store(true)
	cut := time.Now()
	run(t, "ip", "netns", "exec", w.nsB, "ss", "-K", "dst", addrA)
	B.waitLogCount(t, downs+1, 5*time.Second, `msg="peer uplink down"`)
	sent.send(t, 100, 200, b1, b2)
	waitArrived(t, ledger{"b1": sent["b1"], "b2": sent["b2"]}, b1, b2)
	time.Sleep(wanPartition - time.Since(cut))
	w.cut.Store(false)
	healed := time.Now()

	// A dial in flight at the heal may time out; the next one, a back-off
	// later, connects after one SYN retransmission.
	limit := wanDialTimeout + wanBackoffMax*12/10 + wanSynRetry + 10*wanDelay
	onA := ledger{"b1": sent["b1"], "b2": sent["b2"]}
	for !onA.arrived([]*client{a1, a2}) {
		if time.Since(healed) > limit {
			t.Fatalf("B's uplink not accepted by A within %v of the heal (A refused %d reconnects as duplicate-cid):\n%s",
				limit, A.countLog("reason=duplicate-cid"), onA.status([]*client{a1, a2}))
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("B's uplink accepted and the partition's frames at A's clients %v after the heal (limit %v); A refused %d reconnects as duplicate-cid",
		time.Since(healed).Round(time.Millisecond), limit, A.countLog("reason=duplicate-cid"))
	sent.deliver(t, 10*time.Second, all...)
	sent.send(t, 200, 250, all...)
	sent.deliver(t, 20*time.Second, all...)
}
