package harness

import (
	"sync"
	"sync/atomic"
)

// reorderWindow is how far behind the highest sequence number seen a late
// message can still be told apart from a duplicate (in messages).
const reorderWindow = 1024

// Stream checks the deliveries of one publisher to one receiver. Observe is
// called from the receiver's reader goroutine only; Unique may be read from any
// goroutine (publishers read it for flow control).
type Stream struct {
	unique atomic.Uint64 // distinct sequence numbers received

	// Flow control: a blocked publisher sets wake once (before observing
	// starts) and waitAt to the count it waits for; Observe signals wake when
	// unique reaches waitAt.
	waitAt atomic.Uint64
	wake   chan struct{}

	next uint64                     // one past the highest sequence number seen
	bits [reorderWindow / 64]uint64 // seen-bitmap of [next-reorderWindow, next)

	dup       uint64 // a sequence number received again
	reordered uint64 // a sequence number received after a higher one
	tooLate   uint64 // older than the window: a duplicate or a very late message
}

// Unique is the number of distinct messages received so far. Safe from any goroutine.
func (s *Stream) Unique() uint64 { return s.unique.Load() }

// Observe records sequence number seq. Hot path: must not allocate or lock.
func (s *Stream) Observe(seq uint64) {
	switch {
	case seq == s.next: // the only case in a healthy run
		s.next++
		s.set(seq)
		s.added(s.unique.Add(1))
	case seq > s.next: // a gap: clear the bits that leave the window
		if seq-s.next >= reorderWindow {
			s.bits = [reorderWindow / 64]uint64{}
		} else {
			for q := s.next; q < seq; q++ {
				s.clear(q)
			}
		}
		s.next = seq + 1
		s.set(seq)
		s.added(s.unique.Add(1))
	case s.next-seq > reorderWindow:
		s.tooLate++
	case s.isSet(seq):
		s.dup++
	default:
		s.set(seq)
		s.reordered++
		s.added(s.unique.Add(1))
	}
}

// added wakes a publisher waiting for n messages. Hot path: must not allocate
// or block.
func (s *Stream) added(n uint64) {
	if w := s.waitAt.Load(); w != 0 && n >= w {
		s.waitAt.Store(0)
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// SetWake gives the stream the channel its publisher waits on. Call it before
// observing starts.
func (s *Stream) SetWake(c chan struct{}) { s.wake = c }

// WaitFor asks for a signal on the wake channel once Unique reaches n, and
// reports whether it already has (then no signal comes).
func (s *Stream) WaitFor(n uint64) bool {
	s.waitAt.Store(n)
	if s.unique.Load() >= n {
		s.waitAt.Store(0)
		return true
	}
	return false
}

func (s *Stream) set(q uint64)        { s.bits[(q%reorderWindow)/64] |= 1 << (q % 64) }
func (s *Stream) clear(q uint64)      { s.bits[(q%reorderWindow)/64] &^= 1 << (q % 64) }
func (s *Stream) isSet(q uint64) bool { return s.bits[(q%reorderWindow)/64]&(1<<(q%64)) != 0 }

// Delivery is the verdict over many streams.
type Delivery struct {
	Expected  uint64 `json:"expected"`  // messages that should have arrived (sent × receivers)
	Received  uint64 `json:"received"`  // distinct messages that arrived
	Lost      uint64 `json:"lost"`      // Expected - Received
	Dup       uint64 `json:"dup"`       // received more than once
	Reordered uint64 `json:"reordered"` // received after a higher sequence number
	TooLate   uint64 `json:"too_late"`  // older than the reorder window (dup or very late)
	Foreign   uint64 `json:"foreign"`   // frames without our trailer, or from an unknown publisher
}

// Bad reports whether anything went wrong in delivery.
func (d Delivery) Bad() bool { return d.Lost+d.Dup+d.Reordered+d.TooLate > 0 }

// Add sums two verdicts.
func (d Delivery) Add(o Delivery) Delivery {
	d.Expected += o.Expected
	d.Received += o.Received
	d.Lost += o.Lost
	d.Dup += o.Dup
	d.Reordered += o.Reordered
	d.TooLate += o.TooLate
	d.Foreign += o.Foreign
	return d
}

// Verdict compares s with the number of messages its publisher sent.
// Call it only after the receiver has stopped observing.
func (s *Stream) Verdict(sent uint64) Delivery {
	u := s.unique.Load()
	d := Delivery{Expected: sent, Received: u, Dup: s.dup, Reordered: s.reordered, TooLate: s.tooLate}
	if sent > u {
		d.Lost = sent - u
	}
	if u > sent { // more distinct numbers than were sent: count the extras as duplicates
		d.Dup += u - sent
	}
	return d
}

// Receiver is one receiving connection: a Stream per publisher it should hear
// from, indexed by publisher id, and optional hooks. Observe is called from
// the receiver's reader goroutine only.
type Receiver struct {
	ID      int
	streams []*Stream // by publisher id; nil: not expected from this publisher
	foreign atomic.Uint64

	// OnMessage, when set, is called after each delivery with its trailer and
	// the receive time (Now()). It runs on the reader goroutine.
	OnMessage func(t Trailer, now int64)
}

// NewReceiver returns a receiver expecting messages from the publishers in pubs.
func NewReceiver(id int, pubs ...uint32) *Receiver {
	r := &Receiver{ID: id}
	for _, p := range pubs {
		r.Expect(p)
	}
	return r
}

// Expect adds a stream for publisher pub and returns it. Not safe once observing.
func (r *Receiver) Expect(pub uint32) *Stream {
	for uint32(len(r.streams)) <= pub {
		r.streams = append(r.streams, nil)
	}
	if r.streams[pub] == nil {
		r.streams[pub] = &Stream{}
	}
	return r.streams[pub]
}

// Stream returns the stream for publisher pub, or nil.
func (r *Receiver) Stream(pub uint32) *Stream {
	if int(pub) >= len(r.streams) {
		return nil
	}
	return r.streams[pub]
}

// Observe records one delivered message. Hot path: must not allocate or lock.
func (r *Receiver) Observe(t Trailer) {
	if int(t.Pub) >= len(r.streams) || r.streams[t.Pub] == nil {
		r.foreign.Add(1)
		return
	}
	r.streams[t.Pub].Observe(t.Seq)
	if r.OnMessage != nil {
		r.OnMessage(t, Now())
	}
}

// ObserveMessage reads the trailer of msg and observes it; a message without one
// counts as foreign.
func (r *Receiver) ObserveMessage(msg []byte) {
	t, ok := ReadTrailer(msg)
	if !ok {
		r.foreign.Add(1)
		return
	}
	r.Observe(t)
}

// Foreign counts frames that were not benchmark data for this receiver.
func (r *Receiver) Foreign() uint64 { return r.foreign.Load() }

// Unique sums the distinct messages this receiver got from all publishers.
func (r *Receiver) Unique() uint64 {
	var n uint64
	for _, s := range r.streams {
		if s != nil {
			n += s.Unique()
		}
	}
	return n
}

// Tally sums the verdicts of all receivers, given what each publisher sent
// (sent[pub]). Call it only after the receivers have stopped observing.
func Tally(rcvs []*Receiver, sent []uint64) Delivery {
	var d Delivery
	for _, r := range rcvs {
		for pub, s := range r.streams {
			if s == nil {
				continue
			}
			var n uint64
			if pub < len(sent) {
				n = sent[pub]
			}
			d = d.Add(s.Verdict(n))
		}
		d.Foreign += r.Foreign()
	}
	return d
}

// errList collects errors from many goroutines.
type errList struct {
	mu   sync.Mutex
	errs []string
}

func (e *errList) add(s string) {
	e.mu.Lock()
	if len(e.errs) < 50 {
		e.errs = append(e.errs, s)
	} else if len(e.errs) == 50 {
		e.errs = append(e.errs, "(more errors not shown)")
	}
	e.mu.Unlock()
}

func (e *errList) addAll(ss []string) {
	for _, s := range ss {
		e.add(s)
	}
}

func (e *errList) list() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.errs...)
}
