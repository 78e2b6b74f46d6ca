package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/mlesd/mlesd/client"
	"github.com/mlesd/mlesd/codec"
)

const pubDescription = `
Joins (uid, channel) and publishes. The message comes from exactly one of:
  -m TEXT     the text
  -f FILE     the file's whole content
  --stdin     all of stdin
  -l          one message per line of stdin (without its line ending;
              empty lines are skipped: an empty message is a join)
As with mosquitto_pub, there is no default source: a pub that silently
waited for a terminal's input would look hung, and one that guessed would
send the wrong thing. --count N sends the -m, -f or --stdin message N times
(like mosquitto_pub --repeat), or stops -l after N lines.

The first message is also the join. --rate paces messages evenly (a token
bucket refilled continuously, sending in small batches; it never bursts
more than 1 s worth after a stall). At the end pub flushes, closes its
sending side and waits (at most 5 s) for the server to close, so that
every message has been handled before it exits 0.

The protocol has no acknowledgements or error messages: a wrong key makes
the server close the connection at once. pub watches for that while it
sends and for 250 ms after its last message, and reports it with exit 1.`

const (
	// drainTimeout bounds waiting for the server to close after our half-close.
	drainTimeout = 5 * time.Second
	// rejectWindow is how long pub watches for the server closing on its
	// own (a refused join) after the last message.
	rejectWindow = 250 * time.Millisecond
	// maxBurst bounds how far the pacer catches up after a stall.
	maxBurst = time.Second
)

var pubCommand = command{
	name:     "pub",
	synopsis: "-s HOST[:8077] -u UID -c CHANNEL (-m TEXT | -f FILE | --stdin | -l) [--count N] [--rate N/s]",
	summary:  "publish a message, a file, or each line of stdin",
	desc:     pubDescription,
	setup:    setupPub,
}

func setupPub(e env, fs *flagSet) func([]string) error {
	var cf connFlags
	var text, file, rate string
	var lines, stdin, verbose bool
	var count int
	cf.register(e, fs, true)
	fs.String(&text, "message", "m", "TEXT", "", "send TEXT as the message")
	fs.File(&file, "file", "f", "send the file's content as one message")
	fs.Bool(&lines, "lines", "l", "send each line of stdin as one message")
	fs.Bool(&stdin, "stdin", "", "send all of stdin as one message")
	fs.Int(&count, "count", "C", "N", 0, "send the message N times (default 1); with -l, stop after N lines (default all)")
	fs.String(&rate, "rate", "r", "N/s", "", "send at most N messages per second (e.g. 50000/s, 0.5/s); default unlimited")
	fs.Bool(&verbose, "verbose", "v", "print what was sent, and the rate achieved, to stderr")
	setMessage := false
	return func(args []string) error {
		fs.fs.Visit(func(f *flag.Flag) {
			if f.Name == "m" || f.Name == "message" {
				setMessage = true
			}
		})
		if len(args) > 0 {
			return usageErr("unexpected argument %q (a file is sent with -f FILE)", args[0])
		}
		if err := cf.check(); err != nil {
			return err
		}
		sources := 0
		for _, b := range []bool{setMessage, file != "", lines, stdin} {
			if b {
				sources++
			}
		}
		switch {
		case sources == 0:
			return usageErr("no message: give -m TEXT, -f FILE, --stdin or -l")
		case sources > 1:
			return usageErr("-m, -f, --stdin and -l exclude each other")
		case setMessage && text == "":
			return usageErr("-m: an empty message is a join, not a message")
		case count < 0 || (count == 0 && countSet(fs)):
			return usageErr("--count must be at least 1")
		}
		if count == 0 && !lines {
			count = 1
		}
		perSec, err := parseRate(rate)
		if err != nil {
			return usageErr("--rate %q: %v", rate, err)
		}
		var msg []byte
		switch {
		case setMessage:
			msg = []byte(text)
		case file != "":
			if msg, err = readLimited(file, nil); err != nil {
				return err
			}
		case stdin:
			if msg, err = readLimited("stdin", e.stdin); err != nil {
				return err
			}
		}
		if !lines && len(msg) == 0 {
			return errors.New("the message is empty: an empty message is a join, not a message")
		}
		p := &publisher{e: e, cf: &cf, pace: newPacer(perSec), verbose: verbose}
		if lines {
			return p.runLines(count)
		}
		return p.runRepeat(msg, count)
	}
}

func readLimited(name string, r io.Reader) ([]byte, error) {
	if r == nil {
		f, err := os.Open(name)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, codec.MaxPayloadLen+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	if len(b) > codec.MaxPayloadLen-64 {
		return nil, fmt.Errorf("%s: %d bytes or more is more than a Mles message can carry", name, len(b))
	}
	return b, nil
}

// publisher sends messages on one connection.
type publisher struct {
	e       env
	cf      *connFlags
	pace    *pacer
	verbose bool
	conn    *client.Conn
	done    func()
	readErr chan error    // the reader's error, when the server closed
	rdDone  chan struct{} // closed when the reader has returned
	stopRd  context.CancelFunc
	sent    int
	start   time.Time
}

// open connects with first as the join message and starts a reader that
// discards what the server sends and notices a close.
func (p *publisher) open(first []byte) error {
	conn, done, err := p.cf.connect(p.e, p.cf.uid, client.JoinMessage(first))
	if err != nil {
		return err
	}
	p.conn, p.done, p.start = conn, done, time.Now()
	p.sent = 1
	p.pace.start(p.start)
	p.pace.wait(p.e.ctx) // message 1 is due now
	ctx, cancel := context.WithCancel(context.Background())
	p.stopRd, p.readErr, p.rdDone = cancel, make(chan error, 1), make(chan struct{})
	go func() {
		defer close(p.rdDone)
		for _, err := range conn.Msgs(ctx) {
			if err != nil && !errors.Is(err, client.ErrNotTriplet) {
				if ctx.Err() == nil {
					p.readErr <- err
				}
				return
			}
		}
	}()
	return nil
}

// send paces and sends one message.
func (p *publisher) send(msg []byte) error {
	if !p.pace.wait(p.e.ctx) {
		return nil
	}
	select {
	case err := <-p.readErr:
		return closedErr(err)
	default:
	}
	if err := p.conn.Send(msg); err != nil {
		return closedErr(err)
	}
	p.sent++
	return nil
}

func (p *publisher) runRepeat(msg []byte, count int) error {
	if err := p.open(msg); err != nil {
		return err
	}
	defer p.done()
	for i := 1; i < count && p.e.ctx.Err() == nil; i++ {
		if err := p.send(msg); err != nil {
			return err
		}
	}
	return p.finish()
}

func (p *publisher) runLines(count int) error {
	r := bufio.NewReaderSize(p.e.stdin, 64<<10)
	for n := 0; count == 0 || n < count; {
		line, err := r.ReadBytes('\n')
		line = bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
		if len(line) > 0 {
			n++
			if p.conn == nil {
				if oerr := p.open(line); oerr != nil {
					return oerr
				}
				defer p.done()
			} else if serr := p.send(line); serr != nil {
				return serr
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("reading stdin: %w", err)
		}
		if p.e.ctx.Err() != nil {
			break
		}
	}
	if p.conn == nil {
		return nil // no line: nothing to send
	}
	return p.finish()
}

// finish waits for a late refusal, then drains.
func (p *publisher) finish() error {
	if err := p.conn.Flush(); err != nil {
		return closedErr(err)
	}
	elapsed := time.Since(p.start)
	if p.e.ctx.Err() == nil {
		select {
		case err := <-p.readErr:
			return closedErr(err)
		case <-time.After(rejectWindow):
		case <-p.e.ctx.Done():
		}
	}
	// Drain beside the running reader (stopping a WebSocket read would
	// close the connection); the reader then sees the server's close.
	if err := p.drain(); err != nil && p.e.ctx.Err() == nil && !errors.Is(err, client.ErrClosed) {
		return closedErr(err)
	}
	p.stopRd()
	<-p.rdDone
	if p.verbose {
		rate := 0.0
		if p.sent > 1 && elapsed > 0 {
			rate = float64(p.sent-1) / elapsed.Seconds()
		}
		fmt.Fprintf(p.e.stderr, "mles pub: sent %d messages in %v (%.0f msgs/s)\n", p.sent, elapsed.Round(time.Millisecond), rate)
	}
	return nil
}

func (p *publisher) drain() error {
	ctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	err := p.conn.Drain(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		return nil // the server kept the connection open; everything was flushed
	}
	return err
}

// parseRate parses "N/s" or "N" (messages per second); "" means unlimited (0).
func parseRate(s string) (float64, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseFloat(strings.TrimSuffix(s, "/s"), 64)
	if err != nil || n <= 0 || n > 1e8 {
		return 0, errors.New("want a positive number of messages per second, like 10/s")
	}
	return n, nil
}

// pacer spaces messages at a rate: message i is due at start + i/rate. It
// sleeps only when the next message is at least a millisecond away, and
// then sends every message that has come due, so timer granularity costs
// batching, not rate.
type pacer struct {
	perSec float64
	t0     time.Time
	i      int64 // messages let through
}

func newPacer(perSec float64) *pacer { return &pacer{perSec: perSec} }

func (p *pacer) start(t time.Time) { p.t0 = t }

// wait blocks until the next message is due; false if ctx ended.
func (p *pacer) wait(ctx context.Context) bool {
	if p.perSec == 0 {
		return ctx.Err() == nil
	}
	due := p.t0.Add(time.Duration(float64(p.i) / p.perSec * float64(time.Second)))
	now := time.Now()
	if behind := now.Sub(due); behind > maxBurst {
		// After a stall, do not burst more than maxBurst worth.
		p.t0 = p.t0.Add(behind - maxBurst)
		due = due.Add(behind - maxBurst)
	}
	if d := due.Sub(now); d >= time.Millisecond {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return false
		}
	}
	p.i++
	return ctx.Err() == nil
}

// countSet reports whether --count or -C was given.
func countSet(fs *flagSet) bool {
	set := false
	fs.fs.Visit(func(f *flag.Flag) { set = set || f.Name == "count" || f.Name == "C" })
	return set
}
