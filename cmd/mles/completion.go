package main

import (
	"fmt"
	"sort"
	"strings"
)

const completionDescription = `
Prints a shell completion script for bash, zsh or fish. Load it with:
  bash:  source <(mles completion bash)     (or save it in /etc/bash_completion.d/mles)
  zsh:   source <(mles completion zsh)      (or save it as _mles in a directory of $fpath)
  fish:  mles completion fish | source      (or save it in ~/.config/fish/completions/mles.fish)`

var completionCommand = command{
	name:     "completion",
	synopsis: "bash|zsh|fish",
	summary:  "print a shell completion script (bash, zsh or fish)",
	desc:     completionDescription,
	setup: func(e env, fs *flagSet) func([]string) error {
		return func(args []string) error {
			if len(args) != 1 {
				return usageErr("want one shell: bash, zsh or fish")
			}
			var script string
			switch args[0] {
			case "bash":
				script = bashCompletion()
			case "zsh":
				script = zshCompletion()
			case "fish":
				script = fishCompletion()
			default:
				return usageErr("unknown shell %q: want bash, zsh or fish", args[0])
			}
			_, err := fmt.Fprint(e.stdout, script)
			return err
		}
	},
}

func commandNames() []string {
	var names []string
	for _, c := range commands {
		names = append(names, c.name)
	}
	return names
}

func flagWords(specs []flagSpec) (all, files []string) {
	for _, s := range specs {
		all = append(all, "--"+s.long)
		if s.short != "" {
			all = append(all, "-"+s.short)
		}
		if s.files {
			files = append(files, "--"+s.long)
			if s.short != "" {
				files = append(files, "-"+s.short)
			}
		}
	}
	return all, files
}

func bashCompletion() string {
	var b strings.Builder
	specs := allSpecs()
	b.WriteString("# bash completion for mles; load with: source <(mles completion bash)\n_mles() {\n")
	b.WriteString("  local cur prev cmd\n  cur=\"${COMP_WORDS[COMP_CWORD]}\"\n  prev=\"${COMP_WORDS[COMP_CWORD-1]}\"\n")
	fmt.Fprintf(&b, "  if [ \"$COMP_CWORD\" -eq 1 ]; then\n    COMPREPLY=( $(compgen -W %q -- \"$cur\") )\n    return 0\n  fi\n",
		strings.Join(append(commandNames(), "help", "--help", "--version"), " "))
	b.WriteString("  cmd=\"${COMP_WORDS[1]}\"\n  case \"$cmd\" in\n")
	for _, name := range commandNames() {
		all, files := flagWords(specs[name])
		fmt.Fprintf(&b, "  %s)\n", name)
		if len(files) > 0 {
			fmt.Fprintf(&b, "    case \"$prev\" in %s) COMPREPLY=( $(compgen -f -- \"$cur\") ); return 0;; esac\n", strings.Join(files, "|"))
		}
		words := strings.Join(all, " ")
		if name == "completion" {
			words = "bash zsh fish " + words
		}
		fmt.Fprintf(&b, "    COMPREPLY=( $(compgen -W %q -- \"$cur\") );;\n", words)
	}
	b.WriteString("  esac\n  return 0\n}\ncomplete -F _mles mles\n")
	return b.String()
}

func zshCompletion() string {
	var b strings.Builder
	specs := allSpecs()
	b.WriteString("#compdef mles\n# zsh completion for mles; load with: source <(mles completion zsh)\n_mles() {\n")
	b.WriteString("  local -a cmds\n  cmds=(\n")
	for _, c := range commands {
		fmt.Fprintf(&b, "    %s\n", zshQuote(c.name+":"+c.summary))
	}
	b.WriteString("  )\n  if (( CURRENT == 2 )); then\n    _describe 'command' cmds\n    return\n  fi\n  case $words[2] in\n")
	for _, name := range commandNames() {
		fmt.Fprintf(&b, "  %s)\n    _arguments -s \\\n", name)
		for _, s := range specs[name] {
			arg := ""
			if s.arg != "" {
				arg = ":" + strings.ToLower(s.arg) + ":"
				if s.files {
					arg += "_files"
				}
			}
			help := strings.NewReplacer("[", "(", "]", ")", "'", "", "\n", " ", ":", " ").Replace(firstLine(s.help))
			if s.short != "" {
				fmt.Fprintf(&b, "      '(-%s --%s)'{-%s,--%s}'[%s]%s' \\\n", s.short, s.long, s.short, s.long, help, arg)
			} else {
				fmt.Fprintf(&b, "      '--%s[%s]%s' \\\n", s.long, help, arg)
			}
		}
		if name == "completion" {
			b.WriteString("      '1:shell:(bash zsh fish)' \\\n")
		}
		b.WriteString("      && return 0;;\n")
	}
	b.WriteString("  esac\n}\nif [ \"$funcstack[1]\" = \"_mles\" ]; then _mles \"$@\"; else compdef _mles mles; fi\n")
	return b.String()
}

func fishCompletion() string {
	var b strings.Builder
	specs := allSpecs()
	b.WriteString("# fish completion for mles; load with: mles completion fish | source\ncomplete -c mles -f\n")
	for _, c := range commands {
		fmt.Fprintf(&b, "complete -c mles -n __fish_use_subcommand -a %s -d %s\n", c.name, fishQuote(c.summary))
	}
	b.WriteString("complete -c mles -n __fish_use_subcommand -l version -d 'print the version'\n")
	names := commandNames()
	sort.Strings(names)
	for _, name := range names {
		for _, s := range specs[name] {
			fmt.Fprintf(&b, "complete -c mles -n '__fish_seen_subcommand_from %s' -l %s", name, s.long)
			if s.short != "" {
				if len(s.short) == 1 {
					fmt.Fprintf(&b, " -s %s", s.short)
				} else {
					fmt.Fprintf(&b, " -o %s", s.short)
				}
			}
			switch {
			case s.files:
				b.WriteString(" -r -F")
			case s.arg != "":
				b.WriteString(" -r")
			}
			fmt.Fprintf(&b, " -d %s\n", fishQuote(firstLine(s.help)))
		}
	}
	b.WriteString("complete -c mles -n '__fish_seen_subcommand_from completion' -a 'bash zsh fish'\n")
	return b.String()
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func zshQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", "'\\''") + "'" }
func fishQuote(s string) string {
	return "'" + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), "'", `\'`) + "'"
}
