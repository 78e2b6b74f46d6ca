package main

// Settings from three places besides the command line. Every flag can also be
// set in a TOML config file (--config FILE, or env MLESD_CONFIG) under its
// flag name, and by the environment as MLESD_<FLAG_NAME> (upper case, '-'
// becomes '_'). Precedence, highest first:
//
//	command-line flag > environment > config file > built-in default
//
// --key also reads MLES_KEY (the original server's variable) when MLESD_KEY
// is not set. Empty environment values count as not set. The file may not
// name an unknown setting (a typo would otherwise pass unnoticed).

import (
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/mlesd/mlesd/upgrade"
)

// Set by the build: go build -ldflags "-X main.version=v1.2.3 -X main.commit=abc123".
var (
	version = "dev"
	commit  = ""
)

// meta are flags about the invocation, not settings: never from env or file.
var meta = map[string]bool{"config": true, "print-config": true, "version": true}

// secret settings are not printed by --print-config.
var secret = map[string]bool{"key": true}

// EnvName is the environment variable for a flag.
func EnvName(flagName string) string {
	return "MLESD_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// applyLayers sets, for every setting not given on the command line, its value
// from the environment or else from the config file, and records where each
// setting came from (flag, env NAME, file, default) in o.Sources.
func applyLayers(fs *flag.FlagSet, o *Options) error {
	onCommandLine := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { onCommandLine[longName(f.Name)] = true })
	if err := checkEnv(fs); err != nil {
		return err
	}
	if o.ConfigFile == "" {
		o.ConfigFile = os.Getenv("MLESD_CONFIG")
	}
	file := map[string]any{}
	if o.ConfigFile != "" {
		md, err := toml.DecodeFile(o.ConfigFile, &file)
		if err != nil {
			return fmt.Errorf("--config %s: %w", o.ConfigFile, err)
		}
		_ = md
		for name := range file {
			if !isSetting(fs, name) {
				return fmt.Errorf("--config %s: unknown setting %q (settings are the flag names, see --help)", o.ConfigFile, name)
			}
		}
	}
	o.Sources = map[string]string{}
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if err != nil || !isSetting(fs, f.Name) {
			return
		}
		if onCommandLine[f.Name] {
			o.Sources[f.Name] = "flag"
			return
		}
		envs := []string{EnvName(f.Name)}
		if f.Name == "key" {
			envs = append(envs, "MLES_KEY")
		}
		for _, env := range envs {
			if v := os.Getenv(env); v != "" {
				if serr := fs.Set(f.Name, v); serr != nil {
					err = setError(fs, "env "+env, f.Name, v, serr)
				}
				o.Sources[f.Name] = "env " + env
				return
			}
		}
		if v, ok := file[f.Name]; ok {
			if serr := setFromFile(fs, f.Name, v); serr != nil {
				err = fmt.Errorf("--config %s: %w", o.ConfigFile, serr)
			}
			o.Sources[f.Name] = "file"
			return
		}
		o.Sources[f.Name] = "default"
	})
	return err
}

// setFromFile sets flag name from a decoded TOML value: strings (durations
// as "10s"), integers, booleans, and arrays for repeatable flags. Its errors
// name the setting, the value and what was expected.
func setFromFile(fs *flag.FlagSet, name string, v any) error {
	set := func(s string) error {
		if err := fs.Set(name, s); err != nil {
			return setError(fs, name, name, s, err)
		}
		return nil
	}
	switch v := v.(type) {
	case string:
		return set(v)
	case int64:
		return set(strconv.FormatInt(v, 10))
	case bool:
		return set(strconv.FormatBool(v))
	case float64:
		if v != math.Trunc(v) {
			return fmt.Errorf("%s: invalid value %v: want %s", name, v, expected(fs.Lookup(name)))
		}
		return set(strconv.FormatInt(int64(v), 10))
	case []any:
		if _, ok := fs.Lookup(name).Value.(*listFlag); !ok {
			return fmt.Errorf("%s: invalid value %v: takes one value (%s), not a list", name, v, expected(fs.Lookup(name)))
		}
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				return fmt.Errorf("%s: list element %v is not a string", name, e)
			}
			if err := set(s); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("%s: invalid value %v (%T): want %s", name, v, v, expected(fs.Lookup(name)))
}

// toolVariables are MLESD_* variables read by the repository's test and
// benchmark tools, not by mlesd; mlesd started by those tools inherits them.
// upgrade.EnvFD is set by an old mlesd for the new one it starts.
var toolVariables = map[string]bool{"MLESD_WAN": true, "MLESD_WAN_LOG": true, "MLESD_E2E_LOGDIR": true,
	"MLESD_BENCH_BIN": true, "MLESD_BIN": true, upgrade.EnvFD: true}

// isSetting reports whether name is a setting's (long) flag name, which the
// config file and the environment may set.
func isSetting(fs *flag.FlagSet, name string) bool {
	_, alias := shortFlags[name]
	return fs.Lookup(name) != nil && !meta[name] && !alias
}

// checkEnv refuses MLESD_* variables that name no setting: a typo would
// otherwise pass unnoticed. Empty values count as not set.
func checkEnv(fs *flag.FlagSet) error {
	for _, kv := range os.Environ() {
		name, value, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, "MLESD_") || value == "" || name == "MLESD_CONFIG" || toolVariables[name] {
			continue
		}
		setting := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(name, "MLESD_"), "_", "-"))
		if !isSetting(fs, setting) || EnvName(setting) != name {
			return fmt.Errorf("env %s: unknown setting (variables are MLESD_<FLAG_NAME> for the flags in --help, and MLESD_CONFIG)", name)
		}
	}
	return nil
}

// printConfig writes the effective settings as a TOML config file, each
// with where it came from; secrets are only said to be set.
func printConfig(w io.Writer, fs *flag.FlagSet, o Options) {
	fmt.Fprintln(w, "# mlesd effective configuration (precedence: flag > env MLESD_* > config file > default)")
	if o.ConfigFile != "" {
		fmt.Fprintf(w, "# config file: %s\n", o.ConfigFile)
	}
	var names []string
	fs.VisitAll(func(f *flag.Flag) {
		if isSetting(fs, f.Name) {
			names = append(names, f.Name)
		}
	})
	sort.Strings(names)
	for _, name := range names {
		f := fs.Lookup(name)
		src := o.Sources[name]
		if secret[name] {
			state := "not set"
			if f.Value.String() != "" {
				state = "set, hidden"
			}
			fmt.Fprintf(w, "# %s = (%s)  # %s\n", name, state, src)
			continue
		}
		fmt.Fprintf(w, "%s = %s  # %s\n", name, tomlValue(f.Value), src)
	}
}

// tomlValue renders a flag's value in TOML.
func tomlValue(v flag.Value) string {
	g, ok := v.(flag.Getter)
	if !ok {
		return strconv.Quote(v.String())
	}
	switch x := g.Get().(type) {
	case string:
		return strconv.Quote(x)
	case time.Duration:
		return strconv.Quote(x.String())
	case bool, int, int64, uint, uint64:
		return fmt.Sprint(x)
	case []string:
		q := make([]string, len(x))
		for i, s := range x {
			q[i] = strconv.Quote(s)
		}
		return "[" + strings.Join(q, ", ") + "]"
	}
	return strconv.Quote(v.String())
}

// versionString is what --version prints: version, commit and Go version.
func versionString() string {
	return fmt.Sprintf("mlesd %s (commit %s, %s %s/%s)", version, commitString(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// commitString is the stamped commit, else the VCS revision Go recorded
// (with -dirty for a modified tree), else "unknown".
func commitString() string {
	c := commit
	if c == "" {
		if bi, ok := debug.ReadBuildInfo(); ok {
			dirty := ""
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					c = s.Value
				case "vcs.modified":
					if s.Value == "true" {
						dirty = "-dirty"
					}
				}
			}
			if c != "" {
				c += dirty
			}
		}
	}
	if c == "" {
		c = "unknown"
	}
	return c
}
