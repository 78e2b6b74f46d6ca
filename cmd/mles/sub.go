package main

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"unicode/utf8"

	"github.com/mlesd/mlesd/codec"
)

const subDescription = `
Joins (uid, channel) and prints every message the server sends: first the
channel's history, then live messages. The server never echoes this
client's own frames.

Text output is one line per message, "uid: text". A message that is not
valid UTF-8 is printed as "uid: <binary> BASE64".

With --json each message is one JSON object on its own line:
  {"uid":"alice","channel":"news","message":"hello","cid":1234567}
"message" is the message as text when it is valid UTF-8; otherwise it is
standard base64 and the object has "encoding":"base64".

Frames with an empty message are other clients' join frames; they are not
printed unless --show-joins (as "* uid joined" in text, "message":"" in JSON).

Runs until --count messages were printed (exit 0), SIGINT/SIGTERM (exit 0)
or the server closes the connection (exit 1).`

// subRecord is one --json output line.
type subRecord struct {
	UID      string `json:"uid"`
	Channel  string `json:"channel"`
	Message  string `json:"message"`
	Encoding string `json:"encoding,omitempty"` // "base64" when message is not UTF-8
	CID      uint32 `json:"cid"`
}

func runSub(e env, args []string) error {
	var cf connFlags
	fs := newFlagSet(e, "sub", "--server HOST[:8077] --uid U --channel C [--json] [--count N] [--show-joins]", subDescription)
	cf.register(fs)
	asJSON := fs.Bool("json", false, "one JSON object per line: uid, channel, message, cid (and encoding for binary)")
	count := fs.Int("count", 0, "exit 0 after printing `N` messages (0: run until stopped)")
	showJoins := fs.Bool("show-joins", false, "also print frames with an empty message (other clients' joins)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	if err := cf.check(fs); err != nil {
		return err
	}
	if *count < 0 {
		return usageErr("--count must be >= 0")
	}
	conn, done, err := cf.open(e)
	if err != nil {
		return err
	}
	defer done()
	if err := conn.Send(nil); err != nil {
		return closedErr(err)
	}
	out := bufio.NewWriter(e.stdout)
	defer out.Flush()
	enc := json.NewEncoder(out)
	enc.SetEscapeHTML(false)
	printed := 0
	for *count == 0 || printed < *count {
		h, t, err := conn.ReadTriplet()
		if err != nil {
			if e.ctx.Err() != nil {
				return nil
			}
			if h.Len > 0 { // a frame arrived but is not a triplet
				fmt.Fprintf(e.stderr, "mles sub: skipping a frame that is not a triplet: %v\n", err)
				continue
			}
			return closedErr(err)
		}
		if len(t.Message) == 0 && !*showJoins {
			continue
		}
		if *asJSON {
			r := subRecord{UID: t.UID, Channel: t.Channel, CID: h.CID}
			if utf8.Valid(t.Message) {
				r.Message = string(t.Message)
			} else {
				r.Message, r.Encoding = base64.StdEncoding.EncodeToString(t.Message), "base64"
			}
			if err := enc.Encode(r); err != nil {
				return err
			}
		} else {
			printText(out, t)
		}
		printed++
		if err := out.Flush(); err != nil {
			return err
		}
	}
	return nil
}

// printText prints "uid: text", "uid: <binary> BASE64", or "* uid joined"
// for an empty message.
func printText(w *bufio.Writer, t codec.Triplet) {
	if len(t.Message) == 0 {
		fmt.Fprintf(w, "* %s joined\n", t.UID)
	} else if utf8.Valid(t.Message) {
		fmt.Fprintf(w, "%s: %s\n", t.UID, t.Message)
	} else {
		fmt.Fprintf(w, "%s: <binary> %s\n", t.UID, base64.StdEncoding.EncodeToString(t.Message))
	}
}
