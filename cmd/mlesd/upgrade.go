package main

// Hitless upgrade (package upgrade has the protocol): on SIGUSR2 this
// process starts the binary at the path it was started from, with the
// same arguments and environment, and hands it its listening sockets (the
// Mles listeners, --tls-listen, --ws-listen, --metrics, --pprof). The new
// process serves on them and says so; if it reads state, this one hands
// over its plain-TCP connections, history and counters too (transfer.go).
// Only then does this one stop accepting, and it keeps serving the
// connections it still has (TLS, WebSocket, uplinks; all of them with a
// phase-1 new process) until they close or --drain-timeout passes, then
// exits 0. Any failure of the new process leaves this one serving as
// before.

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mlesd/mlesd/engine"
	"github.com/mlesd/mlesd/peering"
	"github.com/mlesd/mlesd/upgrade"
)

// upgrader is the upgrade side of one mlesd process: as the old process
// (SIGUSR2) and, when it was started by one, as the new.
type upgrader struct {
	o              Options
	log            *slog.Logger
	exe            string   // resolved at start-up (upgrade.Executable)
	exeErr         error    // why exe could not be resolved (no upgrade then)
	args           []string // this process's arguments, passed on unchanged
	stdout, stderr io.Writer

	ho      *upgrade.Handover // set when started by an upgrade
	srv     *engine.Server
	peers   *peering.Manager // nil without --peer
	side    *sideListeners
	pprofLn net.Listener

	// Owned by serve's goroutine.
	usr2      chan os.Signal // SIGUSR2, caught from start-up on (its default action is to exit)
	busy      bool           // an upgrade is under way (either side)
	stop      chan struct{}
	attempts  chan attempt // one per SIGUSR2 that started one
	committed chan error   // new process: the old one let go (or went)
}

// attempt is the outcome of one upgrade.
type attempt struct {
	child   *upgrade.Child
	files   []upgrade.File
	started time.Time
	err     error
	// Phase 2 (transfer.go): the connections and channels handed over,
	// in how many rounds, and the longest any connection was frozen.
	moved, channels, rounds int
	frozen                  time.Duration
	ready                   time.Duration // from start until the new process reported ready
}

// newUpgrader resolves the path to start on an upgrade and catches SIGUSR2
// (a reload sent while this process starts waits until it serves).
func newUpgrader(o Options, args []string, stdout, stderr io.Writer, log *slog.Logger) *upgrader {
	exe, err := upgrade.Executable(os.Args[0])
	u := &upgrader{o: o, log: log, exe: exe, exeErr: err, args: args, stdout: stdout, stderr: stderr,
		usr2: make(chan os.Signal, 1), attempts: make(chan attempt, 1), committed: make(chan error, 1)}
	signal.Notify(u.usr2, syscall.SIGUSR2)
	return u
}

// inherited takes the listener of role at addr handed over by the old
// process; nil when there is none (it is then bound as usual).
func (u *upgrader) inherited(role, addr string) net.Listener {
	ln, err := u.ho.Listener(role, addr)
	if err != nil {
		u.log.Warn("cannot use a handed-over listener; binding instead", slog.String("error", err.Error()))
		return nil
	}
	return ln
}

// inheritEngine gives srv the Mles listeners the old process handed over.
func (u *upgrader) inheritEngine(srv *engine.Server) error {
	if u.ho == nil {
		return nil
	}
	lns := map[string]net.Listener{}
	for _, a := range u.o.Listen {
		if ln := u.inherited(upgrade.RoleMles, a); ln != nil {
			lns[a] = ln
		}
	}
	return srv.Inherit(lns)
}

// serving runs once the engine and side listeners serve. Started by an
// upgrade, it tells the old process so and waits (in the background) to
// take over; otherwise it writes the pid file and tells systemd.
func (u *upgrader) serving() error {
	if <-u.srv.Ready(); len(u.srv.Addrs()) == 0 {
		return nil // it never listened: serve reports why
	}
	if u.ho != nil {
		u.busy = true
		ho := u.ho
		if ho.OffersState() {
			go func() { u.committed <- u.takeState(ho) }()
			return nil
		}
		go func() { u.committed <- ho.Ready(u.o.UpgradeTimeout) }()
		return nil
	}
	if u.o.PIDFile != "" {
		if err := upgrade.WritePIDFile(u.o.PIDFile); err != nil {
			return err
		}
	}
	u.notify("READY=1")
	return nil
}

// tookOver runs in the new process once the old one has stopped accepting.
func (u *upgrader) tookOver(err error) {
	u.busy = false
	if err != nil {
		u.log.Warn("taking over without the old process's confirmation", slog.String("error", err.Error()))
	}
	if u.o.PIDFile != "" {
		if err := upgrade.WritePIDFile(u.o.PIDFile); err != nil {
			u.log.Error("cannot rewrite the pid file", slog.String("error", err.Error()))
		}
	}
	u.notify("READY=1")
	u.log.Info("upgrade complete", slog.String("from_version", u.ho.Offer.Sender), slog.String("to_version", version),
		slog.Int("old_pid", u.ho.Offer.PID), slog.Int("pid", os.Getpid()))
}

// signalled handles SIGUSR2: start an upgrade unless one is under way.
func (u *upgrader) signalled() {
	if u.busy {
		u.log.Warn("SIGUSR2 ignored: an upgrade is already under way")
		return
	}
	if u.exeErr != nil {
		u.log.Error("upgrade impossible: the path this process was started from is unknown", slog.String("error", u.exeErr.Error()))
		return
	}
	u.busy = true
	u.stop = make(chan struct{})
	u.log.Info("upgrade started", slog.String("binary", u.exe), slog.String("from_version", version),
		slog.Int("pid", os.Getpid()), slog.Duration("timeout", u.o.UpgradeTimeout))
	u.notify(fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d", monotonicUsec()))
	stop := u.stop
	go func() { u.attempts <- u.attempt(stop) }()
}

// attempt starts the new process and waits until it serves (or fails).
func (u *upgrader) attempt(stop <-chan struct{}) attempt {
	a := attempt{started: time.Now()}
	if a.files, a.err = u.listenerFiles(); a.err != nil {
		return a
	}
	a.child, a.err = upgrade.Start(upgrade.Options{
		Path: u.exe, Args: u.args, Env: os.Environ(), Stdout: u.stdout, Stderr: u.stderr,
		Version: version, Files: a.files, Timeout: u.o.UpgradeTimeout, Cancel: stop, States: upgrade.StateFormat,
	})
	a.ready = time.Since(a.started)
	if a.err == nil && a.child.States() != 0 {
		if a.err = u.transfer(a.child, &a); a.err != nil {
			closeUpgradeFiles(a.files)
			a.files = nil
		}
	}
	return a
}

// listenerFiles duplicates every listener to hand over.
func (u *upgrader) listenerFiles() ([]upgrade.File, error) {
	var files []upgrade.File
	mles, err := u.srv.ListenerFiles()
	if err != nil {
		return nil, err
	}
	for _, a := range u.o.Listen {
		if f := mles[a]; f != nil {
			files = append(files, upgrade.File{FileID: upgrade.FileID{Role: upgrade.RoleMles, Addr: a}, F: f})
		}
	}
	for _, side := range u.sideListeners() {
		if side.ln == nil {
			continue
		}
		tl, ok := side.ln.(*net.TCPListener)
		if !ok {
			continue
		}
		f, err := tl.File()
		if err != nil {
			closeUpgradeFiles(files)
			return nil, fmt.Errorf("--%s %s: %w", side.role, side.addr, err)
		}
		files = append(files, upgrade.File{FileID: upgrade.FileID{Role: side.role, Addr: side.addr}, F: f})
	}
	return files, nil
}

// sideListener is a listener beside the engine's that an upgrade hands over.
type sideListener struct {
	role, addr string
	ln         net.Listener
}

// sideListeners are the metrics, pprof, TLS and WebSocket listeners open.
func (u *upgrader) sideListeners() []sideListener {
	var tlsLn net.Listener
	if ts := u.side.tlsSrv.Load(); ts != nil {
		tlsLn = ts.Listener()
	}
	return []sideListener{{upgrade.RoleMetrics, u.o.MetricsAddr, u.side.metricsLn}, {upgrade.RolePprof, u.o.PprofAddr, u.pprofLn},
		{upgrade.RoleTLS, u.o.TLSListen, tlsLn}, {upgrade.RoleWS, u.o.WSListen, u.side.wsLn}}
}

func closeUpgradeFiles(files []upgrade.File) {
	for _, f := range files {
		_ = f.F.Close()
	}
}

// finished handles the outcome of an attempt: on failure this process
// serves on and it returns false; on success it stops accepting, lets the
// new process take over, and returns true.
func (u *upgrader) finished(a attempt) bool {
	closeUpgradeFiles(a.files) // the new process has its own copies
	u.busy, u.stop = false, nil
	if a.err != nil {
		u.log.Error("upgrade failed: still serving", slog.String("error", a.err.Error()),
			slog.Duration("after", time.Since(a.started).Round(time.Millisecond)))
		u.notify("READY=1")
		return false
	}
	u.busy = true // for good: a handed-over process does not upgrade again
	ready := a.ready
	// Stop accepting everywhere; connections and sessions go on (the
	// metrics and pprof servers go: they keep nothing worth draining). The
	// TLS and WebSocket listeners first: what they accepted reaches the
	// engine as adopted connections.
	if u.side.stopMetrics != nil {
		u.side.stopMetrics()
	}
	for _, side := range u.sideListeners() {
		if side.ln != nil {
			_ = side.ln.Close()
		}
	}
	u.srv.StopAccepting()
	// systemd first (MAINPID from the old main process), so that the new
	// one's READY=1, sent after the Commit, finds it the main process.
	u.notify(fmt.Sprintf("MAINPID=%d", a.child.PID))
	if err := a.child.Commit(time.Second); err != nil {
		u.log.Warn("cannot confirm the handover to the new process; it takes over anyway", slog.String("error", err.Error()))
	}
	st := u.srv.Stats()
	took := time.Since(a.started)
	u.log.Info(fmt.Sprintf("handed over %d listeners, %d connections and %d channels in %d ms",
		len(a.files), a.moved, a.channels, took.Milliseconds()),
		slog.Duration("frozen", a.frozen.Round(time.Microsecond)), slog.Int("rounds", a.rounds),
		slog.Int("new_pid", a.child.PID), slog.String("to_version", a.child.Version),
		slog.Duration("new_process_ready_after", ready.Round(time.Millisecond)),
		slog.Int64("connections_kept", st.OpenConns))
	return true
}

// drain serves the connections this process kept after handing over until
// they have all closed or --drain-timeout passes (or SIGTERM/SIGINT comes).
// It returns the engine's error if the engine stopped by itself meanwhile.
func (u *upgrader) drain(sigs, usr2 <-chan os.Signal, served <-chan error) (engineErr error) {
	open := u.remaining()
	u.log.Info("serving the remaining connections until they close", slog.Int64("connections", open),
		slog.Duration("drain_timeout", u.o.DrainTimeout))
	deadline := time.NewTimer(u.o.DrainTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(drainPoll)
	defer tick.Stop()
	why := "all connections closed"
wait:
	for open > 0 {
		select {
		case <-tick.C:
			open = u.remaining()
			continue
		case <-usr2:
			u.log.Warn("SIGUSR2 ignored: this process has handed over and is draining")
			continue
		case sig := <-sigs:
			why = "signal " + sig.String()
		case <-deadline.C:
			why = "--drain-timeout passed"
		case err := <-served:
			if err == nil {
				err = errors.New("the engine stopped without being asked to")
			}
			why, engineErr = "the engine stopped: "+err.Error(), err
		}
		break wait
	}
	u.log.Info("old process exiting after upgrade", slog.String("reason", why), slog.Int64("connections_closed", open))
	return engineErr
}

// remaining counts what a drain waits for: the engine's connections
// (accepted, adopted TLS and WebSocket pairs, uplinks), TLS connections
// still in their handshake, and WebSocket sessions (one without a pair
// yet holds no engine connection).
func (u *upgrader) remaining() int64 {
	n := u.srv.Stats().OpenConns
	if ts := u.side.tlsSrv.Load(); ts != nil {
		n += int64(ts.Stats().Conns)
	}
	if gw := u.side.gwStats.Load(); gw != nil {
		n += (*gw)().Sessions
	}
	return n
}

// cancel gives up an upgrade under way (this process is stopping).
func (u *upgrader) cancel() {
	if u.stop == nil || !u.busy {
		return
	}
	close(u.stop)
	a := <-u.attempts
	if a.child != nil {
		a.child.Kill() // ready just then: it must not outlive a stopped server
	}
	closeUpgradeFiles(a.files)
}

// notify tells systemd (sd_notify), when it listens.
func (u *upgrader) notify(state string) {
	if err := upgrade.Notify(state); err != nil {
		u.log.Warn("cannot notify the service manager", slog.String("error", err.Error()))
	}
}

func monotonicUsec() int64 {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) != nil {
		return 0
	}
	return ts.Nano() / 1000
}
