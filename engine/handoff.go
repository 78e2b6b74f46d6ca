package engine

// The engine's side of a hitless upgrade (package upgrade, issue 13).
//
// Phase 1 moves the listening sockets only: the new process serves on
// descriptors of the very sockets the old one listens on (Inherit), so the
// kernel's accept queue is shared and no connection attempt is refused
// while both run; once the new process serves, the old one stops accepting
// (StopAccepting) and keeps its open connections until they close or its
// drain ends. Phase 2 hands over the connections themselves: freeze.go,
// export.go and import.go (upgrade/doc.go has the protocol).

import (
	"errors"
	"fmt"
	"net"
	"os"
)

// Inherit makes Serve use lns instead of binding: lns[addr] serves the
// listen address addr, written exactly as in Config.Listen. Addresses not in
// lns are bound as usual. Call it before Serve; the server owns the
// listeners from then on (they are closed when it stops, or by Inherit if
// they are not TCP listeners or not configured).
func (s *Server) Inherit(lns map[string]net.Listener) error {
	s.lnMu.Lock()
	defer s.lnMu.Unlock()
	if s.listeners != nil {
		return errors.New("engine: Inherit after Serve")
	}
	given := make([]net.Listener, len(s.cfg.Listen))
	var err error
	for i, a := range s.cfg.Listen {
		ln, ok := lns[a]
		if !ok {
			continue
		}
		delete(lns, a)
		tl, ok := ln.(*net.TCPListener)
		if !ok {
			_ = ln.Close()
			err = errors.Join(err, fmt.Errorf("engine: inherited listener for %s is a %T, not TCP", a, ln))
			continue
		}
		given[i] = inheritedListener{tl}
	}
	for _, ln := range lns {
		_ = ln.Close()
	}
	if err != nil {
		for _, ln := range given {
			if ln != nil {
				_ = ln.Close()
			}
		}
		return err
	}
	s.listeners = given
	return nil
}

// ListenerFiles returns a duplicate descriptor of each bound listener, by
// its listen address as written in Config.Listen, for handing to a new
// process. The caller closes them. Valid once Ready.
func (s *Server) ListenerFiles() (map[string]*os.File, error) {
	s.lnMu.Lock()
	defer s.lnMu.Unlock()
	files := make(map[string]*os.File, len(s.listeners))
	for i, ln := range s.listeners {
		if ln == nil || i >= len(s.cfg.Listen) {
			continue
		}
		f, err := listenerFile(ln)
		if err != nil {
			for _, f := range files {
				_ = f.Close()
			}
			return nil, fmt.Errorf("listener %s: %w", s.cfg.Listen[i], err)
		}
		files[s.cfg.Listen[i]] = f
	}
	return files, nil
}

// StopAccepting closes this process's listeners and ends its accept loops,
// without touching any connection: after a handover the new process
// accepts on the same sockets. It returns once every connection accepted
// before has been opened on its event loop, so Stats().OpenConns counts
// them all (a drain that waits for it to reach 0 closes none in flight).
// The server keeps serving what it has until Stop.
func (s *Server) StopAccepting() {
	s.closeListeners()
	s.acceptWG.Wait()
}

// listenerFile duplicates ln's descriptor.
func listenerFile(ln net.Listener) (*os.File, error) {
	switch l := ln.(type) {
	case *net.TCPListener:
		return l.File()
	case inheritedListener:
		return l.File()
	}
	return nil, fmt.Errorf("a %T has no descriptor", ln)
}

// inheritedListener is a listener received from the old process. Go's
// FileListener has no ListenConfig, so it gives accepted connections Go's
// default keepalive (15 s); this sets the engine's, as its own listeners do.
type inheritedListener struct{ *net.TCPListener }

// Accept accepts the next connection and sets its keepalive.
func (l inheritedListener) Accept() (net.Conn, error) {
	c, err := l.TCPListener.AcceptTCP()
	if err != nil {
		return nil, err
	}
	_ = c.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: DefaultKeepAlive})
	return c, nil
}
