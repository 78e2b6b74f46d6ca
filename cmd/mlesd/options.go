package main

// Options: every setting of mlesd, the flags that fill it, and the checks of
// their values. Flags, the config file and the environment all end here;
// nothing else reads them.

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/engine"
	"github.com/mlesd/mlesd/gateway"
	"github.com/mlesd/mlesd/peering"
	"github.com/mlesd/mlesd/router"
	"github.com/mlesd/mlesd/tlsserve"
	"github.com/mlesd/mlesd/upgrade"
)

// Options is every setting of mlesd. Flags and environment fill it; nothing
// else reads flags.
type Options struct {
	Listen         []string
	Key            string // shared key; flag --key or env MLES_KEY
	AddrKey        string // env MLES_ADDR_KEY
	HistoryLimit   int
	Loops          int
	MaxFrame       int
	MaxPending     int
	MaxPendFrames  int
	SendBuffer     int
	MaxChannels    int
	StallTimeout   time.Duration
	JoinTimeout    time.Duration
	IdleTimeout    time.Duration
	DrainTimeout   time.Duration
	MaxConns       int
	MaxConnsIP     int
	LimitLoopback  bool
	MaxUIDLen      int
	MaxChanLen     int
	MaxPartial     int
	MaxResync      int
	FrameTimeout   time.Duration
	FrameMinRate   int
	FrameWindow    time.Duration
	HistoryBytes   int
	MaxHistBytes   int64
	LogLevel       string
	LogFormat      string
	CPUProfile     string
	MemProfile     string
	PprofAddr      string
	PIDFile        string        // --pid-file: this process's PID, rewritten by a new process after an upgrade
	UpgradeTimeout time.Duration // --upgrade-timeout: a new binary not serving by then is killed
	UpgradeRound   int           // --upgrade-round-conns: joined connections one round of a handover freezes

	TLSListen           string // --tls-listen: TLS next to the plain listeners
	TLSCert, TLSKey     string
	TLSClientCA         string // when set, clients must present a certificate it signed
	TLSHandshakeTimeout time.Duration
	MetricsAddr         string // --metrics: /metrics, /healthz, /readyz
	WSListen            string // --ws-listen: WebSocket gateway and demo page
	WSMaxMessageBytes   int    // one WebSocket session's unfinished message
	WSMaxUnfinished     int64  // all sessions' unfinished messages
	WSMaxQueued         int64  // frames waiting for all WebSocket clients
	WSMaxSessions       int
	WSMaxSessionsClient int
	WSMaxPairs          int
	WSMaxPairsClient    int

	Peers           []string      // --peer: peer servers, one uplink per channel each
	PeerBackoff     time.Duration // first wait before redialling a peer
	PeerBackoffMax  time.Duration // cap of that wait
	PeerLinger      time.Duration // uplinks outlive their channel's last member this long
	PeerDialTimeout time.Duration
	CID             string // --cid: static CID of every uplink (hex); "" = none
	PeerTLS         bool   // --peer-tls: uplinks are TLS clients
	PeerTLSCA       string // CA file to verify peers (system roots when empty)
	PeerTLSCert     string // client certificate for peers that require one
	PeerTLSKey      string

	ConfigFile  string            // --config or env MLESD_CONFIG
	PrintConfig bool              // --print-config: print the effective settings and exit
	Version     bool              // --version: print version and commit and exit
	Sources     map[string]string // where each setting came from (flag, env, file, default)
}

type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Get() any       { return []string(*l) }
func (l *listFlag) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}

const usageHead = `mlesd: a server for the Mles v1 publish/subscribe protocol.

Clients connect over TCP, join a channel with their first frame and from then
on every frame they send is forwarded, byte for byte, to every other member of
that channel. New members first receive the channel's recent history.

Usage:
  mlesd [flags]

Configuration:
  Every flag can also be set in a TOML file (--config FILE, or env
  MLESD_CONFIG) under its flag name, e.g. max-conns = 1000, stall-timeout =
  "5m", listen = ["[::]:8077"], and in the environment as MLESD_<FLAG_NAME>,
  e.g. MLESD_MAX_CONNS=1000. Precedence: flag > environment > file > default.
  A key or MLESD_* variable that names no setting is refused (exit 2), as is
  a value of the wrong type. --print-config shows the effective settings and
  where each came from.

  Zero: for every limit and timeout that may be 0, 0 means off (no limit,
  never, none); --loops 0 means one event loop per CPU core. The others
  must be positive and refuse 0.

Peering:
  With --peer HOST[:PORT] (repeatable) mlesd keeps, for each channel that has
  members, one uplink connection to each peer, joined to the channel as a
  client there: members' frames go up, the peer's frames come down to the
  members. A lost uplink is redialled after --peer-backoff, doubling up to
  --peer-backoff-max; on reconnect it first sends the channel's history as a
  resync. Servers that refuse a joiner whose CID is already on the channel
  cannot loop in a tree; for rings give every member the same --cid.
  --peer-tls makes uplinks TLS clients of the peers' --tls-listen ports.

WebSocket gateway:
  With --ws-listen HOST:PORT mlesd also serves WebSocket clients (subprotocol
  mles-websocket) and a demo page at /. Each (uid, channel) a WebSocket
  session uses is one engine connection with the WebSocket client's own
  address, so --max-conns-per-ip and address keys see the real client.
  --ws-max-* bound sessions and pairs (in all and per client address) and the
  memory of messages still arriving.

Environment:
  MLES_KEY       shared key for first-level authentication: a join frame's key
                 must be SipHash(MLES_KEY, uid, channel). --key and MLESD_KEY
                 override it.
  MLES_ADDR_KEY  when no shared key is set, the key is SipHash(client address,
                 MLES_ADDR_KEY, uid, channel); without it, SipHash(client
                 address, uid, channel). Empty values count as not set.

Flags:
`

// parseOptions reads the command line, the environment and the config file
// into Options, and checks them; with --print-config it also prints them to
// stdout. help and completion are answered here (flag.ErrHelp, errDone).
func parseOptions(args []string, stdout io.Writer) (Options, error) {
	var o Options
	var listen, peers listFlag
	fs := defineFlags(&o, &listen, &peers)
	if len(args) > 0 && (args[0] == "help" || args[0] == "completion") {
		return o, subcommand(fs, args, stdout)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, helpText(fs))
			return o, err
		}
		return o, commandLineError(fs, err)
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if o.Version {
		return o, nil
	}
	if err := applyLayers(fs, &o); err != nil {
		return o, err
	}
	if err := completeOptions(&o, listen, peers); err != nil {
		return o, err
	}
	if err := validate(o); err != nil {
		return o, err
	}
	if o.PrintConfig {
		printConfig(stdout, fs, o)
	}
	return o, nil
}

// subcommand answers "mlesd help" and "mlesd completion SHELL".
func subcommand(fs *flag.FlagSet, args []string, stdout io.Writer) error {
	if args[0] == "help" {
		fmt.Fprint(stdout, helpText(fs))
		return flag.ErrHelp
	}
	if len(args) != 2 {
		return errors.New("completion: want one shell: bash, zsh or fish")
	}
	if err := printCompletion(stdout, fs, args[1]); err != nil {
		return err
	}
	return errDone
}

// defineFlags registers every setting as a flag writing into o (--listen
// and --peer into listen and peers), and the short aliases. The config file
// and the MLESD_* variables set the same flags (config.go), so a flag added
// here works in all three and appears in --help, completion and the man page.
func defineFlags(o *Options, listen, peers *listFlag) *flag.FlagSet {
	fs := flag.NewFlagSet("mlesd", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned; help goes to stdout
	fs.Usage = func() {}
	fs.Var(listen, "listen", "`host:port` to listen on; repeat or comma-separate for several.\n\""+engine.DefaultListen+"\" (the default) is dual stack: IPv4 and IPv6")
	fs.StringVar(&o.Key, "key", "", "shared `key` (default: env MLESD_KEY or MLES_KEY); empty = address-based keys")
	fs.IntVar(&o.HistoryLimit, "history-limit", router.DefaultHistoryLimit, "frames of history kept per channel and replayed to each joiner; 0 = none. A channel without members is\nforgotten once it holds no history")
	fs.IntVar(&o.Loops, "loops", 0, "event loops; 0 = one per CPU core")
	fs.IntVar(&o.MaxFrame, "max-frame", engine.DefaultMaxFrame, "largest frame payload in `bytes` (1..16777215); a bigger frame closes its connection")
	fs.IntVar(&o.MaxPending, "max-pending", engine.DefaultMaxPending, "per-receiver backlog bound in `bytes`; frames past it are dropped for that receiver alone and counted")
	fs.IntVar(&o.MaxPendFrames, "max-pending-frames", engine.DefaultMaxPendingFrames, "per-receiver backlog bound in frames (8 bytes of memory each); past it frames are dropped for that receiver alone")
	fs.IntVar(&o.SendBuffer, "sndbuf", engine.DefaultSendBuffer, "kernel send buffer of each client socket in `bytes` (SO_SNDBUF): what a stalled receiver's socket holds\nbeside --max-pending; 0 = the kernel's autotuning (up to net.ipv4.tcp_wmem's maximum, 4 MiB)")
	fs.IntVar(&o.MaxChannels, "max-channels", router.DefaultMaxChannels, "most channels at once; a join that would create one more is closed (0 = no limit)")
	fs.IntVar(&o.HistoryBytes, "history-bytes", router.DefaultHistoryBytes, "history cap per channel in `bytes`; oldest frames go first, a larger frame is not kept (0 = no cap)")
	fs.Int64Var(&o.MaxHistBytes, "max-history-bytes", router.DefaultMaxHistoryBytes, "history cap over all channels in `bytes`; a channel past it evicts its own oldest frames (0 = no cap)")
	fs.IntVar(&o.MaxConns, "max-conns", engine.DefaultMaxConns, "most open connections; one more is closed at once (0 = no limit; the process fd limit also applies)")
	fs.IntVar(&o.MaxConnsIP, "max-conns-per-ip", engine.DefaultMaxConnsPerIP, "most open connections from one IP address (0 = no limit); loopback clients are exempt, TLS and WebSocket clients count by their own address")
	fs.BoolVar(&o.LimitLoopback, "max-conns-per-ip-loopback", false, "apply --max-conns-per-ip to loopback clients too")
	fs.IntVar(&o.MaxUIDLen, "max-uid-len", engine.DefaultMaxNameLen, "longest uid in a join, in `bytes`; a longer one closes the connection")
	fs.IntVar(&o.MaxChanLen, "max-channel-len", engine.DefaultMaxNameLen, "longest channel name in a join, in `bytes`; a longer one closes the connection")
	fs.IntVar(&o.MaxPartial, "max-partial-bytes", engine.DefaultMaxPartialBytes, "memory in `bytes` of frames still arriving, over all connections; when it is full, the connection\nholding the most is closed")
	fs.IntVar(&o.MaxResync, "max-resync-entries", engine.DefaultMaxResyncEntries, "most inner frames in a resync (a first frame that refills history); a larger one closes its connection.\nA peer's resync holds its --history-limit + 1 frames: keep this above that")
	fs.DurationVar(&o.FrameTimeout, "frame-timeout", engine.DefaultFrameTimeout, "close a connection whose frame (the join frame too) has been arriving this long; 0 = never.\nThe default lets a 16 MiB frame arrive at the minimum rate")
	fs.IntVar(&o.FrameMinRate, "frame-min-rate", engine.DefaultFrameMinRate, "close a connection whose frame arrives slower than this many `bytes` per second over a\n--frame-rate-window; 0 = no minimum")
	fs.DurationVar(&o.FrameWindow, "frame-rate-window", engine.DefaultFrameRateWindow, "span --frame-min-rate is measured over, and so the grace a frame gets before the first check")
	fs.DurationVar(&o.StallTimeout, "stall-timeout", engine.DefaultStallTimeout, "close a receiver that has been dropping frames and silent this long; 0 = never")
	fs.DurationVar(&o.JoinTimeout, "join-timeout", engine.DefaultJoinTimeout, "close a connection that has not joined by then and is silent (one whose join frame is still\narriving is left to --frame-timeout and --frame-min-rate); 0 = never")
	fs.DurationVar(&o.IdleTimeout, "idle-timeout", 0, "close a joined connection that has sent nothing this long; 0 = never (receivers may be silent)")
	fs.DurationVar(&o.DrainTimeout, "drain-timeout", engine.DefaultDrainTimeout, "on SIGTERM/SIGINT, how long to keep flushing backlogs to receivers before closing; 0 = close at once.\nAfter an upgrade (SIGUSR2), how long the old process keeps serving the connections it still has")
	fs.StringVar(&o.PIDFile, "pid-file", "", "write the PID to `file` once serving (atomically); a new process rewrites it after an upgrade")
	fs.IntVar(&o.UpgradeRound, "upgrade-round-conns", defaultUpgradeRound, "on SIGUSR2 (upgrade), how many joined connections one round of the handover freezes:\nwhole channels at a time, the others forward meanwhile (a bigger channel is a round alone);\neach round within --upgrade-timeout; 0 = all at once")
	fs.DurationVar(&o.UpgradeTimeout, "upgrade-timeout", upgrade.DefaultTimeout, "on SIGUSR2 (upgrade), how long the new binary has to serve on the handed-over listeners;\npast it, or if it exits or refuses, it is killed and this process keeps serving")
	fs.StringVar(&o.LogLevel, "log-level", defaultLogLevel, "log `level`: debug, info, warn, error")
	fs.StringVar(&o.LogFormat, "log-format", defaultLogFormat, "log `format`: text or json")
	fs.StringVar(&o.CPUProfile, "cpuprofile", "", "write a CPU profile to `file` until exit")
	fs.StringVar(&o.MemProfile, "memprofile", "", "write a heap profile to `file` at exit")
	fs.StringVar(&o.PprofAddr, "pprof", "", "serve net/http/pprof on `addr` (e.g. 127.0.0.1:6060); off by default")
	fs.StringVar(&o.WSListen, "ws-listen", "", "`host:port` for the WebSocket gateway (subprotocol mles-websocket)\nand the demo page at /; off when empty (the original used :8076)")
	fs.IntVar(&o.WSMaxMessageBytes, "ws-max-message-bytes", gateway.DefaultMaxMessageBytes, "largest WebSocket message in `bytes`, also while it arrives; a session past it is closed with 1009")
	fs.Int64Var(&o.WSMaxUnfinished, "ws-max-unfinished-bytes", gateway.DefaultMaxUnfinishedBytes, "memory for WebSocket messages still arriving, over all sessions, in `bytes`; when full, the session\nholding the most is closed with 1013")
	fs.Int64Var(&o.WSMaxQueued, "ws-max-queued-bytes", gateway.DefaultMaxQueuedBytes, "frames waiting for WebSocket clients, over all sessions, in `bytes`; past it a frame is dropped for\na client that already has one waiting (each client also has its own 8 MiB bound)")
	fs.IntVar(&o.WSMaxSessions, "ws-max-sessions", gateway.DefaultMaxSessions, "most WebSocket sessions at once; one more handshake is refused with 503")
	fs.IntVar(&o.WSMaxSessionsClient, "ws-max-sessions-per-client", gateway.DefaultMaxSessionsPerClient, "most WebSocket sessions from one client IP address; one more is refused with 503")
	fs.IntVar(&o.WSMaxPairs, "ws-max-pairs", gateway.DefaultMaxPairs, "most (uid, channel) pairs over all WebSocket sessions (one engine connection, two fds, each);\na session asking for one more is closed with 1013")
	fs.IntVar(&o.WSMaxPairsClient, "ws-max-pairs-per-client", gateway.DefaultMaxPairsPerClient, "most (uid, channel) pairs over the WebSocket sessions of one client IP address; one more closes\nits session with 1008")
	fs.StringVar(&o.TLSListen, "tls-listen", "", "`host:port` for Mles over TLS, next to the plain listeners (e.g. \"[::]:8078\"); needs --tls-cert and --tls-key")
	fs.StringVar(&o.TLSCert, "tls-cert", "", "PEM server certificate (chain) `file` for --tls-listen")
	fs.StringVar(&o.TLSKey, "tls-key", "", "PEM private key `file` for --tls-cert")
	fs.StringVar(&o.TLSClientCA, "tls-client-ca", "", "PEM CA `file`: TLS clients must present a certificate it signed (off: no client certificates)")
	fs.DurationVar(&o.TLSHandshakeTimeout, "tls-handshake-timeout", tlsserve.DefaultHandshakeTimeout, "close a TLS connection whose handshake has not finished by then (always on: must be positive)")
	fs.StringVar(&o.MetricsAddr, "metrics", "", "serve Prometheus /metrics, /healthz and /readyz on `addr` (e.g. 127.0.0.1:9477); off by default")
	fs.Var(peers, "peer", "peer server `host[:port]` (port "+strconv.Itoa(peering.DefaultPort)+" by default; IPv6 as [addr]:port); repeat or comma-separate\nfor several: each channel with members gets one uplink to each")
	fs.DurationVar(&o.PeerBackoff, "peer-backoff", peering.DefaultBackoff, "first wait before redialling a failed or lost peer uplink; doubles after each failure")
	fs.DurationVar(&o.PeerBackoffMax, "peer-backoff-max", peering.DefaultBackoffMax, "longest wait between peer uplink attempts")
	fs.DurationVar(&o.PeerLinger, "peer-linger", peering.DefaultLinger, "keep a channel's uplinks this long after its last member left (0 = close at once)")
	fs.DurationVar(&o.PeerDialTimeout, "peer-dial-timeout", peering.DefaultDialTimeout, "give up one connection attempt to a peer after this long")
	fs.StringVar(&o.CID, "cid", "", "static CID (1-8 `hex` digits) for every uplink; servers with the same --cid form a\nload-balancing/protection group, which may be a ring (off: an uplink's CID comes from its key)")
	fs.BoolVar(&o.PeerTLS, "peer-tls", false, "uplinks speak TLS to their peers (a peer's --tls-listen port); the peer's certificate is verified")
	fs.StringVar(&o.PeerTLSCA, "peer-tls-ca", "", "PEM CA `file` to verify peers' certificates with (default: the system's roots); needs --peer-tls")
	fs.StringVar(&o.PeerTLSCert, "peer-tls-cert", "", "PEM client certificate `file` for peers that require one (--tls-client-ca there); needs --peer-tls-key")
	fs.StringVar(&o.PeerTLSKey, "peer-tls-key", "", "PEM private key `file` for --peer-tls-cert")
	fs.StringVar(&o.ConfigFile, "config", "", "TOML config `file` (default: env MLESD_CONFIG); keys are flag names")
	fs.BoolVar(&o.PrintConfig, "print-config", false, "print the effective configuration (TOML, with each setting's source) and exit")
	fs.BoolVar(&o.Version, "version", false, "print the version and commit and exit")
	addShortFlags(fs)
	return fs
}

// completeOptions fills in what follows from the flags: the default
// listener, the parsed peers, the address key from the environment.
func completeOptions(o *Options, listen, peers listFlag) error {
	if len(listen) == 0 {
		listen = listFlag{engine.DefaultListen}
	}
	o.Listen = listen
	for _, p := range peers {
		np, err := peering.ParsePeer(p)
		if err != nil {
			return fmt.Errorf("--peer: %v", err)
		}
		o.Peers = append(o.Peers, np)
	}
	o.AddrKey = os.Getenv("MLES_ADDR_KEY")
	return nil
}

// validate checks each setting's range and the combinations of settings.
func validate(o Options) error {
	if o.CID != "" {
		if _, err := peering.ParseCID(o.CID); err != nil {
			return fmt.Errorf("--cid: %v", err)
		}
		if len(o.Peers) == 0 {
			return errors.New("--cid needs --peer")
		}
	}
	switch {
	case o.HistoryLimit < 0:
		return errors.New("--history-limit must be 0 or more")
	case o.MaxFrame < 1 || o.MaxFrame > codec.MaxPayloadLen:
		return fmt.Errorf("--max-frame must be 1..%d", codec.MaxPayloadLen)
	case o.MaxPending < 1 || o.MaxPendFrames < 1:
		return errors.New("--max-pending must be positive")
	case o.Loops < 0:
		return errors.New("--loops must be 0 or more")
	case o.StallTimeout < 0 || o.JoinTimeout < 0 || o.IdleTimeout < 0 || o.DrainTimeout < 0 || o.TLSHandshakeTimeout < 0 ||
		o.FrameTimeout < 0:
		return errors.New("timeouts must be 0 or more")
	case o.MaxConns < 0 || o.MaxConnsIP < 0 || o.MaxChannels < 0 || o.HistoryBytes < 0 || o.MaxHistBytes < 0 || o.SendBuffer < 0:
		return errors.New("limits must be 0 (none) or more")
	case o.UpgradeRound < 0:
		return errors.New("--upgrade-round-conns must be 0 (all at once) or more")
	case o.UpgradeTimeout <= 0:
		return errors.New("--upgrade-timeout must be positive")
	case o.TLSHandshakeTimeout == 0:
		// Everywhere else on the command line 0 means off; a handshake
		// without a deadline would let idle sockets hold handshake slots.
		return errors.New("--tls-handshake-timeout must be positive")
	case o.FrameMinRate < 0:
		return errors.New("--frame-min-rate must be 0 (none) or more")
	case o.FrameWindow <= 0:
		return errors.New("--frame-rate-window must be positive")
	case o.MaxUIDLen < 1 || o.MaxChanLen < 1 || o.MaxPartial < 1:
		return errors.New("--max-uid-len, --max-channel-len and --max-partial-bytes must be positive")
	case o.MaxResync < 1:
		return errors.New("--max-resync-entries must be positive")
	case o.PeerBackoff <= 0 || o.PeerBackoffMax < o.PeerBackoff:
		return errors.New("--peer-backoff must be positive and at most --peer-backoff-max")
	case o.PeerLinger < 0 || o.PeerDialTimeout <= 0:
		return errors.New("--peer-linger must be 0 or more and --peer-dial-timeout positive")
	case !o.PeerTLS && (o.PeerTLSCA != "" || o.PeerTLSCert != "" || o.PeerTLSKey != ""):
		return errors.New("--peer-tls-ca, --peer-tls-cert and --peer-tls-key need --peer-tls")
	case o.PeerTLS && len(o.Peers) == 0:
		return errors.New("--peer-tls needs --peer")
	case (o.PeerTLSCert == "") != (o.PeerTLSKey == ""):
		return errors.New("--peer-tls-cert and --peer-tls-key go together")
	case o.WSMaxMessageBytes < 1 || o.WSMaxMessageBytes > gateway.MaxMessage:
		return fmt.Errorf("--ws-max-message-bytes must be 1..%d", gateway.MaxMessage)
	case o.WSMaxUnfinished < int64(o.WSMaxMessageBytes):
		return errors.New("--ws-max-unfinished-bytes must be at least --ws-max-message-bytes")
	case o.WSMaxQueued < 1:
		return errors.New("--ws-max-queued-bytes must be positive")
	case o.WSMaxSessions < 1 || o.WSMaxSessionsClient < 1 || o.WSMaxPairs < 1 || o.WSMaxPairsClient < 1:
		return errors.New("--ws-max-sessions, --ws-max-sessions-per-client, --ws-max-pairs and --ws-max-pairs-per-client must be positive")
	case o.TLSListen != "" && (o.TLSCert == "" || o.TLSKey == ""):
		return errors.New("--tls-listen needs --tls-cert and --tls-key")
	case o.TLSListen == "" && (o.TLSCert != "" || o.TLSKey != "" || o.TLSClientCA != ""):
		return errors.New("--tls-cert, --tls-key and --tls-client-ca need --tls-listen")
	}
	for _, a := range append(append([]string(nil), o.Listen...), o.TLSListen, o.MetricsAddr, o.WSListen) {
		if a == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("address %q: %v", a, err)
		}
	}
	if _, err := newLogger(o, io.Discard); err != nil {
		return err
	}
	return nil
}

// newLogger is the logger --log-level and --log-format ask for, writing to w.
func newLogger(o Options, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.LogLevel)); err != nil {
		return nil, fmt.Errorf("--log-level: invalid value %q: want debug, info, warn or error", o.LogLevel)
	}
	hopts := &slog.HandlerOptions{Level: level}
	switch o.LogFormat {
	case "text":
		return slog.New(slog.NewTextHandler(w, hopts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, hopts)), nil
	}
	return nil, fmt.Errorf("--log-format: invalid value %q: want text or json", o.LogFormat)
}

// never maps the flags' 0 = off to the engine's negative (its 0 is its default).
func never(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// unlimited maps the flags' 0 = no limit to the engine's negative.
func unlimited(n int) int {
	if n == 0 {
		return -1
	}
	return n
}
