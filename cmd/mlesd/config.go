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
	fs.Visit(func(f *flag.Flag) { onCommandLine[f.Name] = true })
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
			if f := fs.Lookup(name); f == nil || meta[name] {
				return fmt.Errorf("--config %s: unknown setting %q (settings are the flag names, see --help)", o.ConfigFile, name)
			}
		}
	}
	o.Sources = map[string]string{}
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if err != nil || meta[f.Name] {
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
					err = fmt.Errorf("env %s: %v", env, serr)
				}
				o.Sources[f.Name] = "env " + env
				return
			}
		}
		if v, ok := file[f.Name]; ok {
			if serr := setFromFile(fs, f.Name, v); serr != nil {
				err = fmt.Errorf("--config %s: %s: %v", o.ConfigFile, f.Name, serr)
			}
			o.Sources[f.Name] = "file"
			return
		}
		o.Sources[f.Name] = "default"
	})
	return err
}

// setFromFile sets flag name from a decoded TOML value: strings (durations
// as "10s"), integers, booleans, and arrays for repeatable flags.
func setFromFile(fs *flag.FlagSet, name string, v any) error {
	switch v := v.(type) {
	case string:
		return fs.Set(name, v)
	case int64:
		return fs.Set(name, strconv.FormatInt(v, 10))
	case bool:
		return fs.Set(name, strconv.FormatBool(v))
	case float64:
		if v != math.Trunc(v) {
			return fmt.Errorf("%v is not a whole number", v)
		}
		return fs.Set(name, strconv.FormatInt(int64(v), 10))
	case []any:
		if _, ok := fs.Lookup(name).Value.(*listFlag); !ok {
			return fmt.Errorf("takes one value, not a list")
		}
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				return fmt.Errorf("list element %v is not a string", e)
			}
			if err := fs.Set(name, s); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("unsupported value %v (%T)", v, v)
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
		if !meta[f.Name] {
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
// Without a stamped commit it falls back to the VCS revision Go recorded.
func versionString() string {
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
	return fmt.Sprintf("mlesd %s (commit %s, %s %s/%s)", version, c, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
