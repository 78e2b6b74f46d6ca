// Package router owns the channels of one server: who is subscribed to each
// channel, the duplicate-CID rule, and each channel's history.
//
// Invariants a caller relies on:
//   - A channel's subscriber list is an immutable Snapshot behind an atomic
//     pointer: the per-frame path reads it with one atomic load and never locks
//     when history is off. Join and Leave cost O(1) amortized on a channel of
//     any size, under the channel's mutex: a join appends to a per-loop
//     backing array that older snapshots never read that far into, a leave
//     only marks the subscriber gone, and the gone are compacted out (one
//     copy) once they outnumber the members. So a snapshot may still list
//     subscribers that have left, never more than it has members; a caller
//     that forwards skips them (the engine's closed connections take
//     nothing).
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
	// loop that has any, in no particular order. It may still list
	// subscribers that have left, never more than the channel has members
	// (see the package doc).
	Groups []Group
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

	mu      sync.Mutex
	hist    history          // Lock: mu
	dead    bool             // Lock: mu; removed from the table, joiners must retry
	members membership       // Lock: mu
	live    int              // Lock: mu; members that have not left
	groups  []groupBacking   // Lock: mu; one per loop with subscribers, in the order of the snapshot's Groups
	dups    map[uint64]int32 // Lock: mu; DupKey → members that have it
}

// membership records every subscriber in the snapshot: true while a
// member, false once it has left and until it is compacted out.
type membership map[Subscriber]bool

// groupBacking is the array behind one Group's Subs. Snapshots hold
// prefixes of it; only the part past every published prefix is written.
type groupBacking struct {
	loop int
	subs []Subscriber // len = the published prefix; cap = room to append
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
		if checkDup && ch.dups[sub.DupKey()] > 0 {
			ch.mu.Unlock()
			ch.forgetIfEmpty()
			return nil, hist, ErrDuplicateCID
		}
		ch.add(sub)
		hist = ch.hist.appendTo(hist)
		ch.mu.Unlock()
		return ch, hist, nil
	}
}

// Leave removes sub from the channel. A channel left with no subscribers
// and no history is forgotten at once. O(1) amortized.
func (c *Channel) Leave(sub Subscriber) {
	c.mu.Lock()
	c.remove(sub)
	c.mu.Unlock()
	c.forgetIfEmpty()
}

// add makes sub a member and publishes a snapshot with it. One Snapshot
// and one Groups header per join, plus the amortised growth of one
// backing array; nothing is copied per member. Lock: mu.
func (c *Channel) add(sub Subscriber) {
	if c.members == nil {
		c.members = make(membership)
		c.dups = make(map[uint64]int32)
	}
	if live, known := c.members[sub]; known {
		if live {
			return // already a member
		}
		// It left and is still listed: it is a member again, where it was.
		c.members[sub] = true
		c.dups[sub.DupKey()]++
		c.live++
		return
	}
	c.members[sub] = true
	c.dups[sub.DupKey()]++
	gi := -1
	for i := range c.groups {
		if c.groups[i].loop == sub.Loop() {
			gi = i
			break
		}
	}
	if gi < 0 {
		c.groups = append(c.groups, groupBacking{loop: sub.Loop()})
		gi = len(c.groups) - 1
	}
	// append writes past every published prefix, or into a new array.
	c.groups[gi].subs = append(c.groups[gi].subs, sub)
	c.live++
	c.publish()
}

// remove marks sub gone; once the gone outnumber the members, one copy
// drops them all. Lock: mu.
func (c *Channel) remove(sub Subscriber) {
	if live, known := c.members[sub]; !known || !live {
		return
	}
	c.members[sub] = false
	if k := sub.DupKey(); c.dups[k] <= 1 {
		delete(c.dups, k)
	} else {
		c.dups[k]--
	}
	c.live--
	// The snapshot stays as it is (a leave costs no copy) until the gone
	// outnumber the members.
	if gone := len(c.members) - c.live; gone > c.live {
		c.compact()
		c.publish()
	}
}

// compact rebuilds the backing arrays without the subscribers that have
// left: older snapshots keep the old arrays, which are never written again.
// Lock: mu.
func (c *Channel) compact() {
	groups := c.groups[:0:0]
	for _, g := range c.groups {
		var subs []Subscriber
		for _, s := range g.subs {
			if c.members[s] {
				subs = append(subs, s)
			}
		}
		if len(subs) > 0 {
			groups = append(groups, groupBacking{loop: g.loop, subs: subs})
		}
	}
	for s, live := range c.members {
		if !live {
			delete(c.members, s)
		}
	}
	c.groups = groups
}

// publish stores a snapshot of the backing arrays' current prefixes.
// Lock: mu.
func (c *Channel) publish() {
	if len(c.groups) == 0 {
		c.snap.Store(emptySnapshot)
		return
	}
	snap := &Snapshot{Groups: make([]Group, len(c.groups))}
	for i, g := range c.groups {
		// A full slice expression: nobody can append into the backing.
		snap.Groups[i] = Group{Loop: g.loop, Subs: g.subs[:len(g.subs):len(g.subs)]}
	}
	c.snap.Store(snap)
}

// forgetIfEmpty removes the channel from the table when it has no subscribers
// and holds no history (a channel whose members only joined, with empty
// messages, leaves nothing behind).
func (c *Channel) forgetIfEmpty() {
	c.mu.Lock()
	if c.dead || c.live > 0 || c.hist.n > 0 {
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

// Members returns how many members the channel has.
func (c *Channel) Members() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.live
}

// ForEachMember calls fn for every member of the channel, under the
// channel's lock (fn must not call back into the channel). Unlike a
// Snapshot it never lists subscribers that have left. O(members): not for
// the per-frame path.
func (c *Channel) ForEachMember(fn func(Subscriber)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for s, live := range c.members {
		if live {
			fn(s)
		}
	}
}

// HistoryLen returns the number of frames and bytes the history holds.
func (c *Channel) HistoryLen() (frames, bytes int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hist.n, c.hist.bytes
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
