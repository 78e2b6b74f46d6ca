package codec

import (
	"net/netip"
	"os"
	"strconv"
	"sync"

	"github.com/dchest/siphash"
)

// keyStackLen is the size of the on-stack buffer for the SipHash input;
// longer inputs use a pooled buffer.
const keyStackLen = 1024

var keyPool = sync.Pool{New: func() any { b := make([]byte, 0, 4*keyStackLen); return &b }}

// Key returns the Mles key of a list of strings: SipHash-2-4 with the
// all-zero 128-bit key over each string's UTF-8 bytes followed by one 0xFF
// byte (what Rust's Hash for str feeds the hasher). It does not allocate
// when the total input is at most 1 KiB.
func Key(strs ...string) uint64 {
	return keyOf(nil, strs...)
}

// keyOf is Key with an optional first element given as bytes (an address
// string built on the caller's stack). A nil prefix means "no element".
func keyOf(prefix []byte, strs ...string) uint64 {
	n := 0
	if prefix != nil {
		n = len(prefix) + 1
	}
	for _, s := range strs {
		n += len(s) + 1
	}
	var stack [keyStackLen]byte
	var p []byte
	if n <= len(stack) {
		p = stack[:0]
	} else {
		bp := keyPool.Get().(*[]byte)
		defer func() {
			if cap(*bp) <= 1<<20 { // do not keep huge buffers around
				keyPool.Put(bp)
			}
		}()
		if cap(*bp) < n {
			*bp = make([]byte, 0, n)
		}
		p = (*bp)[:0]
	}
	if prefix != nil {
		p = append(p, prefix...)
		p = append(p, 0xFF)
	}
	for _, s := range strs {
		p = append(p, s...)
		p = append(p, 0xFF)
	}
	return siphash.Hash(0, 0, p)
}

// AppendAddr appends the address string the original server hashes for ap:
// "a.b.c.d:port" for IPv4, and "[h:h:h:h:h:h:h:h]:port" for IPv6 with all
// eight groups in lowercase hex without leading zeros, never "::"
// compressed, no dotted quad (also for IPv4-mapped addresses) and no zone.
// An IPv4-mapped address is printed in its IPv6 form; use ap.Addr().Unmap()
// for the IPv4 form. The zero AddrPort (invalid address) appends nothing.
func AppendAddr(dst []byte, ap netip.AddrPort) []byte {
	a := ap.Addr()
	switch {
	case a.Is4():
		b := a.As4()
		dst = strconv.AppendUint(dst, uint64(b[0]), 10)
		dst = append(dst, '.')
		dst = strconv.AppendUint(dst, uint64(b[1]), 10)
		dst = append(dst, '.')
		dst = strconv.AppendUint(dst, uint64(b[2]), 10)
		dst = append(dst, '.')
		dst = strconv.AppendUint(dst, uint64(b[3]), 10)
	case a.Is6():
		b := a.As16()
		dst = append(dst, '[')
		for i := 0; i < 16; i += 2 {
			if i > 0 {
				dst = append(dst, ':')
			}
			dst = strconv.AppendUint(dst, uint64(b[i])<<8|uint64(b[i+1]), 16)
		}
		dst = append(dst, ']')
	default:
		return dst
	}
	dst = append(dst, ':')
	return strconv.AppendUint(dst, uint64(ap.Port()), 10)
}

// AddrString returns AppendAddr's string for ap.
func AddrString(ap netip.AddrPort) string {
	var buf [maxAddrLen]byte
	return string(AppendAddr(buf[:0], ap))
}

// maxAddrLen bounds AppendAddr's output: "[" + 8*4 hex + 7 ":" + "]:" + 5 digits.
const maxAddrLen = 1 + 8*4 + 7 + 2 + 5

// KeyConfig is a server's (or a client's) key setting. An empty string
// means "not set", as in the original.
type KeyConfig struct {
	SharedKey string // MLES_KEY
	AddrKey   string // MLES_ADDR_KEY, only used when SharedKey is empty
}

// KeyConfigFromEnv reads MLES_KEY and MLES_ADDR_KEY from the environment.
func KeyConfigFromEnv() KeyConfig {
	return KeyConfig{SharedKey: os.Getenv("MLES_KEY"), AddrKey: os.Getenv("MLES_ADDR_KEY")}
}

// ClientKey returns the key a client whose own local address is local
// computes for (uid, channel): Key(SharedKey, uid, channel) when SharedKey
// is set, else Key(AddrString(local), [AddrKey,] uid, channel).
func (kc KeyConfig) ClientKey(local netip.AddrPort, uid, channel string) uint64 {
	if kc.SharedKey != "" {
		return Key(kc.SharedKey, uid, channel)
	}
	var buf [maxAddrLen]byte
	return kc.addrKey(AppendAddr(buf[:0], local), uid, channel)
}

func (kc KeyConfig) addrKey(addr []byte, uid, channel string) uint64 {
	if addr == nil {
		addr = []byte{}
	}
	if kc.AddrKey != "" {
		return keyOf(addr, kc.AddrKey, uid, channel)
	}
	return keyOf(addr, uid, channel)
}

// Accepts reports whether key is a valid join key for (uid, channel) from a
// client that the server sees at remote. With SharedKey set the address is
// ignored. Otherwise the key must match the address form of remote; for an
// IPv4-mapped IPv6 remote (::ffff:a.b.c.d) both the plain IPv4 form
// "a.b.c.d:port" and the mapped IPv6 form "[0:0:0:0:0:ffff:xxxx:xxxx]:port"
// are accepted (see the spec, Decisions). An invalid remote address never
// matches an address key. Accepts does not allocate for inputs up to 1 KiB.
func (kc KeyConfig) Accepts(key uint64, remote netip.AddrPort, uid, channel string) bool {
	if kc.SharedKey != "" {
		return key == Key(kc.SharedKey, uid, channel)
	}
	a := remote.Addr()
	if !a.IsValid() {
		return false
	}
	var buf [maxAddrLen]byte
	if key == kc.addrKey(AppendAddr(buf[:0], remote), uid, channel) {
		return true
	}
	if a.Is4In6() {
		v4 := netip.AddrPortFrom(a.Unmap(), remote.Port())
		return key == kc.addrKey(AppendAddr(buf[:0], v4), uid, channel)
	}
	return false
}
