package hostile

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mlesd/mlesd/internal/mlestest"
)

// limitFDs sets the running server's open-file limit, soft and hard, as
// `ulimit -n` before its start would (Go's runtime would otherwise raise
// the soft limit to the hard one at start).
func limitFDs(t *testing.T, p *mlestest.Proc, n uint64) {
	t.Helper()
	lim := unix.Rlimit{Cur: n, Max: n}
	if err := unix.Prlimit(p.Cmd.Process.Pid, unix.RLIMIT_NOFILE, &lim, nil); err != nil {
		t.Fatalf("cannot set the server's fd limit: %v", err)
	}
}

// Out of file descriptors the server keeps serving: 100 connections under a
// limit of 64 fds. Those it cannot take are closed at once (not left hanging
// in the backlog), members joined before keep exchanging, the event is
// logged with its cause, and once the flood is gone a fresh pair exchanges.
func TestOutOfFileDescriptorsTheServerKeepsServing(t *testing.T) {
	p, _ := start(t)
	a := mlestest.Join(t, p.Addr, key, "a", "steady")
	b := mlestest.Join(t, p.Addr, key, "b", "steady")
	mlestest.Sync(t, a, b)
	base := p.FDs(t)
	if base >= 48 {
		t.Fatalf("baseline of %d fds leaves no room under 64", base)
	}
	limitFDs(t, p, 64)

	flood := make([]*mlestest.Client, 100)
	for i := range flood {
		// Each on its own channel: an accepted one receives nothing, so a
		// read on it times out, while a refused one reads EOF or a reset.
		flood[i] = mlestest.Join(t, p.Addr, key, "flood", fmt.Sprintf("flood-%d", i))
	}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		refused int
		slowest time.Duration
	)
	began := time.Now()
	for _, c := range flood {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.NC.SetReadDeadline(time.Now().Add(3 * time.Second))
			_, err := c.NC.Read(make([]byte, 1))
			if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				mu.Lock()
				refused++
				slowest = max(slowest, time.Since(began))
				mu.Unlock()
			}
		}()
	}
	// Members joined before the flood keep exchanging during it.
	if err := a.Send([]byte("during the flood")); err != nil {
		t.Fatal(err)
	}
	if tr, err := b.Read(5 * time.Second); err != nil || string(tr.Message) != "during the flood" {
		t.Fatalf("b did not get a's frame while out of fds: %v %q", err, tr.Message)
	}
	wg.Wait()
	if !p.Alive() {
		t.Fatalf("mlesd died out of fds:\n%s", p.Log())
	}
	if refused == 0 || refused == len(flood) {
		t.Fatalf("%d of %d connections refused; want some refused and some served under 64 fds", refused, len(flood))
	}
	if slowest > 2500*time.Millisecond {
		t.Fatalf("a refused connection waited %v to learn it", slowest)
	}
	// Out of fds either at accept or when the connection is handed to its
	// event loop (gnet duplicates the descriptor): the log says which.
	p.WaitLog(t, "too many open files")
	t.Logf("under 64 fds: %d of %d connections refused, the last after %v", refused, len(flood), slowest)

	for _, c := range flood {
		c.NC.Close()
	}
	mlestest.Settle(t, "open fds", base+2, func() int { return p.FDs(t) })
	mlestest.Exchange(t, p.Addr, key)
	if err := b.Send([]byte("after the flood")); err != nil {
		t.Fatal(err)
	}
	for { // a first has b's join frame (empty message) to read
		tr, err := a.Read(5 * time.Second)
		if err != nil {
			t.Fatalf("a did not get b's frame after the flood: %v", err)
		}
		if string(tr.Message) == "after the flood" {
			break
		}
		if len(tr.Message) != 0 {
			t.Fatalf("a got %q, want b's join and then its frame", tr.Message)
		}
	}
}
