package engine

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/mlesd/mlesd/internal/mlestest"
	"github.com/mlesd/mlesd/router"
)

// A second server built on a descriptor of the first one's listening socket
// serves the same address; once the first stops accepting, every new
// connection reaches the second, while the first keeps serving the
// connections it has.
func TestInheritedListenerTakesNewConnectionsWhileTheOldServerKeepsItsOwn(t *testing.T) {
	old := startServer(t, Config{Keys: sharedKeys}, router.Config{})
	k := sharedKeys.SharedKey
	a := mlestest.Join(t, old.addr, k, "a", "kept")
	b := mlestest.Join(t, old.addr, k, "b", "kept")
	mlestest.Sync(t, a, b)
	mlestest.Sync(t, b, a)

	files, err := old.srv.ListenerFiles()
	if err != nil {
		t.Fatal(err)
	}
	f := files["127.0.0.1:0"]
	if f == nil || len(files) != 1 {
		t.Fatalf("listener files %v, want one for 127.0.0.1:0", files)
	}
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	r := router.New(router.Config{})
	defer r.Close()
	heir, err := New(Config{Listen: []string{"127.0.0.1:0"}, Loops: 2, Keys: sharedKeys}, r)
	if err != nil {
		t.Fatal(err)
	}
	if err := heir.Inherit(map[string]net.Listener{"127.0.0.1:0": ln}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- heir.Serve() }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = heir.Stop(ctx)
		<-done
	}()
	<-heir.Ready()
	if got := heir.Addrs(); len(got) != 1 || got[0].String() != old.addr {
		t.Fatalf("heir serves %v, want %s", got, old.addr)
	}

	stopped := make(chan struct{})
	go func() { old.srv.StopAccepting(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("StopAccepting did not return")
	}
	acceptedByOld := old.srv.Stats().Accepted
	for range 5 {
		mlestest.Exchange(t, old.addr, k)
	}
	if n := old.srv.Stats().Accepted; n != acceptedByOld {
		t.Fatalf("the old server accepted %d connections after StopAccepting", n-acceptedByOld)
	}
	if n := heir.Stats().Accepted; n < 10 {
		t.Fatalf("the heir accepted %d connections, want the 10 dialled", n)
	}
	if err := a.Send([]byte("still here")); err != nil {
		t.Fatal(err)
	}
	for {
		tr, err := b.Read(5 * time.Second)
		if err != nil {
			t.Fatalf("the old server stopped serving its connections: %v", err)
		}
		if string(tr.Message) == "still here" {
			break
		}
	}
}

func TestInheritAfterServeIsRefused(t *testing.T) {
	s := startServer(t, Config{}, router.Config{})
	if err := s.srv.Inherit(map[string]net.Listener{}); err == nil {
		t.Fatal("Inherit after Serve succeeded")
	}
}
