package main

// Black-box tests of the command line: help, usage errors, parse errors,
// the environment, completion.

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// runMlesd runs the binary to its end with extra environment variables and
// returns stdout, stderr and the exit code.
func runMlesd(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(mlesdBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return o.String(), e.String(), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), 0
}

func TestHelpGoesToStdoutWithExitZero(t *testing.T) {
	for _, arg := range []string{"--help", "-h", "-help", "help"} {
		out, errOut, code := runMlesd(t, nil, arg)
		if code != 0 || errOut != "" {
			t.Errorf("%s: exit %d, stderr %q; want 0 and nothing", arg, code, errOut)
		}
		for _, want := range []string{"Usage:", "  -l, --listen HOST:PORT", "  -k, --key KEY", "  -c, --config FILE",
			"  -p, --peer HOST[:PORT]", "  -m, --metrics ADDR", "  -w, --ws-listen HOST:PORT", "  -v, --version",
			"  -h, --help", "      --max-conns N", "      --stall-timeout DURATION", "(default 100000)", "Exit codes:",
			"address already in use", "mlesd completion bash|zsh|fish"} {
			if !strings.Contains(out, want) {
				t.Errorf("%s: help lacks %q", arg, want)
			}
		}
		if strings.Contains(out, "\n  -max-conns") || strings.Contains(out, "  -l, --l ") {
			t.Errorf("%s: help shows single-dash long flags or aliases as flags of their own:\n%s", arg, out)
		}
	}
}

// A usage error is the error and one line pointing at --help, on stderr,
// with exit 2.
func TestBadFlagPrintsTwoLinesAndExitsTwo(t *testing.T) {
	for _, args := range [][]string{{"--nope"}, {"--max-conns", "x"}, {"--listen"}, {"extra"}, {"completion", "tcsh"},
		{"--log-level", "loud"}, {"--max-frame", "0"}} {
		out, errOut, code := runMlesd(t, nil, args...)
		lines := strings.Split(strings.TrimRight(errOut, "\n"), "\n")
		if code != 2 || out != "" || len(lines) != 2 || !strings.HasPrefix(lines[0], "mlesd: ") ||
			lines[1] != `run "mlesd --help" for usage` {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 2 and two lines on stderr", args, code, out, errOut)
		}
	}
	if _, errOut, _ := runMlesd(t, nil, "--nope"); !strings.Contains(errOut, "unknown flag --nope") {
		t.Errorf("--nope: %q", errOut)
	}
}

// Parse errors of flags, the config file and the environment name the
// value and the type expected.
func TestParseErrorsNameTheValueAndTheExpectedType(t *testing.T) {
	dir := t.TempDir()
	file := func(body string) string {
		f := filepath.Join(dir, fmt.Sprintf("c%d.toml", len(body)))
		if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	for _, tc := range []struct {
		env  []string
		args []string
		want string
	}{
		{nil, []string{"--max-conns", "lots"}, `--max-conns: invalid value "lots": want a whole number`},
		{nil, []string{"--stall-timeout", "5"}, `--stall-timeout: invalid value "5": want a duration with a unit`},
		{nil, []string{"--max-conns-per-ip-loopback=maybe"}, `--max-conns-per-ip-loopback: invalid value "maybe": want true or false`},
		{nil, []string{"--max-conns", "99999999999999999999"}, `invalid value "99999999999999999999": out of range`},
		{[]string{"MLESD_MAX_CONNS=lots"}, nil, `env MLESD_MAX_CONNS: invalid value "lots": want a whole number`},
		{[]string{"MLESD_JOIN_TIMEOUT=10"}, nil, `env MLESD_JOIN_TIMEOUT: invalid value "10": want a duration`},
		{nil, []string{"--config", file("max-conns = \"lots\"\n")}, `max-conns: invalid value "lots": want a whole number`},
		{nil, []string{"--config", file("join-timeout = 10\n")}, `join-timeout: invalid value "10": want a duration`},
		{nil, []string{"--config", file("max-conns = 1.5\n")}, `max-conns: invalid value 1.5: want a whole number`},
	} {
		_, errOut, code := runMlesd(t, tc.env, tc.args...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v %v: exit %d, stderr %q; want 2 and %q", tc.env, tc.args, code, errOut, tc.want)
		}
	}
}

// Unknown MLESD_* variables are refused like unknown config keys; MLESD_CONFIG
// and the settings' own variables are not.
func TestUnknownMlesdVariableIsRefused(t *testing.T) {
	for _, name := range []string{"MLESD_FOO", "MLESD_MAX_CON", "MLESD_L", "MLESD_VERSION", "MLESD_PRINT_CONFIG"} {
		_, errOut, code := runMlesd(t, []string{name + "=1"}, "--print-config")
		if code != 2 || !strings.Contains(errOut, "env "+name+": unknown setting") {
			t.Errorf("%s: exit %d, stderr %q; want 2 naming it", name, code, errOut)
		}
	}
	cfg := filepath.Join(t.TempDir(), "m.toml")
	if err := os.WriteFile(cfg, []byte("max-conns = 7\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runMlesd(t, []string{"MLESD_CONFIG=" + cfg, "MLESD_MAX_CONNS_PER_IP=9", "MLESD_WAN=1"}, "--print-config")
	if code != 0 || !strings.Contains(out, "max-conns = 7  # file") || !strings.Contains(out, "max-conns-per-ip = 9  # env") {
		t.Errorf("known variables: exit %d, stderr %q, stdout:\n%s", code, errOut, out)
	}
}

// Short aliases set the long flag, which --print-config reports as set by
// a flag; the config file does not know them.
func TestShortAliasesSetTheirLongFlags(t *testing.T) {
	out, errOut, code := runMlesd(t, nil, "-l", "127.0.0.1:1234", "-m", "127.0.0.1:9999", "--print-config")
	if code != 0 || !strings.Contains(out, `listen = ["127.0.0.1:1234"]  # flag`) ||
		!strings.Contains(out, `metrics = "127.0.0.1:9999"  # flag`) {
		t.Fatalf("exit %d, stderr %q, stdout:\n%s", code, errOut, out)
	}
	for _, alias := range []string{"l =", "m =", "k =", "v ="} {
		if strings.Contains(out, "\n"+alias) {
			t.Errorf("--print-config shows the alias %q as a setting", alias)
		}
	}
	if out, _, code := runMlesd(t, nil, "-v"); code != 0 || !strings.HasPrefix(out, "mlesd ") {
		t.Errorf("-v: exit %d, %q", code, out)
	}
}

func TestCompletionScriptsLoad(t *testing.T) {
	t.Run("bash", func(t *testing.T) {
		script := fmt.Sprintf(`source <(%q completion bash) && complete -p mlesd && COMP_WORDS=(mlesd --max-conns-p); COMP_CWORD=1; _mlesd; echo "${COMPREPLY[@]}"; COMP_WORDS=(mlesd --log-level w); COMP_CWORD=2; _mlesd; echo "${COMPREPLY[@]}"`, mlesdBin)
		out, err := exec.Command("bash", "-c", script).CombinedOutput()
		if err != nil {
			t.Fatalf("bash: %v %s", err, out)
		}
		if !strings.Contains(string(out), "--max-conns-per-ip --max-conns-per-ip-loopback") || !strings.Contains(string(out), "\nwarn\n") {
			t.Errorf("bash completion: %s", out)
		}
	})
	t.Run("zsh", func(t *testing.T) {
		if _, err := exec.LookPath("zsh"); err != nil {
			t.Skip("zsh is not installed")
		}
		out, err := exec.Command("zsh", "-c", fmt.Sprintf(`autoload -U compinit && compinit -u && source <(%q completion zsh) && (( $+functions[_mlesd] )) && echo "comp=$_comps[mlesd]"`, mlesdBin)).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "comp=_mlesd") {
			t.Fatalf("zsh: %v %s", err, out)
		}
	})
	t.Run("fish", func(t *testing.T) {
		if _, err := exec.LookPath("fish"); err != nil {
			t.Skip("fish is not installed")
		}
		out, err := exec.Command("fish", "-c", fmt.Sprintf(`%q completion fish | source; complete -C 'mlesd --stall-t'`, mlesdBin)).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--stall-timeout") {
			t.Fatalf("fish: %v %s", err, out)
		}
	})
}

// make man's generator turns --help into a page man renders without
// warnings, with every flag and the exit codes.
func TestManPageIsGeneratedFromTheHelp(t *testing.T) {
	page := filepath.Join(t.TempDir(), "mlesd.1")
	if out, err := exec.Command("go", "run", "../../.ci/genman.go", "-bin", mlesdBin, "-o", page).CombinedOutput(); err != nil {
		t.Fatalf("genman: %v\n%s", err, out)
	}
	if _, err := exec.LookPath("man"); err != nil {
		t.Skip("man is not installed")
	}
	cmd := exec.Command("man", "-l", page)
	cmd.Env = append(os.Environ(), "MANWIDTH=120")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("man -l: %v\n%s", err, out)
	}
	text := regexp.MustCompile(`.\x08`).ReplaceAllString(string(out), "") // bold and underline by overstrike
	for _, want := range []string{"mlesd - a server for the Mles v1", "-l, --listen HOST:PORT", "--max-conns N", "EXIT CODES", "address already in use"} {
		if !strings.Contains(text, want) {
			t.Errorf("man page lacks %q:\n%s", want, text)
		}
	}
	if g, err := exec.LookPath("groff"); err == nil {
		if out, err := exec.Command(g, "-man", "-ww", "-z", page).CombinedOutput(); err != nil || len(out) > 0 {
			t.Errorf("groff warnings: %v\n%s", err, out)
		}
	}
}

// The example config and the container image's environment are settings
// mlesd accepts (unknown keys and MLESD_* variables are refused).
func TestDeployConfigAndImageEnvironmentAreAccepted(t *testing.T) {
	out, errOut, code := runMlesd(t, nil, "--config", "../../deploy/mlesd.toml", "--print-config")
	if code != 0 || !strings.Contains(out, `metrics = "127.0.0.1:9477"  # file`) {
		t.Errorf("deploy/mlesd.toml: exit %d, stderr %q, stdout:\n%s", code, errOut, out)
	}
	docker, err := os.ReadFile("../../deploy/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	var env []string
	for _, line := range strings.Split(string(docker), "\n") {
		if rest, ok := strings.CutPrefix(line, "ENV "); ok {
			env = append(env, strings.Fields(rest)...)
		}
	}
	if len(env) == 0 {
		t.Fatal("no ENV line in deploy/Dockerfile")
	}
	out, errOut, code = runMlesd(t, env, "--print-config")
	if code != 0 || !strings.Contains(out, "# env MLESD_") {
		t.Errorf("Dockerfile ENV %v: exit %d, stderr %q, stdout:\n%s", env, code, errOut, out)
	}
}
