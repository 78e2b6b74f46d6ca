package mlesdrv

import (
	"context"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mlesd/mlesd/client"
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

// backlogConn joins a connection of the driver to a bare listener and
// returns it with the server's side of it, its join already read.
func backlogConn(t *testing.T) (*client.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	d := New().(*Driver)
	c, err := d.dial(ctx, ln.Addr().String(), "idle-1", "storm", idleBufSize)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseNow() })
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	var hb [codec.HeaderLen]byte
	if _, err := io.ReadFull(s, hb[:]); err != nil {
		t.Fatal(err)
	}
	h, err := codec.ParseHeader(hb[:])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(io.Discard, s, int64(h.Len)); err != nil {
		t.Fatal(err)
	}
	return c, s
}

func joinFrame(uid string) []byte {
	f, _ := codec.AppendFrame(nil, 7, codec.Triplet{UID: uid, Channel: "storm"})
	return f
}

// nextUID is the uid of the next frame received on c.
func nextUID(t *testing.T, c *client.Conn) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	m, err := c.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return string(m.UID)
}

// drainQuiet is long enough that a loaded machine (-race, shared cores)
// delivers a backlog already written within it.
const drainQuiet = 200 * time.Millisecond

// What waited on a connection is all taken, more than fits its read buffer,
// and the next frame still parses.
func TestDrainFramesTakesTheWholeBacklog(t *testing.T) {
	c, s := backlogConn(t)
	var backlog []byte
	for i := range 500 {
		backlog = append(backlog, joinFrame(fmt.Sprintf("later-%d", i))...)
	}
	if len(backlog) <= idleBufSize {
		t.Fatalf("backlog of %d bytes fits the %d-byte read buffer", len(backlog), idleBufSize)
	}
	if _, err := s.Write(backlog); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := drainFrames(ctx, c, drainQuiet); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write(joinFrame("probe-1")); err != nil {
		t.Fatal(err)
	}
	if uid := nextUID(t, c); uid != "probe-1" {
		t.Fatalf("after the drain the next frame is %q's, want probe-1's", uid)
	}
}

// A drain that stops inside a frame (its rest is late) leaves the stream at
// that frame: the next receive completes it, then the next frame parses.
func TestDrainFramesStoppedInsideAFrameKeepsFrameAlignment(t *testing.T) {
	c, s := backlogConn(t)
	backlog := append(joinFrame("later-0"), joinFrame("later-1")...)
	split := joinFrame("later-2")
	half := len(split) / 2
	if _, err := s.Write(append(backlog, split[:half]...)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := drainFrames(ctx, c, drainQuiet); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write(append(split[half:], joinFrame("probe-1")...)); err != nil {
		t.Fatal(err)
	}
	if uid := nextUID(t, c); uid != "later-2" {
		t.Fatalf("after the drain the next frame is %q's, want the split later-2's", uid)
	}
	if uid := nextUID(t, c); uid != "probe-1" {
		t.Fatalf("after the split frame the next is %q's, want probe-1's", uid)
	}
}
