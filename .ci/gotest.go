//go:build ignore

// gotest runs "go test -json ARGS..." and prints what plain go test prints
// (package results, and the output of failed tests), then lists every
// skipped test with its reason, so a skip is never silent. Its exit status is
// go test's.
//
//	go run .ci/gotest.go -race -count=1 ./...
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"time"
)

type event struct {
	Action  string
	Package string
	Test    string
	Elapsed float64
	Output  string
}

type skip struct{ pkg, test, reason string }

// failure is a failed test and the first line of each message it logged:
// repeated at the end of the run, where a log excerpt of CI's output (its
// tail) still shows why, however much a failed test printed before.
type failure struct {
	pkg, test string
	messages  []string
}

// testMessage matches the first line of a t.Log/t.Error/t.Fatal message.
var testMessage = regexp.MustCompile(`^\s+\S+_test\.go:\d+: `)

func main() {
	goCmd := os.Getenv("GO") // the Makefile's $(GO); "go" from PATH otherwise
	if goCmd == "" {
		goCmd = "go"
	}
	cmd := exec.Command(goCmd, append([]string{"test", "-json"}, os.Args[1:]...)...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		fmt.Fprintln(os.Stderr, "gotest:", err)
		os.Exit(2)
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "gotest:", err)
		os.Exit(2)
	}
	began := time.Now()
	buffered := map[string][]string{} // package/test -> its output so far
	var skips []skip
	var failures []failure
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e event
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			fmt.Println(sc.Text()) // not an event: pass it on
			continue
		}
		id := e.Package + "\x00" + e.Test
		switch e.Action {
		case "output", "build-output":
			if e.Test == "" {
				// Package lines: "ok", "FAIL", "?", panics, build errors.
				if s := strings.TrimSpace(e.Output); s != "PASS" && s != "FAIL" && !strings.HasPrefix(s, "=== ") &&
					!strings.HasPrefix(s, "--- ") && s != "" {
					fmt.Print(e.Output)
				}
				continue
			}
			buffered[id] = append(buffered[id], e.Output)
		case "fail":
			if e.Test != "" {
				fmt.Print(strings.Join(buffered[id], ""))
				failures = append(failures, failure{e.Package, e.Test, messages(buffered[id])})
			}
			delete(buffered, id)
		case "skip":
			if e.Test != "" {
				skips = append(skips, skip{e.Package, e.Test, skipReason(buffered[id])})
			}
			delete(buffered, id)
		case "pass":
			delete(buffered, id)
		}
	}
	err = cmd.Wait()
	if len(skips) > 0 {
		fmt.Printf("\nskipped: %d (run took %s)\n", len(skips), time.Since(began).Round(time.Second))
		for _, s := range skips {
			fmt.Printf("  SKIP %s %s: %s\n", s.pkg, s.test, s.reason)
		}
	}
	if len(failures) > 0 {
		fmt.Printf("\nfailed: %d\n", len(failures))
		for _, f := range failures {
			fmt.Printf("  FAIL %s %s\n", f.pkg, f.test)
			for _, m := range f.messages {
				fmt.Printf("      %s\n", m)
			}
		}
	}
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			os.Exit(ee.ExitCode())
		}
		fmt.Fprintln(os.Stderr, "gotest:", err)
		os.Exit(2)
	}
}

// messages is the first line of each message in a failed test's output,
// each cut to 300 bytes, at most the last 12.
func messages(lines []string) []string {
	var ms []string
	for _, l := range lines {
		if testMessage.MatchString(l) {
			m := strings.TrimSpace(l)
			if len(m) > 300 {
				m = m[:300] + "…"
			}
			ms = append(ms, m)
		}
	}
	if len(ms) > 12 {
		ms = ms[len(ms)-12:]
	}
	return ms
}

// skipReason is what the test logged last before it was skipped: t.Skip's
// message (go test prints it before the "--- SKIP" line).
func skipReason(lines []string) string {
	for i := len(lines) - 1; i >= 0; i-- {
		s := strings.TrimSpace(lines[i])
		if s != "" && !strings.HasPrefix(s, "=== ") && !strings.HasPrefix(s, "--- ") {
			return s
		}
	}
	return "(no reason given)"
}
