package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"time"
	"unicode/utf8"
)

const chatDescription = `
Interactive chat on one channel. Joins (uid, channel), prints the channel's
history and then every message received as "uid: text" (a join of another
client as "* uid joined"), and sends each line typed on stdin as one
message (empty lines are skipped). End of input (Ctrl-D) exits 0; the server
closing the connection (also within 250 ms after end of input, as it does at
once for a wrong key) exits 1.`

func runChat(e env, args []string) error {
	var cf connFlags
	fs := newFlagSet(e, "chat", "--server HOST[:8077] --uid U --channel C", chatDescription)
	cf.register(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	if err := cf.check(fs); err != nil {
		return err
	}
	conn, done, err := cf.open(e)
	if err != nil {
		return err
	}
	defer done()
	if err := conn.Send(nil); err != nil {
		return closedErr(err)
	}

	readErr := make(chan error, 1)
	go func() {
		out := bufio.NewWriter(e.stdout)
		for {
			_, t, err := conn.ReadTriplet()
			if err != nil {
				readErr <- err
				return
			}
			switch {
			case len(t.Message) == 0:
				fmt.Fprintf(out, "* %s joined\n", t.UID)
			case utf8.Valid(t.Message):
				fmt.Fprintf(out, "%s: %s\n", t.UID, t.Message)
			default:
				fmt.Fprintf(out, "%s: <%d bytes of binary>\n", t.UID, len(t.Message))
			}
			out.Flush()
		}
	}()

	inputDone := make(chan error, 1)
	go func() {
		r := bufio.NewReader(e.stdin)
		for {
			line, err := r.ReadBytes('\n')
			line = bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
			if len(line) > 0 {
				if serr := conn.Send(line); serr != nil {
					inputDone <- closedErr(serr)
					return
				}
			}
			if err == io.EOF {
				inputDone <- nil
				return
			}
			if err != nil {
				inputDone <- fmt.Errorf("reading stdin: %w", err)
				return
			}
		}
	}()

	select {
	case err := <-inputDone:
		if err != nil {
			return err
		}
		// End of input. A refused join (wrong key) closes at once: give
		// the server rejectWindow to show it, as pub does.
		select {
		case err := <-readErr:
			return closedErr(err)
		case <-time.After(rejectWindow):
			return nil
		}
	case err := <-readErr:
		if e.ctx.Err() != nil {
			return nil
		}
		return closedErr(err)
	case <-e.ctx.Done():
		return nil
	}
}
