package peering_test

// Support for the peering end-to-end suite (e2e_test.go): every server is a
// separate mlesd process on loopback, every client a plain Mles client whose
// frames are read by a background goroutine and recorded, so that a test can
// wait (bounded) for deliveries and then check them exactly: every frame of
// every other sender once, in the sender's order, never the receiver's own.

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/internal/mlestest"
)

var mlesdBin string

// TestMain builds mlesd once for the whole package. (Package peering's own
// tests must not define another TestMain: go test allows one per package.)
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mlesd-peering-e2e-")
	if err != nil {
		panic(err)
	}
	if mlesdBin, err = mlestest.Build(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const sharedKey = "peering-e2e"

var (
	// sharedEnv sets the shared key; addrEnv makes sure none is set (an
	// empty value counts as not set), so keys are address-based.
	sharedEnv = []string{"MLES_KEY=" + sharedKey, "MLESD_KEY="}
	addrEnv   = []string{"MLES_KEY=", "MLESD_KEY=", "MLES_ADDR_KEY="}
)

// Back-off and linger of every test server: fast, so that waits are short.
const (
	backoff    = 100 * time.Millisecond
	backoffMax = 400 * time.Millisecond
	linger     = 200 * time.Millisecond
)

// quiet is how long a test listens for frames that must not come.
const quiet = 300 * time.Millisecond

// server is one mlesd process with its metrics endpoint.
type server struct {
	*mlestest.Proc
	name    string
	metrics string // 127.0.0.1:port of --metrics
}

// startServer runs mlesd with --metrics and the test back-off and linger;
// args come after them (so a test can override them). When the test fails,
// the tail of the server's log is printed.
func startServer(t *testing.T, name string, env []string, args ...string) *server {
	t.Helper()
	s := &server{name: name, metrics: staticAddr(t, "127.0.0.1")}
	all := append([]string{"--metrics", s.metrics,
		"--peer-backoff", backoff.String(), "--peer-backoff-max", backoffMax.String(),
		"--peer-linger", linger.String()}, args...)
	s.Proc = mlestest.Start(t, mlesdBin, env, all...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("---- log of server %s (%s), tail ----\n%s", name, strings.Join(all, " "), tail(s.Log(), 6000))
			// MLESD_E2E_LOGDIR=dir: the whole log of every server of a failed test.
			if dir := os.Getenv("MLESD_E2E_LOGDIR"); dir != "" {
				f := fmt.Sprintf("%s/%s-%s.log", dir, strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()), s.name)
				_ = os.WriteFile(f, []byte(s.Log()), 0o644)
			}
		}
	})
	return s
}

// kill SIGKILLs the server and reaps it (so that the cleanup of Start does
// not require exit 0 of it).
func (s *server) kill(t *testing.T) {
	t.Helper()
	if err := s.Cmd.Process.Kill(); err != nil {
		t.Fatalf("kill %s: %v", s.name, err)
	}
	// Stop's SIGTERM goes to a dead process; what matters is that it waits
	// for the reaper, after which Start's cleanup sees ProcessState set.
	_ = s.Stop(10 * time.Second)
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

// countLog counts log lines containing all of subs.
func (s *server) countLog(subs ...string) int {
	n := 0
	for _, line := range strings.Split(s.Log(), "\n") {
		ok := true
		for _, sub := range subs {
			if !strings.Contains(line, sub) {
				ok = false
				break
			}
		}
		if ok && line != "" {
			n++
		}
	}
	return n
}

// waitLogCount waits up to timeout until countLog(subs...) >= n.
func (s *server) waitLogCount(t *testing.T, n int, timeout time.Duration, subs ...string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for s.countLog(subs...) < n {
		if time.Now().After(deadline) {
			t.Fatalf("server %s: wanted %d log lines with %q within %v, have %d:\n%s",
				s.name, n, subs, timeout, s.countLog(subs...), tail(s.Log(), 6000))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var metricsClient = &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

var stateLabel = regexp.MustCompile(`state="([^"]*)"`)

// uplinks scrapes mlesd_peer_uplinks, summed per state over any other
// labels. present says whether the metric appeared at all.
func (s *server) uplinks() (states map[string]int, present bool, err error) {
	resp, err := metricsClient.Get("http://" + s.metrics + "/metrics")
	if err != nil {
		return nil, false, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, false, err
	}
	states = map[string]int{}
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, "# TYPE mlesd_peer_uplinks ") {
			present = true
		}
		if !strings.HasPrefix(line, "mlesd_peer_uplinks{") && !strings.HasPrefix(line, "mlesd_peer_uplinks ") {
			continue
		}
		present = true
		m := stateLabel.FindStringSubmatch(line)
		if m == nil {
			return nil, true, fmt.Errorf("mlesd_peer_uplinks sample without a state label: %q", line)
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return nil, true, fmt.Errorf("bad sample %q: %v", line, err)
		}
		states[m[1]] += int(v)
	}
	return states, present, nil
}

func total(states map[string]int) int {
	n := 0
	for _, v := range states {
		n += v
	}
	return n
}

// pollUplinks polls the uplink gauge until cond holds (true) or timeout
// passes (false); it returns the last scrape.
func (s *server) pollUplinks(timeout time.Duration, cond func(map[string]int) bool) (map[string]int, bool) {
	deadline := time.Now().Add(timeout)
	for {
		m, present, err := s.uplinks()
		if err == nil && present && cond(m) {
			return m, true
		}
		if time.Now().After(deadline) {
			return m, false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// grepLines returns the lines of log containing sub.
func grepLines(log, sub string) string {
	var out []string
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, sub) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// waitUplinks waits up to 15 s until cond holds for the server's uplink
// gauge. A missing metric counts as all zero unless mustExist.
func (s *server) waitUplinks(t *testing.T, what string, mustExist bool, cond func(map[string]int) bool) map[string]int {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	var (
		last    map[string]int
		present bool
		err     error
	)
	for {
		last, present, err = s.uplinks()
		if err == nil && (present || !mustExist) && cond(last) {
			return last
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("server %s: uplinks never %s within 15 s: last scrape %v (metric present: %v, error: %v)\n%s",
		s.name, what, last, present, err, tail(s.Log(), 6000))
	return nil
}

// waitUp waits until exactly n uplinks are up.
func (s *server) waitUp(t *testing.T, n int) {
	t.Helper()
	s.waitUplinks(t, fmt.Sprintf("%d up", n), n > 0, func(m map[string]int) bool { return m["up"] == n })
}

// waitNoUplinks waits until the server has no uplink in any state.
func (s *server) waitNoUplinks(t *testing.T) {
	t.Helper()
	s.waitUplinks(t, "all gone (every state 0)", false, func(m map[string]int) bool { return total(m) == 0 })
}

// ---- clients ----

// client is a Mles client whose every received frame is recorded by a
// background reader.
type client struct {
	*mlestest.Client

	mu       sync.Mutex
	data     map[string][]uint32 // sender uid → sequence numbers of its data frames, in arrival order
	seen     map[string]int      // uid + NUL + message → times received (every frame of these tests is unique)
	syncFrom map[string]bool     // senders whose sync frames arrived
	joins    int                 // frames with an empty message (joins: the receiver does not check them)
	problems []string            // echoes, duplicates, malformed frames
	readErr  error
}

// start begins recording mc's frames; the connection is closed by the
// test's cleanup (mlestest.Dial), which ends the reader.
func start(mc *mlestest.Client) *client {
	c := &client{Client: mc, data: map[string][]uint32{}, seen: map[string]int{}, syncFrom: map[string]bool{}}
	go c.readLoop()
	return c
}

// join connects to addr and joins (uid, ch) with the shared key.
func join(t *testing.T, addr, uid, ch string) *client {
	t.Helper()
	return start(mlestest.Join(t, addr, sharedKey, uid, ch))
}

// joinAddrKey joins (uid, ch) with an address-based key: computed from the
// client socket's own local address, as the server sees it.
func joinAddrKey(t *testing.T, addr, uid, ch string) *client {
	t.Helper()
	nc := mlestest.Dial(t, addr)
	ap := nc.LocalAddr().(*net.TCPAddr).AddrPort()
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()) // an IPv4 socket's address may come back as ::ffff:a.b.c.d
	k := codec.KeyConfig{}.ClientKey(ap, uid, ch)
	mc := &mlestest.Client{NC: nc, R: bufio.NewReaderSize(nc, 256<<10), UID: uid, Ch: ch, Key: k}
	if err := mc.Send(nil); err != nil {
		t.Fatal(err)
	}
	return start(mc)
}

func (c *client) readLoop() {
	for {
		tr, err := c.Read(time.Hour)
		if err != nil {
			c.mu.Lock()
			c.readErr = err
			c.mu.Unlock()
			return
		}
		c.record(tr)
	}
}

func (c *client) problem(format string, args ...any) {
	if len(c.problems) < 20 {
		c.problems = append(c.problems, fmt.Sprintf(format, args...))
	}
}

func (c *client) record(tr codec.Triplet) {
	c.mu.Lock()
	defer c.mu.Unlock()
	msg := tr.Message
	if len(msg) == 0 {
		c.joins++
		return
	}
	k := tr.UID + "\x00" + string(msg)
	c.seen[k]++
	if c.seen[k] > 1 {
		c.problem("duplicate: %s's frame %q received %d times", tr.UID, describe(msg), c.seen[k])
	}
	if tr.UID == c.UID {
		c.problem("echo: got its own frame %q back", describe(msg))
	}
	if tr.Channel != c.Ch {
		c.problem("frame from %s names channel %q, want %q", tr.UID, tr.Channel, c.Ch)
	}
	switch {
	case bytes.HasPrefix(msg, []byte("sync/")):
		c.syncFrom[tr.UID] = true
	case len(msg) >= 4 && string(msg[4:]) == "/"+tr.UID:
		c.data[tr.UID] = append(c.data[tr.UID], mlestest.SeqOf(msg))
	default:
		c.problem("malformed frame from %s: %q", tr.UID, msg)
	}
}

func describe(msg []byte) string {
	if bytes.HasPrefix(msg, []byte("sync/")) {
		return string(msg)
	}
	if len(msg) >= 4 {
		return fmt.Sprintf("seq %d%s", mlestest.SeqOf(msg), msg[4:])
	}
	return fmt.Sprintf("%x", msg)
}

// dataMsg is data frame seq of sender uid: the sequence number, then the
// sender's uid (so a frame that arrives under another uid is seen).
func dataMsg(uid string, seq uint32) []byte {
	return append(mlestest.Seq(seq, 4), "/"+uid...)
}

func (c *client) count(from string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.data[from])
}

// ledger is what each sender sent: uid → sequence numbers in send order.
type ledger map[string][]uint32

// send makes every client send data frames from..to-1 concurrently (each
// client in its own goroutine, in order) and records them in l.
func (l ledger) send(t *testing.T, from, to uint32, clients ...*client) {
	t.Helper()
	errs := make(chan error, len(clients))
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := from; seq < to; seq++ {
				if err := c.Send(dataMsg(c.UID, seq)); err != nil {
					errs <- fmt.Errorf("%s sending %d: %w", c.UID, seq, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, c := range clients {
		for seq := from; seq < to; seq++ {
			l[c.UID] = append(l[c.UID], seq)
		}
	}
}

// senders returns l's uids, sorted.
func (l ledger) senders() []string {
	var s []string
	for uid := range l {
		s = append(s, uid)
	}
	sort.Strings(s)
	return s
}

// deliver waits up to timeout until every receiver has at least as many
// data frames from every other sender in l as were sent, then listens for
// the quiet window and requires, exactly: each other sender's frames once
// each, in send order; nothing of its own; no duplicate of any frame (sync
// frames included); nothing malformed.
func (l ledger) deliver(t *testing.T, timeout time.Duration, receivers ...*client) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !l.arrived(receivers) {
		if time.Now().After(deadline) {
			t.Fatalf("frames missing after %v:\n%s", timeout, l.status(receivers))
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(quiet) // anything more that arrives now is a duplicate or an echo
	l.exact(t, receivers...)
}

func (l ledger) arrived(receivers []*client) bool {
	for _, r := range receivers {
		for uid, seqs := range l {
			if uid != r.UID && r.count(uid) < len(seqs) {
				return false
			}
		}
	}
	return true
}

// status describes, per receiver and sender, frames received vs sent.
func (l ledger) status(receivers []*client) string {
	var b strings.Builder
	for _, r := range receivers {
		r.mu.Lock()
		fmt.Fprintf(&b, "  %s:", r.UID)
		for _, uid := range l.senders() {
			if uid != r.UID {
				fmt.Fprintf(&b, " from %s %d/%d;", uid, len(r.data[uid]), len(l[uid]))
			}
		}
		if r.readErr != nil {
			fmt.Fprintf(&b, " read error: %v;", r.readErr)
		}
		if len(r.problems) > 0 {
			fmt.Fprintf(&b, " problems: %v", r.problems)
		}
		b.WriteString("\n")
		r.mu.Unlock()
	}
	return b.String()
}

// exact checks the receivers' records against l (see deliver).
func (l ledger) exact(t *testing.T, receivers ...*client) {
	t.Helper()
	bad := false
	for _, r := range receivers {
		r.mu.Lock()
		for _, p := range r.problems {
			t.Errorf("%s: %s", r.UID, p)
			bad = true
		}
		for uid, got := range r.data {
			if _, ok := l[uid]; !ok {
				t.Errorf("%s: %d data frames from %s, which is not a sender here", r.UID, len(got), uid)
				bad = true
			}
		}
		for _, uid := range l.senders() {
			if uid == r.UID {
				continue
			}
			got, want := r.data[uid], l[uid]
			if d := firstDiff(got, want); d >= 0 {
				t.Errorf("%s got %d frames from %s, want %d: first difference at index %d: %s",
					r.UID, len(got), uid, len(want), d, around(got, want, d))
				bad = true
			}
		}
		r.mu.Unlock()
	}
	if bad {
		t.FailNow()
	}
}

func firstDiff(got, want []uint32) int {
	for i := range max(len(got), len(want)) {
		if i >= len(got) || i >= len(want) || got[i] != want[i] {
			return i
		}
	}
	return -1
}

func around(got, want []uint32, i int) string {
	win := func(s []uint32) []uint32 { return s[min(max(i-3, 0), len(s)):min(i+4, len(s))] }
	return fmt.Sprintf("got …%v…, want …%v…", win(got), win(want))
}

// meshSync makes sure every client's frames reach every other client
// before a test publishes: all send unique sync frames in rounds until each
// has one from each other. Bounded by 15 s.
func meshSync(t *testing.T, clients ...*client) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for round := 0; ; round++ {
		for _, c := range clients {
			if err := c.Send(fmt.Appendf(nil, "sync/%s/%d", c.UID, round)); err != nil {
				t.Fatalf("%s: %v", c.UID, err)
			}
		}
		roundEnd := time.Now().Add(200 * time.Millisecond)
		for time.Now().Before(roundEnd) {
			if missing := syncMissing(clients); len(missing) == 0 {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		if time.Now().After(deadline) {
			t.Fatalf("clients never all reached each other within 15 s; missing (receiver<-sender): %v", syncMissing(clients))
		}
	}
}

func syncMissing(clients []*client) []string {
	var missing []string
	for _, r := range clients {
		r.mu.Lock()
		for _, s := range clients {
			if s != r && !r.syncFrom[s.UID] {
				missing = append(missing, r.UID+"<-"+s.UID)
			}
		}
		r.mu.Unlock()
	}
	return missing
}

// staticAddr returns host:port with a TCP port free on host right now,
// chosen below the kernel's ephemeral port range: no outgoing connection (a
// client's, an uplink's, or a port of mlestest.FreePort) can take it before
// the server binds it or while a restarted server is down, and a dial to it
// while nothing listens cannot connect to itself. host "::1" skips the test
// when there is no IPv6 loopback.
func staticAddr(t *testing.T, host string) string {
	t.Helper()
	lo := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				lo = n
			}
		}
	}
	base := max(lo-20000, 1024)
	var lastErr error
	for range 100 {
		if lo-base < 100 {
			break
		}
		addr := net.JoinHostPort(host, strconv.Itoa(base+rand.IntN(lo-base)))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			lastErr = err
			if host == "::1" && !strings.Contains(err.Error(), "address already in use") {
				t.Skipf("no IPv6 loopback: %v", err)
			}
			continue
		}
		l.Close()
		return addr
	}
	// No room below the ephemeral range: take an ephemeral port after all.
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		if host == "::1" {
			t.Skipf("no IPv6 loopback: %v (%v)", err, lastErr)
		}
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// retryWaits returns the wait= values of the server's "peer uplink retry"
// lines for channel ch, in order.
func (s *server) retryWaits(t *testing.T, ch string) []time.Duration {
	t.Helper()
	var waits []time.Duration
	for _, line := range strings.Split(s.Log(), "\n") {
		if !strings.Contains(line, `msg="peer uplink retry"`) || !strings.Contains(line, "channel="+ch) {
			continue
		}
		m := waitField.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("server %s: retry line without wait=: %q", s.name, line)
		}
		d, err := time.ParseDuration(m[1])
		if err != nil {
			t.Fatalf("server %s: retry line with bad wait: %q: %v", s.name, line, err)
		}
		waits = append(waits, d)
	}
	return waits
}

var waitField = regexp.MustCompile(`\bwait=([0-9.]+[a-zµ]+)`)

// goroutines is the server's goroutine count without the idle workers of
// gnet's goroutine pool (ants), which it keeps for 10 to 20 s after use:
// what is left must return to its baseline at once when a load ends.
func goroutines(t *testing.T, s *server) int {
	t.Helper()
	resp, err := http.Get("http://" + s.PprofAddr + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	m := goroutineTotal.FindSubmatch(body)
	if m == nil {
		t.Fatalf("server %s: no goroutine total in pprof output", s.name)
	}
	n, _ := strconv.Atoi(string(m[1]))
	// Groups are "COUNT @ pcs" followed by "#\t" frame lines.
	for _, group := range strings.Split(string(body), "\n\n") {
		if !strings.Contains(group, "ants/v2.(*goWorker).run") {
			continue
		}
		if m := groupCount.FindStringSubmatch(group); m != nil {
			k, _ := strconv.Atoi(m[1])
			n -= k
		}
	}
	return n
}

var (
	goroutineTotal = regexp.MustCompile(`goroutine profile: total (\d+)`)
	groupCount     = regexp.MustCompile(`(?m)^(\d+) @`)
)
