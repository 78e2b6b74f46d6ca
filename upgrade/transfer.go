package upgrade

// Phase 2 on the wire (doc.go): after the new process has reported ready
// and said it reads state (Reply.States), the old process freezes, sends
// its channels and connections as state messages, each connection's
// socket attached to its ConnState, and ends with Totals; the new process
// answers with a second Reply (imported, or why not). The old process
// then lets go of the sockets, sends the inbound bytes its event loops
// took off them meanwhile (Chunk.Partial), and commits. The new process
// registers the sockets only after the Commit: until the old process has
// closed its descriptors both could read from a socket, and bytes split
// between two readers cannot be put back in order.
//
// In rounds (Reply.Rounds, doc.go): each round is that sequence for a few
// channels, its Totals saying More and its Commit leaving the socket open
// for the next (Child.CommitRound, Handover.NextRound); the last round
// ends as a handover in one round does.

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/mlesd/mlesd/codec"
)

// chunkBytes is how many owed, partial or history bytes one Chunk carries:
// with its header well inside maxMessage.
const chunkBytes = 48 << 10

// States is the state format the new process reads (0: it takes the
// listeners only; Commit then follows as in phase 1).
func (c *Child) States() uint16 { return c.states }

// SendState sends one state message (ChannelState, Chunk or Totals;
// connections go by SendConns, with their sockets).
func (c *Child) SendState(v any, deadline time.Time) error {
	return c.sendState(v, nil, deadline)
}

// sendState sends one state message or batch with descriptors fds
// attached.
func (c *Child) sendState(v any, fds []int, deadline time.Time) error {
	b, err := EncodeState(v)
	if err != nil {
		return err
	}
	if err := c.sock.sendFDs(b, fds, deadline); err != nil {
		return c.failure(fmt.Errorf("sending the state: %w", err))
	}
	return nil
}

// SendStream sends data as Chunk messages of the owner chunk names (Conn
// or Chan set), numbered from seq on, with fill putting each piece in its
// field; it returns the next number.
func (c *Child) SendStream(owner Chunk, seq uint32, data []byte, fill func(*Chunk, []byte), deadline time.Time) (uint32, error) {
	for len(data) > 0 {
		n := min(len(data), chunkBytes)
		ch := Chunk{Conn: owner.Conn, Chan: owner.Chan, Seq: seq}
		fill(&ch, data[:n])
		if err := c.SendState(&ch, deadline); err != nil {
			return seq, err
		}
		data = data[n:]
		seq++
	}
	return seq, nil
}

// OutConn is one connection for SendConns: its state, a descriptor of its
// socket (the caller closes it once SendConns returns), and the bytes owed
// to it and read from it, which travel as Chunks after its state. A bare
// descriptor, not an *os.File: making one registers a non-blocking socket
// with Go's poller and closing it deregisters it, two system calls per
// connection for nothing.
type OutConn struct {
	State         ConnState
	FD            int
	Owed, Partial []byte
}

// ConnsPerMessage is how many connections SendConns puts in one message
// for this new process at most (1: it reads a ConnState per message).
func (c *Child) ConnsPerMessage() int { return max(c.perMsg, 1) }

// batchOverhead is what a ConnBatch adds to its states' encodings: its
// map, kind, format and the array's head.
const batchOverhead = 32

// SendConns sends conns, as many to a message as the new process reads
// and the message size allows, their sockets attached; after each message,
// the chunks of its connections' owed and partial bytes.
func (c *Child) SendConns(conns []OutConn, deadline time.Time) error {
	var (
		items []cbor.RawMessage
		fds   []int
		size  = batchOverhead
		first int // conns[first:] are not sent yet
	)
	flush := func(upto int) error {
		if len(items) == 0 {
			return nil
		}
		if err := c.sendState(&connBatchOut{Conns: items}, fds, deadline); err != nil {
			return err
		}
		for j := first; j < upto; j++ {
			if err := c.sendBytesOf(&conns[j], deadline); err != nil {
				return err
			}
		}
		items, fds, size, first = items[:0], fds[:0], batchOverhead, upto
		return nil
	}
	for i := range conns {
		oc := &conns[i]
		st := oc.State
		st.Owed, st.Partial = nil, nil // in chunks: a frame may be larger than a message
		st.OwedChunks = Chunks(len(oc.Owed)) + Chunks(len(oc.Partial))
		if c.ConnsPerMessage() == 1 {
			if err := c.sendState(&st, []int{oc.FD}, deadline); err != nil {
				return err
			}
			if err := c.sendBytesOf(oc, deadline); err != nil {
				return err
			}
			continue
		}
		if len(items) == c.ConnsPerMessage() {
			if err := flush(i); err != nil {
				return err
			}
		}
		b, err := encodeConnIn(&st, len(items))
		if err == nil && size+len(b) > maxMessage && len(items) > 0 {
			if err = flush(i); err == nil {
				b, err = encodeConnIn(&st, 0)
			}
		}
		if err != nil {
			return err
		}
		items, fds, size = append(items, b), append(fds, oc.FD), size+len(b)
	}
	return flush(len(conns))
}

// OutChannel is one channel for SendChannels: its state and its history,
// whole frames concatenated.
type OutChannel struct {
	State   ChannelState
	History []byte
}

// SendChannels sends chans: to a new process that reads ChannelBatch,
// as many to a message as fit with their history inline; a channel whose
// history does not fit one message, and every channel for a new process
// that reads one per message, as a ChannelState and its history's chunks.
func (c *Child) SendChannels(chans []OutChannel, deadline time.Time) error {
	var (
		items []cbor.RawMessage
		size  = batchOverhead
	)
	flush := func() error {
		if len(items) == 0 {
			return nil
		}
		if err := c.sendState(&channelBatchOut{Chans: items}, nil, deadline); err != nil {
			return err
		}
		items, size = items[:0], batchOverhead
		return nil
	}
	alone := func(oc *OutChannel) error {
		st := oc.State
		st.History, st.HistoryChunks = nil, Chunks(len(oc.History))
		if err := c.SendState(&st, deadline); err != nil {
			return err
		}
		_, err := c.SendStream(Chunk{Chan: st.Name}, 0, oc.History, FillHistory, deadline)
		return err
	}
	for i := range chans {
		oc := &chans[i]
		if !c.chanBat || len(oc.History) > maxMessage {
			if err := alone(oc); err != nil {
				return err
			}
			continue
		}
		frames, err := SplitFrames(oc.History)
		if err != nil {
			return err
		}
		st := oc.State
		st.History, st.HistoryChunks = frames, 0
		b, err := EncodeState(&st)
		if err != nil {
			return err
		}
		if batchOverhead+len(b) > maxMessage {
			if err := alone(oc); err != nil {
				return err
			}
			continue
		}
		if size+len(b) > maxMessage || len(items) == maxListItems {
			if err := flush(); err != nil {
				return err
			}
		}
		items, size = append(items, b), size+len(b)
	}
	return flush()
}

// encodeConnIn encodes st as the state of a ConnBatch whose descriptor fd
// is its socket.
func encodeConnIn(st *ConnState, fd int) ([]byte, error) {
	st.FD = fd
	return EncodeState(st)
}

// sendBytesOf sends oc's owed bytes, then its partial ones, as Chunks.
func (c *Child) sendBytesOf(oc *OutConn, deadline time.Time) error {
	seq, err := c.SendStream(Chunk{Conn: oc.State.ID}, 0, oc.Owed, FillOwed, deadline)
	if err == nil {
		_, err = c.SendStream(Chunk{Conn: oc.State.ID}, seq, oc.Partial, FillPartial, deadline)
	}
	return err
}

// Fillers for SendStream: which field of a Chunk the bytes go in.
var (
	FillOwed    = func(c *Chunk, b []byte) { c.Owed = b }
	FillPartial = func(c *Chunk, b []byte) { c.Partial = b }
	FillHistory = func(c *Chunk, b []byte) { c.History = b }
)

// Chunks says how many Chunk messages SendStream sends for n bytes.
func Chunks(n int) uint32 { return uint32((n + chunkBytes - 1) / chunkBytes) }

// AwaitImported waits for the new process's second Reply: it imported
// the state (Imported connections), or refused it.
func (c *Child) AwaitImported(deadline time.Time) (Reply, error) {
	type received struct {
		b   []byte
		err error
	}
	got := make(chan received, 1)
	go func() {
		b, fs, err := c.sock.recv(deadline)
		closeFiles(fs)
		got <- received{append([]byte(nil), b...), err}
	}()
	var r received
	select {
	case r = <-got:
	case <-c.exited:
		return Reply{}, c.failure(nil)
	}
	if errors.Is(r.err, io.EOF) {
		return Reply{}, c.failure(nil)
	}
	if r.err != nil {
		return Reply{}, c.failure(fmt.Errorf("waiting for the new process to import: %w", r.err))
	}
	reply, err := DecodeReply(r.b)
	if err != nil {
		return Reply{}, fmt.Errorf("the new process (pid %d) sent a reply this build cannot read: %w", c.PID, err)
	}
	if !reply.Ready {
		return reply, fmt.Errorf("the new process (pid %d) could not import the state: %s", c.PID, reply.Error)
	}
	return reply, nil
}

// ConnIn is one connection handed over: its state, its socket, and the
// bytes its chunks carried.
type ConnIn struct {
	State   ConnState
	File    *os.File
	Owed    []byte // State.Owed and its chunks
	Partial []byte // State.Partial and the late chunks
}

// ChannelIn is one channel handed over.
type ChannelIn struct {
	State   ChannelState
	History [][]byte // State.History, then the frames its chunks carried
	raw     []byte   // Chunk.History bytes until the channel is whole
}

// Transfer is the state a new process received.
type Transfer struct {
	Channels []*ChannelIn
	Conns    []*ConnIn
	Totals   map[string]uint64
	// More: this is one round of the handover and another follows
	// (Handover.NextRound) once this one is committed.
	More bool

	messages int // state messages received (ReadyForState), for the log and tests

	byConn map[uint64]*ConnIn
	byChan map[string]*ChannelIn
	seq    map[any]uint32 // next Chunk.Seq per owner
}

// Close closes the sockets nobody took.
func (t *Transfer) Close() {
	if t == nil {
		return
	}
	for _, c := range t.Conns {
		if c.File != nil {
			_ = c.File.Close()
			c.File = nil
		}
	}
}

// OffersState reports whether the old process offered its state and this
// build reads it.
func (h *Handover) OffersState() bool { return h != nil && h.Offer.States == StateFormat }

// ReadyForState reports ready, as Ready does, saying this process reads
// the state, and receives it: channels, connections with their sockets,
// up to the Totals that end it (or its first round: Transfer.More).
// Answer with Imported (or RefuseState).
func (h *Handover) ReadyForState(timeout time.Duration) (*Transfer, error) {
	h.Close()
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	deadline := time.Now().Add(timeout)
	err := h.sock.send(Reply{Kind: kindReply, Format: FormatVersion, Version: h.version, PID: os.Getpid(), Ready: true,
		States: StateFormat, ConnsPerMessage: maxFilesPerMessage, ChannelBatches: true, Rounds: true}, nil, deadline)
	if err != nil {
		return nil, fmt.Errorf("reporting ready: %w", err)
	}
	return h.receiveState(deadline)
}

// NextRound receives the next round of the state, after Imported returned
// for a Transfer with More set. Answer with Imported (or RefuseState).
func (h *Handover) NextRound(timeout time.Duration) (*Transfer, error) {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return h.receiveState(time.Now().Add(timeout))
}

// receiveState reads state messages up to the Totals that end a round.
func (h *Handover) receiveState(deadline time.Time) (*Transfer, error) {
	t := &Transfer{byConn: map[uint64]*ConnIn{}, byChan: map[string]*ChannelIn{}, seq: map[any]uint32{}}
	for {
		b, files, err := h.sock.recv(deadline)
		if err != nil {
			t.Close()
			return nil, fmt.Errorf("receiving the state: %w", err)
		}
		t.messages++
		done, err := t.add(b, files)
		if err != nil {
			closeFiles(files)
			t.Close()
			return nil, err
		}
		if done {
			if err := t.finish(); err != nil {
				t.Close()
				return nil, err
			}
			return t, nil
		}
	}
}

// add takes one state message; done after the Totals.
func (t *Transfer) add(b []byte, files []*os.File) (done bool, err error) {
	var p probe
	if err := stateDecMode.Unmarshal(b, &p); err != nil {
		return false, fmt.Errorf("state message: %w", err)
	}
	if p.Kind != kindConn && p.Kind != kindConns && len(files) > 0 {
		return false, errors.New("state message with descriptors that names none")
	}
	switch p.Kind {
	case kindConns:
		cb, err := DecodeConnBatch(b, len(files))
		if err != nil {
			return false, err
		}
		for i := range cb.Conns {
			// All checked before any is taken: on an error the caller
			// closes files, none of which a ConnIn holds yet.
			id := cb.Conns[i].ID
			if t.byConn[id] != nil || slices.ContainsFunc(cb.Conns[:i], func(o ConnState) bool { return o.ID == id }) {
				return false, fmt.Errorf("connection %d handed over twice", id)
			}
		}
		for i := range cb.Conns {
			cs := cb.Conns[i]
			c := &ConnIn{State: cs, File: files[cs.FD], Owed: cs.Owed, Partial: cs.Partial}
			t.byConn[cs.ID] = c
			t.Conns = append(t.Conns, c)
		}
	case kindConn:
		cs, err := DecodeConnState(b)
		if err != nil {
			return false, err
		}
		if cs.FD != 0 || len(files) != 1 {
			return false, fmt.Errorf("connection %d: %d descriptors attached, index %d", cs.ID, len(files), cs.FD)
		}
		if t.byConn[cs.ID] != nil {
			return false, fmt.Errorf("connection %d handed over twice", cs.ID)
		}
		c := &ConnIn{State: cs, File: files[0], Owed: cs.Owed, Partial: cs.Partial}
		t.byConn[cs.ID] = c
		t.Conns = append(t.Conns, c)
	case kindChans:
		cb, err := DecodeChannelBatch(b)
		if err != nil {
			return false, err
		}
		for _, cs := range cb.Chans {
			if t.byChan[cs.Name] != nil {
				return false, fmt.Errorf("channel %q handed over twice", cs.Name)
			}
		}
		for _, cs := range cb.Chans {
			c := &ChannelIn{State: cs, History: cs.History}
			t.byChan[cs.Name] = c
			t.Channels = append(t.Channels, c)
		}
	case kindChannel:
		cs, err := DecodeChannelState(b)
		if err != nil {
			return false, err
		}
		if t.byChan[cs.Name] != nil {
			return false, fmt.Errorf("channel %q handed over twice", cs.Name)
		}
		c := &ChannelIn{State: cs, History: cs.History}
		t.byChan[cs.Name] = c
		t.Channels = append(t.Channels, c)
	case kindChunk:
		ch, err := DecodeChunk(b)
		if err != nil {
			return false, err
		}
		if err := t.chunk(ch, false); err != nil {
			return false, err
		}
	case kindTotals:
		tot, err := DecodeTotals(b)
		if err != nil {
			return false, err
		}
		t.Totals, t.More = tot.Counters, tot.More
		return true, nil
	default:
		if err := decodeState(b, kindConn, &ConnState{}); err != nil && errors.Is(err, ErrFormat) {
			return false, err // the format's error first, if that is what is wrong
		}
		return false, fmt.Errorf("state message of unknown kind %d", p.Kind)
	}
	return false, nil
}

// chunk adds one Chunk to its owner; late: after the import (Partial only).
func (t *Transfer) chunk(ch Chunk, late bool) error {
	var key any = ch.Conn
	if ch.Chan != "" {
		key = ch.Chan
	}
	if late {
		key = [2]any{"late", key}
	}
	if ch.Seq != t.seq[key] {
		return fmt.Errorf("chunk %d of %v where %d was due", ch.Seq, key, t.seq[key])
	}
	t.seq[key]++
	if ch.Conn != 0 {
		c := t.byConn[ch.Conn]
		if c == nil {
			return fmt.Errorf("chunk of connection %d, which was not handed over", ch.Conn)
		}
		if late && len(ch.Owed) > 0 {
			return errors.New("owed bytes after the import")
		}
		c.Owed = append(c.Owed, ch.Owed...)
		c.Partial = append(c.Partial, ch.Partial...)
		if len(c.Partial) > maxFrameBytes*2 || len(c.Owed) > maxOwed {
			return fmt.Errorf("connection %d: more bytes than any connection holds", ch.Conn)
		}
		return nil
	}
	if late {
		return errors.New("channel chunk after the import")
	}
	c := t.byChan[ch.Chan]
	if c == nil {
		return fmt.Errorf("chunk of channel %q, which was not handed over", ch.Chan)
	}
	c.History = append(c.History, ch.Frames...)
	c.raw = append(c.raw, ch.History...)
	if len(c.raw) > maxOwed {
		return fmt.Errorf("channel %q: history larger than any channel holds", ch.Chan)
	}
	return nil
}

// maxOwed bounds the bytes one connection's or channel's chunks add up
// to: far above what the engine's own bounds (--max-pending, history
// bytes) let either hold, only so a corrupt stream cannot grow without end.
const maxOwed = 1 << 30

// finish checks that every chunk announced arrived and splits the
// channels' history streams into frames.
func (t *Transfer) finish() error {
	for _, c := range t.Conns {
		if got := t.seq[c.State.ID]; got != c.State.OwedChunks {
			return fmt.Errorf("connection %d: %d chunks of %d", c.State.ID, got, c.State.OwedChunks)
		}
	}
	for _, c := range t.Channels {
		if got := t.seq[c.State.Name]; got != c.State.HistoryChunks {
			return fmt.Errorf("channel %q: %d chunks of %d", c.State.Name, got, c.State.HistoryChunks)
		}
		frames, err := SplitFrames(c.raw)
		if err != nil {
			return fmt.Errorf("channel %q: %w", c.State.Name, err)
		}
		c.History, c.raw = append(c.History, frames...), nil
	}
	return nil
}

// SplitFrames cuts concatenated Mles frames at their headers' lengths.
func SplitFrames(b []byte) ([][]byte, error) {
	var frames [][]byte
	for len(b) > 0 {
		h, err := codec.ParseHeader(b)
		if err != nil {
			return nil, fmt.Errorf("history frame: %w", err)
		}
		n := codec.HeaderLen + h.Len
		if n > len(b) {
			return nil, errors.New("history ends inside a frame")
		}
		frames = append(frames, b[:n:n])
		b = b[n:]
	}
	return frames, nil
}

// RefuseState tells the old process that this one cannot take the state
// it received; the old process thaws and serves on (and ends this one).
func (h *Handover) RefuseState(reason error) {
	_ = h.sock.send(Reply{Kind: kindReply, Format: FormatVersion, Version: h.version, PID: os.Getpid(),
		Error: reason.Error()}, nil, time.Now().Add(time.Second))
	h.sock.close()
}

// Imported tells the old process that this one took the state and waits
// up to timeout for the inbound bytes read after it (added to t) and the
// Commit. ErrNoCommit: the socket closed first; the sockets are this
// process's regardless (an old process that gives up kills this one).
// After a round (t.More) the handover socket stays open for NextRound.
func (h *Handover) Imported(t *Transfer, timeout time.Duration) (err error) {
	defer func() {
		if !t.More || err != nil {
			h.sock.close()
		}
	}()
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	deadline := time.Now().Add(timeout)
	err = h.sock.send(Reply{Kind: kindReply, Format: FormatVersion, Version: h.version, PID: os.Getpid(), Ready: true,
		States: StateFormat, Imported: uint32(len(t.Conns))}, nil, deadline)
	if err != nil {
		return fmt.Errorf("reporting the import: %w", err)
	}
	for {
		b, files, err := h.sock.recv(deadline)
		closeFiles(files)
		if errors.Is(err, io.EOF) {
			return ErrNoCommit
		}
		if err != nil {
			return fmt.Errorf("waiting for the old process to let go: %w", err)
		}
		var p probe
		if err := decMode.Unmarshal(b, &p); err != nil {
			return fmt.Errorf("handover message: %w", err)
		}
		if p.Kind == kindCommit {
			_, err = DecodeCommit(b)
			return err
		}
		ch, err := DecodeChunk(b)
		if err != nil {
			return err
		}
		if err := t.chunk(ch, true); err != nil {
			return err
		}
	}
}
