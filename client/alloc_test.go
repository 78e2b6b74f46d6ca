package client_test

import (
	"context"
	"testing"
	"time"

	"github.com/mlesd/mlesd/client"
	"github.com/mlesd/mlesd/codec"
)

// pair joins a subscriber and a publisher on one channel of a real mlesd
// without history and waits until both are joined.
func pair(t testing.TB, opts ...client.Option) (sub, pub *client.Conn) {
	p := server(t, []string{"MLES_KEY=k"}, "--history-limit", "0")
	opts = append([]client.Option{client.SharedKey("k")}, opts...)
	sub, err := client.Connect(p.Addr, "sub", "alloc", opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Close() })
	pub, err = client.Connect(p.Addr, "pub", "alloc", opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })
	syncPair(t, sub, pub)
	return sub, pub
}

// syncPair returns once sub receives pub's frames (the server may have
// joined them in either order) and nothing from the handshake is left.
func syncPair(t testing.TB, sub, pub *client.Conn) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		pub.Send([]byte("sync"))
		if _, err := sub.Next(ctxFor(t, 100*time.Millisecond)); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("sub never received pub's frames")
		}
	}
	pub.Send([]byte("end"))
	for {
		m, err := sub.Next(ctxFor(t, 10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if string(m.Message) == "end" {
			return
		}
	}
}

func TestReceivingAFrameAllocatesNothing(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []client.Option
	}{
		{"plain", nil},
		{"with-reconnect-filter", []client.Option{client.MaxReconnects(-1)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sub, pub := pair(t, tc.opts...)
			const runs = 2000
			msg := make([]byte, 100)
			for range runs + 1 { // AllocsPerRun runs f once more to warm up
				if err := pub.Send(msg); err != nil {
					t.Fatal(err)
				}
			}
			pub.Flush()
			ctx := context.Background()
			allocs := testing.AllocsPerRun(runs, func() {
				m, err := sub.Next(ctx)
				if err != nil || len(m.Message) != len(msg) {
					t.Fatalf("Next: %v", err)
				}
			})
			if allocs != 0 {
				t.Fatalf("%.2f allocations per received frame, want 0", allocs)
			}
		})
	}
}

func TestSendingAFrameAllocatesNothing(t *testing.T) {
	_, pub := pair(t)
	msg := make([]byte, 100)
	allocs := testing.AllocsPerRun(2000, func() {
		if err := pub.Send(msg); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%.2f allocations per Send, want 0", allocs)
	}
	payload := codec.AppendTriplet(nil, codec.Triplet{UID: "pub", Channel: "alloc", Message: msg})
	allocs = testing.AllocsPerRun(2000, func() {
		if err := pub.SendPayload(payload); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%.2f allocations per SendPayload, want 0", allocs)
	}
}

// BenchmarkReceive: frames of 100 bytes through a real mlesd on loopback,
// received with a Msgs loop. Run with -benchmem: 0 allocs/op. The server
// drops frames for a receiver that falls behind, so the loop ends after an
// idle second too, and reports what it lost.
func BenchmarkReceive(b *testing.B) {
	sub, pub := pair(b)
	msg := make([]byte, 100)
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	go func() {
		for i := 0; i < b.N; i++ {
			if pub.Send(msg) != nil {
				return
			}
		}
		pub.Flush()
	}()
	n := 0
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	idle := time.AfterFunc(time.Second, cancel)
	b.ResetTimer()
	for _, err := range sub.Msgs(ctx) {
		if err != nil {
			break
		}
		if n++; n == b.N {
			break
		}
		if n%1024 == 0 {
			idle.Reset(time.Second)
		}
	}
	b.StopTimer()
	idle.Stop()
	b.ReportMetric(float64(b.N-n), "lost")
}

// BenchmarkSend: Send of 100-byte messages through a real mlesd.
func BenchmarkSend(b *testing.B) {
	_, pub := pair(b)
	msg := make([]byte, 100)
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		if err := pub.Send(msg); err != nil {
			b.Fatal(err)
		}
	}
	pub.Flush()
}

// wsPair joins a WebSocket subscriber (through mlesd's gateway) and a TCP
// publisher on one channel of a real mlesd without history.
func wsPair(t testing.TB) (sub, pub *client.Conn) {
	ws := freeAddr(t)
	p := server(t, []string{"MLES_KEY=k"}, "--history-limit", "0", "--ws-listen", ws)
	waitFor(t, ws)
	sub, err := client.Connect("ws://"+ws, "sub", "alloc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Close() })
	pub, err = client.Connect(p.Addr, "pub", "alloc", client.SharedKey("k"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })
	syncPair(t, sub, pub)
	return sub, pub
}

func TestReceivingAFrameOverWebSocketAllocatesNothing(t *testing.T) {
	sub, pub := wsPair(t)
	const runs = 1000
	msg := make([]byte, 100)
	for range runs + 1 {
		if err := pub.Send(msg); err != nil {
			t.Fatal(err)
		}
	}
	pub.Flush()
	ctx := context.Background()
	allocs := testing.AllocsPerRun(runs, func() {
		m, err := sub.Next(ctx)
		if err != nil || len(m.Message) != len(msg) {
			t.Fatalf("Next: %v", err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%.2f allocations per frame received over WebSocket, want 0", allocs)
	}
}
