package gateway

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"
)

// Server is a Gateway on its own listener.
type Server struct {
	*Gateway
	l      net.Listener
	hs     *http.Server
	served chan error
}

// Listen starts a Gateway for cfg on addr (host:port; ":0" picks a port).
func Listen(addr string, cfg Config) (*Server, error) {
	g, err := New(cfg)
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return serve(g, l), nil
}

// Serve starts a Gateway for cfg on l (a listener handed over by an
// upgrade); on error l is closed.
func Serve(l net.Listener, cfg Config) (*Server, error) {
	g, err := New(cfg)
	if err != nil {
		l.Close()
		return nil, err
	}
	return serve(g, l), nil
}

func serve(g *Gateway, l net.Listener) *Server {
	s := &Server{
		Gateway: g,
		l:       l,
		hs:      &http.Server{Handler: g, ReadHeaderTimeout: 10 * time.Second, ErrorLog: g.ErrorLog()},
		served:  make(chan error, 1),
	}
	go func() {
		err := s.hs.Serve(l)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		s.served <- err
	}()
	return s
}

// Listener is the listener served. Closing it only stops accepting:
// sessions go on (an upgrade hands it over).
func (s *Server) Listener() net.Listener { return s.l }

// Addr is the bound listen address.
func (s *Server) Addr() net.Addr { return s.l.Addr() }

// Done yields the error that stopped serving (nil after Close).
func (s *Server) Done() <-chan error { return s.served }

// Close stops accepting, closes every WebSocket connection and its TCP
// connections, and waits for them (at most until ctx is done).
func (s *Server) Close(ctx context.Context) error {
	err := s.hs.Shutdown(ctx) // hijacked WebSocket connections are not waited for here
	done := make(chan struct{})
	go func() { s.Gateway.Close(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		if err == nil {
			err = ctx.Err()
		}
	}
	return err
}
