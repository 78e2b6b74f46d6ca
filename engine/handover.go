package engine

import (
	"log/slog"
	"time"

	"github.com/panjf2000/ants/v2"
	"github.com/panjf2000/gnet/v2/pkg/pool/goroutine"
)

// gnet hands every connection given to Engine.Register (all of ours:
// accepted, TLS, WebSocket pairs, uplinks) to its event loop from a
// goroutine of one global pool, goroutine.DefaultWorkerPool, which keeps
// idle goroutines for 10 s and has room for 262,144 of them. After a storm
// of connects that left a crowd of idle goroutines and their stacks behind
// for up to 20 s. The engine swaps in a pool sized for its own concurrency
// (at most maxRegistering hand-overs from the acceptors plus the adopters)
// that lets idle goroutines go after a second, and that makes a submitter
// wait rather than fail when full. Done once, before any engine starts; on
// Unix gnet uses this pool for nothing else.
const (
	handoverWorkers    = 256
	handoverWorkerIdle = time.Second
)

func init() {
	p, err := ants.NewPool(handoverWorkers, ants.WithExpiryDuration(handoverWorkerIdle),
		ants.WithNonblocking(false), ants.WithPanicHandler(func(v any) {
			slog.Error("panic while handing a connection to an event loop", slog.Any("panic", v))
		}))
	if err != nil {
		return // keep gnet's own pool
	}
	old := goroutine.DefaultWorkerPool
	goroutine.DefaultWorkerPool = p
	old.Release()
}
