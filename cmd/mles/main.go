// Command mles is a Mles v1 client: chat, publish, subscribe, and run a
// WebSocket gateway (proxy) in front of any Mles server.
//
// Exit codes: 0 success, 1 runtime or connection error (including the
// server closing the connection), 2 usage error. Errors go to stderr,
// prefixed "mles <subcommand>:".
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

const usageText = `mles: a Mles v1 client (pub/sub over TCP, IANA port 8077)

usage:
  mles chat  --server HOST[:8077] --uid U --channel C   interactive chat: lines typed are sent,
                                                     received messages are printed as "uid: text"
  mles pub   --server HOST[:8077] --uid U --channel C [--rate N/s] [FILE...]
                                                     each stdin line (or each FILE) becomes one message
  mles sub   --server HOST[:8077] --uid U --channel C [--json] [--count N] [--show-joins]
                                                     print received messages (history first)
  mles proxy --listen :8076 --server HOST:8077        WebSocket gateway (subprotocol mles-websocket)
                                                     and demo page in front of any Mles server

"mles SUBCOMMAND --help" explains each one.

environment (as the server reads them):
  MLES_KEY       shared key; the join key is SipHash(MLES_KEY, uid, channel). --key overrides it
  MLES_ADDR_KEY  without a shared key the join key hashes this connection's own address,
                 plus MLES_ADDR_KEY when set (use a shared key behind NAT)

exit codes: 0 ok, 1 runtime or connection error, 2 usage error
`

// exitError carries an exit code through a subcommand's return.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return e.err.Error() }

func usageErr(format string, a ...any) error {
	return exitError{2, fmt.Errorf(format, a...)}
}

// env is what a subcommand may touch of the process.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
	ctx            context.Context // done on SIGINT/SIGTERM
}

type command struct {
	name string
	run  func(e env, args []string) error
}

var commands = []command{
	{"chat", runChat},
	{"pub", runPub},
	{"sub", runSub},
	{"proxy", runProxy},
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(env{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv, ctx: ctx}, os.Args[1:]))
}

func run(e env, args []string) int {
	if len(args) == 0 {
		fmt.Fprint(e.stderr, usageText)
		return 2
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(e.stdout, usageText)
		return 0
	}
	for _, c := range commands {
		if c.name != args[0] {
			continue
		}
		err := c.run(e, args[1:])
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
	fmt.Fprintf(e.stderr, "mles: unknown subcommand %q\n\n%s", args[0], usageText)
	return 2
}

// newFlagSet returns a FlagSet whose --help prints synopsis, description
// and flags to stdout.
func newFlagSet(e env, name, synopsis, description string) *flag.FlagSet {
	fs := flag.NewFlagSet("mles "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		fmt.Fprintf(e.stdout, "usage: mles %s %s\n\n%s\n\nflags:\n", name, synopsis, strings.TrimSpace(description))
		fs.SetOutput(e.stdout)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
		fmt.Fprint(e.stdout, "\nenvironment: MLES_KEY (shared key, --key overrides), MLES_ADDR_KEY (mixed into address keys)\n"+
			"exit codes: 0 ok, 1 runtime or connection error, 2 usage error\n")
	}
	return fs
}

// parse parses args; --help prints the usage and returns flag.ErrHelp,
// other errors are usage errors.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err // fs.Usage has printed the help
		}
		return usageErr("%v", err)
	}
	return nil
}
