package gateway

import "sync"

// msgBuf holds one WebSocket message while it arrives. Up to mediumBuf
// bytes it lives in a pooled heap buffer; beyond that in an anonymous
// memory mapping grown in place (mremap on Linux), so that the pages of a
// large message go back to the system the moment it is done or abandoned,
// not whenever the Go heap next shrinks. held is what the buffer really
// occupies (its capacity), which is what the memory budget counts.
//
// A msgBuf is owned by its session's reader goroutine; nothing else may
// touch it.
type msgBuf struct {
	b      []byte  // the message so far; cap(b) is held
	region []byte  // the whole mapping (len == cap), when mapped
	pooled *[]byte // the pooled heap buffer, when not mapped
}

// Buffer classes: most Mles messages are chat lines and fit the first;
// the second is one pooled step before paying for a mapping.
const (
	smallBuf  = 4 << 10
	mediumBuf = 64 << 10
	// mapStep is how a mapped buffer grows: doubling from mediumBuf to
	// mapStep, then by mapStep at a time, so that what is held (and
	// counted) stays within mapStep of what arrived.
	mapStep = 1 << 20
)

var (
	smallPool  = sync.Pool{New: func() any { b := make([]byte, smallBuf); return &b }}
	mediumPool = sync.Pool{New: func() any { b := make([]byte, mediumBuf); return &b }}
)

// nextCap is the capacity to grow a buffer of capacity c to, for a message
// that may need up to most bytes.
func nextCap(c, most int) int {
	var n int
	switch {
	case c < smallBuf:
		n = smallBuf
	case c < mediumBuf:
		n = mediumBuf
	case c < mapStep:
		n = min(2*c, mapStep)
	default:
		n = c + mapStep
	}
	if n > mediumBuf {
		n = min(n, roundPage(most))
	}
	return max(n, c+1)
}

// grow makes the capacity n (more than now), keeping the contents. On
// error (no memory, no mappings left) the buffer is unchanged.
func (m *msgBuf) grow(n int) error {
	switch {
	case n <= smallBuf:
		m.fromPool(&smallPool)
	case n <= mediumBuf:
		m.fromPool(&mediumPool)
	default:
		n = roundPage(n)
		if m.region != nil {
			r, err := remap(m.region, n)
			if err != nil {
				return err
			}
			m.region, m.b = r, r[:len(m.b)]
			return nil
		}
		r, err := mapAnon(n)
		if err != nil {
			return err
		}
		copy(r, m.b)
		r = r[:len(m.b)]
		m.putPooled()
		m.region, m.b = r[:cap(r)], r
	}
	return nil
}

func (m *msgBuf) fromPool(p *sync.Pool) {
	nb := p.Get().(*[]byte)
	b := (*nb)[:len(m.b)]
	copy(b, m.b)
	m.putPooled()
	m.pooled, m.b = nb, b
}

func (m *msgBuf) putPooled() {
	if m.pooled == nil {
		return
	}
	if cap(*m.pooled) == smallBuf {
		smallPool.Put(m.pooled)
	} else {
		mediumPool.Put(m.pooled)
	}
	m.pooled = nil
}

// free gives the memory back (to the pool, or unmaps it); the buffer is
// empty afterwards. Nothing may still refer to the old contents.
func (m *msgBuf) free() {
	m.putPooled()
	if m.region != nil {
		unmap(m.region)
		m.region = nil
	}
	m.b = nil
}
