package upgrade

// The messages of the handover and how they travel: each is one CBOR map
// in one SOCK_SEQPACKET message (so message boundaries are the kernel's,
// and descriptors ride with the message that names them, SCM_RIGHTS).

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"time"

	"github.com/fxamacker/cbor/v2"
	"golang.org/x/sys/unix"
)

// Kinds of message. Every message carries its kind (key 0) and the format
// version it is written in (key 1), so a reader can refuse a format it
// does not know before it reads anything else.
const (
	kindOffer  = 1 // old → new: what the old process hands over
	kindReply  = 2 // new → old: ready, or refused and why
	kindCommit = 3 // old → new: the old process has stopped accepting
)

// Roles of the listening sockets an Offer carries.
const (
	RoleMles    = "mles"    // a plain Mles TCP listener (--listen)
	RoleMetrics = "metrics" // --metrics
	RolePprof   = "pprof"   // --pprof
	RoleTLS     = "tls"     // --tls-listen
	RoleWS      = "ws"      // --ws-listen
)

// probe is what every message starts with.
type probe struct {
	Kind   uint8  `cbor:"0,keyasint"`
	Format uint16 `cbor:"1,keyasint"`
}

// Offer is the header the old process sends first: its format version,
// its own version string, and what follows. Files lists the descriptors
// attached to the same message, in their order.
type Offer struct {
	Kind   uint8    `cbor:"0,keyasint"`
	Format uint16   `cbor:"1,keyasint"`
	Sender string   `cbor:"2,keyasint"` // the old process's version string
	PID    int      `cbor:"3,keyasint"` // the old process's PID
	Files  []FileID `cbor:"4,keyasint"` // the descriptors attached, in order
	// Phase 2 (doc.go): how many ConnState and ChannelState messages
	// follow the header. Always 0 in format 1.
	Conns    uint32 `cbor:"5,keyasint,omitempty"`
	Channels uint32 `cbor:"6,keyasint,omitempty"`
	// States is the state format (StateFormat) the old process can hand
	// over after the new one is ready: its live connections and channels
	// (transfer.go). 0: listeners only. A reader that does not know the
	// field ignores it and answers as phase 1 did, so the old process
	// hands over only the listeners: a rollback to a phase-1 build works.
	States uint16 `cbor:"7,keyasint,omitempty"`
}

// FileID says what one handed-over descriptor is: its role and the
// address it was configured as (so a new process whose configuration
// changed takes only the listeners it still has).
type FileID struct {
	Role string `cbor:"0,keyasint"`
	Addr string `cbor:"1,keyasint"`
}

// Reply is the new process's answer: ready (it serves on the inherited
// listeners), or refused with the reason.
type Reply struct {
	Kind    uint8  `cbor:"0,keyasint"`
	Format  uint16 `cbor:"1,keyasint"` // the format it read, or the one it reads when refusing
	Version string `cbor:"2,keyasint"` // the new process's version string
	PID     int    `cbor:"3,keyasint"`
	Ready   bool   `cbor:"4,keyasint"`
	Error   string `cbor:"5,keyasint,omitempty"`
	// States, in the reply that reports ready: the state format this
	// process reads, when the Offer offered it (0: listeners only, then
	// Commit as in phase 1). In the second reply (after the state):
	// Imported is how many connections it took.
	States   uint16 `cbor:"6,keyasint,omitempty"`
	Imported uint32 `cbor:"7,keyasint,omitempty"`
	// ConnsPerMessage, in the reply that reports ready for state: how
	// many connections one ConnBatch message may carry (0 or 1: this
	// process reads a ConnState per message, as the first phase-2 builds
	// did; they neither send nor know the field, so either side of a
	// mixed pair falls back to one per message).
	ConnsPerMessage uint16 `cbor:"8,keyasint,omitempty"`
	// ChannelBatches, in the same reply: this process reads ChannelBatch
	// messages (several channels, their history inline); absent, as
	// from the first phase-2 builds: a ChannelState each.
	ChannelBatches bool `cbor:"9,keyasint,omitempty"`
	// Rounds, in the same reply: this process takes the state in rounds
	// (a round's Totals says More, its Commit hands over that round's
	// sockets, and the next round follows), so the old process can freeze
	// and hand over a few channels at a time; absent, as from earlier
	// builds: the whole state in one round.
	Rounds bool `cbor:"10,keyasint,omitempty"`
}

// Commit tells the new process that the old one has stopped accepting:
// the listeners are the new one's alone.
type Commit struct {
	Kind   uint8  `cbor:"0,keyasint"`
	Format uint16 `cbor:"1,keyasint"`
}

var (
	encMode cbor.EncMode
	decMode cbor.DecMode
)

func init() {
	var err error
	if encMode, err = cbor.CoreDetEncOptions().EncMode(); err != nil {
		panic(err)
	}
	decMode, err = cbor.DecOptions{
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
		IndefLength:      cbor.IndefLengthForbidden,
		TagsMd:           cbor.TagsForbidden,
		MaxNestedLevels:  maxNesting,
		MaxArrayElements: maxListItems,
		MaxMapPairs:      maxListItems,
	}.DecMode()
	if err != nil {
		panic(err)
	}
}

// ErrFormat is wrapped by every error about a message in a format version
// this build does not read.
var ErrFormat = errors.New("unknown handover format")

// decode reads one message of kind into v, refusing other kinds and
// formats other than FormatVersion before it decodes the rest.
func decode(b []byte, kind uint8, v any) error {
	var p probe
	if err := decMode.Unmarshal(b, &p); err != nil {
		return fmt.Errorf("handover message: %w", err)
	}
	if p.Format != FormatVersion {
		return fmt.Errorf("%w %d (this build reads %d)", ErrFormat, p.Format, FormatVersion)
	}
	if p.Kind != kind {
		return fmt.Errorf("handover message of kind %d where kind %d was due", p.Kind, kind)
	}
	if err := decMode.Unmarshal(b, v); err != nil {
		return fmt.Errorf("handover message: %w", err)
	}
	return nil
}

// DecodeOffer decodes an Offer and checks that it is whole.
func DecodeOffer(b []byte) (Offer, error) {
	var o Offer
	if err := decode(b, kindOffer, &o); err != nil {
		return Offer{}, err
	}
	if len(o.Files) > maxFilesPerMessage {
		return Offer{}, fmt.Errorf("handover offer names %d descriptors, more than one message carries", len(o.Files))
	}
	for _, f := range o.Files {
		switch f.Role {
		case RoleMles, RoleMetrics, RolePprof, RoleTLS, RoleWS:
		default:
			return Offer{}, fmt.Errorf("handover offer: unknown listener role %q", f.Role)
		}
	}
	return o, nil
}

// DecodeReply decodes a Reply.
func DecodeReply(b []byte) (Reply, error) {
	var r Reply
	if err := decode(b, kindReply, &r); err != nil {
		return Reply{}, err
	}
	if !r.Ready && r.Error == "" {
		return Reply{}, errors.New("handover reply neither ready nor giving a reason")
	}
	return r, nil
}

// DecodeCommit decodes a Commit.
func DecodeCommit(b []byte) (Commit, error) {
	var c Commit
	err := decode(b, kindCommit, &c)
	return c, err
}

// socket is one end of the handover socket pair.
type socket struct {
	uc  *net.UnixConn
	buf []byte // recv's, reused: a phase-2 handover is thousands of messages
}

// newSocket wraps descriptor f (which it closes) as a socket.
func newSocket(f *os.File) (*socket, error) {
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("handover descriptor is a %T, not a Unix socket", c)
	}
	return &socket{uc: uc}, nil
}

// socketPair makes the handover socket pair, both ends close-on-exec (the
// child's end is passed by exec's ExtraFiles, which clears that flag on
// the child's copy only).
func socketPair() (mine, theirs *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("handover socket pair: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "upgrade-old"), os.NewFile(uintptr(fds[1]), "upgrade-new"), nil
}

// send writes v as one message with files attached.
func (s *socket) send(v any, files []*os.File, deadline time.Time) error {
	b, err := encMode.Marshal(v)
	if err != nil {
		return err
	}
	return s.sendBytes(b, files, deadline)
}

// sendBytes writes b, an encoded message, with files attached.
func (s *socket) sendBytes(b []byte, files []*os.File, deadline time.Time) error {
	var fds []int
	for _, f := range files {
		fd, err := rawFD(f)
		if err != nil {
			return err
		}
		fds = append(fds, fd)
	}
	defer runtime.KeepAlive(files) // the descriptors stay open until sent
	return s.sendFDs(b, fds, deadline)
}

// sendFDs writes b with descriptors fds attached (open until it returns).
func (s *socket) sendFDs(b []byte, fds []int, deadline time.Time) error {
	var err error
	if len(b) > maxMessage || len(fds) > maxFilesPerMessage {
		return fmt.Errorf("handover message too large (%d bytes, %d descriptors)", len(b), len(fds))
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	_ = s.uc.SetWriteDeadline(deadline)
	n, oobn, err := s.uc.WriteMsgUnix(b, oob, nil)
	if err == nil && (n != len(b) || oobn != len(oob)) {
		err = io.ErrShortWrite
	}
	return err
}

// rawFD is f's descriptor. Not f.Fd(): for a file from TCPListener.File,
// Fd puts the descriptor in blocking mode, and the mode belongs to the
// socket shared with the listener this process still accepts on. A
// blocking listener ties its accept goroutine up in accept(2), where
// closing it does not reach it (measured: the old process then never
// stopped).
func rawFD(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if err := rc.Control(func(u uintptr) { fd = int(u) }); err != nil {
		return -1, err
	}
	return fd, nil
}

// recv reads one message and the descriptors attached to it (as files the
// caller owns). io.EOF: the other end closed. The message's bytes are
// valid until the next recv.
func (s *socket) recv(deadline time.Time) ([]byte, []*os.File, error) {
	if s.buf == nil {
		s.buf = make([]byte, maxMessage+1)
	}
	buf := s.buf
	oob := make([]byte, unix.CmsgSpace(4*maxFilesPerMessage))
	_ = s.uc.SetReadDeadline(deadline)
	n, oobn, flags, _, err := s.uc.ReadMsgUnix(buf, oob)
	files, perr := parseRights(oob[:oobn])
	if err == nil {
		err = perr
	}
	if err == nil && flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		err = errors.New("handover message truncated")
	}
	if err == nil && n > maxMessage {
		err = errors.New("handover message too large")
	}
	if err != nil {
		closeFiles(files)
		return nil, nil, err
	}
	return buf[:n], files, nil
}

// parseRights returns the descriptors of the SCM_RIGHTS messages in oob.
func parseRights(oob []byte) ([]*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("handover control message: %w", err)
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue // not SCM_RIGHTS
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "handover"))
		}
	}
	return files, nil
}

func (s *socket) close() { _ = s.uc.Close() }

func closeFiles(files []*os.File) {
	for _, f := range files {
		_ = f.Close()
	}
}
