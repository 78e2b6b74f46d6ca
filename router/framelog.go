package router

// FrameLog is the recent frames of one LoopSet, kept once for all of that
// set's members that read behind the live walk (the engine's laggers: a
// receiver whose socket is full leaves the walk and reads from here at its
// own pace). Each entry is a frame and the member that sent it (nil when it
// came from another loop), numbered by a sequence that only grows: a lagger
// keeps the number of the next entry it needs, so a frame costs the log one
// reference however many members lag, and a member that falls out of the
// log's bound (its oldest entries evicted) knows exactly how many it missed.
//
// Loop-owned, like the rest of the LoopSet; the zero value is an empty log.
type FrameLog struct {
	ring []LogEntry // len is a power of two, or 0
	base uint64     // sequence of the oldest entry held
	n    int        // entries held: base .. base+n-1
	size int        // memory the entries' frames hold (Frame.Size)
	// Lagging is the caller's count of the members reading from the log;
	// frames are logged only while it is above zero.
	Lagging int
	// Lost counts, cumulatively, the frames meant for this set that never
	// reached its loop (LoopSet.Lost folded in by the caller), so laggers
	// can count them too.
	Lost uint64
}

// LogEntry is one logged frame and its sender.
type LogEntry struct {
	F    *Frame
	From Subscriber // nil if not a member of this set
}

// Head is the sequence the next pushed entry gets.
func (l *FrameLog) Head() uint64 { return l.base + uint64(l.n) }

// Base is the sequence of the oldest entry held (Head when empty).
func (l *FrameLog) Base() uint64 { return l.base }

// Len is the number of entries held.
func (l *FrameLog) Len() int { return l.n }

// Size is the memory the held frames take (Frame.Size), shared or not.
func (l *FrameLog) Size() int { return l.size }

// At returns the entry with sequence seq, which must be in [Base, Head).
func (l *FrameLog) At(seq uint64) *LogEntry {
	return &l.ring[int(seq)&(len(l.ring)-1)]
}

// headIdx is the ring index of the oldest entry. The ring is indexed by
// sequence modulo its length, so entries never move except when it grows.
func (l *FrameLog) headIdx() int { return int(l.base) & (len(l.ring) - 1) }

// Push appends f (taking a reference) sent by from and returns its sequence.
func (l *FrameLog) Push(f *Frame, from Subscriber) uint64 {
	if l.n == len(l.ring) {
		l.grow()
	}
	seq := l.Head()
	f.Ref()
	l.ring[int(seq)&(len(l.ring)-1)] = LogEntry{F: f, From: from}
	l.n++
	l.size += f.Size()
	return seq
}

// Oldest returns the oldest entry (the log must not be empty).
func (l *FrameLog) Oldest() *LogEntry { return &l.ring[l.headIdx()] }

// Evict drops the oldest entry and its reference.
func (l *FrameLog) Evict() {
	e := &l.ring[l.headIdx()]
	l.size -= e.F.Size()
	e.F.Release()
	*e = LogEntry{}
	l.base++
	l.n--
}

// TrimTo evicts every entry older than seq.
func (l *FrameLog) TrimTo(seq uint64) {
	for l.n > 0 && l.base < seq {
		l.Evict()
	}
}

// Reset drops every entry (base becomes Head) and frees a ring a past
// backlog grew large.
func (l *FrameLog) Reset() {
	l.TrimTo(l.Head())
	if len(l.ring) > 1024 {
		l.ring = nil
	}
}

func (l *FrameLog) grow() {
	size := len(l.ring) * 2
	if size == 0 {
		size = 64
	}
	nr := make([]LogEntry, size)
	for i := 0; i < l.n; i++ {
		seq := l.base + uint64(i)
		nr[int(seq)&(size-1)] = l.ring[int(seq)&(len(l.ring)-1)]
	}
	l.ring = nr
}
