package upgrade

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestOfferReplyAndCommitRoundTrip(t *testing.T) {
	offer := Offer{Kind: kindOffer, Format: FormatVersion, Sender: "v1.2.3", PID: 42,
		Files: []FileID{{RoleMles, "[::]:8077"}, {RoleMetrics, "127.0.0.1:9477"}}}
	b, err := encMode.Marshal(offer)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeOffer(b)
	if err != nil || !reflect.DeepEqual(got, offer) {
		t.Fatalf("offer: %+v, %v; want %+v", got, err, offer)
	}
	reply := Reply{Kind: kindReply, Format: FormatVersion, Version: "v2", PID: 43, Ready: true}
	b, _ = encMode.Marshal(reply)
	if r, err := DecodeReply(b); err != nil || r != reply {
		t.Fatalf("reply: %+v, %v", r, err)
	}
	b, _ = encMode.Marshal(Commit{Kind: kindCommit, Format: FormatVersion})
	if _, err := DecodeCommit(b); err != nil {
		t.Fatal(err)
	}
}

func TestMessageInAnUnknownFormatIsRefused(t *testing.T) {
	b, _ := encMode.Marshal(Offer{Kind: kindOffer, Format: FormatVersion + 1, Sender: "v9",
		Files: []FileID{{RoleMles, ":1"}}})
	_, err := DecodeOffer(b)
	if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "format 2 (this build reads 1)") {
		t.Fatalf("err = %v, want ErrFormat naming both formats", err)
	}
}

func TestMessageOfTheWrongKindIsRefused(t *testing.T) {
	b, _ := encMode.Marshal(Commit{Kind: kindCommit, Format: FormatVersion})
	if _, err := DecodeOffer(b); err == nil {
		t.Fatal("a commit decoded as an offer")
	}
}

func TestReplyThatIsNeitherReadyNorARefusalIsRefused(t *testing.T) {
	b, _ := encMode.Marshal(Reply{Kind: kindReply, Format: FormatVersion})
	if _, err := DecodeReply(b); err == nil {
		t.Fatal("an empty reply decoded")
	}
}

func TestOfferWithAnUnknownRoleIsRefused(t *testing.T) {
	b, _ := encMode.Marshal(Offer{Kind: kindOffer, Format: FormatVersion, Files: []FileID{{"telnet", ":23"}}})
	if _, err := DecodeOffer(b); err == nil {
		t.Fatal("an unknown role decoded")
	}
}

func TestStateRoundTrips(t *testing.T) {
	frame := append(make([]byte, 16), "hello"...)
	conn := &ConnState{ID: 7, FD: 2, Remote: "192.0.2.1:5000", Local: "192.0.2.2:8077", Phase: PhaseJoined,
		UID: "u", Channel: "c", CID: 0xdeadbeef, JoinFrame: frame, Partial: frame[:9], PartialAgeNs: 5,
		Owed: append(frame[3:], frame...), OwedWhole: uint32(len(frame) - 3), IdleNs: 1, Dropped: 3,
		Uplink: &UplinkState{Peer: "peer:8077", Resynced: true, Attempt: 2, SeenKey: [2]uint64{1, 1 << 63}, Seen: []uint64{3, 1 << 62},
			ReplayLeft: 97, Replay: []uint64{3, 3}}}
	ch := &ChannelState{Name: "c", History: [][]byte{frame, frame}, Members: []uint64{7, 8}, CIDs: []uint32{1, 0xdeadbeef},
		FirstJoin: frame}
	chunk := &Chunk{Conn: 7, Seq: 1, Owed: frame}
	totals := &Totals{Counters: map[string]uint64{`mlesd_frames_in_total`: 10, `mlesd_closed_total{reason="stall"}`: 2}}
	for _, v := range []any{conn, ch, chunk, totals} {
		b, err := EncodeState(v)
		if err != nil {
			t.Fatal(err)
		}
		var got any
		switch v.(type) {
		case *ConnState:
			c, err := DecodeConnState(b)
			got = &c
			if err != nil {
				t.Fatal(err)
			}
		case *ChannelState:
			c, err := DecodeChannelState(b)
			got = &c
			if err != nil {
				t.Fatal(err)
			}
		case *Chunk:
			c, err := DecodeChunk(b)
			got = &c
			if err != nil {
				t.Fatal(err)
			}
		case *Totals:
			c, err := DecodeTotals(b)
			got = &c
			if err != nil {
				t.Fatal(err)
			}
		}
		if !reflect.DeepEqual(got, v) {
			t.Fatalf("round trip of %T:\n got %+v\nwant %+v", v, got, v)
		}
	}
}

func TestInconsistentConnStateIsRefused(t *testing.T) {
	for name, c := range map[string]ConnState{
		"no id":                {FD: 0, Phase: PhaseAwaitingJoin},
		"joined without chan":  {ID: 1, Phase: PhaseJoined, UID: "u"},
		"awaiting with a chan": {ID: 1, Phase: PhaseAwaitingJoin, Channel: "c"},
		"unknown phase":        {ID: 1, Phase: 9},
		"tail beyond owed":     {ID: 1, Phase: PhaseAwaitingJoin, Owed: []byte{1}, OwedWhole: 2},
		"descriptor index":     {ID: 1, FD: 300},
		"negative age":         {ID: 1, IdleNs: -1},
		"uplink log too long": {ID: 1, Phase: PhaseJoined, UID: "u", Channel: "c",
			Uplink: &UplinkState{Peer: "p", Seen: make([]uint64, MaxSeen+1)}},
	} {
		b, _ := EncodeState(&c)
		if _, err := DecodeConnState(b); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}

func TestStateInAnotherFormatIsRefused(t *testing.T) {
	b, _ := encMode.Marshal(ConnState{Kind: kindConn, Format: StateFormat + 1, ID: 1})
	if _, err := DecodeConnState(b); !errors.Is(err, ErrFormat) {
		t.Fatalf("err = %v, want ErrFormat", err)
	}
}

// A reader of the pid file sees the old PID or the new one, never a torn
// or empty file, while it is rewritten.
func TestPIDFileIsReplacedAtomically(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mlesd.pid")
	if err := WritePIDFile(path); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var bad error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if pid, err := ReadPIDFile(path); err != nil || pid != os.Getpid() {
				bad = errors.Join(err, errors.New("wrong pid"))
				return
			}
		}
	}()
	for range 200 {
		if err := WritePIDFile(path); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if bad != nil {
		t.Fatalf("a reader saw: %v", bad)
	}
	left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*tmp*"))
	if len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

func TestPIDFileNamingAnotherProcessIsNotRemoved(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mlesd.pid")
	if err := os.WriteFile(path, []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	RemovePIDFile(path)
	if _, err := os.Stat(path); err != nil {
		t.Fatal("removed a pid file naming another process")
	}
	_ = WritePIDFile(path)
	RemovePIDFile(path)
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatal("kept its own pid file")
	}
}

func TestNotifySendsTheStateAsOneDatagram(t *testing.T) {
	addr := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t.Setenv("NOTIFY_SOCKET", addr)
	if err := Notify("MAINPID=42"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 256)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "MAINPID=42" {
		t.Fatalf("got %q, %v", buf[:n], err)
	}
	t.Setenv("NOTIFY_SOCKET", "")
	if err := Notify("READY=1"); err != nil {
		t.Fatalf("without NOTIFY_SOCKET: %v", err)
	}
}

func TestExecutableKeepsTheStartPathNotTheLinkTarget(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "mlesd-1.0")
	if err := os.WriteFile(real, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "mlesd")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	got, err := Executable(link)
	if err != nil || got != link {
		t.Fatalf("Executable(%q) = %q, %v; want the link itself", link, got, err)
	}
	t.Chdir(dir)
	if got, err := Executable("./mlesd"); err != nil || got != link {
		t.Fatalf("Executable(./mlesd) = %q, %v; want %q", got, err, link)
	}
}
