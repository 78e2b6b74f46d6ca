package upgrade

// The new process's side: read the handover, take the listeners, report
// ready, learn that the old process has let go.

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"time"
)

// Handover is what a new process received from the old one. Take the
// listeners it needs, then call Ready once it serves on them; Close
// releases what was not taken.
type Handover struct {
	Offer   Offer
	sock    *socket
	version string // this process's, for the Reply

	mu    sync.Mutex // Ready's goroutine and the caller's Close may meet
	files []*os.File // Lock: mu; index = Offer.Files index; nil once taken
}

// Inherited reports whether this process (version) was started by an
// upgrade (EnvFD is set) and, if so, reads the old process's Offer within
// timeout. It
// removes EnvFD from the environment. An Offer in a format this build does
// not read is refused (the old process learns why and keeps serving) and
// returned as an error wrapping ErrFormat.
func Inherited(version string, timeout time.Duration) (*Handover, error) {
	v, ok := os.LookupEnv(EnvFD)
	if !ok {
		return nil, nil
	}
	_ = os.Unsetenv(EnvFD)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("%s=%q: not a descriptor", EnvFD, v)
	}
	sock, err := newSocket(os.NewFile(uintptr(fd), "upgrade"))
	if err != nil {
		return nil, fmt.Errorf("%s=%d: %w", EnvFD, fd, err)
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	b, files, err := sock.recv(time.Now().Add(timeout))
	if err != nil {
		sock.close()
		return nil, fmt.Errorf("reading the handover: %w", err)
	}
	offer, err := DecodeOffer(b)
	if err == nil && len(files) != len(offer.Files) {
		err = fmt.Errorf("handover offer names %d descriptors but carries %d", len(offer.Files), len(files))
	}
	if err != nil {
		closeFiles(files)
		h := &Handover{sock: sock, version: version}
		h.Refuse(err)
		return nil, err
	}
	return &Handover{Offer: offer, sock: sock, files: files, version: version}, nil
}

// Listener takes the inherited listener of role configured as addr, if the
// old process handed one over. The caller owns it.
func (h *Handover) Listener(role, addr string) (net.Listener, error) {
	if h == nil {
		return nil, nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, id := range h.Offer.Files {
		if id.Role != role || id.Addr != addr || h.files[i] == nil {
			continue
		}
		f := h.files[i]
		h.files[i] = nil
		defer f.Close() // FileListener holds its own duplicate
		ln, err := net.FileListener(f)
		if err != nil {
			return nil, fmt.Errorf("inherited %s listener %s: %w", role, addr, err)
		}
		return ln, nil
	}
	return nil, nil
}

// Close closes the inherited listeners nobody took (a listen address the
// new configuration no longer has).
func (h *Handover) Close() {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, f := range h.files {
		if f != nil {
			_ = f.Close()
			h.files[i] = nil
		}
	}
}

// Refuse tells the old process that this one will not take over, and why;
// the old process keeps serving.
func (h *Handover) Refuse(reason error) {
	if h == nil {
		return
	}
	h.Close()
	_ = h.sock.send(Reply{Kind: kindReply, Format: FormatVersion, Version: h.version, PID: os.Getpid(),
		Error: reason.Error()}, nil, time.Now().Add(time.Second))
	h.sock.close()
}

// ErrNoCommit is returned by Ready when the old process closed the socket
// (or died) without its Commit. The new process serves on regardless: the
// listeners are shared, and an old process that gave up on the upgrade
// kills the new one rather than closing the socket.
var ErrNoCommit = errors.New("the old process closed the handover without confirming it stopped accepting")

// Ready reports that this process serves on the inherited listeners and
// waits up to timeout for the old process's Commit: from then on the
// listeners are this process's alone.
func (h *Handover) Ready(timeout time.Duration) error {
	defer h.sock.close()
	h.Close()
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	deadline := time.Now().Add(timeout)
	err := h.sock.send(Reply{Kind: kindReply, Format: FormatVersion, Version: h.version, PID: os.Getpid(), Ready: true},
		nil, deadline)
	if err != nil {
		return fmt.Errorf("reporting ready: %w", err)
	}
	b, files, err := h.sock.recv(deadline)
	closeFiles(files)
	if errors.Is(err, io.EOF) {
		return ErrNoCommit
	}
	if err != nil {
		return fmt.Errorf("waiting for the old process to let go: %w", err)
	}
	_, err = DecodeCommit(b)
	return err
}
