package main

// Black-box tests: they build the mlesd binary and run it as a separate
// process, so they see what an operator sees (exit codes, logs, RSS).

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mlesd/mlesd/codec"
)

var mlesdBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mlesd-test-")
	if err != nil {
		panic(err)
	}
	mlesdBin = filepath.Join(dir, "mlesd")
	if out, err := exec.Command("go", "build", "-o", mlesdBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building mlesd: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type proc struct {
	cmd  *exec.Cmd
	addr string
	log  *bytes.Buffer
	mu   *sync.Mutex
}

func (p *proc) logText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startMlesd runs the binary on a free loopback port with MLES_KEY=k; at the
// end of the test it sends SIGTERM and requires exit code 0.
func startMlesd(t *testing.T, args ...string) *proc {
	t.Helper()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	p := &proc{addr: addr, log: &bytes.Buffer{}, mu: &sync.Mutex{}}
	p.cmd = exec.Command(mlesdBin, append([]string{"--listen", addr}, args...)...)
	p.cmd.Env = append(os.Environ(), "MLES_KEY=k")
	p.cmd.Stderr = lockedWriter{p.mu, p.log}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		nc, err := net.Dial("tcp", addr)
		if err == nil {
			nc.Close()
			break
		}
		if time.Now().After(deadline) {
			p.cmd.Process.Kill()
			t.Fatalf("mlesd did not listen: %s", p.logText())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Cleanup(func() {
		if p.cmd.ProcessState != nil {
			return
		}
		p.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- p.cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("mlesd exit after SIGTERM: %v\n%s", err, p.logText())
			}
		case <-time.After(15 * time.Second):
			p.cmd.Process.Kill()
			t.Errorf("mlesd did not exit within 15 s of SIGTERM")
		}
	})
	return p
}

// rssKiB reads a VmRSS-style field of the process, in KiB.
func rssKiB(t *testing.T, pid int, field string) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, field+":") {
			n, _ := strconv.Atoi(strings.Fields(line)[1])
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

type mlesClient struct {
	nc       net.Conn
	r        *bufio.Reader
	uid, ch  string
	key      uint64
	sendBuff []byte
}

func dialJoin(t *testing.T, addr, uid, ch string) *mlesClient {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	c := &mlesClient{nc: nc, r: bufio.NewReaderSize(nc, 256<<10), uid: uid, ch: ch, key: codec.Key("k", uid, ch)}
	c.send(t, nil)
	return c
}

func (c *mlesClient) frame(msg []byte) []byte {
	f, _ := codec.AppendFrame(c.sendBuff[:0], c.key, codec.Triplet{UID: c.uid, Channel: c.ch, Message: msg})
	c.sendBuff = f
	return f
}

func (c *mlesClient) send(t *testing.T, msg []byte) {
	if _, err := c.nc.Write(c.frame(msg)); err != nil {
		t.Errorf("%s: write: %v", c.uid, err)
	}
}

func (c *mlesClient) read(timeout time.Duration) (codec.Triplet, error) {
	c.nc.SetReadDeadline(time.Now().Add(timeout))
	var hdr [codec.HeaderLen]byte
	if _, err := io.ReadFull(c.r, hdr[:]); err != nil {
		return codec.Triplet{}, err
	}
	h, err := codec.ParseHeader(hdr[:])
	if err != nil {
		return codec.Triplet{}, err
	}
	payload := make([]byte, h.Len)
	if _, err := io.ReadFull(c.r, payload); err != nil {
		return codec.Triplet{}, err
	}
	return codec.DecodeTriplet(payload)
}

func TestHelpExplainsEveryFlagAndTheEnvironment(t *testing.T) {
	out, err := exec.Command(mlesdBin, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("--help: %v", err)
	}
	for _, want := range []string{"MLES_KEY", "MLES_ADDR_KEY", "-listen", "-history-limit", "-key", "-loops",
		"-max-frame", "-max-pending", "-stall-timeout", "-log-level", "-cpuprofile", "-memprofile", "-pprof", "[::]:8077"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("--help does not mention %s", want)
		}
	}
}

func TestBadFlagsExitWithUsageError(t *testing.T) {
	for _, args := range [][]string{{"--max-frame", "0"}, {"--history-limit", "-1"}, {"--nope"}, {"--log-level", "loud"}} {
		err := exec.Command(mlesdBin, args...).Run()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
			t.Errorf("%v: exit %v, want 2", args, err)
		}
	}
}

// 50 publishers that shut down their receive side publish on one channel
// with one reading collector: the collector gets every frame in order, no
// publisher is disconnected, and the server's memory stays bounded.
func TestSendOnlyPublishersAreServedWithBoundedMemory(t *testing.T) {
	const pubs, frames, size = 50, 400, 1024
	p := startMlesd(t, "--history-limit", "0", "--stall-timeout", "1s")
	baseline := rssKiB(t, p.cmd.Process.Pid, "VmRSS")
	collector := dialJoin(t, p.addr, "collector", "telemetry")
	time.Sleep(100 * time.Millisecond)
	publishers := make([]*mlesClient, pubs)
	for i := range publishers {
		publishers[i] = dialJoin(t, p.addr, fmt.Sprintf("dev%02d", i), "telemetry")
		if err := publishers[i].nc.(*net.TCPConn).CloseRead(); err != nil {
			t.Fatal(err)
		}
	}
	got := make(map[string]uint32)
	collected := make(chan error, 1)
	go func() {
		want := pubs * frames
		for n := 0; n < want; {
			tr, err := collector.read(30 * time.Second)
			if err != nil {
				collected <- fmt.Errorf("collector after %d of %d frames: %w", n, want, err)
				return
			}
			if len(tr.Message) == 0 {
				continue // a publisher's join
			}
			seq := binary.BigEndian.Uint32(tr.Message)
			if seq != got[tr.UID] {
				collected <- fmt.Errorf("%s: frame %d after %d: loss or reorder", tr.UID, seq, got[tr.UID])
				return
			}
			got[tr.UID]++
			n++
		}
		collected <- nil
	}()
	var wg sync.WaitGroup
	for _, pc := range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := make([]byte, size)
			for i := 0; i < frames; i++ {
				binary.BigEndian.PutUint32(msg, uint32(i))
				pc.send(t, msg)
				if i%10 == 9 {
					time.Sleep(10 * time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	if err := <-collected; err != nil {
		t.Fatal(err)
	}
	peak := rssKiB(t, p.cmd.Process.Pid, "VmHWM")
	t.Logf("server RSS: baseline %d KiB, peak %d KiB", baseline, peak)
	// Bound: stalled publishers pin shared frames (all 20 MB of this run at
	// most, whatever their number) plus at most 1 MiB each copied in the
	// loop's write buffer: 70 MiB in the worst case; sharing keeps it lower.
	if peak-baseline > 100<<10 {
		t.Fatalf("server RSS grew %d KiB, over the 100 MiB bound", peak-baseline)
	}
	if strings.Contains(p.logText(), "connection closed by server") {
		t.Fatalf("a connection was closed by the server:\n%s", p.logText())
	}
	if !strings.Contains(p.logText(), "receiver is not keeping up") {
		t.Fatalf("the publishers never stalled: the test proves nothing\n%s", p.logText())
	}
	// Publishers that keep sending stay served past the stall timeout, even
	// though they stall as receivers the whole time.
	for round := uint32(0); round < 8; round++ {
		time.Sleep(250 * time.Millisecond)
		for _, pc := range publishers {
			pc.send(t, binary.BigEndian.AppendUint32(nil, frames+round))
		}
		for n := 0; n < pubs; n++ {
			tr, err := collector.read(10 * time.Second)
			if err != nil {
				t.Fatalf("round %d: %v\n%s", round, err, p.logText())
			}
			if seq := binary.BigEndian.Uint32(tr.Message); seq != frames+round {
				t.Fatalf("round %d: %s sent %d", round, tr.UID, seq)
			}
		}
	}
	if strings.Contains(p.logText(), "connection closed by server") {
		t.Fatalf("a publisher was closed although it keeps sending:\n%s", p.logText())
	}
}

func TestProfilingSwitchesWriteProfilesAndServePprof(t *testing.T) {
	dir := t.TempDir()
	cpu, mem := filepath.Join(dir, "cpu.out"), filepath.Join(dir, "mem.out")
	pprofAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	p := startMlesd(t, "--cpuprofile", cpu, "--memprofile", mem, "--pprof", pprofAddr)
	a := dialJoin(t, p.addr, "a", "ch")
	b := dialJoin(t, p.addr, "b", "ch")
	time.Sleep(50 * time.Millisecond)
	a.send(t, []byte("profile me"))
	if _, err := b.read(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	var resp []byte
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if out, err := exec.Command("curl", "-sf", "http://"+pprofAddr+"/debug/pprof/").Output(); err == nil {
			resp = out
			break
		}
		if nc, err := net.Dial("tcp", pprofAddr); err == nil {
			fmt.Fprintf(nc, "GET /debug/pprof/ HTTP/1.0\r\n\r\n")
			resp, _ = io.ReadAll(nc)
			nc.Close()
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(string(resp), "goroutine") {
		t.Fatalf("--pprof did not serve the pprof index: %q", resp)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("exit: %v\n%s", err, p.logText())
	}
	for _, f := range []string{cpu, mem} {
		st, err := os.Stat(f)
		if err != nil || st.Size() == 0 {
			t.Fatalf("profile %s not written: %v\n%s", f, err, p.logText())
		}
	}
}
