package engine

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// ownedBuf holds the bytes of one large frame while it arrives, outside both
// gnet's inbound buffer and the Go heap: an anonymous private mapping that
// grows with mremap (the kernel moves page tables; nothing is copied) and is
// unmapped when the frame is done or its connection closes. So the memory it
// costs is exactly the pages its bytes have touched, and that memory goes back
// to the kernel at once, without waiting for a garbage collection or a pool
// to forget it. A mapping is a few system calls per large frame, never per
// small one, and takes no lock and allocates nothing in Go.
//
// Loop-owned, like the conn that holds it.
type ownedBuf struct {
	b       []byte // len: bytes held; cap: bytes mapped (page multiple); nil = nothing mapped
	touched int    // bytes of the mapping ever written (a reused one may hold more than len)
}

// pageSize is the unit the kernel gives memory in.
var pageSize = unix.Getpagesize()

func roundPage(n int) int { return (n + pageSize - 1) &^ (pageSize - 1) }

// reserve makes room for at least need bytes in total, mapping up to limit
// (the frame's whole length) at once when it grows: the mapping doubles, so a
// frame costs a handful of calls, and untouched pages cost nothing.
func (o *ownedBuf) reserve(need, limit int) error {
	if need <= cap(o.b) {
		return nil
	}
	size := roundPage(min(max(need, 2*cap(o.b), ownedFrameMin), roundPage(limit)))
	var (
		p   unsafe.Pointer
		err error
	)
	if o.b == nil {
		p, err = unix.MmapPtr(-1, 0, nil, uintptr(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	} else {
		p, err = unix.MremapPtr(unsafe.Pointer(unsafe.SliceData(o.b)), uintptr(cap(o.b)), nil, uintptr(size), unix.MREMAP_MAYMOVE)
	}
	if err != nil {
		return err
	}
	o.b = unsafe.Slice((*byte)(p), size)[:len(o.b)]
	return nil
}

// free returns the mapping to the kernel.
func (o *ownedBuf) free() {
	if o.b == nil {
		return
	}
	_ = unix.MunmapPtr(unsafe.Pointer(unsafe.SliceData(o.b)), uintptr(cap(o.b)))
	o.b, o.touched = nil, 0
}

// touch records that the bytes up to len have been written.
func (o *ownedBuf) touch() { o.touched = max(o.touched, roundPage(len(o.b))) }

// resident is the memory the buffer occupies: the pages ever touched.
func (o *ownedBuf) resident() int { return o.touched }

// unreadBytes is how many bytes the kernel holds for fd that nobody has read
// yet (the client sent them; the server has not got to them).
func unreadBytes(fd int) int {
	n, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
	if err != nil {
		return 0
	}
	return n
}
