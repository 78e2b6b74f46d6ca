// Command mlesd is a server for the Mles v1 publish/subscribe protocol.
//
// It is the only place that knows every package: it reads flags and the
// environment into one Options value, wires codec, router and engine, and
// handles signals and profiling.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	_ "net/http/pprof" // served only when --pprof is set
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sync/atomic"
	"syscall"

	"github.com/pkg/profile"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/engine"
	"github.com/mlesd/mlesd/gateway"
	"github.com/mlesd/mlesd/peering"
	"github.com/mlesd/mlesd/router"
	"github.com/mlesd/mlesd/tlsserve"
	"github.com/mlesd/mlesd/upgrade"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// errDone ends a run that has done all it was asked (completion) with exit 0.
var errDone = errors.New("done")

// run is mlesd: it returns the exit code (exitOK, exitFailure, exitUsage).
func run(args []string, stdout, stderr io.Writer) int {
	o, err := parseOptions(args, stdout)
	if errors.Is(err, flag.ErrHelp) || errors.Is(err, errDone) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "mlesd: %v\nrun \"mlesd --help\" for usage\n", err)
		return exitUsage
	}
	if o.Version {
		fmt.Fprintln(stdout, versionString())
		return exitOK
	}
	if o.PrintConfig {
		return exitOK
	}
	log, err := newLogger(o, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "mlesd:", err)
		return exitUsage
	}
	slog.SetDefault(log)
	u := newUpgrader(o, args, stdout, stderr, log)
	ho, err := upgrade.Inherited(version, o.UpgradeTimeout)
	if err != nil {
		log.Error("refusing the handover: the old process keeps serving", slog.String("error", err.Error()))
		return exitFailure
	}
	defer ho.Close()
	u.ho = ho
	defer startProfiles(o, log)()
	if o.PprofAddr != "" {
		if u.pprofLn, err = startPprof(o.PprofAddr, u.inherited(upgrade.RolePprof, o.PprofAddr), log); err != nil {
			return listenFailed(log, err)
		}
	}
	r := router.New(router.Config{HistoryLimit: unlimited(o.HistoryLimit), MaxChannels: unlimited(o.MaxChannels), // the flags' 0 is the router's Off
		HistoryBytes: unlimited(o.HistoryBytes), MaxHistoryBytes: int64(unlimited(int(o.MaxHistBytes)))})
	defer r.Close()
	srv, peers, err := newServer(o, r, log)
	if err != nil {
		fmt.Fprintln(stderr, "mlesd:", err)
		return exitUsage
	}
	if err := u.inheritEngine(srv); err != nil {
		log.Error("cannot serve on the handed-over listeners", slog.String("error", err.Error()))
		return exitFailure
	}
	if ho.OffersState() {
		// Nobody joins until the old process's channels are in: a joiner
		// would miss their members and history (takeState lets go).
		srv.HoldJoins(true)
	}
	logStart(o, ho, log)
	u.srv, u.peers = srv, peers
	return serve(o, srv, peers, u, log)
}

// startProfiles starts --cpuprofile and --memprofile; the returned function
// writes them.
func startProfiles(o Options, log *slog.Logger) (stop func()) {
	var stops []func()
	if o.CPUProfile != "" {
		stops = append(stops, startProfile(profile.CPUProfile, o.CPUProfile, "cpu.pprof", log))
	}
	if o.MemProfile != "" {
		// pkg/profile runs one profile at a time, so the heap profile, which is a
		// snapshot at exit anyway, is written directly.
		stops = append(stops, func() { writeHeapProfile(o.MemProfile, log) })
	}
	return func() {
		for _, stop := range stops {
			stop()
		}
	}
}

// keysOf is the join-key setting of o.
func keysOf(o Options) codec.KeyConfig {
	return codec.KeyConfig{SharedKey: o.Key, AddrKey: o.AddrKey}
}

// newServer makes the engine over r and, with --peer, the peering manager
// that hands its uplinks to the engine. Errors are in the settings.
func newServer(o Options, r *router.Router, log *slog.Logger) (*engine.Server, *peering.Manager, error) {
	var (
		srv   *engine.Server
		peers *peering.Manager
		err   error
	)
	if o.TLSListen != "" {
		// Unreadable certificates are bad settings (exit 2), found before
		// anything listens.
		tc := tlsserve.Config{CertFile: o.TLSCert, KeyFile: o.TLSKey, ClientCAFile: o.TLSClientCA}
		if _, err := tc.TLSConfig(); err != nil {
			return nil, nil, fmt.Errorf("--tls-listen: %w", err)
		}
	}
	if len(o.Peers) > 0 {
		pc := peering.Config{Peers: o.Peers, Keys: keysOf(o), Backoff: o.PeerBackoff, BackoffMax: o.PeerBackoffMax,
			Linger: never(o.PeerLinger), DialTimeout: o.PeerDialTimeout, Logger: log, // --peer-linger 0: at once (peering.Off)
			Adopt: func(nc net.Conn, local, remote netip.AddrPort, u *peering.Uplink) error {
				return srv.AdoptUplink(nc, local, remote, u)
			}}
		if o.CID != "" {
			cid, _ := peering.ParseCID(o.CID) // checked by validate
			pc.StaticCID = &cid
		}
		if o.PeerTLS {
			if pc.TLS, err = peering.ClientTLS(o.PeerTLSCA, o.PeerTLSCert, o.PeerTLSKey); err != nil {
				return nil, nil, err
			}
		}
		if peers, err = peering.New(pc); err != nil {
			return nil, nil, err
		}
	}
	var members engine.MemberObserver
	if peers != nil {
		members = peers
	}
	srv, err = engine.New(engineConfig(o, members, log), r)
	if err != nil {
		return nil, nil, err
	}
	return srv, peers, nil
}

// engineConfig maps the settings to the engine's Config, whose "off" is a
// negative value where the flags' is 0.
func engineConfig(o Options, members engine.MemberObserver, log *slog.Logger) engine.Config {
	return engine.Config{
		Listen:           o.Listen,
		Loops:            o.Loops,
		Keys:             keysOf(o),
		Members:          members,
		MaxFrame:         o.MaxFrame,
		MaxPending:       o.MaxPending,
		MaxPendingFrames: o.MaxPendFrames,
		SendBuffer:       unlimited(o.SendBuffer),
		StallTimeout:     never(o.StallTimeout),
		JoinTimeout:      never(o.JoinTimeout),
		IdleTimeout:      o.IdleTimeout,
		DrainTimeout:     never(o.DrainTimeout),
		MaxConns:         unlimited(o.MaxConns),
		MaxConnsPerIP:    unlimited(o.MaxConnsIP),
		LimitLoopback:    o.LimitLoopback,
		MaxUIDLen:        o.MaxUIDLen,
		MaxChannelLen:    o.MaxChanLen,
		MaxPartialBytes:  o.MaxPartial,
		MaxResyncEntries: o.MaxResync,
		FrameTimeout:     never(o.FrameTimeout),
		FrameMinRate:     unlimited(o.FrameMinRate),
		FrameRateWindow:  o.FrameWindow,
		Logger:           log,
	}
}

// logStart writes the start-up line and the warnings about the settings.
func logStart(o Options, ho *upgrade.Handover, log *slog.Logger) {
	keyMode := "address"
	if o.Key != "" {
		keyMode = "shared"
	}
	start := []any{slog.String("version", version), slog.String("commit", commitString()),
		slog.Any("listen", o.Listen), slog.String("key_mode", keyMode)}
	if len(o.Peers) > 0 {
		start = append(start, slog.Any("peers", o.Peers))
	}
	if ho != nil {
		start = append(start, slog.String("upgrading_from", ho.Offer.Sender), slog.Int("old_pid", ho.Offer.PID))
	}
	log.Info("starting mlesd", start...)
	warnOpenWithoutKey(o, log)
	checkFDLimit(o, log)
	if o.HistoryLimit+1 > o.MaxResync {
		// A peer configured like this server would be refused on every reconnect.
		log.Warn("--max-resync-entries is below --history-limit + 1: a peer's resync of that much history is refused",
			slog.Int("max_resync_entries", o.MaxResync), slog.Int("history_limit", o.HistoryLimit))
	}
}

// sideListeners are the listeners beside the engine's own: metrics, TLS and
// the WebSocket gateway. The metrics endpoint starts first and reads the
// others once they are up.
type sideListeners struct {
	stopping atomic.Bool // readyz says no from the first signal on
	tlsSrv   atomic.Pointer[tlsserve.Server]
	gwStats  atomic.Pointer[func() gateway.Stats]
	closers  []func()

	// Handed over on an upgrade (the TLS listener is tlsSrv's).
	metricsLn   net.Listener
	stopMetrics func()
	wsLn        net.Listener
}

// close stops the metrics endpoint and the gateway.
func (sl *sideListeners) close() {
	for i := len(sl.closers) - 1; i >= 0; i-- {
		sl.closers[i]()
	}
}

// startMetrics serves --metrics for srv (and peers, if any).
func (sl *sideListeners) startMetrics(o Options, srv *engine.Server, peers *peering.Manager, inherited net.Listener, log *slog.Logger) error {
	ready := func() bool {
		select {
		case <-srv.Ready():
			return len(srv.Addrs()) > 0 && !sl.stopping.Load() &&
				(o.TLSListen == "" || sl.tlsSrv.Load() != nil)
		default:
			return false
		}
	}
	// No TLS or gateway metrics without a TLS listener or a gateway.
	var ts *atomic.Pointer[tlsserve.Server]
	var gw *atomic.Pointer[func() gateway.Stats]
	if o.TLSListen != "" {
		ts = &sl.tlsSrv
	}
	if o.WSListen != "" {
		gw = &sl.gwStats
	}
	var peerStats func() peering.Stats
	if peers != nil {
		peerStats = peers.Stats
	}
	stop, ln, err := startMetrics(o.MetricsAddr, inherited, srv, ts, gw, peerStats, ready, log)
	if err != nil {
		return err
	}
	sl.metricsLn, sl.stopMetrics = ln, stop
	sl.closers = append(sl.closers, stop)
	return nil
}

// startOnEngine starts --tls-listen and --ws-listen once srv listens (if it
// never does, Serve's error is reported by serve).
// inherited gives the listeners an old process handed over (nil: none).
func (sl *sideListeners) startOnEngine(o Options, srv *engine.Server, inherited func(role, addr string) net.Listener, log *slog.Logger) error {
	if o.TLSListen == "" && o.WSListen == "" {
		return nil
	}
	if <-srv.Ready(); len(srv.Addrs()) == 0 {
		return nil
	}
	if o.TLSListen != "" {
		ts, err := startTLS(o, srv, inherited(upgrade.RoleTLS, o.TLSListen), log)
		if err != nil {
			return err
		}
		sl.tlsSrv.Store(ts)
	}
	if o.WSListen != "" {
		stopGateway, stats, ln, err := startGateway(o, srv, keysOf(o), inherited(upgrade.RoleWS, o.WSListen), log)
		if err != nil {
			return err
		}
		sl.wsLn = ln
		sl.gwStats.Store(&stats)
		sl.closers = append(sl.closers, stopGateway)
	}
	return nil
}

// serve runs srv and its side listeners until SIGTERM or SIGINT, then
// drains and stops; it returns the exit code. SIGUSR2 upgrades (upgrade.go):
// after handing over, this process serves what it still has, then exits.
func serve(o Options, srv *engine.Server, peers *peering.Manager, u *upgrader, log *slog.Logger) int {
	var side sideListeners
	defer side.close()
	u.side = &side
	if o.MetricsAddr != "" {
		if err := side.startMetrics(o, srv, peers, u.inherited(upgrade.RoleMetrics, o.MetricsAddr), log); err != nil {
			return listenFailed(log, err)
		}
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(u.usr2)
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	if err := side.startOnEngine(o, srv, u.inherited, log); err != nil {
		_ = srv.Stop(context.Background())
		return listenFailed(log, err)
	}
	if err := u.serving(); err != nil {
		_ = srv.Stop(context.Background())
		log.Error("cannot start", slog.String("error", err.Error()))
		return exitFailure
	}
	for {
		select {
		case err := <-served:
			// Nobody asked it to stop: whatever ended it is a failure, so the
			// exit status says so and a supervisor restarts it.
			if err == nil {
				err = errors.New("the engine stopped without being asked to")
			}
			if len(srv.Addrs()) == 0 { // it never listened
				return listenFailed(log, fmt.Errorf("--listen: %w", err))
			}
			log.Error("server failed", slog.String("error", err.Error()))
			return exitFailure
		case sig := <-sigs:
			log.Info("shutting down", slog.String("signal", sig.String()))
			side.stopping.Store(true)
			u.cancel()
			defer upgrade.RemovePIDFile(o.PIDFile)
			return shutdown(o, srv, peers, &side, served, log)
		case <-u.usr2:
			u.signalled()
		case err := <-u.committed:
			u.tookOver(err)
		case r := <-u.attempts:
			if !u.finished(r) {
				continue
			}
			// Handed over: serve what is left, then exit.
			side.stopping.Store(true)
			if err := u.drain(sigs, u.usr2, served); err != nil {
				log.Error("server failed", slog.String("error", err.Error()))
				return exitFailure
			}
			return shutdown(o, srv, peers, &side, served, log)
		}
	}
}

// shutdown drains and stops srv after a signal, then the TLS bridges.
func shutdown(o Options, srv *engine.Server, peers *peering.Manager, side *sideListeners, served <-chan error, log *slog.Logger) int {
	if peers != nil {
		peers.Stop() // no redialling while the engine drains and closes
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*o.DrainTimeout+stopGrace)
	defer cancel()
	if err := srv.Stop(ctx); err != nil {
		log.Error("shutdown incomplete", slog.String("error", err.Error()))
		return exitFailure
	}
	<-served
	if ts := side.tlsSrv.Load(); ts != nil {
		// The engine has closed its side of every TLS connection; give the
		// bridges a moment to pass on what it sent, then close them.
		tctx, tcancel := context.WithTimeout(context.Background(), tlsBridgeLinger)
		ts.Close(tctx)
		tcancel()
	}
	st := srv.Stats()
	log.Info("stopped", slog.Uint64("frames_in", st.FramesIn), slog.Uint64("frames_out", st.FramesOut),
		slog.Uint64("dropped", st.Dropped))
	return exitOK
}

// writeHeapProfile writes the live heap to file.
func writeHeapProfile(file string, log *slog.Logger) {
	runtime.GC() // up-to-date statistics
	f, err := os.Create(file)
	if err == nil {
		err = pprof.Lookup("heap").WriteTo(f, 0)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		log.Error("cannot write heap profile", slog.String("file", file), slog.String("error", err.Error()))
		return
	}
	log.Info("profile written", slog.String("file", file))
}

// startProfile starts a pkg/profile profile writing to file; the returned
// function stops it and moves pkg/profile's fixed file name to file.
func startProfile(mode func(*profile.Profile), file, name string, log *slog.Logger) func() {
	dir, err := os.MkdirTemp(filepath.Dir(file), ".mlesd-profile-")
	if err != nil {
		log.Error("cannot start profile", slog.String("file", file), slog.String("error", err.Error()))
		return func() {}
	}
	p := profile.Start(mode, profile.ProfilePath(dir), profile.NoShutdownHook, profile.Quiet)
	return func() {
		p.Stop()
		if err := os.Rename(filepath.Join(dir, name), file); err != nil {
			log.Error("cannot write profile", slog.String("file", file), slog.String("error", err.Error()))
		} else {
			log.Info("profile written", slog.String("file", file))
		}
		_ = os.RemoveAll(dir)
	}
}
