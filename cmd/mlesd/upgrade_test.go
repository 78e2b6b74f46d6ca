package main

// Black-box tests of the hitless upgrade (SIGUSR2, phase 1): two builds of
// mlesd with different version strings replace each other at one path
// while clients keep dialling.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/internal/mlestest"
	"github.com/mlesd/mlesd/upgrade"
)

var (
	versionBuilds    sync.Once
	buildA, buildB   string // mlesd stamped vA and vB
	versionBuildsErr error
)

// versionedBuilds builds mlesd twice, with version strings vA and vB
// (-ldflags -X, as the Makefile stamps releases).
func versionedBuilds(t *testing.T) (a, b string) {
	t.Helper()
	versionBuilds.Do(func() {
		dir := filepath.Dir(mlesdBin)
		root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
		if err != nil {
			versionBuildsErr = err
			return
		}
		for _, v := range []struct {
			version string
			out     *string
		}{{"vA", &buildA}, {"vB", &buildB}} {
			*v.out = filepath.Join(dir, "mlesd-"+v.version)
			cmd := exec.Command("go", "build", "-ldflags", "-X main.version="+v.version, "-o", *v.out, "./cmd/mlesd")
			cmd.Dir = strings.TrimSpace(string(root))
			if out, err := cmd.CombinedOutput(); err != nil {
				versionBuildsErr = fmt.Errorf("building %s: %v\n%s", v.version, err, out)
				return
			}
		}
	})
	if versionBuildsErr != nil {
		t.Fatal(versionBuildsErr)
	}
	return buildA, buildB
}

// upgradeRig is an mlesd started from dir/mlesd with --pid-file, logging
// to one file that every process of its lineage shares.
type upgradeRig struct {
	t                      *testing.T
	dir, bin, pidFile, log string
	addr, metrics, pprof   string
	first                  *exec.Cmd
	firstDone              chan struct{}
}

// install puts src at the rig's binary path the way an installer does:
// a copy beside it, renamed over it (the running binary stays intact).
func (r *upgradeRig) install(src string) {
	r.t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		r.t.Fatal(err)
	}
	r.installBytes(b)
}

func (r *upgradeRig) installBytes(b []byte) {
	r.t.Helper()
	tmp := r.bin + ".new"
	if err := os.WriteFile(tmp, b, 0o755); err != nil {
		r.t.Fatal(err)
	}
	if err := os.Rename(tmp, r.bin); err != nil {
		r.t.Fatal(err)
	}
}

// startRig installs first and starts it with args beyond the rig's own.
func startRig(t *testing.T, first string, env []string, args ...string) *upgradeRig {
	t.Helper()
	dir := t.TempDir()
	r := &upgradeRig{t: t, dir: dir, bin: filepath.Join(dir, "mlesd"), pidFile: filepath.Join(dir, "mlesd.pid"),
		log: filepath.Join(dir, "mlesd.log"), firstDone: make(chan struct{}),
		addr:    net.JoinHostPort("127.0.0.1", strconv.Itoa(mlestest.FreePort(t))),
		metrics: net.JoinHostPort("127.0.0.1", strconv.Itoa(mlestest.FreePort(t))),
		pprof:   net.JoinHostPort("127.0.0.1", strconv.Itoa(mlestest.FreePort(t)))}
	r.install(first)
	logf, err := os.OpenFile(r.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	r.first = exec.Command(r.bin, append([]string{"--listen", r.addr, "--metrics", r.metrics, "--pid-file", r.pidFile,
		"--pprof", r.pprof}, args...)...)
	r.first.Env = append(append(os.Environ(), "MLES_KEY="+key), env...)
	r.first.Stderr = logf // a file, not a pipe: exit is seen when this process exits, not its heirs
	if err := r.first.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = r.first.Wait(); close(r.firstDone) }()
	t.Cleanup(r.stopAll)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the rig's log:\n%s", r.Log())
		}
	})
	mlestest.WaitUntil(t, "the pid file names the first process", 10*time.Second, func() bool {
		return r.pid() == r.first.Process.Pid
	})
	return r
}

// Log is everything every process of the rig logged.
func (r *upgradeRig) Log() string {
	b, _ := os.ReadFile(r.log)
	return string(b)
}

func (r *upgradeRig) waitLog(substr string, count int) {
	r.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for strings.Count(r.Log(), substr) < count {
		if time.Now().After(deadline) {
			r.t.Fatalf("log never said %q %d times:\n%s", substr, count, r.Log())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// pid is the PID in the pid file (0 if unreadable).
func (r *upgradeRig) pid() int {
	pid, _ := upgrade.ReadPIDFile(r.pidFile)
	return pid
}

// signal sends sig to the process the pid file names.
func (r *upgradeRig) signal(sig syscall.Signal) int {
	r.t.Helper()
	pid := r.pid()
	if err := syscall.Kill(pid, sig); err != nil {
		r.t.Fatalf("kill %d: %v", pid, err)
	}
	return pid
}

var pidInLog = regexp.MustCompile(`(?:new_pid=|pid=|\(pid )(\d+)`)

// stopAll ends every process of the rig's lineage still running (SIGTERM,
// then SIGKILL) and fails the test if one needed SIGKILL.
func (r *upgradeRig) stopAll() {
	pids := map[int]bool{r.first.Process.Pid: true, r.pid(): true}
	for _, m := range pidInLog.FindAllStringSubmatch(r.Log(), -1) {
		if pid, err := strconv.Atoi(m[1]); err == nil && pid != os.Getpid() {
			pids[pid] = true
		}
	}
	for pid := range pids {
		if pid > 0 && alive(pid) && isMlesd(pid, r.bin) {
			_ = syscall.Kill(pid, syscall.SIGTERM)
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for pid := range pids {
		for pid > 0 && alive(pid) && isMlesd(pid, r.bin) {
			if time.Now().After(deadline) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				r.t.Errorf("process %d did not stop within 15 s of SIGTERM\n%s", pid, r.Log())
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	select {
	case <-r.firstDone:
	case <-time.After(5 * time.Second):
	}
}

// alive reports whether pid runs (a zombie does not).
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// isMlesd guards the cleanup against a recycled PID: it kills only
// processes started from the rig's binary path.
func isMlesd(pid int, bin string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && (strings.HasPrefix(string(b), bin+"\x00") || strings.HasPrefix(string(b), "/bin/sh\x00"+bin))
}

// fdCount counts pid's open descriptors.
func fdCount(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// fdList names pid's open descriptors (for a failure message).
func fdList(pid int) []string {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	var names []string
	for _, e := range ents {
		target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		names = append(names, e.Name()+"→"+target)
	}
	return names
}

// fdKinds counts descriptors by what they are (socket, eventpoll, a
// path...), for a failure message that says which kind is left over.
func fdKinds(list []string) map[string]int {
	kinds := map[string]int{}
	for _, e := range list {
		target := e[strings.Index(e, "→")+len("→"):]
		if i := strings.IndexByte(target, ':'); i > 0 && !strings.HasPrefix(target, "/") {
			target = target[:i] // socket:[123] -> socket
		}
		kinds[target]++
	}
	return kinds
}

// tcpSockets lists pid's TCP sockets from /proc/PID/net/tcp: local and
// remote port, state (hex, as the kernel numbers them: 01 established,
// 08 close-wait, 0A listen) and inode, for a failure message.
func tcpSockets(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", pid))
	if err != nil {
		return err.Error()
	}
	mine := map[string]bool{}
	for _, e := range fdList(pid) {
		if i := strings.Index(e, "socket:["); i >= 0 {
			mine[strings.TrimSuffix(e[i+len("socket:["):], "]")] = true
		}
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 10 || !mine[f[9]] {
			continue
		}
		port := func(addr string) string {
			p, _ := strconv.ParseUint(addr[strings.IndexByte(addr, ':')+1:], 16, 16)
			return strconv.FormatUint(p, 10)
		}
		out = append(out, fmt.Sprintf("%s→%s st=%s ino=%s", port(f[1]), port(f[2]), f[3], f[9]))
	}
	return strings.Join(out, ", ")
}

// goroutines is how many goroutines the process serving the rig runs
// (from its pprof endpoint, which every process of the lineage serves at
// the same address), or -1.
func (r *upgradeRig) goroutines() int {
	b, err := get(r.pprof, "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return -1
	}
	m := regexp.MustCompile(`goroutine profile: total (\d+)`).FindSubmatch(b)
	if m == nil {
		return -1
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// metricLines is the lines of /metrics that begin with one of names.
func (r *upgradeRig) metricLines(names ...string) string {
	b, err := get(r.metrics, "/metrics")
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		for _, n := range names {
			if strings.HasPrefix(line, n) {
				out = append(out, line)
			}
		}
	}
	return strings.Join(out, ", ")
}

// get fetches path from addr without keep-alive (an idle scrape
// connection would count as the server's descriptor).
func get(addr, path string) ([]byte, error) {
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

// servedVersion is the version label of mlesd_build_info on /metrics.
func (r *upgradeRig) servedVersion() string {
	b, err := get(r.metrics, "/metrics")
	if err != nil {
		return ""
	}
	m := regexp.MustCompile(`mlesd_build_info\{[^}]*version="([^"]*)"`).FindSubmatch(b)
	if m == nil {
		return ""
	}
	return string(m[1])
}

// upgradeTo installs bin, sends SIGUSR2 and waits until the pid file names
// a new process that serves version; it returns the old and new PIDs.
func (r *upgradeRig) upgradeTo(bin, version string, nth int) (oldPID, newPID int) {
	r.t.Helper()
	r.install(bin)
	return r.upgradeInstalled(version, nth)
}

// upgradeInstalled is upgradeTo once the binary is installed.
func (r *upgradeRig) upgradeInstalled(version string, nth int) (oldPID, newPID int) {
	r.t.Helper()
	oldPID = r.signal(syscall.SIGUSR2)
	r.waitLog("upgrade complete", nth)
	mlestest.WaitUntil(r.t, "the pid file names the new process", 10*time.Second, func() bool {
		return r.pid() != oldPID && r.pid() != 0
	})
	newPID = r.pid()
	mlestest.WaitUntil(r.t, "/metrics is served by "+version, 10*time.Second, func() bool {
		return r.servedVersion() == version
	})
	if !strings.Contains(r.Log(), fmt.Sprintf("to_version=%s old_pid=%d pid=%d", version, oldPID, newPID)) {
		r.t.Fatalf("no upgrade complete line for %d → %d (%s):\n%s", oldPID, newPID, version, r.Log())
	}
	return oldPID, newPID
}

// dialers keep connecting until stopped: each connection joins and must
// then stay open (a reset or EOF within a few ms is a refused connection in
// all but name). Bounded in count and time.
type dialers struct {
	stop     chan struct{}
	wg       sync.WaitGroup
	ok, fail atomic.Int64
	mu       sync.Mutex
	errs     []string
	slowest  time.Duration // longest dial and join (Lock: mu)
}

func startDialers(addr string, n int) *dialers {
	d := &dialers{stop: make(chan struct{})}
	const perDialer = 5000
	deadline := time.Now().Add(60 * time.Second)
	for i := range n {
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			uid := fmt.Sprintf("dialer-%d", i)
			var join []byte
			buf := make([]byte, 1)
			for n := range perDialer {
				// A channel of its own: nothing is ever sent to it.
				ch := fmt.Sprintf("dial-%d-%d", i, n)
				join, _ = codec.AppendFrame(join[:0], codec.Key(key, uid, ch), codec.Triplet{UID: uid, Channel: ch})
				select {
				case <-d.stop:
					return
				default:
				}
				if time.Now().After(deadline) {
					return
				}
				began := time.Now()
				err := dialOnce(addr, join, buf)
				took := time.Since(began)
				d.mu.Lock()
				d.slowest = max(d.slowest, took)
				d.mu.Unlock()
				if err != nil {
					d.fail.Add(1)
					d.mu.Lock()
					if len(d.errs) < 10 {
						d.errs = append(d.errs, err.Error())
					}
					d.mu.Unlock()
					continue
				}
				d.ok.Add(1)
			}
		}()
	}
	return d
}

// dialOnce connects, joins and requires the connection to stay open for a
// moment.
func dialOnce(addr string, join, buf []byte) error {
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer nc.Close()
	if _, err := nc.Write(join); err != nil {
		return err
	}
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Millisecond))
	_, err = nc.Read(buf)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return nil
	}
	if err == nil {
		return errors.New("a frame on a channel nobody sends to")
	}
	return err
}

// waitFor waits until n dials have succeeded, failing at the first failed one.
func (d *dialers) waitFor(t *testing.T, n int64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for d.ok.Load() < n {
		if d.fail.Load() > 0 || time.Now().After(deadline) {
			d.mu.Lock()
			defer d.mu.Unlock()
			t.Fatalf("waiting for %d dials: %d succeeded, %d failed: %v", n, d.ok.Load(), d.fail.Load(), d.errs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// finish stops the dialers and fails t if any dial failed or too few ran.
func (d *dialers) finish(t *testing.T) {
	t.Helper()
	close(d.stop)
	d.wg.Wait()
	if d.fail.Load() > 0 {
		t.Fatalf("%d of %d dials failed during the upgrades: %v", d.fail.Load(), d.ok.Load()+d.fail.Load(), d.errs)
	}
	if d.ok.Load() < 100 {
		t.Fatalf("only %d dials ran", d.ok.Load())
	}
	t.Logf("%d dials, none refused or reset; slowest dial, join and 5 ms wait: %v", d.ok.Load(), d.slowest)
}

// exchange has a and b each send frame number n and receive the other's.
func exchange(t *testing.T, a, b *mlestest.Client, n uint32) {
	t.Helper()
	for _, p := range [][2]*mlestest.Client{{a, b}, {b, a}} {
		if err := p[0].Send(mlestest.Seq(n, 16)); err != nil {
			t.Fatalf("%s sending frame %d: %v", p[0].UID, n, err)
		}
		tr, err := p[1].Read(5 * time.Second)
		if err != nil {
			t.Fatalf("%s reading frame %d: %v", p[1].UID, n, err)
		}
		if got := mlestest.SeqOf(tr.Message); got != n || tr.UID != p[0].UID {
			t.Fatalf("%s got frame %d from %s, want %d from %s", p[1].UID, got, tr.UID, n, p[0].UID)
		}
	}
}

// Three upgrades in a row between two builds while clients keep dialling:
// no dial is refused or reset, the pid file and /metrics follow each new
// process, a pair joined before the first upgrade moves with each and
// keeps exchanging frames, and each old process exits 0 having nothing
// left to drain.
func TestUpgradesUnderDialLoadRefuseNoConnection(t *testing.T) {
	a, b := versionedBuilds(t)
	notify := listenNotify(t)
	r := startRig(t, a, []string{"NOTIFY_SOCKET=" + notify.addr}, "--drain-timeout", "60s")
	notify.want(t, "READY=1")
	if v := r.servedVersion(); v != "vA" {
		t.Fatalf("first process serves %q, want vA", v)
	}
	first := mlestest.Join(t, r.addr, key, "first-a", "kept")
	second := mlestest.Join(t, r.addr, key, "first-b", "kept")
	mlestest.Sync(t, first, second)
	mlestest.Sync(t, second, first)
	exchange(t, first, second, 1)
	// The first process's descriptors with its two clients (they move to
	// each new process), once each event loop has made its writable set
	// (with its first connection).
	baseFDs, baseList := fdCount(t, r.first.Process.Pid), fdList(r.first.Process.Pid)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("first, with 2 clients: %v\nlast: %v", baseList, fdList(r.pid()))
		}
	})

	d := startDialers(r.addr, 4)
	d.waitFor(t, 20)
	var during int64 // dials that ran while an upgrade was under way
	upgradeTo := func(bin, version string, nth int) (int, int) {
		t.Helper()
		before := d.ok.Load()
		oldPID, newPID := r.upgradeTo(bin, version, nth)
		during += d.ok.Load() - before
		return oldPID, newPID
	}
	oldPID, newPID := upgradeTo(b, "vB", 1)
	notify.want(t, "RELOADING=1")
	notify.want(t, fmt.Sprintf("MAINPID=%d", newPID))
	notify.want(t, "READY=1")
	r.waitLog(fmt.Sprintf("new_pid=%d to_version=vB", newPID), 1)
	if !regexp.MustCompile(`handed over 3 listeners, \d+ connections and \d+ channels in `).MatchString(r.Log()) {
		t.Fatalf("no handed-over line:\n%s", r.Log())
	}
	// The pair joined before the upgrade moved with it: the old process
	// has nothing left to drain and exits.
	mlestest.WaitUntil(t, "the old process exits once it handed its connections over", 15*time.Second,
		func() bool { return !alive(oldPID) })
	exchange(t, first, second, 2)
	d.waitFor(t, 200)

	_, third := upgradeTo(a, "vA", 2)
	exchange(t, first, second, 3)
	_, fourth := upgradeTo(b, "vB", 3)
	d.waitFor(t, 600)
	d.finish(t)
	if during == 0 {
		t.Fatal("no dial ran while an upgrade was under way: the test proved nothing")
	}
	t.Logf("%d dials while the upgrades were under way", during)
	if third == newPID || fourth == third {
		t.Fatalf("pid file did not move: %d, %d, %d", newPID, third, fourth)
	}
	for _, pid := range []int{newPID, third} {
		mlestest.WaitUntil(t, fmt.Sprintf("intermediate process %d exits once it handed over", pid),
			15*time.Second, func() bool { return !alive(pid) })
	}
	mlestest.Exchange(t, r.addr, key) // new clients are served by the last process
	// Nothing of the handovers stays open in the last process: its
	// descriptors fall back to what the first had before any client.
	fdDeadline := time.Now().Add(10 * time.Second)
	for fdCount(t, fourth) > baseFDs {
		if time.Now().After(fdDeadline) {
			t.Fatalf("the last process has %d descriptors after 10 s, the first had %d with its 2 clients; kinds: first %v, last %v; its TCP sockets: %s; %s",
				fdCount(t, fourth), baseFDs, fdKinds(baseList), fdKinds(fdList(fourth)), tcpSockets(fourth), r.metricLines("mlesd_connections_open", "mlesd_joins_total", "mlesd_connections_moved_total"))
		}
		time.Sleep(20 * time.Millisecond)
	}

	exchange(t, first, second, 4)
	first.NC.Close()
	second.NC.Close()
	select {
	case <-r.firstDone:
	case <-time.After(15 * time.Second):
		t.Fatalf("the first process did not exit after handing over:\n%s", r.Log())
	}
	if code := r.first.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("the first process exited %d, want 0:\n%s", code, r.Log())
	}
	if !strings.Contains(r.Log(), `msg="old process exiting after upgrade" reason="all connections closed"`) {
		t.Fatalf("no exit line of a drained process:\n%s", r.Log())
	}
	if r.pid() != fourth {
		t.Fatalf("pid file names %d after the old process exited, want %d", r.pid(), fourth)
	}
	for _, line := range strings.Split(r.Log(), "\n") {
		if strings.Contains(line, "handed over") {
			t.Log(line[strings.Index(line, "msg="):])
		}
	}
}

// A new binary that cannot be run, or exits 1 at start, leaves the old
// process serving (same pid file, same connections), and a later SIGUSR2
// upgrades.
func TestNewBinaryThatExitsAtStartLeavesTheOldServing(t *testing.T) {
	a, b := versionedBuilds(t)
	r := startRig(t, a, nil)
	c1 := mlestest.Join(t, r.addr, key, "c1", "stay")
	c2 := mlestest.Join(t, r.addr, key, "c2", "stay")
	mlestest.Sync(t, c1, c2)
	mlestest.Sync(t, c2, c1)
	r.installBytes([]byte("not a program"))
	pid := r.signal(syscall.SIGUSR2)
	r.waitLog("upgrade failed: still serving", 1)
	if !strings.Contains(r.Log(), "exec format error") {
		t.Fatalf("the failure does not say the binary cannot run:\n%s", r.Log())
	}
	r.installBytes([]byte("#!/bin/sh\necho broken build >&2\nexit 1\n"))
	r.signal(syscall.SIGUSR2)
	r.waitLog("upgrade failed: still serving", 2)
	if !strings.Contains(r.Log(), "exited before it was ready: exit status 1") {
		t.Fatalf("the failure does not say the new process exited 1:\n%s", r.Log())
	}
	if r.pid() != pid || r.servedVersion() != "vA" {
		t.Fatalf("after a failed upgrade: pid file %d (want %d), serving %q", r.pid(), pid, r.servedVersion())
	}
	exchange(t, c1, c2, 1)
	mlestest.Exchange(t, r.addr, key)

	_, newPID := r.upgradeTo(b, "vB", 1)
	if newPID == pid {
		t.Fatal("the pid file still names the old process")
	}
	exchange(t, c1, c2, 2)
}

// SIGUSR2 while an upgrade is under way is ignored with a log line; a new
// process that never gets ready is killed after --upgrade-timeout and the
// old serves on.
func TestSIGUSR2DuringAnUpgradeIsIgnored(t *testing.T) {
	a, _ := versionedBuilds(t)
	r := startRig(t, a, nil, "--upgrade-timeout", "3s")
	r.installBytes([]byte("#!/bin/sh\nexec sleep 60\n"))
	pid := r.signal(syscall.SIGUSR2)
	r.waitLog("upgrade started", 1)
	r.signal(syscall.SIGUSR2)
	r.waitLog("SIGUSR2 ignored: an upgrade is already under way", 1)
	r.waitLog("upgrade failed: still serving", 1)
	m := regexp.MustCompile(`the new process \(pid (\d+)\) was not ready within 3s`).FindStringSubmatch(r.Log())
	if m == nil {
		t.Fatalf("the failure does not name the timeout:\n%s", r.Log())
	}
	child, _ := strconv.Atoi(m[1])
	mlestest.WaitUntil(t, "the new process that never got ready is gone", 5*time.Second, func() bool { return !alive(child) })
	if strings.Count(r.Log(), "upgrade started") != 1 {
		t.Fatalf("the second SIGUSR2 started an upgrade:\n%s", r.Log())
	}
	if r.pid() != pid {
		t.Fatalf("pid file names %d, want the old %d", r.pid(), pid)
	}
	mlestest.Exchange(t, r.addr, key)
}

// A new binary that answers in a handover format the old one does not know
// is killed, and the old serves on.
func TestReplyInAnUnknownFormatIsRefused(t *testing.T) {
	a, _ := versionedBuilds(t)
	r := startRig(t, a, nil)
	// A CBOR map {0: 2 (reply), 1: 99 (format)} on the handover socket.
	r.installBytes([]byte("#!/bin/sh\nprintf '\\242\\000\\002\\001\\030\\143' >&3\nexec sleep 60\n"))
	pid := r.signal(syscall.SIGUSR2)
	r.waitLog("upgrade failed: still serving", 1)
	if !strings.Contains(r.Log(), "sent a reply this build cannot read: unknown handover format 99 (this build reads 1)") {
		t.Fatalf("the failure does not name the format:\n%s", r.Log())
	}
	if r.pid() != pid {
		t.Fatalf("pid file names %d, want the old %d", r.pid(), pid)
	}
	mlestest.Exchange(t, r.addr, key)
}

// notifySocket is a stand-in for systemd's NOTIFY_SOCKET.
type notifySocket struct {
	addr string
	msgs chan string
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	addr := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	n := &notifySocket{addr: addr, msgs: make(chan string, 100)}
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := c.Read(buf)
			if err != nil {
				return
			}
			n.msgs <- string(buf[:k])
		}
	}()
	return n
}

// want waits for the next notification that contains state.
func (n *notifySocket) want(t *testing.T, state string) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case m := <-n.msgs:
			if strings.Contains(m, state) {
				return
			}
		case <-timeout:
			t.Fatalf("no %q sent to NOTIFY_SOCKET", state)
		}
	}
}

// The TLS and WebSocket listeners move too: after the upgrade new TLS and
// WebSocket clients are served by the new process, while TLS clients
// joined before stay with the old one and keep exchanging frames (a TLS
// session cannot move; a plain connection does).
func TestUpgradeMovesTheTLSAndWebSocketListenersAndKeepsTheirSessions(t *testing.T) {
	a, b := versionedBuilds(t)
	pki := newTestPKI(t)
	tlsAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(mlestest.FreePort(t)))
	wsAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(mlestest.FreePort(t)))
	r := startRig(t, a, nil, "--tls-listen", tlsAddr, "--tls-cert", pki.server.CertFile, "--tls-key", pki.server.KeyFile,
		"--ws-listen", wsAddr, "--drain-timeout", "60s")
	r.waitLog("websocket gateway listening", 1)
	plain := mlestest.Join(t, r.addr, key, "plain", "mixed")
	tc, err := dialTLS(t, tlsAddr, pki, nil)
	if err != nil {
		t.Fatal(err)
	}
	sec := tlsClient(tc, "secure", "mixed")
	if err := sec.Send(nil); err != nil {
		t.Fatal(err)
	}
	mlestest.Sync(t, sec, plain)
	mlestest.Sync(t, plain, sec)
	var pair [2]*mlestest.Client // two TLS sessions on a channel of their own
	for i := range pair {
		tcp, err := dialTLS(t, tlsAddr, pki, nil)
		if err != nil {
			t.Fatal(err)
		}
		pair[i] = tlsClient(tcp, fmt.Sprintf("secure%d", i), "tls-only")
		if err := pair[i].Send(nil); err != nil {
			t.Fatal(err)
		}
	}
	mlestest.Sync(t, pair[0], pair[1])
	mlestest.Sync(t, pair[1], pair[0])

	oldPID, _ := r.upgradeTo(b, "vB", 1)
	if !strings.Contains(r.Log(), "handed over 5 listeners, 1 connections") {
		t.Fatalf("the TLS and WebSocket listeners, and the plain connection, were not handed over:\n%s", r.Log())
	}
	exchange(t, pair[0], pair[1], 1) // the TLS sessions stay on the old process
	if err := syscall.Kill(oldPID, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	r.waitLog("SIGUSR2 ignored: this process has handed over and is draining", 1)

	tc2, err := dialTLS(t, tlsAddr, pki, nil)
	if err != nil {
		t.Fatalf("TLS after the upgrade: %v", err)
	}
	sec2 := tlsClient(tc2, "secure2", "after")
	if err := sec2.Send(nil); err != nil {
		t.Fatal(err)
	}
	plain2 := mlestest.Join(t, r.addr, key, "plain2", "after")
	mlestest.Sync(t, sec2, plain2)
	mlestest.Sync(t, plain2, sec2)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws://"+wsAddr+"/", &websocket.DialOptions{Subprotocols: []string{"mles-websocket"}})
	if err != nil {
		t.Fatalf("WebSocket after the upgrade: %v", err)
	}
	ws.CloseNow()

	if !alive(oldPID) {
		t.Fatal("the old process exited while its TLS client was connected")
	}
	plain.NC.Close()
	sec.NC.Close()
	pair[0].NC.Close()
	pair[1].NC.Close()
	mlestest.WaitUntil(t, "the old process exits once its clients left", 15*time.Second, func() bool { return !alive(oldPID) })
	exchange(t, plain2, sec2, 2) // the new process serves on
}

// A pid file that cannot be written fails the start (exit 1, saying why);
// one that can is removed at a normal stop.
func TestPIDFileIsWrittenAtStartAndRemovedAtStop(t *testing.T) {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(mlestest.FreePort(t)))
	out, code := runToExit(t, "--listen", addr, "--pid-file", filepath.Join(t.TempDir(), "missing", "mlesd.pid"))
	if code != 1 || !strings.Contains(out, "pid file") {
		t.Fatalf("unwritable pid file: exit %d, log:\n%s", code, out)
	}
	a, _ := versionedBuilds(t)
	r := startRig(t, a, nil)
	if err := syscall.Kill(r.first.Process.Pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.firstDone:
	case <-time.After(15 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
	if _, err := os.Stat(r.pidFile); !os.IsNotExist(err) {
		t.Fatalf("pid file after a normal stop: %v", err)
	}
}
