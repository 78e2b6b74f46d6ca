package harness

import (
	"context"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"
)

// GroupSpec is one channel of a scenario: who publishes on it, who receives.
type GroupSpec struct {
	Channel  string
	Pubs     []uint32    // publisher ids, unique across the scenario
	Subs     []*Receiver // one receiving connection each
	Payload  int         // message size in bytes, trailer included (>= TrailerLen)
	SendOnly bool        // publishers need not receive anything (Mles: shut down their receive side)
	// PubsReceive: publishers also receive the channel's messages, and
	// discard them (Mles: every member does anyway, unless SendOnly; NATS:
	// each publisher's connection subscribes to the subject too, without echo).
	PubsReceive bool
}

// Publisher is one publishing connection. Not safe for concurrent use.
type Publisher interface {
	// Send buffers one message carrying t (pipelined: no round trip).
	Send(t Trailer) error
	// Flush pushes what Send buffered onto the wire.
	Flush() error
	// Drain waits, at most until ctx ends, for the server to have taken all
	// that was sent (a round trip where the protocol has one).
	Drain(ctx context.Context) error
}

// writeDeadliner is implemented by publishers that can bound their writes in
// time (all but nats.go, whose flusher has its own timeout).
type writeDeadliner interface{ SetWriteDeadline(t time.Time) error }

// boundWrites makes every write of the publishers fail after t instead of
// blocking on a server that stopped reading.
func boundWrites(pubs []Publisher, t time.Time) {
	for _, p := range pubs {
		if d, ok := p.(writeDeadliner); ok {
			d.SetWriteDeadline(t)
		}
	}
}

// Group is an opened GroupSpec: every connection is joined/subscribed and the
// server is known to route between them.
type Group struct {
	Pubs    []Publisher
	closers []io.Closer
	errs    *errList
	closed  chan struct{}
}

// NewGroup returns an empty group.
func NewGroup() *Group {
	return &Group{errs: &errList{}, closed: make(chan struct{})}
}

// Errors lists the failures reported by the group's connections.
func (g *Group) Errors() []string { return g.errs.list() }

// AddCloser registers c to be closed with the group.
func (g *Group) AddCloser(c io.Closer) { g.closers = append(g.closers, c) }

// Closing is closed once Close has begun; readers use it to tell an expected
// end of connection from a failure.
func (g *Group) Closing() <-chan struct{} { return g.closed }

// ReportErr records a failure of one connection of the group, unless the group
// is closing.
func (g *Group) ReportErr(who string, err error) {
	select {
	case <-g.closed:
		return
	default:
	}
	g.errs.add(fmt.Sprintf("%s: %v", who, err))
}

// Close closes every connection of the group.
func (g *Group) Close() {
	select {
	case <-g.closed:
		return
	default:
		close(g.closed)
	}
	for _, c := range g.closers {
		c.Close()
	}
}

// Driver speaks one server's protocol.
type Driver interface {
	// Name is the server's name in tables and flags: "mlesd", "nats", "redis".
	Name() string
	// Open connects the publishers and receivers of spec and returns once the
	// server routes between all of them.
	Open(ctx context.Context, addr string, spec GroupSpec) (*Group, error)
	// Idle opens one connection joined/subscribed to channel that then stays idle.
	Idle(ctx context.Context, addr, channel string) (IdleConn, error)
}

// IdleConn is a connection of the conns scenario.
type IdleConn interface {
	io.Closer
	// Check proves, when the protocol gives no acknowledgement of a join, that
	// the connection is joined (e.g. by having another connection reach it).
	// nil when joined.
	Check(ctx context.Context, addr string) error
}

var (
	driversMu sync.Mutex
	drivers   = map[string]func() Driver{}
)

// RegisterDriver makes a driver available by name.
func RegisterDriver(name string, mk func() Driver) {
	driversMu.Lock()
	defer driversMu.Unlock()
	drivers[name] = mk
}

// NewDriver returns the driver registered under name.
func NewDriver(name string) (Driver, error) {
	driversMu.Lock()
	defer driversMu.Unlock()
	mk, ok := drivers[name]
	if !ok {
		return nil, fmt.Errorf("no driver %q (have %v)", name, driverNamesLocked())
	}
	return mk(), nil
}

// DriverNames lists the registered drivers.
func DriverNames() []string {
	driversMu.Lock()
	defer driversMu.Unlock()
	return driverNamesLocked()
}

func driverNamesLocked() []string {
	var n []string
	for k := range drivers {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

func sortStrings(s []string) { sort.Strings(s) }
