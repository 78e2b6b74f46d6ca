package mlesdrv

import (
	"context"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mlesd/mlesd/codec"
)

// checkServer accepts an idle connection and then a probe, reads both join
// frames and forwards them as forward says: "to-idle" the probe's join to the
// idle connection (the server handled the idle join first), "to-probe" the
// idle connection's join to the probe (it handled the probe's first),
// "none" nothing.
func checkServer(t *testing.T, forward string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	readJoin := func(c net.Conn) []byte {
		var hb [codec.HeaderLen]byte
		if _, err := io.ReadFull(c, hb[:]); err != nil {
			return nil
		}
		h, _ := codec.ParseHeader(hb[:])
		f := make([]byte, codec.HeaderLen+h.Len)
		copy(f, hb[:])
		if _, err := io.ReadFull(c, f[codec.HeaderLen:]); err != nil {
			return nil
		}
		return f
	}
	go func() {
		idle, err := ln.Accept()
		if err != nil {
			return
		}
		defer idle.Close()
		idleJoin := readJoin(idle)
		probe, err := ln.Accept()
		if err != nil {
			return
		}
		defer probe.Close()
		probeJoin := readJoin(probe)
		switch forward {
		case "to-idle":
			idle.Write(probeJoin)
		case "to-probe":
			probe.Write(idleJoin)
		}
		time.Sleep(2 * time.Second) // keep both open while the test looks
	}()
	return ln.Addr().String()
}

func checkIdle(t *testing.T, forward string, within time.Duration) error {
	t.Helper()
	addr := checkServer(t, forward)
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	d := New().(*Driver)
	c, err := d.Idle(ctx, addr, "storm")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.Check(ctx, addr)
}

func TestCheckSeesTheProbesJoinAtTheIdleConnection(t *testing.T) {
	if err := checkIdle(t, "to-idle", time.Second); err != nil {
		t.Fatal(err)
	}
}

// The server may handle the probe's join before the idle connection's (they
// can be on different event loops): then the probe gets the idle
// connection's join, which proves it joined just as well.
func TestCheckSeesTheIdleConnectionsJoinAtTheProbe(t *testing.T) {
	start := time.Now()
	if err := checkIdle(t, "to-probe", 3*time.Second); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("Check took %v: it waited for the deadline instead of seeing the join at the probe", took)
	}
}

func TestCheckFailsWhenNeitherJoinIsForwarded(t *testing.T) {
	if err := checkIdle(t, "none", 300*time.Millisecond); err == nil {
		t.Fatal("Check passed though the server forwarded no join")
	}
}

// What waited on a connection is read whole frame by whole frame, so the
// next frame still parses.
func TestDrainFramesStopsAtAFrameBoundary(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var backlog []byte
	for i := range 500 {
		backlog, _ = codec.AppendFrame(backlog, 7, codec.Triplet{UID: fmt.Sprintf("later-%d", i), Channel: "storm"})
	}
	if _, err := s.Write(backlog); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // all of it is in c's receive buffer
	if err := drainFrames(c.(*net.TCPConn), 10*time.Millisecond, time.Now().Add(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	next, _ := codec.AppendFrame(nil, 7, codec.Triplet{UID: "probe-1", Channel: "storm"})
	s.Write(next)
	if err := readJoinFrom(c.(*net.TCPConn), time.Now().Add(2*time.Second), "probe-1"); err != nil {
		t.Fatalf("after the drain: %v", err)
	}
}
