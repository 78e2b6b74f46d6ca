package upgrade

// The schema of phase 2 (doc.go): the state of live connections and
// channels that a later format will hand over. Nothing sends these yet;
// they are defined, versioned and fuzzed now so that the engine's export
// and import can be written against a fixed wire form.

import (
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"
)

// StateFormat is the version of the state schema below. It travels in
// every state message (key 1) as FormatVersion does in the others; a
// reader refuses any other.
const StateFormat = 1

// Kinds of state message (after kindCommit).
const (
	kindConn    = 4 // ConnState
	kindChannel = 5 // ChannelState
	kindChunk   = 6 // Chunk: more bytes of a ConnState or ChannelState
	kindTotals  = 7 // Totals
	kindConns   = 8 // ConnBatch: several ConnStates, for a new process that reads them (Reply.ConnsPerMessage)
	kindChans   = 9 // ChannelBatch: several ChannelStates (Reply.ChannelBatches)
)

// Bounds a state decoder enforces beyond the message size.
const (
	// maxName bounds uid, channel and peer names (the engine's own limits
	// are lower; this only keeps a corrupt message from growing them).
	maxName = 64 << 10
	// maxFrameBytes is one whole Mles frame: header and largest payload.
	maxFrameBytes = 16 + 0xFFFFFF
	// maxStateItems bounds history frames, members and CIDs per message;
	// a channel with more continues in Chunk messages.
	maxStateItems = 1 << 16
)

// MaxSeen is the most fingerprints an UplinkState carries in Seen (the
// newest) and in Replay: 2,048 each take about 18 KB of the 64 KiB message
// the connection's state must fit in, and cover the replay of a peer whose
// history is up to 2,048 frames (the default is 100).
const MaxSeen = 2048

// Phases of a connection.
const (
	PhaseAwaitingJoin = 0 // accepted; its join frame has not been read whole
	PhaseJoined       = 1 // joined (UID, Channel, CID are set)
)

// ConnState is one live plain-TCP connection (or uplink). Its socket rides
// as descriptor FD of the message's SCM_RIGHTS; everything the engine
// keeps about it that a client could notice is here.
type ConnState struct {
	Kind   uint8  `cbor:"0,keyasint"`
	Format uint16 `cbor:"1,keyasint"`
	ID     uint64 `cbor:"2,keyasint"` // 1 or more, unique in this handover; ChannelState.Members names it
	FD     int    `cbor:"3,keyasint"` // index among the descriptors attached to this message

	// Addresses as the engine saw them (netip.AddrPort text): the
	// per-IP limit and address keys are computed from the client's.
	Remote string `cbor:"4,keyasint"`
	Local  string `cbor:"5,keyasint"`

	Phase     uint8  `cbor:"6,keyasint"`
	UID       string `cbor:"7,keyasint,omitempty"`
	Channel   string `cbor:"8,keyasint,omitempty"`
	CID       uint32 `cbor:"9,keyasint,omitempty"`
	JoinFrame []byte `cbor:"10,keyasint,omitempty"` // the frame it joined with (peering's first local join)

	// Inbound: the bytes of an incomplete frame already read (for a
	// connection awaiting its join, of the join frame), and how long ago
	// that frame began and how many bytes arrived in the current rate
	// window (--frame-timeout, --frame-min-rate).
	Partial       []byte `cbor:"11,keyasint,omitempty"`
	PartialAgeNs  int64  `cbor:"12,keyasint,omitempty"`
	WindowBytes   uint64 `cbor:"13,keyasint,omitempty"`
	WindowStartNs int64  `cbor:"14,keyasint,omitempty"`

	// Outbound: the exact bytes still owed, in order: the rest of the
	// frame being written (OwedWhole bytes), then whole frames. Frames are
	// self-delimiting, so the new process recovers their boundaries (it
	// drops whole frames only, past OwedWhole). More bytes follow in
	// OwedChunks Chunk messages (its owed bytes, then its partial ones:
	// the count covers both) when they do not fit one message.
	Owed       []byte `cbor:"15,keyasint,omitempty"`
	OwedWhole  uint32 `cbor:"16,keyasint,omitempty"`
	OwedChunks uint32 `cbor:"17,keyasint,omitempty"`

	// Timers and accounting, as ages (the processes' clocks differ).
	IdleNs  int64  `cbor:"18,keyasint,omitempty"` // since it last sent anything
	StallNs int64  `cbor:"19,keyasint,omitempty"` // since it started dropping (0: not)
	Dropped uint64 `cbor:"20,keyasint,omitempty"` // frames dropped for it

	Uplink *UplinkState `cbor:"21,keyasint,omitempty"`
	// PeerLink: joined with a CID that is not its key's (another server's
	// uplink with a static group CID); its uid is not a local sender.
	PeerLink bool `cbor:"22,keyasint,omitempty"`
	// DupKey is what the duplicate-CID rule compares for it when that is
	// not its CID (an uplink's: its CID with bit 32 set); 0: its CID.
	DupKey uint64 `cbor:"23,keyasint,omitempty"`
}

// ConnBatch is several ConnStates in one message, their sockets attached
// to it in any order (each ConnState.FD says which is its own). Why: one
// message and one descriptor passing per connection made sending the
// state of 10,000 connections take 420 ms of the upgrade's pause, most of
// it the two processes waking each other for every message.
type ConnBatch struct {
	Kind   uint8       `cbor:"0,keyasint"`
	Format uint16      `cbor:"1,keyasint"`
	Conns  []ConnState `cbor:"2,keyasint"`
}

// connBatchOut is how a ConnBatch is written: states encoded once, when
// the sender measured them against the message size.
type connBatchOut struct {
	Kind   uint8             `cbor:"0,keyasint"`
	Format uint16            `cbor:"1,keyasint"`
	Conns  []cbor.RawMessage `cbor:"2,keyasint"`
}

// ChannelBatch is several ChannelStates in one message, each with its
// whole history inline (History; HistoryChunks is 0). Why: a message and
// a chunk per channel, each a wake-up of both processes, were most of the
// 160-240 ms that sending the state of 1,000 channels and 10,000
// connections took. A channel whose history does not fit a message goes
// alone, as a ChannelState and its chunks.
type ChannelBatch struct {
	Kind   uint8          `cbor:"0,keyasint"`
	Format uint16         `cbor:"1,keyasint"`
	Chans  []ChannelState `cbor:"2,keyasint"`
}

// channelBatchOut is how a ChannelBatch is written (see connBatchOut).
type channelBatchOut struct {
	Kind   uint8             `cbor:"0,keyasint"`
	Format uint16            `cbor:"1,keyasint"`
	Chans  []cbor.RawMessage `cbor:"2,keyasint"`
}

// UplinkState marks a connection as this server's uplink to a peer: it
// moves as the connection it is, so the peer sees no reconnect.
type UplinkState struct {
	Peer     string `cbor:"0,keyasint"` // the --peer it serves
	Resynced bool   `cbor:"1,keyasint"` // its resync (if any) has been sent
	Attempt  uint32 `cbor:"2,keyasint"` // reconnect backoff step
	// The frames that crossed it lately (router.SeenLog: its key and
	// fingerprints, oldest first), which tell the peer's replay apart when
	// the link reconnects after the upgrade. Absent from an older build: the
	// new process then starts the log empty.
	SeenKey [2]uint64 `cbor:"3,keyasint,omitempty"`
	Seen    []uint64  `cbor:"4,keyasint,omitempty"`
	// Within the replay window after a reconnect (the peer's replay may
	// still be coming down): how many frames the window has left, and the
	// fingerprints (in the log's key, one per frame each absorbs) it still
	// expects. 0 and none once the window has passed.
	ReplayLeft uint32   `cbor:"5,keyasint,omitempty"`
	Replay     []uint64 `cbor:"6,keyasint,omitempty"`
}

// ChannelState is one channel: its history, who is on it, and the CIDs
// the duplicate rule knows.
type ChannelState struct {
	Kind   uint8  `cbor:"0,keyasint"`
	Format uint16 `cbor:"1,keyasint"`
	Name   string `cbor:"2,keyasint"`
	// History frames, oldest first, byte for byte; more in HistoryChunks
	// Chunk messages.
	History       [][]byte `cbor:"3,keyasint,omitempty"`
	HistoryChunks uint32   `cbor:"4,keyasint,omitempty"`
	Members       []uint64 `cbor:"5,keyasint,omitempty"` // ConnState IDs, in join order
	CIDs          []uint32 `cbor:"6,keyasint,omitempty"` // the duplicate-CID state
	FirstJoin     []byte   `cbor:"7,keyasint,omitempty"` // first local join frame (peering)
}

// Chunk continues the bytes of a ConnState (Owed, Partial) or the frames
// of a ChannelState (Frames, History) that did not fit its message.
type Chunk struct {
	Kind   uint8    `cbor:"0,keyasint"`
	Format uint16   `cbor:"1,keyasint"`
	Conn   uint64   `cbor:"2,keyasint,omitempty"` // ConnState.ID, for Owed bytes
	Chan   string   `cbor:"3,keyasint,omitempty"` // ChannelState.Name, for History frames
	Seq    uint32   `cbor:"4,keyasint"`           // 0, 1, … per owner
	Owed   []byte   `cbor:"5,keyasint,omitempty"`
	Frames [][]byte `cbor:"6,keyasint,omitempty"`
	// Partial: inbound bytes of a connection read by the old process
	// after its ConnState was written (it stops parsing at the freeze but
	// its event loop may still take bytes off the socket until it lets
	// go), continuing ConnState.Partial; sent after the new process's
	// import, before Commit.
	Partial []byte `cbor:"7,keyasint,omitempty"`
	// History: a channel's history frames concatenated (frames are
	// self-delimiting), continuing ChannelState.History, so that a frame
	// larger than one message still travels.
	History []byte `cbor:"8,keyasint,omitempty"`
}

// Totals carries the counters behind mlesd_*_total (metric name with its
// labels, as exposed, to value), so rates do not jump across an upgrade.
type Totals struct {
	Kind     uint8             `cbor:"0,keyasint"`
	Format   uint16            `cbor:"1,keyasint"`
	Counters map[string]uint64 `cbor:"2,keyasint"`
	// More: this Totals ends a round, not the handover (Reply.Rounds); its
	// Counters are empty, the last round's carry them all.
	More bool `cbor:"3,keyasint,omitempty"`
}

var stateDecMode cbor.DecMode

func init() {
	var err error
	stateDecMode, err = cbor.DecOptions{
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
		IndefLength:      cbor.IndefLengthForbidden,
		TagsMd:           cbor.TagsForbidden,
		MaxNestedLevels:  maxNesting,
		MaxArrayElements: maxStateItems,
		MaxMapPairs:      maxStateItems,
	}.DecMode()
	if err != nil {
		panic(err)
	}
}

// decodeState reads one state message of kind into v.
func decodeState(b []byte, kind uint8, v any) error {
	if len(b) > maxFrameBytes+maxMessage {
		return errors.New("state message too large")
	}
	var p probe
	if err := stateDecMode.Unmarshal(b, &p); err != nil {
		return fmt.Errorf("state message: %w", err)
	}
	if p.Format != StateFormat {
		return fmt.Errorf("%w: state format %d (this build reads %d)", ErrFormat, p.Format, StateFormat)
	}
	if p.Kind != kind {
		return fmt.Errorf("state message of kind %d where kind %d was due", p.Kind, kind)
	}
	if err := stateDecMode.Unmarshal(b, v); err != nil {
		return fmt.Errorf("state message: %w", err)
	}
	return nil
}

// EncodeState encodes a ConnState, ChannelState, Chunk or Totals, setting
// its kind and format.
func EncodeState(v any) ([]byte, error) {
	switch s := v.(type) {
	case *ConnState:
		s.Kind, s.Format = kindConn, StateFormat
	case *ChannelState:
		s.Kind, s.Format = kindChannel, StateFormat
	case *Chunk:
		s.Kind, s.Format = kindChunk, StateFormat
	case *Totals:
		s.Kind, s.Format = kindTotals, StateFormat
	case *connBatchOut:
		s.Kind, s.Format = kindConns, StateFormat
	case *channelBatchOut:
		s.Kind, s.Format = kindChans, StateFormat
	default:
		return nil, fmt.Errorf("not a state message: %T", v)
	}
	return encMode.Marshal(v)
}

// DecodeConnState decodes a ConnState and checks it is consistent.
func DecodeConnState(b []byte) (ConnState, error) {
	var c ConnState
	if err := decodeState(b, kindConn, &c); err != nil {
		return ConnState{}, err
	}
	if err := checkConnState(&c); err != nil {
		return ConnState{}, err
	}
	return c, nil
}

// DecodeConnBatch decodes a ConnBatch of files descriptors and checks
// each of its states, and that each descriptor is named exactly once.
func DecodeConnBatch(b []byte, files int) (ConnBatch, error) {
	var cb ConnBatch
	if err := decodeState(b, kindConns, &cb); err != nil {
		return ConnBatch{}, err
	}
	if len(cb.Conns) == 0 || len(cb.Conns) > maxFilesPerMessage || len(cb.Conns) != files {
		return ConnBatch{}, fmt.Errorf("a batch of %d connections with %d descriptors attached", len(cb.Conns), files)
	}
	var named [maxFilesPerMessage]bool
	for i := range cb.Conns {
		c := &cb.Conns[i]
		if err := checkConnState(c); err != nil {
			return ConnBatch{}, err
		}
		if c.FD >= files || named[c.FD] {
			return ConnBatch{}, fmt.Errorf("connection %d: descriptor index %d named twice or not attached", c.ID, c.FD)
		}
		named[c.FD] = true
	}
	return cb, nil
}

// checkConnState checks that a decoded ConnState is consistent.
func checkConnState(c *ConnState) error {
	switch {
	case c.ID == 0:
		return errors.New("connection without an id")
	case c.FD < 0 || c.FD >= maxFilesPerMessage:
		return fmt.Errorf("connection %d: descriptor index %d", c.ID, c.FD)
	case c.Phase != PhaseAwaitingJoin && c.Phase != PhaseJoined:
		return fmt.Errorf("connection %d: unknown phase %d", c.ID, c.Phase)
	case c.Phase == PhaseJoined && c.Channel == "":
		return fmt.Errorf("connection %d: joined without a channel", c.ID)
	case c.Phase == PhaseAwaitingJoin && (c.UID != "" || c.Channel != "" || c.Uplink != nil):
		return fmt.Errorf("connection %d: not joined but names a channel", c.ID)
	case len(c.UID) > maxName || len(c.Channel) > maxName || len(c.Remote) > maxName || len(c.Local) > maxName:
		return fmt.Errorf("connection %d: name too long", c.ID)
	case len(c.Partial) >= maxFrameBytes || len(c.JoinFrame) > maxFrameBytes:
		return fmt.Errorf("connection %d: partial frame of %d bytes", c.ID, len(c.Partial))
	case int(c.OwedWhole) > len(c.Owed):
		return fmt.Errorf("connection %d: frame in progress beyond the owed bytes", c.ID)
	case c.PartialAgeNs < 0 || c.IdleNs < 0 || c.StallNs < 0 || c.WindowStartNs < 0:
		return fmt.Errorf("connection %d: negative age", c.ID)
	case c.Uplink != nil && (c.Uplink.Peer == "" || len(c.Uplink.Peer) > maxName):
		return fmt.Errorf("connection %d: uplink without a peer", c.ID)
	case c.Uplink != nil && (len(c.Uplink.Seen) > MaxSeen || len(c.Uplink.Replay) > MaxSeen):
		return fmt.Errorf("connection %d: an uplink's log of %d frames or replay of %d, more than %d", c.ID,
			len(c.Uplink.Seen), len(c.Uplink.Replay), MaxSeen)
	}
	return nil
}

// DecodeChannelState decodes a ChannelState and checks it is consistent.
func DecodeChannelState(b []byte) (ChannelState, error) {
	var c ChannelState
	if err := decodeState(b, kindChannel, &c); err != nil {
		return ChannelState{}, err
	}
	if err := checkChannelState(&c); err != nil {
		return ChannelState{}, err
	}
	return c, nil
}

// DecodeChannelBatch decodes a ChannelBatch and checks each channel, and
// that none is named twice or has history chunks to follow.
func DecodeChannelBatch(b []byte) (ChannelBatch, error) {
	var cb ChannelBatch
	if err := decodeState(b, kindChans, &cb); err != nil {
		return ChannelBatch{}, err
	}
	if len(cb.Chans) == 0 {
		return ChannelBatch{}, errors.New("an empty batch of channels")
	}
	names := make(map[string]bool, len(cb.Chans))
	for i := range cb.Chans {
		c := &cb.Chans[i]
		if err := checkChannelState(c); err != nil {
			return ChannelBatch{}, err
		}
		if c.HistoryChunks != 0 {
			return ChannelBatch{}, fmt.Errorf("channel %q: history chunks after a batch", c.Name)
		}
		if names[c.Name] {
			return ChannelBatch{}, fmt.Errorf("channel %q twice in a batch", c.Name)
		}
		names[c.Name] = true
	}
	return cb, nil
}

// checkChannelState checks that a decoded ChannelState is consistent.
func checkChannelState(c *ChannelState) error {
	if c.Name == "" || len(c.Name) > maxName {
		return errors.New("channel without a name")
	}
	for _, f := range c.History {
		if len(f) < 16 || len(f) > maxFrameBytes {
			return fmt.Errorf("channel %q: history frame of %d bytes", c.Name, len(f))
		}
	}
	if len(c.FirstJoin) > maxFrameBytes {
		return fmt.Errorf("channel %q: join frame too large", c.Name)
	}
	return nil
}

// DecodeChunk decodes a Chunk.
func DecodeChunk(b []byte) (Chunk, error) {
	var c Chunk
	if err := decodeState(b, kindChunk, &c); err != nil {
		return Chunk{}, err
	}
	switch {
	case (c.Conn == 0) == (c.Chan == ""):
		return Chunk{}, errors.New("chunk names no owner, or two")
	case c.Conn != 0 && (len(c.Frames) > 0 || len(c.History) > 0), c.Chan != "" && (len(c.Owed) > 0 || len(c.Partial) > 0):
		return Chunk{}, errors.New("chunk of the wrong kind of bytes for its owner")
	case len(c.Chan) > maxName:
		return Chunk{}, errors.New("chunk of a channel with too long a name")
	}
	return c, nil
}

// DecodeTotals decodes a Totals.
func DecodeTotals(b []byte) (Totals, error) {
	var t Totals
	err := decodeState(b, kindTotals, &t)
	return t, err
}
