// Command naivemles is the baseline the issue measures mlesd against: a naive
// Mles v1 forwarder, one goroutine per connection reading frames and one
// writer goroutine per connection with a buffered writer that flushes when its
// queue runs empty. No event loop, no shared buffers (one allocation per
// frame), a per-channel member list behind a mutex. Shared key only, no
// history, no peering. Not a server to deploy: a yardstick.
//
//	MLES_KEY=bench naivemles --listen 127.0.0.1:8077
package main

import (
	"bufio"
	"flag"
	"io"
	"log"
	"net"
	"os"
	"sync"

	"github.com/mlesd/mlesd/codec"
)

// queueLen bounds each receiver's queue in frames; a full queue drops the
// frame for that receiver alone (as mlesd does), never blocks the sender.
const queueLen = 16384

type member struct {
	cid uint32
	out chan []byte
}

type channel struct {
	mu      sync.Mutex
	members []*member // copy-on-write: readers take the slice under mu and range it without
}

var (
	chMu     sync.Mutex
	channels = map[string]*channel{}
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8077", "address to listen on")
	flag.Parse()
	keys := codec.KeyConfig{SharedKey: os.Getenv("MLES_KEY")}
	if keys.SharedKey == "" {
		log.Fatal("naivemles needs MLES_KEY")
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	for {
		c, err := l.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go serve(c.(*net.TCPConn), keys)
	}
}

func readFrame(r *bufio.Reader) ([]byte, codec.Header, error) {
	hb, err := r.Peek(codec.HeaderLen)
	if err != nil {
		return nil, codec.Header{}, err
	}
	h, err := codec.ParseHeader(hb)
	if err != nil {
		return nil, h, err
	}
	f := make([]byte, codec.HeaderLen+h.Len)
	_, err = io.ReadFull(r, f)
	return f, h, err
}

func serve(c *net.TCPConn, keys codec.KeyConfig) {
	defer c.Close()
	c.SetNoDelay(true)
	c.SetKeepAlive(true)
	r := bufio.NewReaderSize(c, 64<<10)
	join, h, err := readFrame(r)
	if err != nil {
		return
	}
	t, err := codec.DecodeTriplet(join[codec.HeaderLen:])
	if err != nil {
		return
	}
	remote := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	if !keys.Accepts(h.Key, remote, t.UID, t.Channel) {
		return
	}
	me := &member{cid: h.CID, out: make(chan []byte, queueLen)}

	chMu.Lock()
	ch := channels[t.Channel]
	if ch == nil {
		ch = &channel{}
		channels[t.Channel] = ch
	}
	ch.mu.Lock()
	for _, m := range ch.members {
		if m.cid == me.cid {
			ch.mu.Unlock()
			chMu.Unlock()
			return // duplicate CID
		}
	}
	ch.members = append(append([]*member(nil), ch.members...), me)
	ch.mu.Unlock()
	chMu.Unlock()

	quit, done := make(chan struct{}), make(chan struct{})
	go func() { // writer: coalesce while the queue has frames, flush when it runs dry
		defer close(done)
		w := bufio.NewWriterSize(c, 64<<10)
		for {
			select {
			case f := <-me.out:
				if _, err := w.Write(f); err != nil {
					return
				}
				if len(me.out) == 0 && w.Flush() != nil {
					return
				}
			case <-quit:
				return
			}
		}
	}()

	forward := func(f []byte) {
		ch.mu.Lock()
		ms := ch.members
		ch.mu.Unlock()
		for _, m := range ms {
			if m == me {
				continue
			}
			select {
			case m.out <- f:
			default: // receiver not keeping up: dropped for it alone
			}
		}
	}
	forward(join)
	for {
		f, _, err := readFrame(r)
		if err != nil {
			break
		}
		forward(f)
	}

	chMu.Lock()
	ch.mu.Lock()
	var rest []*member
	for _, m := range ch.members {
		if m != me {
			rest = append(rest, m)
		}
	}
	ch.members = rest
	if len(rest) == 0 {
		delete(channels, t.Channel)
	}
	ch.mu.Unlock()
	chMu.Unlock()
	// me.out is never closed: another reader may still hold a member list
	// with me in it; its non-blocking sends just fill the abandoned queue.
	close(quit)
	c.Close() // unblocks a writer stuck on a receiver that does not read
	<-done
}
