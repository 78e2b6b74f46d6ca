package upgrade

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mlesd/mlesd/codec"
)

// SendConns hands 600 connections, each with its own socket, to a new
// process that reads batches and to one that reads a ConnState per
// message: every state arrives once with its own socket (a byte written
// into each socket's other end names its connection), owed and partial
// bytes of any size follow their connection, and batches respect both the
// descriptor and the byte limit of a message.
func TestSendConnsHandsEveryConnectionWithItsOwnSocket(t *testing.T) {
	for _, perMsg := range []int{1, maxFilesPerMessage} {
		t.Run(fmt.Sprintf("%d per message", perMsg), func(t *testing.T) {
			const n = 600
			c, h := statePair(t, perMsg)
			conns := make([]OutConn, n)
			peers := make([]*os.File, n)
			for i := range conns {
				fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				mine, peer := os.NewFile(uintptr(fds[0]), "conn"), os.NewFile(uintptr(fds[1]), "peer")
				t.Cleanup(func() { mine.Close(); peer.Close() })
				peers[i] = peer
				id := uint64(i + 1)
				st := ConnState{ID: id, Remote: "127.0.0.1:5000", Local: "127.0.0.1:8077", Phase: PhaseJoined,
					UID: fmt.Sprintf("dev%d", i), Channel: "telemetry"}
				if i%10 == 7 {
					st.UID = strings.Repeat("u", 3000) // the 25 in 253 connections pass a message's 64 KiB
				}
				oc := OutConn{State: st, FD: fds[0]}
				if i%100 == 3 {
					oc.Owed = bytes.Repeat([]byte{byte(i)}, 2*chunkBytes+5) // three chunks
					oc.Partial = []byte(fmt.Sprintf("partial of %d", id))
				}
				conns[i] = oc
			}
			tr := transferAll(t, c, h, func(deadline time.Time) error { return c.SendConns(conns, deadline) })
			defer tr.Close()
			if len(tr.Conns) != n {
				t.Fatalf("%d connections arrived, want %d", len(tr.Conns), n)
			}
			for i, p := range peers {
				if _, err := fmt.Fprintf(p, "%08d", i+1); err != nil {
					t.Fatal(err)
				}
			}
			for _, in := range tr.Conns {
				i := int(in.State.ID) - 1
				want := conns[i]
				buf := make([]byte, 8)
				if _, err := in.File.Read(buf); err != nil {
					t.Fatalf("connection %d: reading its socket: %v", in.State.ID, err)
				}
				if string(buf) != fmt.Sprintf("%08d", in.State.ID) {
					t.Fatalf("connection %d came with the socket of connection %s", in.State.ID, buf)
				}
				if in.State.UID != want.State.UID || !bytes.Equal(in.Owed, want.Owed) || !bytes.Equal(in.Partial, want.Partial) {
					t.Fatalf("connection %d: uid %d bytes, owed %d, partial %q; want %d, %d, %q", in.State.ID,
						len(in.State.UID), len(in.Owed), in.Partial, len(want.State.UID), len(want.Owed), want.Partial)
				}
			}
			// One message per connection, or batches: at most 253 sockets
			// each, and the long uids force more than n/253 of them.
			chunks := 6 * 4                  // six connections with three owed chunks and one partial
			conn := tr.messages - chunks - 1 // and the Totals
			if perMsg == 1 && conn != n {
				t.Fatalf("%d connection messages, want one per connection (%d)", conn, n)
			}
			if perMsg > 1 && (conn < 4 || conn > 12) {
				t.Fatalf("%d connection messages for %d connections, want batches", conn, n)
			}
			t.Logf("%d connections in %d messages", n, conn)
		})
	}
}

// A batch that names one descriptor twice, or names more or fewer
// connections than it carries descriptors, is refused.
func TestConnBatchThatMisnamesItsDescriptorsIsRefused(t *testing.T) {
	st := func(id uint64, fd int) ConnState {
		return ConnState{Kind: kindConn, Format: StateFormat, ID: id, FD: fd, Phase: PhaseAwaitingJoin}
	}
	for name, tc := range map[string]struct {
		conns []ConnState
		files int
	}{
		"descriptor named twice":  {[]ConnState{st(1, 0), st(2, 0)}, 2},
		"descriptor not attached": {[]ConnState{st(1, 0), st(2, 2)}, 2},
		"fewer descriptors":       {[]ConnState{st(1, 0), st(2, 1)}, 1},
		"empty":                   {nil, 0},
	} {
		b, err := encMode.Marshal(ConnBatch{Kind: kindConns, Format: StateFormat, Conns: tc.conns})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := DecodeConnBatch(b, tc.files); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	b, _ := encMode.Marshal(ConnBatch{Kind: kindConns, Format: StateFormat, Conns: []ConnState{st(1, 1), st(2, 0)}})
	if cb, err := DecodeConnBatch(b, 2); err != nil || len(cb.Conns) != 2 {
		t.Fatalf("a well-formed batch: %v", err)
	}
}

// transferAll has h report ready and receive while c, once it read that
// report, sends with send and then the Totals that end the state; it
// returns what h received.
func transferAll(t *testing.T, c *testChild, h *Handover, send func(deadline time.Time) error) *Transfer {
	t.Helper()
	got := make(chan *Transfer, 1)
	errs := make(chan error, 1)
	go func() {
		tr, err := h.ReadyForState(10 * time.Second)
		errs <- err
		got <- tr
	}()
	c.awaitReady(t)
	deadline := time.Now().Add(10 * time.Second)
	if err := send(deadline); err != nil {
		t.Fatal(err)
	}
	if err := c.SendState(&Totals{Counters: map[string]uint64{"x": 1}}, deadline); err != nil {
		t.Fatal(err)
	}
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	return <-got
}

// statePair is an old process's Child and a new process's Handover joined
// by a handover socket pair, the new one reading perMsg connections per
// message (1: as the first phase-2 builds).
func statePair(t *testing.T, perMsg int) (*testChild, *Handover) {
	mine, theirs, err := socketPair()
	if err != nil {
		t.Fatal(err)
	}
	cs, err := newSocket(mine)
	if err != nil {
		t.Fatal(err)
	}
	hs, err := newSocket(theirs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.close(); hs.close() })
	return &testChild{Child: &Child{sock: cs, exited: make(chan struct{})}, perMsg: perMsg, chanBatches: true},
		&Handover{sock: hs, version: "test"}
}

type testChild struct {
	*Child
	perMsg      int
	chanBatches bool // what awaitReady takes of the reply's ChannelBatches
}

// awaitReady reads the new process's ready reply and takes what it says
// it reads, limited to perMsg.
func (c *testChild) awaitReady(t *testing.T) {
	b, files, err := c.sock.recv(time.Now().Add(10 * time.Second))
	closeFiles(files)
	if err != nil {
		t.Fatal(err)
	}
	r, err := DecodeReply(b)
	if err != nil {
		t.Fatal(err)
	}
	if r.ConnsPerMessage != maxFilesPerMessage {
		t.Fatalf("the new process reads %d connections per message, want %d", r.ConnsPerMessage, maxFilesPerMessage)
	}
	c.Child.perMsg = min(int(r.ConnsPerMessage), c.perMsg)
	c.Child.chanBat = r.ChannelBatches && c.chanBatches
	c.Child.rounds = r.Rounds
}

// SendChannels hands 400 channels to a new process that reads batches and
// to one that reads a ChannelState per message: every channel arrives
// once with its history frame for frame, a history too large for one
// message travels in chunks, and batches fill messages.
func TestSendChannelsHandsEveryChannelWithItsHistory(t *testing.T) {
	frame := func(i, size int) []byte {
		f := make([]byte, codec.HeaderLen+size)
		codec.Header{Len: size, CID: uint32(i)}.Put(f)
		for k := codec.HeaderLen; k < len(f); k++ {
			f[k] = byte(i + k)
		}
		return f
	}
	for _, batches := range []bool{false, true} {
		t.Run(fmt.Sprintf("batches %v", batches), func(t *testing.T) {
			const n = 400
			c, h := statePair(t, maxFilesPerMessage)
			chans := make([]OutChannel, n)
			for i := range chans {
				var hist []byte
				frames := i % 7 // 0 to 6 frames of about 200 bytes
				if i == 123 {
					frames = 40 // 40 frames of 3000: past one message, so chunked
				}
				for k := 0; k < frames; k++ {
					size := 180 + k
					if i == 123 {
						size = 3000
					}
					hist = append(hist, frame(i*10+k, size)...)
				}
				chans[i] = OutChannel{State: ChannelState{Name: fmt.Sprintf("ch-%d", i)}, History: hist}
			}
			c.chanBatches = batches
			tr := transferAll(t, c, h, func(deadline time.Time) error { return c.SendChannels(chans, deadline) })
			if len(tr.Channels) != n {
				t.Fatalf("%d channels arrived, want %d", len(tr.Channels), n)
			}
			for _, in := range tr.Channels {
				var i int
				fmt.Sscanf(in.State.Name, "ch-%d", &i)
				if joined := bytes.Join(in.History, nil); !bytes.Equal(joined, chans[i].History) {
					t.Fatalf("channel %s: history of %d bytes in %d frames, want %d bytes", in.State.Name, len(joined),
						len(in.History), len(chans[i].History))
				}
			}
			msgs := tr.messages - 1 // the Totals
			if !batches && msgs < 2*n-n/7 {
				t.Fatalf("%d messages for %d channels, want a state and its chunks each", msgs, n)
			}
			if batches && msgs > 10 {
				t.Fatalf("%d messages for %d channels, want batches", msgs, n)
			}
			t.Logf("%d channels in %d messages", n, msgs)
		})
	}
}

// A handover in three rounds: each round's channels and connections arrive
// as a Transfer of their own, saying whether another follows; the socket
// stays open across a round's commit; the last round's Totals carry the
// counters and its Commit closes the handover.
func TestStateInRoundsArrivesRoundByRound(t *testing.T) {
	c, h := statePair(t, maxFilesPerMessage)
	type result struct {
		tr  *Transfer
		err error
	}
	got := make(chan result, 1)
	go func() {
		tr, err := h.ReadyForState(10 * time.Second)
		for err == nil {
			got <- result{tr, nil}
			if err = h.Imported(tr, 10*time.Second); err != nil || !tr.More {
				break
			}
			tr, err = h.NextRound(10 * time.Second)
		}
		got <- result{nil, err}
	}()
	c.awaitReady(t)
	if !c.Rounds() {
		t.Fatal("the new process does not say it takes rounds")
	}
	deadline := time.Now().Add(10 * time.Second)
	const rounds = 3
	for i := 1; i <= rounds; i++ {
		last := i == rounds
		var peer *os.File
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		peer = os.NewFile(uintptr(fds[1]), "peer")
		defer peer.Close()
		name := fmt.Sprintf("channel-%d", i)
		hist := codec.AppendTriplet(codec.AppendHeader(nil, codec.Header{Len: codec.TripletLen(codec.Triplet{UID: "u", Channel: name})}),
			codec.Triplet{UID: "u", Channel: name})
		if err := c.SendChannels([]OutChannel{{State: ChannelState{Name: name}, History: hist}}, deadline); err != nil {
			t.Fatal(err)
		}
		conn := OutConn{State: ConnState{ID: uint64(i), Remote: "127.0.0.1:5000", Local: "127.0.0.1:8077", Phase: PhaseJoined,
			UID: "u", Channel: name}, FD: fds[0]}
		if err := c.SendConns([]OutConn{conn}, deadline); err != nil {
			t.Fatal(err)
		}
		unix.Close(fds[0])
		totals := &Totals{More: true}
		if last {
			totals = &Totals{Counters: map[string]uint64{"x": 7}}
		}
		if err := c.SendState(totals, deadline); err != nil {
			t.Fatal(err)
		}
		r := <-got
		if r.err != nil {
			t.Fatalf("round %d: %v", i, r.err)
		}
		tr := r.tr
		if len(tr.Conns) != 1 || tr.Conns[0].State.ID != uint64(i) || len(tr.Channels) != 1 || tr.Channels[0].State.Name != name ||
			len(tr.Channels[0].History) != 1 || tr.More == last {
			t.Fatalf("round %d arrived as %d connections, channels %v, more %v", i, len(tr.Conns), tr.Channels, tr.More)
		}
		if last && tr.Totals["x"] != 7 || !last && len(tr.Totals) != 0 {
			t.Fatalf("round %d: totals %v", i, tr.Totals)
		}
		// Its socket is the one sent this round.
		if _, err := peer.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1)
		if _, err := tr.Conns[0].File.Read(b); err != nil || b[0] != byte(i) {
			t.Fatalf("round %d: its socket read %v, %v", i, b, err)
		}
		tr.Close()
		if _, err := c.AwaitImported(deadline); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		if last {
			if err := c.Commit(time.Second); err != nil {
				t.Fatal(err)
			}
		} else if err := c.CommitRound(deadline); err != nil {
			t.Fatal(err)
		}
	}
	if r := <-got; r.err != nil || r.tr != nil {
		t.Fatalf("after the last round: %v, %v", r.tr, r.err)
	}
}
