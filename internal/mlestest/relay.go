package mlestest

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// Relay is a TCP relay that can cut a link without stopping either end:
// each connection it accepts on 127.0.0.1 is piped to its target.
type Relay struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	piped  int // connections let through, ever
	conns  map[net.Conn]bool
	wg     sync.WaitGroup
}

// StartRelay listens on 127.0.0.1 and pipes each connection to target,
// until t ends.
func StartRelay(t testing.TB, target string) *Relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &Relay{ln: ln, target: target, conns: map[net.Conn]bool{}}
	r.wg.Add(1)
	go r.accept()
	t.Cleanup(func() {
		ln.Close()
		r.Sever(false)
		r.wg.Wait()
	})
	return r
}

// Addr is where the relay listens.
func (r *Relay) Addr() string { return r.ln.Addr().String() }

func (r *Relay) accept() {
	defer r.wg.Done()
	for {
		in, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		if r.cut {
			r.mu.Unlock()
			in.Close()
			continue
		}
		out, err := net.DialTimeout("tcp", r.target, 5*time.Second)
		if err != nil {
			r.mu.Unlock()
			in.Close()
			continue
		}
		r.conns[in], r.conns[out] = true, true
		r.piped++
		r.wg.Add(2)
		r.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			defer r.wg.Done()
			_, _ = io.Copy(dst, src)
			dst.Close()
			src.Close()
			r.mu.Lock()
			delete(r.conns, dst)
			delete(r.conns, src)
			r.mu.Unlock()
		}
		go pipe(out, in)
		go pipe(in, out)
	}
}

// Sever closes every relayed connection; while cut, new ones are closed as
// soon as they are accepted.
func (r *Relay) Sever(cut bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cut = cut
	for c := range r.conns {
		c.Close()
	}
}

// Heal lets connections through again.
func (r *Relay) Heal() {
	r.mu.Lock()
	r.cut = false
	r.mu.Unlock()
}

// Piped is how many connections the relay has let through.
func (r *Relay) Piped() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.piped
}

// HealAndWaitPiped heals r and waits (10 s) until it lets a connection
// through: the link came back only now, not while it was cut.
func (r *Relay) HealAndWaitPiped(t testing.TB) {
	t.Helper()
	before := r.Piped()
	r.Heal()
	WaitUntil(t, "a connection through the relay after the heal", 10*time.Second, func() bool { return r.Piped() != before })
}
