package main

// The command line's face: short aliases of the everyday flags, --help in
// --flag style on stdout, one-line usage errors, and shell completion
// scripts, all generated from the one flag.FlagSet so that a new flag in
// parseOptions appears everywhere without further work.

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
	"time"
)

// Exit codes of mlesd, as --help documents them.
const (
	exitOK      = 0 // stopped by SIGTERM/SIGINT after draining, or --help, --version, --print-config
	exitFailure = 1 // could not start listening (any listener), or the server failed while running
	exitUsage   = 2 // bad flag, config file, MLESD_* variable or combination of settings
)

// shortFlags are the one-letter aliases of the everyday flags. They share
// the long flag's value; the config file and the environment know only the
// long names.
var shortFlags = map[string]string{
	"l": "listen",
	"k": "key",
	"c": "config",
	"p": "peer",
	"m": "metrics",
	"w": "ws-listen",
	"v": "version",
}

// longName returns the flag a command-line name stands for.
func longName(name string) string {
	if l, ok := shortFlags[name]; ok {
		return l
	}
	return name
}

// shortOf returns the alias of a long flag name ("" if none).
func shortOf(long string) string {
	for s, l := range shortFlags {
		if l == long {
			return s
		}
	}
	return ""
}

// addShortFlags registers every alias on fs, sharing its long flag's value.
func addShortFlags(fs *flag.FlagSet) {
	for short, long := range shortFlags {
		f := fs.Lookup(long)
		fs.Var(f.Value, short, f.Usage)
	}
}

const usageTail = `
Exit codes:
  0  stopped by SIGTERM or SIGINT (after draining), or --help, --version, --print-config
  1  a listener could not be opened (--listen, --tls-listen, --ws-listen, --metrics, --pprof:
     the log line says which and why, e.g. "address already in use"), or the server failed
  2  usage error: a bad flag, config file, MLESD_* variable or combination of settings

Signals:
  SIGTERM, SIGINT  drain receivers for --drain-timeout, then stop (exit 0)
  SIGUSR2          upgrade: start the binary at the path this one was started from,
                   with the same arguments and environment, and hand it the listening
                   sockets; once it serves, stop accepting, serve the connections still
                   open until they close or --drain-timeout passes, and exit 0. If it
                   fails (exits, refuses, not serving within --upgrade-timeout), it is
                   killed and this process serves on. --pid-file follows the new one.

Shell completion: mlesd completion bash|zsh|fish (e.g. source <(mlesd completion bash)).
`

// flagArg returns a flag's value placeholder ("" for booleans) and its usage
// with the backquoted name unquoted.
func flagArg(f *flag.Flag) (arg, usage string) {
	name, usage := flag.UnquoteUsage(f)
	if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
		return "", usage
	}
	switch name {
	case "int", "uint", "int64", "uint64":
		name = "N"
	case "value":
		name = "VALUE"
	}
	return strings.ToUpper(name), usage
}

// helpText is mlesd --help: the introduction, then every flag in --flag
// style, alphabetically, with its alias and default, then the exit codes.
func helpText(fs *flag.FlagSet) string {
	var b strings.Builder
	b.WriteString(usageHead)
	fs.VisitAll(func(f *flag.Flag) {
		if _, alias := shortFlags[f.Name]; alias {
			return
		}
		arg, usage := flagArg(f)
		name := "    --" + f.Name
		if s := shortOf(f.Name); s != "" {
			name = "-" + s + ", --" + f.Name
		}
		if arg != "" {
			name += " " + arg
		}
		fmt.Fprintf(&b, "  %s\n", name)
		if d := shownDefault(f); d != "" {
			usage += " (default " + d + ")"
		}
		for _, l := range strings.Split(usage, "\n") {
			fmt.Fprintf(&b, "        %s\n", l)
		}
	})
	b.WriteString("  -h, --help\n        show this help and exit\n")
	b.WriteString(usageTail)
	return b.String()
}

// shownDefault is a flag's default as help shows it; "" for a zero value.
func shownDefault(f *flag.Flag) string {
	switch f.DefValue {
	case "", "0", "0s", "false":
		return ""
	}
	if g, ok := f.Value.(flag.Getter); ok {
		if _, isString := g.Get().(string); isString {
			return fmt.Sprintf("%q", f.DefValue)
		}
	}
	return f.DefValue
}

// expected names, for a flag's type, what a value must look like.
func expected(f *flag.Flag) string {
	g, ok := f.Value.(flag.Getter)
	if !ok {
		return "a valid value"
	}
	switch g.Get().(type) {
	case bool:
		return "true or false"
	case int, int64:
		return "a whole number (e.g. 1000)"
	case uint, uint64:
		return "a whole number of 0 or more"
	case time.Duration:
		return "a duration with a unit (e.g. 500ms, 10s, 5m, 1h)"
	}
	return "a valid value"
}

// setError says which value of which flag was refused and what was
// expected; where says where the value came from ("--max-conns", "env
// MLESD_MAX_CONNS", "--config FILE: max-conns").
func setError(fs *flag.FlagSet, where, name, value string, err error) error {
	f := fs.Lookup(name)
	if f == nil {
		return fmt.Errorf("%s: %v", where, err)
	}
	why := "want " + expected(f)
	if strings.Contains(err.Error(), "out of range") {
		why = "out of range for a 64-bit whole number"
	} else if _, ok := f.Value.(flag.Getter); ok && expected(f) == "a valid value" {
		why = err.Error()
	}
	return fmt.Errorf("%s: invalid value %q: %s", where, value, why)
}

var (
	flagInvalid = regexp.MustCompile(`^invalid (?:boolean )?value "(.*)" for (?:flag )?-([^:]+): (.*)$`)
	flagMissing = regexp.MustCompile(`^flag needs an argument: -(.+)$`)
	flagUnknown = regexp.MustCompile(`^flag provided but not defined: -(.+)$`)
)

// commandLineError rewrites the flag package's parse errors in --flag
// style, with the value and the type expected.
func commandLineError(fs *flag.FlagSet, err error) error {
	msg := err.Error()
	if m := flagInvalid.FindStringSubmatch(msg); m != nil {
		return setError(fs, dashed(m[2]), longName(m[2]), m[1], errors.New(m[3]))
	}
	if m := flagMissing.FindStringSubmatch(msg); m != nil {
		f := fs.Lookup(m[1])
		arg := "a value"
		if f != nil {
			if a, _ := flagArg(f); a != "" {
				arg = a
			}
		}
		return fmt.Errorf("%s needs a value (%s)", dashed(m[1]), arg)
	}
	if m := flagUnknown.FindStringSubmatch(msg); m != nil {
		return fmt.Errorf("unknown flag %s", dashed(m[1]))
	}
	return err
}

// dashed is a flag name as the user typed it: -l or --listen.
func dashed(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// completionNames returns every flag as the shell completes it, and those
// whose value is a file.
func completionNames(fs *flag.FlagSet) (words, files []string) {
	fs.VisitAll(func(f *flag.Flag) {
		words = append(words, dashed(f.Name))
		if isFileFlag(f) {
			files = append(files, dashed(f.Name))
		}
	})
	words = append(words, "-h", "--help")
	sort.Strings(words)
	return words, files
}

func isFileFlag(f *flag.Flag) bool {
	name, _ := flag.UnquoteUsage(f)
	return name == "file"
}

// printCompletion writes the completion script for shell.
func printCompletion(w io.Writer, fs *flag.FlagSet, shell string) error {
	words, files := completionNames(fs)
	switch shell {
	case "bash":
		fmt.Fprintf(w, `# bash completion for mlesd; load with: source <(mlesd completion bash)
_mlesd() {
  local cur prev
  cur="${COMP_WORDS[COMP_CWORD]}"
  prev="${COMP_WORDS[COMP_CWORD-1]}"
  if [ "$COMP_CWORD" -eq 1 ] && [[ "$cur" != -* ]]; then
    COMPREPLY=( $(compgen -W "completion" -- "$cur") )
    return 0
  fi
  if [ "${COMP_WORDS[1]}" = completion ]; then
    COMPREPLY=( $(compgen -W "bash zsh fish" -- "$cur") )
    return 0
  fi
  case "$prev" in
    %s) COMPREPLY=( $(compgen -f -- "$cur") ); return 0;;
    --log-level) COMPREPLY=( $(compgen -W "debug info warn error" -- "$cur") ); return 0;;
    --log-format) COMPREPLY=( $(compgen -W "text json" -- "$cur") ); return 0;;
  esac
  COMPREPLY=( $(compgen -W %q -- "$cur") )
  return 0
}
complete -F _mlesd mlesd
`, strings.Join(files, "|"), strings.Join(words, " "))
	case "zsh":
		fmt.Fprint(w, "#compdef mlesd\n# zsh completion for mlesd; load with: source <(mlesd completion zsh)\n_mlesd() {\n")
		fmt.Fprint(w, "  if (( CURRENT == 2 )) && [[ $words[2] != -* ]]; then\n    _values 'command' 'completion[print a shell completion script]'\n    return\n  fi\n")
		fmt.Fprint(w, "  if [[ $words[2] == completion ]]; then\n    _values 'shell' bash zsh fish\n    return\n  fi\n  _arguments -s \\\n")
		fs.VisitAll(func(f *flag.Flag) {
			if _, alias := shortFlags[f.Name]; alias {
				return
			}
			arg, usage := flagArg(f)
			help := strings.NewReplacer("[", "(", "]", ")", "'", "", ":", " ", "\\", "").Replace(firstLine(usage))
			spec := ""
			if arg != "" {
				spec = ":" + strings.ToLower(arg) + ":"
				switch {
				case isFileFlag(f):
					spec += "_files"
				case f.Name == "log-level":
					spec += "(debug info warn error)"
				case f.Name == "log-format":
					spec += "(text json)"
				}
			}
			if s := shortOf(f.Name); s != "" {
				fmt.Fprintf(w, "    '(-%s --%s)'{-%s,--%s}'[%s]%s' \\\n", s, f.Name, s, f.Name, help, spec)
			} else {
				fmt.Fprintf(w, "    '--%s[%s]%s' \\\n", f.Name, help, spec)
			}
		})
		fmt.Fprint(w, "    '(-h --help)'{-h,--help}'[show the help]'\n}\n")
		fmt.Fprint(w, "if [ \"$funcstack[1]\" = \"_mlesd\" ]; then _mlesd \"$@\"; else compdef _mlesd mlesd; fi\n")
	case "fish":
		fmt.Fprint(w, "# fish completion for mlesd; load with: mlesd completion fish | source\ncomplete -c mlesd -f\n")
		fmt.Fprint(w, "complete -c mlesd -n __fish_use_subcommand -a completion -d 'print a shell completion script'\n")
		fmt.Fprint(w, "complete -c mlesd -n '__fish_seen_subcommand_from completion' -a 'bash zsh fish'\n")
		fs.VisitAll(func(f *flag.Flag) {
			if _, alias := shortFlags[f.Name]; alias {
				return
			}
			arg, usage := flagArg(f)
			fmt.Fprintf(w, "complete -c mlesd -l %s", f.Name)
			if s := shortOf(f.Name); s != "" {
				fmt.Fprintf(w, " -s %s", s)
			}
			switch {
			case isFileFlag(f):
				w.Write([]byte(" -r -F"))
			case f.Name == "log-level":
				w.Write([]byte(" -x -a 'debug info warn error'"))
			case f.Name == "log-format":
				w.Write([]byte(" -x -a 'text json'"))
			case arg != "":
				w.Write([]byte(" -x"))
			}
			fmt.Fprintf(w, " -d %s\n", fishQuote(firstLine(usage)))
		})
		fmt.Fprint(w, "complete -c mlesd -s h -l help -d 'show the help'\n")
	default:
		return fmt.Errorf("completion: unknown shell %q: want bash, zsh or fish", shell)
	}
	return nil
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func fishQuote(s string) string {
	return "'" + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), "'", `\'`) + "'"
}
