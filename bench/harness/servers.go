package harness

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ServerConfig says how to start each kind of server.
type ServerConfig struct {
	MlesdBin  string
	NaiveBin  string // the naive goroutine-per-connection Mles forwarder (bench/cmd/naivemles)
	NATSBin   string
	RedisBin  string
	MlesKey   string   // MLES_KEY given to mlesd
	MlesdArgs []string // extra flags for mlesd (e.g. --pprof 127.0.0.1:6060)
	WorkDir   string   // logs and config files go here
}

// Server is one server process started by the harness.
type Server struct {
	Kind string
	Addr string // 127.0.0.1:port
	Log  string // path of its combined stdout/stderr

	cmd    *exec.Cmd
	done   chan struct{}
	waitMu sync.Mutex
	err    error
}

// live tracks every started server so that a signal handler can end them all.
var (
	liveMu sync.Mutex
	live   = map[*Server]struct{}{}
)

// StopAll ends every server still running (by PID). Safe from any goroutine.
func StopAll() {
	liveMu.Lock()
	var ss []*Server
	for s := range live {
		ss = append(ss, s)
	}
	liveMu.Unlock()
	for _, s := range ss {
		s.Stop()
	}
}

// FreePort asks the kernel for a free TCP port on 127.0.0.1.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// RaiseFDLimit lifts the soft RLIMIT_NOFILE to the hard limit. Children
// started afterwards inherit it (an explicit Setrlimit also stops Go from
// restoring the original soft limit in children). Returns the new limit.
func RaiseFDLimit() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}
	rl.Cur = rl.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}
	return rl.Cur, nil
}

// StartServer starts a server of the given kind on a free loopback port and
// waits until it accepts connections.
func StartServer(ctx context.Context, kind string, cfg ServerConfig) (*Server, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	if cfg.WorkDir == "" {
		cfg.WorkDir = os.TempDir()
	}
	var cmd *exec.Cmd
	switch kind {
	case "mlesd":
		args := []string{"--listen", addr, "--history-limit", "0", "--log-level", "warn"}
		// Every benchmark connection comes from 127.0.0.1: lift mlesd's
		// per-address cap (default 10,000, which conns alone reaches).
		if mlesdHasFlag(cfg.MlesdBin, "max-conns-per-ip") {
			args = append(args, "--max-conns-per-ip", "0")
		}
		args = append(args, cfg.MlesdArgs...)
		cmd = exec.Command(cfg.MlesdBin, args...)
		cmd.Env = append(os.Environ(), "MLES_KEY="+cfg.MlesKey)
	case "naive":
		cmd = exec.Command(cfg.NaiveBin, "--listen", addr)
		cmd.Env = append(os.Environ(), "MLES_KEY="+cfg.MlesKey)
	case "nats":
		// max_payload is raised for bigfan's 1.6 MB message (the default is 1 MB).
		conf := filepath.Join(cfg.WorkDir, fmt.Sprintf("nats-%d.conf", port))
		if err := os.WriteFile(conf, []byte("max_payload: 8MB\n"), 0o644); err != nil {
			return nil, err
		}
		cmd = exec.Command(cfg.NATSBin, "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-c", conf)
	case "redis":
		cmd = exec.Command(cfg.RedisBin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--maxclients", "19000", "--daemonize", "no")
	default:
		return nil, fmt.Errorf("unknown server kind %q", kind)
	}
	if _, err := exec.LookPath(cmd.Path); err != nil {
		return nil, fmt.Errorf("%s binary %q: %w", kind, cmd.Path, err)
	}
	logf, logPath, err := createLog(cfg.WorkDir, kind, port)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group (a terminal's Ctrl-C reaches only us; we end the child
	// by PID), and killed by the kernel if the harness dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", kind, err)
	}
	s := &Server{Kind: kind, Addr: addr, Log: logPath, cmd: cmd, done: make(chan struct{})}
	liveMu.Lock()
	live[s] = struct{}{}
	liveMu.Unlock()
	go func() {
		err := cmd.Wait()
		logf.Close()
		s.waitMu.Lock()
		s.err = err
		s.waitMu.Unlock()
		close(s.done)
	}()
	// Wait until it accepts a connection, at most 15 s.
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-s.done:
			return nil, fmt.Errorf("%s exited at start: %v\n%s", kind, s.exitErr(), s.LogTail(20))
		case <-ctx.Done():
			s.Stop()
			return nil, ctx.Err()
		default:
		}
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return s, nil
		}
		if time.Now().After(deadline) {
			s.Stop()
			return nil, fmt.Errorf("%s does not accept on %s after 15 s\n%s", kind, addr, s.LogTail(20))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// createLog creates dir/KIND-PORT.log for a server's output, or, since a port
// comes back free for a later server, KIND-PORT-N.log: an earlier server's
// log is never overwritten.
func createLog(dir, kind string, port int) (*os.File, string, error) {
	path := filepath.Join(dir, fmt.Sprintf("%s-%d.log", kind, port))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	for n := 2; errors.Is(err, os.ErrExist) && n < 1000; n++ {
		path = filepath.Join(dir, fmt.Sprintf("%s-%d-%d.log", kind, port, n))
		f, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	}
	return f, path, err
}

func (s *Server) exitErr() error {
	s.waitMu.Lock()
	defer s.waitMu.Unlock()
	return s.err
}

// mlesdHasFlag reports whether mlesd's --help lists flag.
func mlesdHasFlag(bin, flag string) bool {
	out, _ := exec.Command(bin, "--help").CombinedOutput()
	return strings.Contains(string(out), "-"+flag+" ")
}

// PID is the server's process id.
func (s *Server) PID() int { return s.cmd.Process.Pid }

// Exited reports whether the process has ended, and how.
func (s *Server) Exited() (bool, error) {
	select {
	case <-s.done:
		return true, s.exitErr()
	default:
		return false, nil
	}
}

// RSS is the server's resident set size in bytes (VmRSS of /proc/PID/status).
func (s *Server) RSS() (int64, error) { return ProcRSS(s.PID()) }

// ProcRSS reads VmRSS of a process, in bytes.
func ProcRSS(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			f := strings.Fields(rest) // "12345 kB"
			if len(f) != 2 || f[1] != "kB" {
				return 0, fmt.Errorf("VmRSS %q", rest)
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			return kb * 1024, err
		}
	}
	return 0, errors.New("no VmRSS")
}

// CPUTime is the CPU time (user + system) the server has used so far, from
// /proc/PID/stat.
func (s *Server) CPUTime() (time.Duration, error) { return ProcCPU(s.PID()) }

// ProcCPU reads utime+stime of a process.
func ProcCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, errors.New("bad /proc stat")
	}
	f := strings.Fields(string(b[i+1:])) // f[0] is field 3 (state)
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("bad /proc stat times")
	}
	const hz = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / hz, nil
}

// Stop ends the server: SIGTERM, then SIGKILL after 3 s. Idempotent.
func (s *Server) Stop() error {
	liveMu.Lock()
	delete(live, s)
	liveMu.Unlock()
	select {
	case <-s.done:
		return nil
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(3 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
	return nil
}

// LogTail returns the last n lines of the server's log.
func (s *Server) LogTail(n int) string {
	b, err := os.ReadFile(s.Log)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
