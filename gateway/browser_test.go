package gateway_test

// A real browser: headless Chromium opens the demo page twice, the two pages
// exchange messages through mlesd, and a plain TCP Mles client sees them
// and is seen by them.

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/mlesd/mlesd/codec"
)

// chromium finds the browser. Missing: under CI=true it is installed with
// testdata/install-chromium.sh when running as root, and the test fails if
// that is impossible; elsewhere the test is skipped.
func chromium(t *testing.T) string {
	t.Helper()
	find := func() string {
		if p := os.Getenv("CHROME_PATH"); p != "" {
			return p
		}
		for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
			if p, err := exec.LookPath(name); err == nil {
				return p
			}
		}
		return ""
	}
	if p := find(); p != "" {
		return p
	}
	ci := os.Getenv("CI") == "true"
	if !ci {
		t.Skip("chromium is not installed: run gateway/testdata/install-chromium.sh as root (CI=true makes this test install it or fail)")
	}
	if os.Geteuid() != 0 {
		t.Fatal("CI=true but chromium is missing and the test is not root: run gateway/testdata/install-chromium.sh before the tests")
	}
	out, err := exec.Command("sh", "testdata/install-chromium.sh").CombinedOutput()
	if err != nil {
		t.Fatalf("installing chromium: %v\n%s", err, out)
	}
	if p := find(); p != "" {
		return p
	}
	t.Fatalf("chromium still missing after install-chromium.sh:\n%s", out)
	return ""
}

// outputDir is where the screenshots go: $TEST_OUTPUT_DIR when set, else
// the test's artifact directory (kept with go test -artifacts).
func outputDir(t *testing.T) string {
	if d := os.Getenv("TEST_OUTPUT_DIR"); d != "" {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	return t.ArtifactDir()
}

func TestBrowserPagesExchangeMessagesThroughMlesd(t *testing.T) {
	chrome := chromium(t)

	// The gateway inside mlesd (--ws-listen), as a user runs the demo.
	h := harness{key: "demo-key"}
	wsAddr := freeAddr(t)
	h.mles, h.log = startMlesd(t, h.key, "--ws-listen", wsAddr)
	waitListening(t, wsAddr, h.log)
	h.ws = "ws://" + wsAddr + "/"
	page := "http://" + strings.TrimPrefix(h.ws, "ws://")
	tcp := dialTCP(t, h, "terminal", "demo")

	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chrome),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		// Two tabs take turns: keep the one in the background running.
		chromedp.Flag("disable-renderer-backgrounding", true),
		chromedp.Flag("disable-background-timer-throttling", true),
		chromedp.Flag("disable-backgrounding-occluded-windows", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(900, 700),
	)
	defer cancelAlloc()
	alice, cancelAlice := chromedp.NewContext(allocCtx, chromedp.WithLogf(t.Logf))
	defer cancelAlice()
	if err := chromedp.Do(alice); err != nil { // starts the browser, bound to allocCtx
		t.Fatalf("starting %s: %v", chrome, err)
	}
	bob, cancelBob := chromedp.NewContext(alice) // a second tab
	defer cancelBob()
	if err := chromedp.Do(bob); err != nil { // opens it, bound to bob (not to a step's timeout)
		t.Fatalf("opening a second tab: %v", err)
	}

	// do runs steps on a tab with a time limit.
	do := func(tab context.Context, steps ...chromedp.Action[chromedp.Void]) error {
		ctx, cancel := context.WithTimeout(tab, 30*time.Second)
		defer cancel()
		return chromedp.Do(ctx, steps...)
	}
	join := func(tab context.Context, uid string) {
		t.Helper()
		if err := do(tab,
			chromedp.Navigate(page+"?uid="+uid+"&channel=demo"),
			chromedp.WaitVisible(chromedp.ID("joinbtn")),
			chromedp.Click(chromedp.ID("joinbtn")),
			chromedp.WaitReady(chromedp.CSS(`body[data-state="joined"]`)),
		); err != nil {
			t.Fatalf("%s joining: %v", uid, err)
		}
	}
	say := func(tab context.Context, text string) {
		t.Helper()
		if err := do(tab,
			chromedp.SendKeys(chromedp.ID("text"), text),
			chromedp.Click(chromedp.ID("sendbtn")),
		); err != nil {
			t.Fatalf("sending %q: %v", text, err)
		}
	}
	sees := func(tab context.Context, who, line string) {
		t.Helper()
		q, _ := json.Marshal(line)
		ctx, cancel := context.WithTimeout(tab, 30*time.Second)
		defer cancel()
		if _, err := chromedp.Run(ctx, chromedp.Poll[bool](`document.getElementById("log").textContent.includes(`+string(q)+`)`, chromedp.WithPollingMutation())); err != nil {
			ctx, cancel := context.WithTimeout(tab, 5*time.Second)
			defer cancel()
			page, perr := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById("status").textContent + " | " + document.getElementById("log").textContent`))
			t.Fatalf("%s does not show %q: %v; page: %q (%v); gateway log:\n%s", who, line, err, page, perr, h.log)
		}
	}
	tcpSees := func(uid, msg string) {
		t.Helper()
		_, p := readTCP(t, tcp)
		tr, err := codec.DecodeTriplet(p)
		if err != nil || tr.UID != uid || tr.Channel != "demo" || !bytes.Equal(tr.Message, []byte(msg)) {
			t.Fatalf("TCP client got %q (%v), want %s: %s", p, err, uid, msg)
		}
	}

	join(alice, "alice")
	join(bob, "bob")
	sees(alice, "alice", "bob joined")

	say(alice, "hello from alice")
	sees(bob, "bob", "alice: hello from alice")
	tcpSees("alice", "hello from alice")

	say(bob, "hello from bob")
	sees(alice, "alice", "bob: hello from bob")
	tcpSees("bob", "hello from bob")

	if err := tcp.Send([]byte("hello from a TCP client")); err != nil {
		t.Fatal(err)
	}
	sees(alice, "alice", "terminal: hello from a TCP client")
	sees(bob, "bob", "terminal: hello from a TCP client")

	dir := outputDir(t)
	for name, tab := range map[string]context.Context{"alice": alice, "bob": bob} {
		png, err := chromedp.Run(tab, chromedp.FullScreenshot(100)) // quality 100: PNG
		if err != nil {
			t.Fatalf("screenshot: %v", err)
		}
		file := filepath.Join(dir, "demo-"+name+".png")
		if err := os.WriteFile(file, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot of %s's page: %s", name, file)
	}
}
