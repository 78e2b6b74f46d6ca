//go:build !linux

package engine

import "golang.org/x/sys/unix"

// ownedBuf holds the bytes of one large frame while it arrives, outside
// gnet's inbound buffer. Off Linux (no mremap) it is an ordinary slice that
// doubles and is left to the garbage collector when done.
type ownedBuf struct {
	b       []byte
	touched int // unused: a slice costs its capacity
}

func roundPage(n int) int { return n }

func (o *ownedBuf) reserve(need, limit int) error {
	if need <= cap(o.b) {
		return nil
	}
	nb := make([]byte, len(o.b), min(max(need, 2*cap(o.b), ownedFrameMin), limit))
	copy(nb, o.b)
	o.b = nb
	return nil
}

func (o *ownedBuf) free() { o.b = nil }

func (o *ownedBuf) touch() {}

func (o *ownedBuf) resident() int { return cap(o.b) }

// fionread is FIONREAD, _IOR('f', 127, int), on the BSDs and macOS (x/sys
// does not name it there).
const fionread = 0x4004667f

func unreadBytes(fd int) int {
	n, err := unix.IoctlGetInt(fd, fionread)
	if err != nil {
		return 0
	}
	return n
}
