package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/mlesd/mlesd/client"
)

const subDescription = `
Joins (uid, channel) and prints every message the server sends: first the
channel's history, then live messages. The server never echoes this
client's own frames.

Text output is one line per message, "uid: text"; a message that is not
valid UTF-8 is printed as "uid: <binary> BASE64". --raw prints only each
message's bytes, followed by a newline (as mosquitto_sub does).

With --json each message is one JSON object on its own line:
  {"uid":"alice","channel":"news","message":"hello","cid":1234567}
"message" is the message as text when it is valid UTF-8; otherwise it is
standard base64 and the object has "encoding":"base64".

Frames with an empty message are other clients' joins; they are not
printed unless --show-joins (as "* uid joined" in text, "message":"" in JSON).

Runs until --count messages were printed (exit 0), --timeout has passed
(exit 0 without --count), SIGINT/SIGTERM (exit 0) or the server closes the
connection (exit 1; with --reconnect it rejoins instead, skipping history
it has already printed).

A Mles server drops frames for a receiver that falls behind, and nothing
tells the receiver. So --count N does not wait forever for frames that will
never come: once a message has arrived, a channel quiet for --idle (default
5s) ends the wait too. When --count was not reached (by --idle or
--timeout), sub says how many arrived on stderr and exits 3.`

// defaultIdle is how long sub --count waits on a quiet channel.
const defaultIdle = 5 * time.Second

// exitIncomplete is sub's exit code when --count was not reached.
const exitIncomplete = 3

var subCommand = command{
	name:     "sub",
	synopsis: "-s HOST[:8077] -u UID -c CHANNEL [--count N] [--timeout D] [--raw | --json] [--show-joins]",
	summary:  "print the channel's messages (history first)",
	desc:     subDescription,
	setup:    setupSub,
}

// subRecord is one --json output line.
type subRecord struct {
	UID      string `json:"uid"`
	Channel  string `json:"channel"`
	Message  string `json:"message"`
	Encoding string `json:"encoding,omitempty"` // "base64" when message is not UTF-8
	CID      uint32 `json:"cid"`
}

func setupSub(e env, fs *flagSet) func([]string) error {
	var cf connFlags
	var asJSON, raw, showJoins, reconnect bool
	var count int
	var timeout, idle time.Duration
	cf.register(e, fs, true)
	fs.Int(&count, "count", "C", "N", 0, "exit 0 after printing N messages (0: run until stopped)")
	fs.Duration(&timeout, "timeout", "W", 0, "stop after this long in all (0: no limit)")
	fs.Duration(&idle, "idle", "", defaultIdle, "with --count: give up when no message came for this long, after the first")
	fs.Bool(&raw, "raw", "R", "print only each message's bytes and a newline")
	fs.Bool(&asJSON, "json", "j", "one JSON object per line: uid, channel, message, cid (and encoding for binary)")
	fs.Bool(&showJoins, "show-joins", "", "also print frames with an empty message (other clients' joins)")
	fs.Bool(&reconnect, "reconnect", "", "rejoin after the connection is lost (growing wait, up to 30s), skipping history already printed")
	return func(args []string) error {
		if len(args) > 0 {
			return usageErr("unexpected argument %q", args[0])
		}
		if err := cf.check(); err != nil {
			return err
		}
		switch {
		case count < 0:
			return usageErr("--count must be >= 0")
		case timeout < 0 || idle < 0:
			return usageErr("--timeout and --idle must not be negative")
		case raw && asJSON:
			return usageErr("--raw and --json exclude each other")
		}
		var extra []client.Option
		if reconnect {
			extra = append(extra, client.MaxReconnects(-1))
		}
		conn, done, err := cf.connect(e, cf.uid, extra...)
		if err != nil {
			return err
		}
		defer done()

		ctx, cancel := context.WithCancel(e.ctx)
		defer cancel()
		var timedOut, quiet atomic.Bool
		if timeout > 0 {
			t := time.AfterFunc(timeout, func() { timedOut.Store(true); cancel() })
			defer t.Stop()
		}
		var idleTimer *time.Timer
		if count > 0 && idle > 0 {
			idleTimer = time.AfterFunc(time.Hour, func() { quiet.Store(true); cancel() })
			idleTimer.Stop()
			defer idleTimer.Stop()
		}

		out := bufio.NewWriter(e.stdout)
		defer out.Flush()
		enc := json.NewEncoder(out)
		enc.SetEscapeHTML(false)
		printed := 0
		var recvErr error
		for m, err := range conn.Msgs(ctx) {
			if errors.Is(err, client.ErrNotTriplet) {
				fmt.Fprintf(e.stderr, "mles sub: skipping a frame that is not a triplet: %v\n", err)
				continue
			}
			if err != nil {
				recvErr = err
				break
			}
			if idleTimer != nil {
				idleTimer.Reset(idle)
			}
			if m.IsJoin() && !showJoins {
				continue
			}
			switch {
			case raw:
				out.Write(m.Message)
				out.WriteByte('\n')
			case asJSON:
				r := subRecord{UID: string(m.UID), Channel: string(m.Channel), CID: m.CID}
				if utf8.Valid(m.Message) {
					r.Message = string(m.Message)
				} else {
					r.Message, r.Encoding = base64.StdEncoding.EncodeToString(m.Message), "base64"
				}
				if err := enc.Encode(r); err != nil {
					return err
				}
			default:
				printText(out, m)
			}
			printed++
			if err := out.Flush(); err != nil {
				return err
			}
			if count > 0 && printed >= count {
				return nil
			}
		}
		out.Flush()
		switch {
		case e.ctx.Err() != nil:
			return nil // told to stop
		case timedOut.Load() || quiet.Load():
			if count == 0 {
				return nil
			}
			why := fmt.Sprintf("--timeout %v ran out", timeout)
			if quiet.Load() {
				why = fmt.Sprintf("the channel was quiet for --idle %v", idle)
			}
			return exitError{exitIncomplete, fmt.Errorf("received %d of %d messages: %s (a Mles server drops frames for a receiver that falls behind, without telling it)", printed, count, why)}
		}
		return closedErr(recvErr)
	}
}

// printText prints "uid: text", "uid: <binary> BASE64", or "* uid joined"
// for an empty message.
func printText(w *bufio.Writer, m *client.Msg) {
	switch {
	case m.IsJoin():
		fmt.Fprintf(w, "* %s joined\n", m.UID)
	case utf8.Valid(m.Message):
		fmt.Fprintf(w, "%s: %s\n", m.UID, m.Message)
	default:
		fmt.Fprintf(w, "%s: <binary> %s\n", m.UID, base64.StdEncoding.EncodeToString(m.Message))
	}
}
