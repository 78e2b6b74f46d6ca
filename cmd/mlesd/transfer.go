package main

// Hitless upgrade, phase 2 (upgrade/doc.go): once the new process serves
// and says it reads state, this one hands over its plain-TCP connections
// (sockets and state) and its channels' history, a round of a few
// channels at a time (each frozen only for its own round), then the
// counters, and lets go of each round's sockets once the new process has
// imported them. A failure in the first round thaws this process, which
// serves on as before; in a later one, the rounds before are lost with
// the new process.

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

// defaultUpgradeRound is how many joined connections one round of a
// handover freezes by default (--upgrade-round-conns; whole channels, a
// bigger channel is a round alone). Why rounds: a channel's forwarding
// pauses only while its own round moves, so the pause stays that of about
// this many connections however many the server has. Why 100: the soak of
// issue 13 (10,000 connections on 1,000 channels, 2 vCPU), frames in
// flight during an upgrade: all at once, p99 1.49 s and largest 1.65 s;
// in rounds of 100, p99 26 ms and largest 78 ms, the handover taking
// 2.4-2.9 s (about 25 ms a round). Bigger rounds (300, 1,000) paused
// longer in proportion in an earlier soak (p99 89 ms and 254 ms, against
// 37 ms for 100 in that soak, whose own load inflated every figure).
const defaultUpgradeRound = 100

// transfer hands the live state to child (which reported ready), in
// rounds of a few channels when it takes them (each within
// --upgrade-timeout), and records what moved in a. On error the child
// has been killed and this process thawed.
func (u *upgrader) transfer(child *upgrade.Child, a *attempt) error {
	rounds := []*engine.Round{nil} // one round of everything
	if child.Rounds() {
		rounds = u.srv.PlanRounds(u.o.UpgradeRound)
	}
	began := time.Now()
	for i, r := range rounds {
		last := i == len(rounds)-1
		// --upgrade-timeout bounds each round: a server with many rounds
		// takes longer in all, and each round's steps are what can hang.
		rs, err := u.round(child, r, last, time.Now().Add(u.o.UpgradeTimeout))
		if err != nil {
			// The new process reads nothing of a round before its commit,
			// so killing it leaves this round's sockets to this process
			// alone; those of the rounds before close with it.
			child.Kill()
			u.srv.Thaw()
			if i > 0 {
				return fmt.Errorf("round %d of %d of the handover (%d connections handed over before, which close with the new process): %w",
					i+1, len(rounds), a.moved, err)
			}
			return fmt.Errorf("handing over the connections: %w", err)
		}
		a.moved += rs.moved
		a.channels += rs.channels
		a.frozen = max(a.frozen, rs.frozen)
	}
	a.rounds = len(rounds)
	u.log.Info("connections handed over", slog.Int("connections", a.moved), slog.Int("rounds", len(rounds)),
		slog.Duration("longest_freeze", a.frozen.Round(time.Microsecond)),
		slog.Duration("took", time.Since(began).Round(time.Microsecond)))
	return nil
}

// roundStats is what one round moved, and how long its connections were
// frozen.
type roundStats struct {
	moved, channels int
	frozen          time.Duration
}

// round freezes round r (nil: everything), hands its connections and
// channels to child and lets go of them; the last round's Commit is
// finished's. On error nothing of r has been let go: the caller kills
// child and thaws.
func (u *upgrader) round(child *upgrade.Child, r *engine.Round, last bool, deadline time.Time) (roundStats, error) {
	var rs roundStats
	began := time.Now()
	if err := u.srv.FreezeRound(r, time.Until(deadline)); err != nil {
		return rs, fmt.Errorf("freezing for the handover: %w", err)
	}
	frozen := time.Now()
	ex, err := u.srv.Export(time.Until(deadline))
	exported := time.Now()
	var sent map[uint64]bool
	if err == nil {
		sent, err = sendState(child, ex, !last, deadline)
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
		return rs, err
	}
	// From here the connections are the new process's: no way back.
	late, err := u.srv.ReleaseRound(sent, !last, time.Until(deadline))
	rs.frozen = time.Since(began)
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
	if !last {
		if err := child.CommitRound(deadline); err != nil {
			// Its sockets are the new process's already (it takes a
			// closed socket as a commit), so this cannot be undone: the
			// next round fails and ends the new process.
			u.log.Warn("cannot confirm a round of the handover", slog.String("error", err.Error()))
		}
	}
	rs.moved, rs.channels = len(sent), len(ex.Channels)
	u.log.Debug("round handed over", slog.Int("connections", rs.moved), slog.Int("channels", rs.channels),
		slog.Duration("freeze", frozen.Sub(began).Round(time.Microsecond)),
		slog.Duration("export", exported.Sub(frozen).Round(time.Microsecond)),
		slog.Duration("send", stateSent.Sub(exported).Round(time.Microsecond)),
		slog.Duration("import", imported.Sub(stateSent).Round(time.Microsecond)),
		slog.Duration("release", time.Since(imported).Round(time.Microsecond)))
	return rs, nil
}

// sendState sends the channels, then the connections with their sockets
// (those whose client left since the export are left out), then the
// totals; it returns the IDs of the connections it sent.
func sendState(child *upgrade.Child, ex *engine.Export, more bool, deadline time.Time) (map[uint64]bool, error) {
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
	if more {
		return sent, child.SendState(&upgrade.Totals{More: true}, deadline) // the counters go with the last round
	}
	return sent, child.SendState(&upgrade.Totals{Counters: ex.Totals}, deadline)
}

// takeState runs in the new process when the old one offers its state:
// report ready, receive it (a round at a time, if the old process sends
// rounds), confirm each round, and once the old process has let go of a
// round's sockets (its commit) register them with the engine. Joins wait
// until the last round is in (engine.HoldJoins, set at start-up).
func (u *upgrader) takeState(ho *upgrade.Handover) error {
	defer u.srv.HoldJoins(false)
	began := time.Now()
	// A round is registered while the next one is received: the old
	// process's next round then does not wait for this one's import (it
	// did: the handover socket was not read meanwhile). Rounds register
	// one after another, in order: a round's connections read only once
	// all of its members are in (engine.Import).
	type imported struct{ conns, chans, rounds int }
	var took imported
	rounds := make(chan *upgrade.Transfer, 1)
	registered := make(chan struct{})
	go func() {
		defer close(registered)
		for t := range rounds {
			n, err := u.srv.Import(t, u.o.UpgradeTimeout, u.adoptUplinks)
			if err != nil {
				u.log.Warn("some handed-over connections could not be taken", slog.String("error", err.Error()))
			}
			took.conns, took.chans, took.rounds = took.conns+n, took.chans+len(t.Channels), took.rounds+1
		}
	}()
	finish := func() {
		close(rounds)
		<-registered
	}
	t, err := ho.ReadyForState(u.o.UpgradeTimeout)
	for received := 0; ; received++ {
		if err != nil {
			ho.RefuseState(err)
			finish()
			if received > 0 {
				return fmt.Errorf("receiving round %d of the old process's state (%d connections taken before): %w",
					received+1, took.conns, err)
			}
			return fmt.Errorf("receiving the old process's state: %w", err)
		}
		commitErr := ho.Imported(t, u.o.UpgradeTimeout)
		if commitErr != nil && !errors.Is(commitErr, upgrade.ErrNoCommit) {
			// The old process cannot go on without a commit it never sent
			// (it thaws and kills this one); nothing to import.
			t.Close()
			finish()
			return commitErr
		}
		more := t.More && commitErr == nil
		rounds <- t
		if !more {
			t = nil
			finish()
			u.log.Info(fmt.Sprintf("took over %d connections and %d channels in %d ms", took.conns, took.chans,
				time.Since(began).Milliseconds()), slog.Int("rounds", took.rounds), slog.Int("pid", os.Getpid()))
			// What the handover decoded (every state, history and owed
			// byte) is garbage now, and the Go runtime would keep its
			// pages for minutes: return them, so this process's RSS is
			// what its connections need, as the old one's was (issue
			// 13's soak: 72 MB against 43 MB before). Once per upgrade,
			// after the connections were resumed.
			debug.FreeOSMemory()
			return commitErr
		}
		t, err = ho.NextRound(u.o.UpgradeTimeout)
	}
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
