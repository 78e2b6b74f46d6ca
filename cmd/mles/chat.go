package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"
	"unicode/utf8"

	"github.com/mlesd/mlesd/client"
)

const chatDescription = `
Interactive chat on one channel. Joins (uid, channel), prints the channel's
history and then every message received as "uid: text" (a join of another
client as "* uid joined"), and sends each line typed on stdin as one
message (empty lines are skipped). End of input (Ctrl-D) exits 0; the server
closing the connection (also within 250 ms after end of input, as it does at
once for a wrong key) exits 1.`

var chatCommand = command{
	name:     "chat",
	synopsis: "-s HOST[:8077] -u UID -c CHANNEL",
	summary:  "interactive chat: lines typed are sent, messages received are printed",
	desc:     chatDescription,
	setup:    setupChat,
}

func setupChat(e env, fs *flagSet) func([]string) error {
	var cf connFlags
	cf.register(e, fs, true)
	return func(args []string) error {
		if len(args) > 0 {
			return usageErr("unexpected argument %q", args[0])
		}
		if err := cf.check(); err != nil {
			return err
		}
		conn, done, err := cf.connect(e, cf.uid)
		if err != nil {
			return err
		}
		defer done()

		readErr := make(chan error, 1)
		go func() {
			out := bufio.NewWriter(e.stdout)
			for m, err := range conn.Msgs(context.Background()) {
				if errors.Is(err, client.ErrNotTriplet) {
					continue
				}
				if err != nil {
					readErr <- err
					return
				}
				switch {
				case m.IsJoin():
					fmt.Fprintf(out, "* %s joined\n", m.UID)
				case utf8.Valid(m.Message):
					fmt.Fprintf(out, "%s: %s\n", m.UID, m.Message)
				default:
					fmt.Fprintf(out, "%s: <%d bytes of binary>\n", m.UID, len(m.Message))
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
			if err := conn.Flush(); err != nil {
				return closedErr(err)
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
}
