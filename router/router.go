// Package router owns the channels of one server: who is subscribed to each
// channel, the duplicate-CID rule, and each channel's history.
//
// Invariants a caller relies on:
//   - A channel's members are kept per event loop: each (channel, loop) has
//     one LoopSet, whose member list is owned by that loop (the router
//     creates it and never reads or writes the list). A channel's Snapshot,
//     behind an atomic pointer, only names the loops that have members and
//     points at their LoopSets: the per-frame path reads it with one atomic
//     load and never locks when history is off. It is republished only when
//     a loop gets its first member or loses its last, so a join or a leave
//     costs O(1) under the channel's mutex (a count and the duplicate-CID
//     index) plus the owning loop's own list work.
//   - With history on, Append takes the channel's mutex once per batch of
//     frames and gives each stored frame the channel's next sequence number
//     (Frame.Seq); a joiner learns, in the same step as its history replay,
//     the last sequence that replay holds (Subscriber.Joined). A frame whose
//     sequence is not past it reached the joiner in the replay: so the
//     joiner gets every frame exactly once, never both, never neither, even
//     for frames in flight to its loop while it joined.
//   - The router never writes to a subscriber: it only tells the caller who
//     the subscribers are, grouped by the event loop that owns them.
//
// Config follows the project's one rule for settings: zero means the
// default (DefaultHistoryLimit, ...), and Off (any negative value) turns a
// setting off: no history, no cap.
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
	// Joined is called once by Join, under the channel's lock, on the
	// joiner's goroutine: set is the channel's LoopSet for the joiner's
	// loop, where the joiner lists itself (set.Add), and seq the sequence
	// of the last frame its history replay holds (0 when none): a live
	// frame whose Seq is non-zero and not past seq must be skipped for it.
	// It must not block or call the router.
	Joined(set *LoopSet, seq uint64)
	// membership is where the router records the subscriber's place in
	// its channel: implement it by embedding a Membership.
	membership() *Membership
}

// Membership is the router's record, kept inside a subscriber, of which
// channel it is a member of and where in that channel's member list. A
// join and a leave index the list through it instead of a map of every
// member: on a channel of a million members those map probes were cache
// misses that cost more than the rest of the join (BenchmarkMillionJoinsAndLeaves).
// Embed one in each Subscriber; only the router reads or writes it, under
// the channel's lock. A subscriber is a member of at most one channel at a
// time (an Mles connection joins one channel).
type Membership struct {
	ch  *Channel // Lock: ch.mu
	idx int      // Lock: ch.mu; place in ch.all
}

func (m *Membership) membership() *Membership { return m }

// ErrDuplicateCID is returned by Join when the channel already has a
// subscriber with the joiner's CID (this is what stops peering loops).
var ErrDuplicateCID = errors.New("router: a connection with this CID is already on the channel")

// ErrTooManyChannels is returned by Join when creating the channel would pass
// Config.MaxChannels.
var ErrTooManyChannels = errors.New("router: channel limit reached")

// ErrOtherChannel is returned by Join when the subscriber is already a
// member of another channel.
var ErrOtherChannel = errors.New("router: the subscriber is a member of another channel")

// Snapshot is an immutable view of which loops have members on a channel.
// Never modify one.
type Snapshot struct {
	// Groups holds one entry per loop that has members, in no particular
	// order.
	Groups []Group
}

// Group is one loop's part of a channel.
type Group struct {
	Loop int
	Set  *LoopSet
}

// LoopSet is a channel's members on one event loop. The router makes one
// per (channel, loop) and keeps it for the channel's life; everything in it
// belongs to that loop: only its goroutine may touch the fields or call the
// methods, and the router never does (Join only hands it to the joiner).
// A member may be listed or not (the engine takes a receiver that cannot
// take more out of the list, and puts it back later): the router counts
// members itself.
type LoopSet struct {
	// Members is who a frame for this loop goes to. Walk it; change it
	// only with Add and Remove (never during a walk).
	Members []Subscriber
	// Log keeps the recent frames for the members out of the list that
	// read behind it (the router never reads it).
	Log FrameLog
	// Lost counts frames meant for this set that never reached its loop
	// (the caller's bound on what may queue for a loop); unlike the other
	// fields it is safe from any goroutine.
	Lost atomic.Uint64
	// Deferred is the caller's count of walks of this set queued on its
	// loop for a later step (the router never reads it): while any is,
	// later frames for the set queue behind them, in order.
	Deferred int
}

// Add lists sub and returns its index (until a Remove moves it).
func (s *LoopSet) Add(sub Subscriber) int {
	s.Members = append(s.Members, sub)
	return len(s.Members) - 1
}

// Remove takes the member at index i out of the list by moving the last one
// into its place, and returns the one moved (nil if none was): its index
// is now i. O(1).
func (s *LoopSet) Remove(i int) (moved Subscriber) {
	last := len(s.Members) - 1
	if i != last {
		moved = s.Members[last]
		s.Members[i] = moved
	}
	s.Members[last] = nil
	s.Members = s.Members[:last]
	return moved
}

var emptySnapshot = &Snapshot{}

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
	cfg = cfg.resolved()
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

	mu     sync.Mutex
	hist   history          // Lock: mu
	dead   bool             // Lock: mu; removed from the table, joiners must retry
	all    []Subscriber     // Lock: mu; every member, each at its Membership.idx
	sets   []*LoopSet       // Lock: mu; index = loop, made at the loop's first join
	counts []int            // Lock: mu; index = loop, members on it
	dups   map[uint64]int32 // Lock: mu; DupKey → members that have it
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
		ch, err := r.channelOf(name)
		if err != nil {
			return nil, hist, err
		}
		ch.mu.Lock()
		if ch.dead {
			ch.mu.Unlock()
			continue // lost a race with the last Leave; the table has no ch now
		}
		m := sub.membership()
		if m.ch != nil && m.ch != ch {
			ch.mu.Unlock()
			ch.forgetIfEmpty()
			return nil, hist, ErrOtherChannel
		}
		if checkDup && ch.dups[sub.DupKey()] > 0 {
			ch.mu.Unlock()
			ch.forgetIfEmpty()
			return nil, hist, ErrDuplicateCID
		}
		ch.add(sub, m)
		hist = ch.hist.appendTo(hist)
		ch.mu.Unlock()
		return ch, hist, nil
	}
}

// channelOf returns the channel called name, making it if there is none
// (ErrTooManyChannels past Config.MaxChannels). The caller locks it and
// retries if it is dead by then.
func (r *Router) channelOf(name string) (*Channel, error) {
	sh := r.shardOf(name)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	ch := sh.m[name]
	if ch == nil {
		if r.cfg.MaxChannels > 0 && r.channels.Load() >= int64(r.cfg.MaxChannels) {
			return nil, ErrTooManyChannels
		}
		ch = &Channel{name: name, router: r}
		ch.hist = history{ring: make([]*Frame, r.cfg.HistoryLimit), maxBytes: r.cfg.HistoryBytes, budget: &r.budget}
		ch.snap.Store(emptySnapshot)
		sh.m[name] = ch
		r.channels.Add(1)
	}
	return ch, nil
}

// Leave removes sub from the channel (the caller takes it out of its
// LoopSet itself, on its loop). A channel left with no subscribers and no
// history is forgotten at once. O(1).
func (c *Channel) Leave(sub Subscriber) {
	c.mu.Lock()
	c.remove(sub)
	if !c.deadIfEmpty() {
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	c.forget()
}

// add makes sub a member, tells it its LoopSet and the last sequence its
// replay holds, and republishes the snapshot only if its loop had no
// member. O(1) amortized; nothing is copied per member. Lock: mu.
func (c *Channel) add(sub Subscriber, m *Membership) {
	if m.ch == c {
		return // already a member
	}
	if c.dups == nil {
		c.dups = make(map[uint64]int32)
	}
	m.ch, m.idx = c, len(c.all)
	c.all = append(c.all, sub)
	c.dups[sub.DupKey()]++
	loop := sub.Loop()
	for len(c.sets) <= loop {
		c.sets = append(c.sets, nil)
		c.counts = append(c.counts, 0)
	}
	if c.sets[loop] == nil {
		c.sets[loop] = &LoopSet{}
	}
	c.counts[loop]++
	sub.Joined(c.sets[loop], c.hist.seq)
	if c.counts[loop] == 1 {
		c.publish()
	}
}

// remove forgets sub; the snapshot is republished only if its loop has no
// member left. Lock: mu.
func (c *Channel) remove(sub Subscriber) {
	m := sub.membership()
	if m.ch != c {
		return
	}
	last := len(c.all) - 1
	if m.idx != last {
		moved := c.all[last]
		c.all[m.idx] = moved
		moved.membership().idx = m.idx
	}
	c.all[last] = nil
	c.all = c.all[:last]
	m.ch = nil
	if k := sub.DupKey(); c.dups[k] <= 1 {
		delete(c.dups, k)
	} else {
		c.dups[k]--
	}
	loop := sub.Loop()
	if c.counts[loop]--; c.counts[loop] == 0 {
		c.publish()
	}
}

// publish stores a snapshot naming the loops that have members. O(loops).
// Lock: mu.
func (c *Channel) publish() {
	n := 0
	for _, k := range c.counts {
		if k > 0 {
			n++
		}
	}
	if n == 0 {
		c.snap.Store(emptySnapshot)
		return
	}
	snap := &Snapshot{Groups: make([]Group, 0, n)}
	for loop, k := range c.counts {
		if k > 0 {
			snap.Groups = append(snap.Groups, Group{Loop: loop, Set: c.sets[loop]})
		}
	}
	c.snap.Store(snap)
}

// forgetIfEmpty removes the channel from the table when it has no subscribers
// and holds no history (a channel whose members only joined, with empty
// messages, leaves nothing behind).
func (c *Channel) forgetIfEmpty() {
	c.mu.Lock()
	dead := c.deadIfEmpty()
	c.mu.Unlock()
	if dead {
		c.forget()
	}
}

// deadIfEmpty marks the channel dead, and reports it, when it has just
// become empty: no member, no history. The caller then forgets it, after
// unlocking. Lock: mu.
func (c *Channel) deadIfEmpty() bool {
	if c.dead || len(c.all) > 0 || c.hist.n > 0 {
		return false
	}
	c.dead = true
	return true
}

// forget takes a dead channel out of the table.
func (c *Channel) forget() {
	sh := c.router.shardOf(c.name)
	sh.mu.Lock()
	if sh.m[c.name] == c {
		delete(sh.m, c.name)
		c.router.channels.Add(-1)
	}
	sh.mu.Unlock()
}

// Append stores frames in the channel's history (when history is on), each
// given the channel's next sequence number, and returns the snapshot to fan
// them out to. The frames must not be join frames with an empty message.
// With history off it is one atomic load; with history on, one lock for the
// whole batch. Never allocates.
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

// KeepsHistory reports whether the channel stores frames (its history
// limit is not 0). It never changes; no lock.
func (c *Channel) KeepsHistory() bool { return c.hist.limit() != 0 }

// Members returns how many members the channel has.
func (c *Channel) Members() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.all)
}

// Placement reports where the channel called name lives: how many members
// it has and the loop holding most of them (ties: the lowest loop), or
// members 0 and loop -1 when there is no such channel or it is empty. The
// engine uses it at a join to place a small channel's members on one loop.
// O(loops), one shard lock and one channel lock: for joins, not frames.
func (r *Router) Placement(name string) (loop, members int) {
	sh := r.shardOf(name)
	sh.mu.Lock()
	c := sh.m[name]
	sh.mu.Unlock()
	if c == nil {
		return -1, 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	loop, most := -1, 0
	for l, k := range c.counts {
		if k > most {
			loop, most = l, k
		}
	}
	return loop, len(c.all)
}

// ForEachMember calls fn for every member of the channel, under the
// channel's lock (fn must not call back into the channel). O(members): not
// for the per-frame path.
func (c *Channel) ForEachMember(fn func(Subscriber)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.all {
		fn(s)
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
