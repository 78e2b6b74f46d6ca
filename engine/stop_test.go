package engine

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mlesd/mlesd/router"
)

// TestHelperReaderProcess is not a test: run as a child process by
// TestReaderStoppedForTwoSecondsLosesNothing, it joins as a reader with a
// small receive buffer and reads MLESD_TEST_READER_N frames of "pub",
// checking their order.
func TestHelperReaderProcess(t *testing.T) {
	addr := os.Getenv("MLESD_TEST_READER_ADDR")
	if addr == "" {
		t.Skip("helper process only")
	}
	n, _ := strconv.Atoi(os.Getenv("MLESD_TEST_READER_N"))
	c := joinOver(t, dialSmall(t, addr, 16<<10, 0), sharedKeys, "child", "ch", netip.AddrPort{})
	fmt.Println("joined")
	if err := readPublisher(c, "pub", n); err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("ok", n)
	os.Exit(0)
}

// A reader that is stopped (SIGSTOP) for 2 s while frames keep coming, and
// then continued, gets every frame, in order: its backlog fits MaxPending,
// and only what it holds can make the server drop frames for it, never how
// long it was quiet.
func TestReaderStoppedForTwoSecondsLosesNothing(t *testing.T) {
	// 31 MB in 3 s: the kernel's buffers on loopback take at most about
	// 4 MB of it, so the server holds most of the rest while the reader
	// is stopped, within MaxPending and MaxPendingFrames.
	ts := startServer(t, Config{Keys: sharedKeys, MaxPending: 64 << 20}, router.Config{HistoryLimit: router.Off})
	const n, size = 30_000, 1000
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperReaderProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), "MLESD_TEST_READER_ADDR="+ts.addr, "MLESD_TEST_READER_N="+strconv.Itoa(n))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	select {
	case l := <-lines:
		if l != "joined" {
			t.Fatalf("child said %q", l)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("child never joined")
	}
	ts.waitJoins(t, 1)
	pub := ts.join(t, sharedKeys, "pub", "ch", nil)
	// Publish for about 3 s; the reader is stopped from 0.5 s to 2.5 s.
	began := time.Now()
	stopped, continued := false, false
	for i := 0; i < n; i++ {
		pub.send(seqMessage(uint32(i), size))
		el := time.Since(began)
		if !stopped && el > 500*time.Millisecond {
			if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			stopped = true
		}
		if stopped && !continued && el > 2500*time.Millisecond {
			if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
				t.Fatal(err)
			}
			continued = true
		}
		if i%100 == 99 {
			time.Sleep(time.Until(began.Add(time.Duration(i+1) * 3 * time.Second / n)))
		}
	}
	if !continued {
		time.Sleep(time.Until(began.Add(2500 * time.Millisecond)))
		_ = cmd.Process.Signal(syscall.SIGCONT)
	}
	select {
	case l := <-lines:
		if !strings.HasPrefix(l, "ok") {
			t.Fatalf("the stopped reader lost or reordered frames: %s (server dropped %d)", l, ts.srv.Stats().Dropped)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("child never finished reading")
	}
	if d := ts.srv.Stats().Dropped; d != 0 {
		t.Fatalf("%d frames dropped for a reader whose backlog fit MaxPending", d)
	}
}
