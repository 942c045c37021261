package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/tokend/tokend/internal/buildtest"
	"github.com/tokend/tokend/internal/termtest"
)

// Every command tokenctl has shows an example in its --help.
func TestEveryCommandHasAnExample(t *testing.T) {
	var walk func(cmd *cobra.Command)
	n := 0
	walk = func(cmd *cobra.Command) {
		// cobra's own completion commands show how to load each shell's
		// script in their long help instead.
		if cmd.Name() == "help" || cmd.Name() == "completion" {
			return
		}
		n++
		if cmd.Runnable() && cmd.Example == "" {
			t.Errorf("%s --help has no example", cmd.CommandPath())
		}
		for _, sub := range cmd.Commands() {
			walk(sub)
		}
	}
	root := newRoot(&cli{})
	root.InitDefaultCompletionCmd()
	walk(root)
	if n < 5 {
		t.Errorf("walked %d commands; the walk misses some", n)
	}
}

// Issue 12: `tokenctl completion bash|zsh|fish`, loaded into the real
// shell in a real terminal, completes a command name and a flag's value
// (which the shell asks tokenctl itself for).
func TestCompletionInRealShells(t *testing.T) {
	_, tokenctl := binaries(t)
	dir := t.TempDir()
	env := buildtest.CleanEnv("PATH="+filepath.Dir(tokenctl)+":/usr/bin:/bin", "HOME="+dir, "ZDOTDIR="+dir)
	writeFile(t, filepath.Join(dir, "bashrc"), "PS1='ready> '\nsource /usr/share/bash-completion/bash_completion\nsource <(tokenctl completion bash)\n")
	writeFile(t, filepath.Join(dir, ".zshrc"), "PS1='ready> '\nautoload -U compinit && compinit -u\nsource <(tokenctl completion zsh)\n")
	shells := map[string][]string{
		"bash": {"bash", "--noprofile", "--rcfile", filepath.Join(dir, "bashrc"), "-i"},
		"zsh":  {"zsh", "-i"},
		"fish": {"fish", "--no-config", "--init-command", "function fish_prompt; echo -n 'ready> '; end; tokenctl completion fish | source"},
	}
	for _, shell := range []string{"bash", "zsh", "fish"} {
		t.Run(shell, func(t *testing.T) {
			if _, err := os.Stat("/usr/bin/" + shell); err != nil {
				buildtest.Missing(t, shell+" (apt-get install "+shell+")")
			}
			if _, err := os.Stat("/usr/share/bash-completion/bash_completion"); err != nil && shell == "bash" {
				buildtest.Missing(t, "bash-completion, which cobra's bash completion needs (apt-get install bash-completion)")
			}
			term := termtest.Start(t, 100, 20, env, shells[shell]...)
			term.WaitForText("ready>")
			term.Type("tokenctl stat")
			term.Keys("Tab")
			screen := term.WaitForText("tokenctl status")
			term.Keys("C-u")
			term.Type("tokenctl run --style ")
			term.Keys("Tab", "Tab")
			screen = term.WaitFor("the three styles", func(s string) bool {
				return strings.Contains(s, "auto") && strings.Contains(s, "fifo") && strings.Contains(s, "pipe")
			})
			t.Logf("%s completed:\n%s", shell, strings.TrimSpace(screen))
		})
	}
}
