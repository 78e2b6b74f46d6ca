package client_test

import (
	"testing"
	"time"

	"github.com/mlesd/mlesd/client"
)

// Every option follows the project's rule: 0 keeps the default, Off turns
// off what can be off.
func TestOptionZeroIsTheDefaultAndOffIsOff(t *testing.T) {
	apply := func(opt client.Option) client.Options {
		t.Helper()
		var o client.Options
		if err := opt(&o); err != nil {
			t.Fatal(err)
		}
		return o
	}
	if o := apply(client.HistoryWindow(0)); o.HistoryWindow != client.DefaultHistoryWindow {
		t.Errorf("HistoryWindow(0) = %d, want the default %d", o.HistoryWindow, client.DefaultHistoryWindow)
	}
	if o := apply(client.HistoryWindow(client.Off)); o.HistoryWindow != 0 {
		t.Errorf("HistoryWindow(Off) = %d, want none", o.HistoryWindow)
	}
	if o := apply(client.DialTimeout(0)); o.DialTimeout != client.DefaultDialTimeout {
		t.Errorf("DialTimeout(0) = %v, want the default %v", o.DialTimeout, client.DefaultDialTimeout)
	}
	if o := apply(client.DialTimeout(client.Off)); o.DialTimeout != 0 {
		t.Errorf("DialTimeout(Off) = %v, want no bound (0 inside)", o.DialTimeout)
	}
	if o := apply(client.ReconnectWait(0, 0)); o.ReconnectWait != client.DefaultReconnectWait || o.MaxReconnectWait != client.DefaultMaxReconnectWait {
		t.Errorf("ReconnectWait(0, 0) = %v, %v, want the defaults", o.ReconnectWait, o.MaxReconnectWait)
	}
	if o := apply(client.BufferSizes(0, 0)); o.ReadBufferSize != 0 || o.WriteBufferSize != 0 {
		t.Errorf("BufferSizes(0, 0) changed the sizes: %d, %d", o.ReadBufferSize, o.WriteBufferSize)
	}
	var o client.Options
	if err := client.BufferSizes(client.Off, 0)(&o); err == nil {
		t.Error("BufferSizes(Off, 0) accepted: buffers cannot be off")
	}
	if err := client.ReconnectWait(-time.Second, 0)(&o); err == nil {
		t.Error("ReconnectWait(-1s, 0) accepted: the wait cannot be off")
	}
}

// DialTimeout(Off) leaves connecting to the context alone, and still works.
func TestDialTimeoutOffConnects(t *testing.T) {
	p := server(t, []string{"MLES_KEY=k"})
	c, err := client.Connect(p.Addr, "u", "dial-off", client.SharedKey("k"), client.DialTimeout(client.Off))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}
