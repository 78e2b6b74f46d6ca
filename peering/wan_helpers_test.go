package peering_test

// A small WAN for the WAN fault test (e2e_wan_test.go): three network
// namespaces made for one test, A and B each with one end of a veth pair
// and R in the middle holding the other two ends, which this process
// bridges in user space (raw packet sockets), delaying every packet and
// dropping some, or all of them while partitioned. (tc netem would do the
// delay and loss in the kernel, but it is not built into every kernel;
// this needs only veth and AF_PACKET.) Everything is removed by the test's
// cleanup, whatever happened.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/internal/mlestest"
)

// wan is the namespaces and the bridge between A and B.
type wan struct {
	nsA, nsB, nsR string
	ipA, ipB      string // A's and B's addresses on the link
	delay         time.Duration
	loss          float64      // fraction of packets dropped, each way
	cut           atomic.Bool  // partitioned: every packet dropped
	lost          atomic.Int64 // packets dropped at random (loss)
	dropped       atomic.Int64 // packets dropped by the partition or a full queue
	passed        atomic.Int64
	fds           []int
	wg            sync.WaitGroup
	stop          atomic.Bool
}

// run runs a command, failing the test with its output on error.
func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// newWAN builds the namespaces and starts the bridge: one-way delay delay,
// loss the fraction of packets lost each way.
func newWAN(t *testing.T, delay time.Duration, loss float64) *wan {
	t.Helper()
	// Unique per run: names have at most 15 bytes (interfaces), the
	// subnet is private to the namespaces.
	id := fmt.Sprintf("%06x", rand.IntN(1<<24))
	w := &wan{nsA: "mlesdwan" + id + "a", nsB: "mlesdwan" + id + "b", nsR: "mlesdwan" + id + "r",
		delay: delay, loss: loss}
	subnet := fmt.Sprintf("10.%d.%d", 100+rand.IntN(150), rand.IntN(250))
	w.ipA, w.ipB = subnet+".1", subnet+".2"
	for _, ns := range []string{w.nsA, w.nsB, w.nsR} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	}
	for _, side := range []struct{ ns, ip, end, mid string }{
		{w.nsA, w.ipA, "mw" + id + "a", "mw" + id + "ra"},
		{w.nsB, w.ipB, "mw" + id + "b", "mw" + id + "rb"},
	} {
		run(t, "ip", "link", "add", side.end, "type", "veth", "peer", "name", side.mid)
		// Until both ends are moved, deleting the namespaces would not
		// remove the pair.
		t.Cleanup(func() { _ = exec.Command("ip", "link", "del", side.end).Run() })
		run(t, "ip", "link", "set", side.end, "netns", side.ns)
		run(t, "ip", "link", "set", side.mid, "netns", w.nsR)
		run(t, "ip", "-n", side.ns, "addr", "add", side.ip+"/24", "dev", side.end)
		// No segmentation offload: every packet the bridge sees is one the
		// wire would carry (at most the MTU), so loss is per packet.
		run(t, "ip", "-n", side.ns, "link", "set", "dev", side.end, "gso_max_segs", "1", "gso_max_size", "1500")
		run(t, "ip", "-n", side.ns, "link", "set", side.end, "up")
		run(t, "ip", "-n", side.ns, "link", "set", "lo", "up")
		run(t, "ip", "-n", w.nsR, "link", "set", side.mid, "promisc", "on", "up")
	}
	ra, rb := w.packetSocket(t, "mw"+id+"ra"), w.packetSocket(t, "mw"+id+"rb")
	t.Cleanup(w.close)
	w.forward(ra, rb)
	w.forward(rb, ra)
	return w
}

// inNS runs f on a thread in network namespace ns: sockets it opens stay
// in ns after it returns.
func inNS(t *testing.T, ns string, f func() error) error {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// The thread is left locked (and so ends with the goroutine)
		// unless it is back in the original namespace.
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(orig)
		fd, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		err = f()
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// packetSocket opens a raw packet socket on interface name in R.
func (w *wan) packetSocket(t *testing.T, name string) int {
	t.Helper()
	var fd int
	err := inNS(t, w.nsR, func() error {
		ifi, err := net.InterfaceByName(name)
		if err != nil {
			return err
		}
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return err
		}
		// Each packet comes with its virtio-net header and goes out with
		// it: a packet from a veth may carry only a partial checksum
		// (offloaded), which the header tells the receiving end to trust.
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1); err != nil {
			unix.Close(fd)
			return err
		}
		// Reads wake up now and then, so that close can end the bridge.
		return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100_000})
	})
	if err != nil {
		t.Fatalf("packet socket on %s: %v", name, err)
	}
	w.fds = append(w.fds, fd)
	return fd
}

// forward bridges packets arriving on from to to, after the delay, in
// order, dropping w.loss of them at random and all of them while cut.
func (w *wan) forward(from, to int) {
	type pkt struct {
		due time.Time
		b   []byte
	}
	q := make(chan pkt, 1<<16)
	w.wg.Add(2)
	go func() {
		defer w.wg.Done()
		defer close(q)
		buf := make([]byte, 1<<16)
		for !w.stop.Load() {
			n, from, err := unix.Recvfrom(from, buf, 0)
			if err != nil {
				continue // the read timeout, or an interrupted read
			}
			if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
				continue // what the other direction sent out of this end
			}
			if w.cut.Load() {
				w.dropped.Add(1)
				continue
			}
			if rand.Float64() < w.loss {
				w.lost.Add(1)
				continue
			}
			select {
			case q <- pkt{due: time.Now().Add(w.delay), b: append([]byte(nil), buf[:n]...)}:
			default:
				w.dropped.Add(1) // a full queue drops, as a router's would
			}
		}
	}()
	go func() {
		defer w.wg.Done()
		for p := range q {
			time.Sleep(time.Until(p.due))
			if w.cut.Load() {
				w.dropped.Add(1)
				continue
			}
			if err := unix.Send(to, p.b, 0); err == nil {
				w.passed.Add(1)
			}
		}
	}()
}

func (w *wan) close() {
	w.stop.Store(true)
	w.wg.Wait()
	for _, fd := range w.fds {
		unix.Close(fd)
	}
}

// nsServer is an mlesd process in a namespace.
type nsServer struct {
	name string
	cmd  *exec.Cmd
	log  mlestest.SyncBuffer
	done chan error
}

// startInNS runs mlesd in ns with args; the test's cleanup stops it
// (SIGTERM, then SIGKILL after 15 s) and prints its log when the test
// failed.
func startInNS(t *testing.T, ns, name string, env []string, args ...string) *nsServer {
	t.Helper()
	s := &nsServer{name: name, done: make(chan error, 1)}
	s.cmd = exec.Command("ip", append([]string{"netns", "exec", ns, mlesdBin}, args...)...)
	s.cmd.Env = append(os.Environ(), env...)
	s.cmd.Stderr = &s.log
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.done <- s.cmd.Wait() }()
	t.Cleanup(func() {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(15 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.done
			t.Errorf("%s did not stop within 15 s of SIGTERM", name)
		}
		if t.Failed() || os.Getenv("MLESD_WAN_LOG") != "" { // MLESD_WAN_LOG=1: also when it passes
			t.Logf("---- log of %s (%s), tail ----\n%s", name, strings.Join(args, " "), tail(s.log.String(), 6000))
		}
	})
	mlestest.WaitFor(t, s.log.String, "mlesd listening", 10*time.Second)
	return s
}

func (s *nsServer) countLog(subs ...string) int {
	n := 0
	for _, line := range strings.Split(s.log.String(), "\n") {
		ok := line != ""
		for _, sub := range subs {
			ok = ok && strings.Contains(line, sub)
		}
		if ok {
			n++
		}
	}
	return n
}

// waitLogCount waits up to timeout until countLog(subs...) >= n and
// returns how long that took.
func (s *nsServer) waitLogCount(t *testing.T, n int, timeout time.Duration, subs ...string) time.Duration {
	t.Helper()
	began := time.Now()
	for s.countLog(subs...) < n {
		if time.Since(began) > timeout {
			t.Fatalf("%s: wanted %d log lines with %q within %v, have %d", s.name, n, subs, timeout, s.countLog(subs...))
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(began)
}

// joinInNS connects from inside ns to addr and joins (uid, ch) with the
// shared key.
func joinInNS(t *testing.T, ns, addr, uid, ch string) *client {
	t.Helper()
	var nc net.Conn
	err := inNS(t, ns, func() error {
		var err error
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		nc, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("dial %s in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { nc.Close() })
	mc := &mlestest.Client{NC: nc, R: bufio.NewReaderSize(nc, 256<<10), UID: uid, Ch: ch, Key: codec.Key(sharedKey, uid, ch)}
	if err := mc.Send(nil); err != nil {
		t.Fatal(err)
	}
	return start(mc)
}

var errNoIP = errors.New("the ip command (iproute2) is not installed")

// sendPaced is ledger.send with a gap between a client's frames, so that
// each crosses the link in packets of its own.
func (l ledger) sendPaced(t *testing.T, from, to uint32, gap time.Duration, clients ...*client) {
	t.Helper()
	errs := make(chan error, len(clients))
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(gap)
			defer tick.Stop()
			for seq := from; seq < to; seq++ {
				<-tick.C
				if err := c.Send(dataMsg(c.UID, seq)); err != nil {
					errs <- fmt.Errorf("%s sending %d: %w", c.UID, seq, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, c := range clients {
		for seq := from; seq < to; seq++ {
			l[c.UID] = append(l[c.UID], seq)
		}
	}
}
