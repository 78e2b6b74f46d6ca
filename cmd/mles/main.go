// Command mles is a Mles v1 client: publish, subscribe, chat, benchmark a
// running server, and run a WebSocket gateway (proxy) in front of any Mles
// server. It speaks Mles through github.com/mlesd/mlesd/client.
//
// Exit codes: 0 success, 1 runtime or connection error (including the
// server closing the connection), 2 usage error, 3 sub --count not reached
// (--timeout or --idle ran out). Help goes to stdout; errors go to stderr,
// prefixed "mles SUBCOMMAND:".
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"sort"
	"strings"
	"syscall"
	"time"
)

// version is set at link time (-ldflags "-X main.version=v1.2.3"); without
// it the module version or VCS revision from the build info is shown.
var version = ""

// exitError carries an exit code through a subcommand's return.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return e.err.Error() }
func (e exitError) Unwrap() error { return e.err }

func usageErr(format string, a ...any) error {
	return exitError{2, fmt.Errorf(format, a...)}
}

// env is what a subcommand may touch of the process.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
	ctx            context.Context // done on SIGINT/SIGTERM
	isTerminal     func(io.Writer) bool
}

// command is one subcommand: setup registers its flags and returns the
// function that runs it with the remaining arguments.
type command struct {
	name     string
	synopsis string // after "mles NAME"
	summary  string // one line for the overview
	desc     string // the --help text
	setup    func(e env, fs *flagSet) func(args []string) error
}

var commands []command

func init() {
	commands = []command{pubCommand, subCommand, chatCommand, benchCommand, proxyCommand, completionCommand}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(env{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv, ctx: ctx,
		isTerminal: isTerminal}, os.Args[1:]))
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func overview() string {
	var b strings.Builder
	b.WriteString("mles: a Mles v1 client (pub/sub over TCP, TLS or WebSocket; IANA port 8077)\n\nusage: mles COMMAND [flags]\n\ncommands:\n")
	for _, c := range commands {
		fmt.Fprintf(&b, "  %-11s %s\n", c.name, c.summary)
	}
	b.WriteString(`
"mles COMMAND --help" explains each one.

flags:
  -h, --help     show this help
      --version  print the version and exit

environment (as the server reads them):
  MLES_KEY       shared key; the join key is SipHash(MLES_KEY, uid, channel). --mles-key overrides it
  MLES_ADDR_KEY  without a shared key the join key hashes this connection's own address,
                 plus MLES_ADDR_KEY when set (use a shared key behind NAT)

exit codes: 0 ok, 1 runtime or connection error, 2 usage error, 3 sub --count not reached
`)
	return b.String()
}

func versionString() string {
	v := version
	bi, ok := debug.ReadBuildInfo()
	if v == "" && ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		v = bi.Main.Version
	}
	if v == "" {
		v = "devel"
	}
	var rev, dirty string
	goVer := ""
	if ok {
		goVer = bi.GoVersion
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "+dirty"
				}
			}
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	out := "mles " + v
	if rev != "" {
		out += " (" + rev + dirty + ")"
	}
	if goVer != "" {
		out += " " + goVer
	}
	return out
}

func run(e env, args []string) int {
	if e.isTerminal == nil {
		e.isTerminal = func(io.Writer) bool { return false }
	}
	if len(args) == 0 {
		fmt.Fprint(e.stderr, "mles: no command given\nrun \"mles --help\" for usage\n")
		return 2
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(e.stdout, overview())
		return 0
	case "--version", "-version", "version":
		fmt.Fprintln(e.stdout, versionString())
		return 0
	}
	for _, c := range commands {
		if c.name != args[0] {
			continue
		}
		fs := newFlagSet(e, c)
		runner := c.setup(e, fs)
		err := fs.parse(args[1:])
		if err == nil {
			err = runner(fs.fs.Args())
		}
		if err == nil || errors.Is(err, flag.ErrHelp) {
			return 0
		}
		code := 1
		var ee exitError
		if errors.As(err, &ee) {
			code = ee.code
		}
		fmt.Fprintf(e.stderr, "mles %s: %v\n", c.name, err)
		if code == 2 {
			fmt.Fprintf(e.stderr, "run \"mles %s --help\" for usage\n", c.name)
		}
		return code
	}
	fmt.Fprintf(e.stderr, "mles: unknown command %q\nrun \"mles --help\" for usage\n", args[0])
	return 2
}

// flagSpec describes one flag for help and completion.
type flagSpec struct {
	long, short string
	arg         string // value placeholder; "" for a boolean flag
	help        string
	def         string // shown as (default ...) when not ""
	files       bool   // its value is a file name (completion)
}

// flagSet is a flag.FlagSet with long and short names and --flag help.
type flagSet struct {
	e     env
	cmd   command
	fs    *flag.FlagSet
	specs []flagSpec
}

func newFlagSet(e env, c command) *flagSet {
	f := &flagSet{e: e, cmd: c, fs: flag.NewFlagSet("mles "+c.name, flag.ContinueOnError)}
	f.fs.SetOutput(io.Discard)
	f.fs.Usage = func() {}
	return f
}

func (f *flagSet) add(s flagSpec, reg func(name string)) {
	reg(s.long)
	if s.short != "" {
		reg(s.short)
	}
	f.specs = append(f.specs, s)
}

func (f *flagSet) String(p *string, long, short, arg, def, help string) {
	*p = def
	f.add(flagSpec{long: long, short: short, arg: arg, help: help, def: quoteDef(def)}, func(n string) { f.fs.StringVar(p, n, def, help) })
}

func (f *flagSet) File(p *string, long, short, help string) {
	f.add(flagSpec{long: long, short: short, arg: "FILE", help: help, files: true}, func(n string) { f.fs.StringVar(p, n, "", help) })
}

func (f *flagSet) Bool(p *bool, long, short, help string) {
	f.add(flagSpec{long: long, short: short, help: help}, func(n string) { f.fs.BoolVar(p, n, false, help) })
}

func (f *flagSet) Int(p *int, long, short, arg string, def int, help string) {
	d := ""
	if def != 0 {
		d = fmt.Sprint(def)
	}
	f.add(flagSpec{long: long, short: short, arg: arg, help: help, def: d}, func(n string) { f.fs.IntVar(p, n, def, help) })
}

func (f *flagSet) Duration(p *time.Duration, long, short string, def time.Duration, help string) {
	d := ""
	if def != 0 {
		d = def.String()
	}
	f.add(flagSpec{long: long, short: short, arg: "DURATION", help: help, def: d}, func(n string) { f.fs.DurationVar(p, n, def, help) })
}

func (f *flagSet) Var(v flag.Value, long, short, arg, help string, files bool) {
	f.add(flagSpec{long: long, short: short, arg: arg, help: help, files: files}, func(n string) { f.fs.Var(v, n, help) })
}

func quoteDef(s string) string {
	if s == "" {
		return ""
	}
	return fmt.Sprintf("%q", s)
}

// parse parses args; -h/--help prints the help on stdout and returns
// flag.ErrHelp; other errors are usage errors.
func (f *flagSet) parse(args []string) error {
	if err := f.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(f.e.stdout, f.help())
			return err
		}
		return usageErr("%s", strings.TrimPrefix(err.Error(), "flag provided but not defined: -"))
	}
	return nil
}

// help is the command's --help text.
func (f *flagSet) help() string {
	var b strings.Builder
	fmt.Fprintf(&b, "usage: mles %s %s\n\n%s\n\nflags:\n", f.cmd.name, f.cmd.synopsis, strings.TrimSpace(f.cmd.desc))
	specs := append([]flagSpec(nil), f.specs...)
	specs = append(specs, flagSpec{long: "help", short: "h", help: "show this help"})
	width := 0
	names := make([]string, len(specs))
	for i, s := range specs {
		n := "    --" + s.long
		if s.short != "" {
			n = "-" + s.short + ", --" + s.long
		}
		if s.arg != "" {
			n += " " + s.arg
		}
		names[i] = n
		width = max(width, len(n))
	}
	for i, s := range specs {
		h := s.help
		if s.def != "" {
			h += " (default " + s.def + ")"
		}
		lines := strings.Split(h, "\n")
		fmt.Fprintf(&b, "  %-*s  %s\n", width, names[i], lines[0])
		for _, l := range lines[1:] {
			fmt.Fprintf(&b, "  %-*s  %s\n", width, "", l)
		}
	}
	b.WriteString("\nenvironment: MLES_KEY (shared key; --mles-key overrides), MLES_ADDR_KEY (mixed into address keys)\n" +
		"exit codes: 0 ok, 1 runtime or connection error, 2 usage error" + f.extraExit() + "\n")
	return b.String()
}

func (f *flagSet) extraExit() string {
	if f.cmd.name == "sub" {
		return ", 3 --count not reached"
	}
	return ""
}

// allSpecs returns every command's flags, for completion.
func allSpecs() map[string][]flagSpec {
	m := map[string][]flagSpec{}
	for _, c := range commands {
		fs := newFlagSet(env{}, c)
		c.setup(env{getenv: func(string) string { return "" }}, fs)
		specs := append(fs.specs, flagSpec{long: "help", short: "h"})
		sort.SliceStable(specs, func(i, j int) bool { return specs[i].long < specs[j].long })
		m[c.name] = specs
	}
	return m
}
