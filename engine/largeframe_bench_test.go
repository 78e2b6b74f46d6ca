package engine

import (
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/router"
)

// BenchmarkLargeFramesOverTCP forwards large frames from one publisher to
// one subscriber over loopback, at most 4 MiB in flight, through the whole engine: large frames are
// assembled outside gnet's buffer, so this is what that costs end to end.
func BenchmarkLargeFramesOverTCP(b *testing.B) {
	for _, size := range []int{256 << 10, 1 << 20, 8 << 20} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			ts := startServer(b, Config{Keys: sharedKeys, Loops: 2}, router.Config{HistoryLimit: -1})
			sub := ts.join(b, sharedKeys, "sub", "big", nil)
			pub := ts.join(b, sharedKeys, "pub", "big", nil)
			sub.expect(pub.frame(nil))
			f := pub.frame(make([]byte, size))
			// At most 4 MiB in flight: more would pass the receiver's backlog
			// bound and be dropped for it.
			window := make(chan struct{}, max(1, (4<<20)/len(f)))
			done := make(chan error, 1)
			go func() {
				buf := make([]byte, len(f))
				for i := 0; i < b.N; i++ {
					_ = sub.nc.SetReadDeadline(time.Now().Add(20 * time.Second))
					if _, err := io.ReadFull(sub.r, buf); err != nil {
						done <- err
						return
					}
					if h, err := codec.ParseHeader(buf); err != nil || h.Len != len(f)-codec.HeaderLen {
						done <- fmt.Errorf("bad frame: %v", err)
						return
					}
					<-window
				}
				done <- nil
			}()
			b.SetBytes(int64(len(f)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				window <- struct{}{}
				pub.write(f)
			}
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		})
	}
}
