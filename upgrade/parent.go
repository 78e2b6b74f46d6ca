package upgrade

// The old process's side: start the new binary, hand it the listeners,
// wait until it serves.

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// File is one listening socket to hand over: what it is and a descriptor
// of it (a duplicate the caller owns; Start does not close it).
type File struct {
	FileID
	F *os.File
}

// Options describe the new process.
type Options struct {
	Path    string          // the binary to start (Executable)
	Args    []string        // its arguments, without argv[0]
	Env     []string        // its environment (EnvFD, if present, is replaced)
	Dir     string          // its working directory ("": this process's)
	Stdout  io.Writer       // its standard output and error (os.Stdout and os.Stderr pass the descriptors themselves)
	Stderr  io.Writer       //
	Version string          // this process's version string, for the Offer
	Files   []File          // the listening sockets
	Timeout time.Duration   // from start to ready; 0 = DefaultTimeout
	Cancel  <-chan struct{} // closed: give up (the new process is killed)
	// States offers the live connections and channels too (phase 2):
	// StateFormat, or 0 for the listeners only.
	States uint16
}

// Child is a new process that reported ready. Until Commit it has not
// been told the listeners are its own.
type Child struct {
	PID     int
	Version string // its version string, from its Reply
	states  uint16 // the state format it reads (Reply.States); 0: listeners only
	perMsg  int    // connections per ConnBatch it reads (Reply.ConnsPerMessage); 1: a ConnState each
	chanBat bool   // it reads ChannelBatch (Reply.ChannelBatches)
	rounds  bool   // it takes the state in rounds (Reply.Rounds)

	sock   *socket
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // why it exited; valid once exited is closed
}

// Start starts the new process and hands it the listeners, then waits
// until it reports ready, refuses, exits, or opts.Timeout passes. On any
// error the new process has been killed and reaped: the caller keeps
// serving as before, and may try again.
func Start(opts Options) (*Child, error) {
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	deadline := time.Now().Add(timeout)
	if len(opts.Files) > maxFilesPerMessage {
		return nil, fmt.Errorf("%d listeners: more than one handover message carries", len(opts.Files))
	}
	mine, theirs, err := socketPair()
	if err != nil {
		return nil, err
	}
	sock, err := newSocket(mine)
	if err != nil {
		theirs.Close()
		return nil, err
	}
	cmd := exec.Command(opts.Path, opts.Args...)
	cmd.Args[0] = opts.Path
	cmd.Dir = opts.Dir
	cmd.Stdout, cmd.Stderr = opts.Stdout, opts.Stderr
	cmd.ExtraFiles = []*os.File{theirs} // descriptor 3 in the child
	cmd.Env = append(withoutVar(opts.Env, EnvFD), EnvFD+"=3")
	err = cmd.Start()
	theirs.Close() // the child has its copy; ours would hide its exit
	if err != nil {
		sock.close()
		return nil, fmt.Errorf("starting %s: %w", opts.Path, err)
	}
	c := &Child{PID: cmd.Process.Pid, sock: sock, cmd: cmd, exited: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.exited)
	}()
	if err := c.handover(opts, deadline); err != nil {
		c.Kill()
		return nil, err
	}
	return c, nil
}

// handover sends the Offer and waits for the Reply.
func (c *Child) handover(opts Options, deadline time.Time) error {
	offer := Offer{Kind: kindOffer, Format: FormatVersion, Sender: opts.Version, PID: os.Getpid(), States: opts.States}
	files := make([]*os.File, len(opts.Files))
	for i, f := range opts.Files {
		offer.Files = append(offer.Files, f.FileID)
		files[i] = f.F
	}
	if err := c.sock.send(offer, files, deadline); err != nil {
		return c.failure(fmt.Errorf("sending the handover: %w", err))
	}
	type received struct {
		b     []byte
		files []*os.File
		err   error
	}
	got := make(chan received, 1)
	go func() {
		b, fs, err := c.sock.recv(deadline)
		got <- received{b, fs, err}
	}()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	var r received
	select {
	case r = <-got:
	case <-c.exited:
		return c.failure(nil)
	case <-timer.C:
		return c.notReady(opts)
	case <-opts.Cancel:
		return errors.New("cancelled: this process is stopping")
	}
	closeFiles(r.files) // a reply carries none
	if errors.Is(r.err, os.ErrDeadlineExceeded) {
		// The read's deadline is the timer's: whichever the select saw
		// first, the new process was not ready in time.
		return c.notReady(opts)
	}
	if errors.Is(r.err, io.EOF) {
		return c.failure(nil)
	}
	if r.err != nil {
		return c.failure(fmt.Errorf("reading the new process's reply: %w", r.err))
	}
	reply, err := DecodeReply(r.b)
	if err != nil {
		return fmt.Errorf("the new process (pid %d) sent a reply this build cannot read: %w", c.PID, err)
	}
	if !reply.Ready {
		return fmt.Errorf("the new process (pid %d, version %q) refused the handover: %s", c.PID, reply.Version, reply.Error)
	}
	c.Version, c.states = reply.Version, reply.States
	c.perMsg = min(max(int(reply.ConnsPerMessage), 1), maxFilesPerMessage)
	c.chanBat, c.rounds = reply.ChannelBatches, reply.Rounds
	if c.states != 0 && (opts.States == 0 || c.states != StateFormat) {
		return fmt.Errorf("the new process (pid %d) reads state format %d, which this build does not write", c.PID, c.states)
	}
	return nil
}

func (c *Child) notReady(opts Options) error {
	return fmt.Errorf("the new process (pid %d) was not ready within %v", c.PID, opts.timeout())
}

func (o Options) timeout() time.Duration {
	if o.Timeout <= 0 {
		return DefaultTimeout
	}
	return o.Timeout
}

// failure explains a handover that ended early: by the child's exit if it
// has exited (or does so shortly: a closed socket usually means it is
// dying), else by err.
func (c *Child) failure(err error) error {
	grace := 2 * time.Second
	if err != nil {
		grace = 100 * time.Millisecond
	}
	select {
	case <-c.exited:
		return fmt.Errorf("the new process (pid %d) exited before it was ready: %s", c.PID, exitReason(c.err))
	case <-time.After(grace):
		if err == nil {
			err = errors.New("it closed the handover socket")
		}
		return fmt.Errorf("the new process (pid %d) failed the handover: %w", c.PID, err)
	}
}

// exitReason says how a process ended, from exec's Wait error.
func exitReason(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return "killed by " + ws.Signal().String()
		}
		return "exit status " + strconv.Itoa(ee.ExitCode())
	}
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// Commit tells the new process that this one has stopped accepting on
// the listeners (the caller closes its copies first). The new process
// carries on even if this fails (it reads a closed socket as a commit).
func (c *Child) Commit(timeout time.Duration) error {
	defer c.sock.close()
	return c.sock.send(Commit{Kind: kindCommit, Format: FormatVersion}, nil, time.Now().Add(timeout))
}

// CommitRound tells the new process, after a round's state and its late
// bytes (Totals.More set), that this one has let go of that round's
// sockets: they are the new process's from now on. The next round follows
// on the same socket; the last round ends with Commit.
func (c *Child) CommitRound(deadline time.Time) error {
	if err := c.sock.send(Commit{Kind: kindCommit, Format: FormatVersion}, nil, deadline); err != nil {
		return c.failure(fmt.Errorf("confirming a round: %w", err))
	}
	return nil
}

// Rounds reports whether the new process takes the state in rounds
// (Reply.Rounds); if not, the whole state goes in one.
func (c *Child) Rounds() bool { return c.rounds }

// Kill ends the new process and reaps it (bounded by reapTimeout).
func (c *Child) Kill() {
	c.sock.close()
	_ = c.cmd.Process.Kill()
	select {
	case <-c.exited:
	case <-time.After(reapTimeout):
	}
}

// Exited is closed when the new process has exited (a process that took
// over normally outlives this one).
func (c *Child) Exited() <-chan struct{} { return c.exited }

// withoutVar returns env without any entry for name.
func withoutVar(env []string, name string) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// Executable returns the absolute path this process was started as:
// argv[0], looked up in PATH if it has no slash, made absolute against the
// working directory at start-up. Call it at start-up, before anything may
// change the directory.
//
// Why argv[0] and not os.Executable: os.Executable is the binary's real
// path with symbolic links resolved (/proc/self/exe). An install that
// switches a link (/usr/local/bin/mlesd → /opt/mlesd-1.3/mlesd) would then
// restart the old binary. argv[0] keeps the path the operator (or systemd's
// ExecStart) named, which is where "install the new binary, then reload"
// puts it, whether by replacing the file or the link. os.Executable is the
// fallback when argv[0] cannot be resolved.
func Executable(argv0 string) (string, error) {
	p := argv0
	if !strings.Contains(p, "/") {
		lp, err := exec.LookPath(p)
		if err != nil {
			return os.Executable()
		}
		p = lp
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return os.Executable()
	}
	if _, err := os.Stat(abs); err != nil {
		return os.Executable()
	}
	return abs, nil
}
