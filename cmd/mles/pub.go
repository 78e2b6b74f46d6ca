package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/mlesd/mlesd/codec"
)

const pubDescription = `
Joins (uid, channel) and publishes: each line of stdin becomes one message
(without its line ending; empty lines are skipped, as an empty message is a
join), or, with FILE arguments, each file's whole content becomes one
message. The first message is also the join. Then it closes its sending
side and waits (at most 5 s) for the server to close, so that every message
has been handled before it exits 0.

The protocol has no acknowledgements or error messages: a wrong key makes
the server close the connection at once. pub watches for that for 250 ms
after its last message (before closing its own side) and reports it with
exit 1.`

const (
	// drainTimeout bounds waiting for the server to close after our half-close.
	drainTimeout = 5 * time.Second
	// rejectWindow is how long pub watches for the server closing on its
	// own (a refused join) after the last message.
	rejectWindow = 250 * time.Millisecond
)

func runPub(e env, args []string) error {
	var cf connFlags
	fs := newFlagSet(e, "pub", "--server HOST[:8077] --uid U --channel C [--rate N/s] [FILE...]", pubDescription)
	cf.register(fs)
	rateFlag := fs.String("rate", "", "send at most `N/s` messages per second (e.g. 10/s, 0.5/s); default unlimited")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := cf.check(fs); err != nil {
		return err
	}
	interval, err := parseRate(*rateFlag)
	if err != nil {
		return usageErr("--rate %q: %v", *rateFlag, err)
	}
	files := fs.Args()
	for _, f := range files { // fail before connecting
		if st, err := os.Stat(f); err != nil {
			return err
		} else if st.Size() > codec.MaxPayloadLen {
			return fmt.Errorf("%s: %d bytes is more than a Mles message can carry", f, st.Size())
		}
	}
	conn, done, err := cf.open(e)
	if err != nil {
		return err
	}
	defer done()

	var tick *time.Ticker
	if interval > 0 {
		tick = time.NewTicker(interval)
		defer tick.Stop()
	}
	sent := 0
	send := func(msg []byte) error {
		if tick != nil && sent > 0 {
			select {
			case <-tick.C:
			case <-e.ctx.Done():
				return e.ctx.Err()
			}
		}
		if err := conn.Send(msg); err != nil {
			if errors.Is(err, codec.ErrPayloadTooLarge) {
				return fmt.Errorf("message %d: %w", sent+1, err)
			}
			return closedErr(err)
		}
		sent++
		return nil
	}
	if len(files) > 0 {
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				return err
			}
			if err := send(b); err != nil {
				return err
			}
		}
	} else {
		r := bufio.NewReaderSize(e.stdin, 64<<10)
		for {
			line, err := r.ReadBytes('\n')
			line = bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
			if len(line) > 0 {
				if serr := send(line); serr != nil {
					return serr
				}
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				return fmt.Errorf("reading stdin: %w", err)
			}
		}
	}
	if e.ctx.Err() != nil {
		return nil
	}
	if sent == 0 {
		return nil
	}
	// A server that refuses the join (wrong key) closes at once: watch for
	// that for rejectWindow before our own half-close makes the two cases
	// look alike. Frames it sends meanwhile (history) are discarded.
	conn.NetConn().SetReadDeadline(time.Now().Add(rejectWindow))
	for {
		_, _, err := conn.ReadFrame()
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			break
		}
		if err != nil {
			return closedErr(err)
		}
	}
	// Half-close, then wait for the server to close: everything sent has
	// then been handled.
	if err := conn.CloseWrite(); err != nil {
		return closedErr(err)
	}
	conn.NetConn().SetReadDeadline(time.Now().Add(drainTimeout))
	for {
		_, _, err := conn.ReadFrame()
		var ne net.Error
		switch {
		case err == nil:
		case errors.Is(err, io.EOF), errors.As(err, &ne) && ne.Timeout():
			return nil
		default: // a reset: the server had closed before reading everything
			return closedErr(err)
		}
	}
}

// parseRate parses "N/s" or "N" (messages per second) into the interval
// between messages; "" means unlimited (0).
func parseRate(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseFloat(strings.TrimSuffix(s, "/s"), 64)
	if err != nil || n <= 0 || n > 1e9 {
		return 0, errors.New("want a positive number of messages per second, like 10/s")
	}
	return time.Duration(float64(time.Second) / n), nil
}

// onStop runs f when the process is told to stop; the returned
// function unregisters it.
func onStop(e env, f func()) func() bool {
	return context.AfterFunc(e.ctx, f)
}
