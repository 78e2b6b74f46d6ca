package main

// Hitless upgrade, phase 2 (upgrade/doc.go): once the new process serves
// and says it reads state, this one freezes, hands over its plain-TCP
// connections (sockets and state) and its channels' history and counters,
// and lets go of the sockets once the new process has imported them. Any
// failure before that thaws this process, which serves on as before.

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mlesd/mlesd/engine"
	"github.com/mlesd/mlesd/peering"
	"github.com/mlesd/mlesd/upgrade"
)

// transfer hands the live state to child (which reported ready) and
// records what moved in a. On error the child has been killed and this
// process thawed.
func (u *upgrader) transfer(child *upgrade.Child, a *attempt) (err error) {
	timeout := u.o.UpgradeTimeout
	deadline := time.Now().Add(timeout)
	began := time.Now()
	if err := u.srv.Freeze(timeout); err != nil {
		child.Kill()
		return fmt.Errorf("freezing for the handover: %w", err)
	}
	frozen := time.Now()
	ex, err := u.srv.Export(time.Until(deadline))
	exported := time.Now()
	var sent map[uint64]bool
	if err == nil {
		sent, err = sendState(child, ex, deadline)
	}
	stateSent := time.Now()
	var reply upgrade.Reply
	if err == nil {
		reply, err = child.AwaitImported(deadline)
	}
	imported := time.Now()
	if err == nil && int(reply.Imported) != len(sent) {
		err = fmt.Errorf("the new process imported %d of %d connections", reply.Imported, len(sent))
	}
	if err != nil {
		// The new process reads nothing before the Commit, so killing it
		// first leaves every socket to this process alone.
		child.Kill()
		u.srv.Thaw()
		return fmt.Errorf("handing over the connections: %w", err)
	}
	// From here the connections are the new process's: no way back.
	late, err := u.srv.Release(sent, time.Until(deadline))
	a.frozen = time.Since(began)
	if err != nil {
		u.log.Warn("letting go of the handed-over connections took too long", slog.String("error", err.Error()))
	}
	for id, b := range late {
		if _, err := child.SendStream(upgrade.Chunk{Conn: id}, 0, b, upgrade.FillPartial, deadline); err != nil {
			u.log.Warn("cannot hand over the bytes read during the handover", slog.Uint64("connection", id),
				slog.String("error", err.Error()))
			break
		}
	}
	a.moved, a.channels = len(sent), len(ex.Channels)
	u.log.Info("connections handed over", slog.Int("connections", a.moved),
		slog.Duration("freeze", frozen.Sub(began).Round(time.Microsecond)),
		slog.Duration("export", exported.Sub(frozen).Round(time.Microsecond)),
		slog.Duration("send", stateSent.Sub(exported).Round(time.Microsecond)),
		slog.Duration("import", imported.Sub(stateSent).Round(time.Microsecond)),
		slog.Duration("release", time.Since(imported).Round(time.Microsecond)))
	return nil
}

// sendState sends the channels, then the connections with their sockets
// (those whose client left since the export are left out), then the
// totals; it returns the IDs of the connections it sent.
func sendState(child *upgrade.Child, ex *engine.Export, deadline time.Time) (map[uint64]bool, error) {
	chans := make([]upgrade.OutChannel, len(ex.Channels))
	for i, ch := range ex.Channels {
		chans[i] = upgrade.OutChannel{State: ch.State, History: ch.History}
	}
	if err := child.SendChannels(chans, deadline); err != nil {
		return nil, err
	}
	sent := make(map[uint64]bool, len(ex.Conns))
	// A group of connections at a time, as many as one message carries:
	// their descriptors are open only until the group is sent (see
	// engine.Moved: one per connection at once could pass the limit).
	group := make([]upgrade.OutConn, 0, child.ConnsPerMessage())
	send := func() error {
		err := child.SendConns(group, deadline)
		for _, oc := range group {
			_ = unix.Close(oc.FD)
			if err == nil {
				sent[oc.State.ID] = true
			}
		}
		group = group[:0]
		return err
	}
	for _, m := range ex.Conns {
		fd, err := m.SocketFD()
		if errors.Is(err, engine.ErrGone) {
			continue // its client left since the export
		} else if err != nil {
			for _, oc := range group {
				_ = unix.Close(oc.FD)
			}
			return nil, err
		}
		group = append(group, upgrade.OutConn{State: m.State, FD: fd, Owed: m.Owed, Partial: m.State.Partial})
		if len(group) == cap(group) {
			if err := send(); err != nil {
				return nil, err
			}
		}
	}
	if err := send(); err != nil {
		return nil, err
	}
	return sent, child.SendState(&upgrade.Totals{Counters: ex.Totals}, deadline)
}

// takeState runs in the new process when the old one offers its state:
// report ready, receive it, confirm, and once the old process has let go
// (the Commit) register the connections with the engine.
func (u *upgrader) takeState(ho *upgrade.Handover) error {
	t, err := ho.ReadyForState(u.o.UpgradeTimeout)
	if err != nil {
		ho.RefuseState(err)
		return fmt.Errorf("receiving the old process's state: %w", err)
	}
	commitErr := ho.Imported(t, u.o.UpgradeTimeout)
	if commitErr != nil && !errors.Is(commitErr, upgrade.ErrNoCommit) {
		// The old process cannot go on without a Commit it never sent
		// (it thaws and kills this one); nothing to import.
		t.Close()
		return commitErr
	}
	began := time.Now()
	n, err := u.srv.Import(t, u.o.UpgradeTimeout, u.adoptUplinks)
	if err != nil {
		u.log.Warn("some handed-over connections could not be taken", slog.String("error", err.Error()))
	}
	u.log.Info(fmt.Sprintf("took over %d connections and %d channels in %d ms", n, len(t.Channels),
		time.Since(began).Milliseconds()), slog.Int("pid", os.Getpid()))
	// What the handover decoded (every state, history and owed byte) is
	// garbage now, and the Go runtime would keep its pages for minutes:
	// return them, so this process's RSS is what its connections need, as
	// the old one's was (issue 13's soak: 72 MB against 43 MB before).
	// Once per upgrade, after the connections were resumed.
	t = nil
	debug.FreeOSMemory()
	return commitErr
}

// adoptUplinks hands the moved uplinks to the peering manager, which
// takes them over instead of dialling (none without --peer: they close).
func (u *upgrader) adoptUplinks(moved []engine.MovedUplink) []engine.Uplink {
	if u.peers == nil {
		return nil
	}
	in := make([]peering.MovedUplink, len(moved))
	for i, m := range moved {
		in[i] = peering.MovedUplink{Channel: m.Channel, Peer: m.Peer, Join: m.Join, Local: m.Local}
	}
	out := make([]engine.Uplink, len(moved))
	for i, up := range u.peers.AdoptMoved(in) {
		if up != nil { // a nil *peering.Uplink must stay a nil interface
			out[i] = up
		}
	}
	return out
}
