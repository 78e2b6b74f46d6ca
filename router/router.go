// Package router owns the channels of one server: who is subscribed to each
// channel, the duplicate-CID rule, and each channel's history.
//
// Invariants a caller relies on:
//   - A channel's subscriber list is an immutable Snapshot behind an atomic
//     pointer: the per-frame path reads it with one atomic load and never locks
//     when history is off. Join and Leave copy it (copy-on-write) under the
//     channel's mutex.
//   - With history on, Append takes the channel's mutex once per batch of frames
//     so that a joiner gets every frame exactly once: either in its history
//     replay or live, never both, never neither.
//   - The router never writes to a subscriber: it only tells the caller who
//     the subscribers are, grouped by the event loop that owns them.
package router

import (
	"errors"
	"hash/maphash"
	"sync"
	"sync/atomic"
)

// Subscriber is a member of a channel: a client connection or an uplink.
type Subscriber interface {
	// DupKey is what the duplicate-CID rule compares: a client's CID from
	// its join frame. An uplink returns its CID with bit 32 set when it must
	// not clash with anyone (its CID is that of the member whose join it
	// replays), or its plain static group CID, which then refuses any
	// joiner with that CID while the uplink is open (see package peering).
	DupKey() uint64
	// Loop is the index of the event loop that owns the subscriber; a
	// Snapshot groups subscribers by it so that a sender hands each loop
	// one batch.
	Loop() int
}

// ErrDuplicateCID is returned by Join when the channel already has a
// subscriber with the joiner's CID (this is what stops peering loops).
var ErrDuplicateCID = errors.New("router: a connection with this CID is already on the channel")

// ErrTooManyChannels is returned by Join when creating the channel would pass
// Config.MaxChannels.
var ErrTooManyChannels = errors.New("router: channel limit reached")

// Snapshot is an immutable view of a channel's subscribers. Never modify one.
type Snapshot struct {
	// Groups holds the subscribers grouped by owning loop, one group per
	// loop that has any, in no particular order.
	Groups []Group
	// Len is the number of subscribers.
	Len int
}

// Group is the subscribers of one channel owned by one event loop.
type Group struct {
	Loop int
	Subs []Subscriber
}

var emptySnapshot = &Snapshot{}

// Defaults for the router's limits (used by cmd/mlesd's flags).
const (
	// DefaultHistoryLimit is the original server's history length.
	DefaultHistoryLimit = 100
	// DefaultMaxChannels bounds channels: a channel that holds history
	// outlives its members, so their number must be bounded.
	DefaultMaxChannels = 100_000
	// DefaultHistoryBytes caps one channel's history (room for a few
	// maximum-size frames).
	DefaultHistoryBytes = 64 << 20
	// DefaultMaxHistoryBytes caps the history of all channels together.
	DefaultMaxHistoryBytes = 1 << 30
)

// Config sets the router's limits.
type Config struct {
	// HistoryLimit is how many frames each channel keeps for new joiners;
	// 0 turns history off. A channel with no members is forgotten at once
	// when it holds no history.
	HistoryLimit int
	// MaxChannels caps the number of channels (0 = no cap).
	MaxChannels int
	// HistoryBytes caps one channel's history in bytes (0 = no cap); older
	// frames are evicted first, and a frame larger than the cap is not kept.
	HistoryBytes int
	// MaxHistoryBytes caps the history of all channels together (0 = no
	// cap). A channel that would pass it evicts its own oldest frames.
	MaxHistoryBytes int64
}

const shardCount = 64

// Router is the channel table, sharded by channel name. Safe for concurrent use.
type Router struct {
	cfg      Config
	budget   budget
	seed     maphash.Seed
	shards   [shardCount]shard
	channels atomic.Int64
}

type shard struct {
	mu sync.Mutex
	m  map[string]*Channel // Lock: mu
}

// New returns an empty router.
func New(cfg Config) *Router {
	if cfg.HistoryLimit < 0 {
		cfg.HistoryLimit = 0
	}
	r := &Router{cfg: cfg, seed: maphash.MakeSeed()}
	r.budget.max = cfg.MaxHistoryBytes
	for i := range r.shards {
		r.shards[i].m = make(map[string]*Channel)
	}
	return r
}

// HistoryBytes returns the bytes held in the history of all channels.
func (r *Router) HistoryBytes() int64 { return r.budget.used.Load() }

// HistoryLimit returns the configured history length.
func (r *Router) HistoryLimit() int { return r.cfg.HistoryLimit }

// Channels returns how many channels exist now.
func (r *Router) Channels() int { return int(r.channels.Load()) }

func (r *Router) shardOf(name string) *shard {
	return &r.shards[maphash.String(r.seed, name)%shardCount]
}

// Channel is one Mles channel: its subscribers and its history.
type Channel struct {
	name   string
	router *Router
	snap   atomic.Pointer[Snapshot]

	mu   sync.Mutex
	hist history // Lock: mu
	dead bool    // Lock: mu; removed from the table, joiners must retry
}

// Name returns the channel's name.
func (c *Channel) Name() string { return c.name }

// Snapshot returns the current subscribers. One atomic load; never blocks.
func (c *Channel) Snapshot() *Snapshot { return c.snap.Load() }

// Join adds sub to the channel called name, creating the channel if needed,
// unless another subscriber there has sub's DupKey (ErrDuplicateCID).
// It returns the channel and its history, oldest first, each frame with a
// reference owned by the caller: deliver them to sub before anything else,
// then Release them. The history is returned appended to hist (pass a reused
// slice to avoid allocating).
func (r *Router) Join(name string, sub Subscriber, hist []*Frame) (*Channel, []*Frame, error) {
	return r.join(name, sub, hist, true)
}

// JoinUplink is Join for an uplink to a peer server: it is never refused for
// its DupKey (the uplink replays a member's join, CID included), but its
// DupKey still refuses later joiners that have it.
func (r *Router) JoinUplink(name string, sub Subscriber, hist []*Frame) (*Channel, []*Frame, error) {
	return r.join(name, sub, hist, false)
}

func (r *Router) join(name string, sub Subscriber, hist []*Frame, checkDup bool) (*Channel, []*Frame, error) {
	for {
		sh := r.shardOf(name)
		sh.mu.Lock()
		ch := sh.m[name]
		if ch == nil {
			if r.cfg.MaxChannels > 0 && r.channels.Load() >= int64(r.cfg.MaxChannels) {
				sh.mu.Unlock()
				return nil, hist, ErrTooManyChannels
			}
			ch = &Channel{name: name, router: r}
			ch.hist = history{ring: make([]*Frame, r.cfg.HistoryLimit), maxBytes: r.cfg.HistoryBytes, budget: &r.budget}
			ch.snap.Store(emptySnapshot)
			sh.m[name] = ch
			r.channels.Add(1)
		}
		sh.mu.Unlock()

		ch.mu.Lock()
		if ch.dead {
			ch.mu.Unlock()
			continue // lost a race with the last Leave; the table has no ch now
		}
		old := ch.snap.Load()
		for _, g := range old.Groups {
			for _, s := range g.Subs {
				if checkDup && s.DupKey() == sub.DupKey() {
					ch.mu.Unlock()
					ch.forgetIfEmpty()
					return nil, hist, ErrDuplicateCID
				}
			}
		}
		ch.snap.Store(old.with(sub))
		hist = ch.hist.appendTo(hist)
		ch.mu.Unlock()
		return ch, hist, nil
	}
}

// Leave removes sub from the channel. A channel left with no subscribers
// and no history is forgotten at once.
func (c *Channel) Leave(sub Subscriber) {
	c.mu.Lock()
	c.snap.Store(c.snap.Load().without(sub))
	c.mu.Unlock()
	c.forgetIfEmpty()
}

// forgetIfEmpty removes the channel from the table when it has no subscribers
// and holds no history (a channel whose members only joined, with empty
// messages, leaves nothing behind).
func (c *Channel) forgetIfEmpty() {
	c.mu.Lock()
	if c.dead || c.snap.Load().Len > 0 || c.hist.n > 0 {
		c.mu.Unlock()
		return
	}
	c.dead = true
	c.mu.Unlock()
	sh := c.router.shardOf(c.name)
	sh.mu.Lock()
	if sh.m[c.name] == c {
		delete(sh.m, c.name)
		c.router.channels.Add(-1)
	}
	sh.mu.Unlock()
}

// Append stores frames in the channel's history (when history is on) and
// returns the snapshot to fan them out to. The frames must not be join frames
// with an empty message. With history off it is one atomic load; with history
// on, one lock for the whole batch. Never allocates.
func (c *Channel) Append(frames ...*Frame) *Snapshot {
	if c.hist.limit() == 0 {
		return c.snap.Load()
	}
	c.mu.Lock()
	for _, f := range frames {
		c.hist.add(f)
	}
	s := c.snap.Load()
	c.mu.Unlock()
	return s
}

// MergeResync adds to the history those frames it does not already hold
// (compared byte for byte) and returns them, in order, appended to fresh,
// with the snapshot to forward them to. Frames already held are not returned:
// a reconnecting peer causes no duplicates. With history off every frame is
// fresh. A frame is held when the history holds it at the moment it is
// looked at (earlier frames of the same merge may have evicted older ones),
// or when it equals a frame in fresh, passed in or added before it.
// The caller keeps its references to frames and fresh until MergeResync
// returns.
//
// Linear: each frame is hashed once and looked up in an index of the
// history and of the fresh frames (see resyncIndex), not compared with all
// of them, so a resync of many distinct frames does not hold the channel's
// lock, and its event loop, for quadratic time.
func (c *Channel) MergeResync(frames []*Frame, fresh []*Frame) ([]*Frame, *Snapshot) {
	c.mu.Lock()
	defer c.mu.Unlock()
	idx := newResyncIndex(&c.hist, len(frames)+len(fresh))
	defer idx.release()
	for _, g := range fresh {
		idx.entries[idx.entry(resyncFingerprint(g.Bytes()), g)].fresh = true
	}
	for _, f := range frames {
		fp := resyncFingerprint(f.Bytes())
		i := idx.lookup(fp)
		if idx.holds(i, f.Bytes(), fresh) {
			continue
		}
		i = idx.entryAt(i, fp, f)
		idx.entries[i].fresh = true
		before := c.hist.n
		if c.hist.add(f) {
			idx.addHeld(i)
			before++
		}
		idx.evicted(before - c.hist.n)
		fresh = append(fresh, f)
	}
	return fresh, c.snap.Load()
}

// HistoryLen returns the number of frames and bytes the history holds.
func (c *Channel) HistoryLen() (frames, bytes int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hist.n, c.hist.bytes
}

// with returns a copy of s with sub added.
func (s *Snapshot) with(sub Subscriber) *Snapshot {
	n := &Snapshot{Len: s.Len + 1, Groups: make([]Group, 0, len(s.Groups)+1)}
	added := false
	for _, g := range s.Groups {
		if g.Loop == sub.Loop() {
			subs := make([]Subscriber, len(g.Subs), len(g.Subs)+1)
			copy(subs, g.Subs)
			g = Group{Loop: g.Loop, Subs: append(subs, sub)}
			added = true
		}
		n.Groups = append(n.Groups, g)
	}
	if !added {
		n.Groups = append(n.Groups, Group{Loop: sub.Loop(), Subs: []Subscriber{sub}})
	}
	return n
}

// without returns a copy of s with sub removed (s itself if sub is absent).
func (s *Snapshot) without(sub Subscriber) *Snapshot {
	for gi, g := range s.Groups {
		for i, x := range g.Subs {
			if x != sub {
				continue
			}
			n := &Snapshot{Len: s.Len - 1, Groups: make([]Group, 0, len(s.Groups))}
			n.Groups = append(n.Groups, s.Groups[:gi]...)
			if len(g.Subs) > 1 {
				subs := make([]Subscriber, 0, len(g.Subs)-1)
				subs = append(subs, g.Subs[:i]...)
				subs = append(subs, g.Subs[i+1:]...)
				n.Groups = append(n.Groups, Group{Loop: g.Loop, Subs: subs})
			}
			n.Groups = append(n.Groups, s.Groups[gi+1:]...)
			return n
		}
	}
	return s
}

// Close releases every channel's history. The router must not be used after.
func (r *Router) Close() {
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		for name, ch := range sh.m {
			ch.mu.Lock()
			ch.hist.clear()
			ch.dead = true
			ch.mu.Unlock()
			delete(sh.m, name)
			r.channels.Add(-1)
		}
		sh.mu.Unlock()
	}
}
