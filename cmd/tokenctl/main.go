// Command tokenctl controls and inspects tokend.
//
//	tokenctl [--socket PATH] status [--json] [--explain]
//	tokenctl [--socket PATH] top [--interval D] [--iterations N]
//	tokenctl [--socket PATH] events [--json] [--backlog]
//	tokenctl [--socket PATH] run [--name N] [--style auto|fifo|pipe] [--keep-jobs] [--retry-oom N] -- CMD ARGS...
//	tokenctl [--socket PATH] set budget N|auto
//	tokenctl [--socket PATH] history [--json] | history forget [--uid N] NAME
//	tokenctl [--socket PATH] doctor
//	tokenctl completion bash|zsh|fish
//
// The socket defaults to $TOKEND_SOCKET, else tokend's default. Every
// command has --help with examples; tokenctl --version says which build it
// is.
package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/version"
)

// callTimeout bounds every API call: tokend answers in milliseconds, and
// tokenctl must never hang a user's build on a wedged broker.
const callTimeout = 3 * time.Second

func main() {
	os.Exit(run(os.Args[1:]))
}

// cli is one invocation: the global flags and the exit status the command
// chose.
type cli struct {
	socket string
	code   int
}

func (c *cli) client() *api.Client { return api.NewClient(c.socket) }

// do adapts a command's action, which prints its own errors and returns
// the exit status, to cobra, so that an error cobra sees is always one of
// usage.
func (c *cli) do(action func(cmd *cobra.Command, args []string) int) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		c.code = action(cmd, args)
		return nil
	}
}

// fail prints err as tokenctl's and returns the exit status of a failure.
func fail(err error) int {
	fmt.Fprintln(os.Stderr, "tokenctl:", err)
	return 1
}

func run(args []string) int {
	c := &cli{}
	root := newRoot(c)
	root.SetArgs(args)
	if err := root.Execute(); err != nil {
		msg := err.Error()
		if !strings.Contains(msg, "--help") {
			msg += "; see tokenctl --help"
		}
		fmt.Fprintln(os.Stderr, "tokenctl:", msg)
		return 2
	}
	return c.code
}

// newRoot is tokenctl's command tree; c holds what the commands share.
func newRoot(c *cli) *cobra.Command {
	root := &cobra.Command{
		Use:   "tokenctl",
		Short: "Inspect and steer tokend, the host's jobserver broker",
		Long: `tokenctl inspects and steers tokend, the host-wide GNU make jobserver broker:
it shows the budget of job slots and every build's lease, runs builds under
the broker, and checks that tokend's Nix hook can work on this host.`,
		Example: `  tokenctl status                  # the budget, memory and every lease
  tokenctl run -- make             # a build under the host's budget
  sudo tokenctl set budget 4       # pin the budget; "auto" hands it back
  tokenctl completion bash > /etc/bash_completion.d/tokenctl`,
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetVersionTemplate("tokenctl {{.Version}}\n")
	root.PersistentFlags().StringVar(&c.socket, "socket", api.DefaultSocket(), "tokend's control socket (also $TOKEND_SOCKET)")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return fmt.Errorf("%w; see tokenctl %s --help", err, cmd.Name())
	})
	root.AddCommand(statusCommand(c), topCommand(c), runCommandCmd(c), eventsCommand(c), setCommand(c), historyCommand(c), doctorCommand(c))
	return root
}

// noArgs refuses arguments, naming the command.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("%s takes no arguments, got %q; see %s --help", cmd.CommandPath(), args[0], cmd.CommandPath())
	}
	return nil
}

func statusCommand(c *cli) *cobra.Command {
	var o statusOptions
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the budget, memory and every lease",
		Long: `status shows the budget and why it is what it is, what memory allows, and one
row per lease. Anyone may read it.`,
		Example: `  tokenctl status
  tokenctl status --explain          # with the arithmetic behind the budget
  tokenctl status --json | jq .budget`,
		Args: noArgs,
	}
	cmd.Flags().BoolVar(&o.json, "json", false, "print the status as JSON (docs/status-json.md)")
	cmd.Flags().BoolVar(&o.explain, "explain", false, "add the arithmetic behind the budget and every lease's token account")
	cmd.RunE = c.do(func(*cobra.Command, []string) int { return status(c.client(), o) })
	return cmd
}

func runCommandCmd(c *cli) *cobra.Command {
	var o runOptions
	cmd := &cobra.Command{
		Use:   "run [--name N] [--style auto|fifo|pipe] [--keep-jobs] [--retry-oom N] -- CMD [ARGS...]",
		Short: "Run a build under tokend's budget",
		Long: `run takes a lease, waits until the host has room for one more build, points
MAKEFLAGS (and CARGO_MAKEFLAGS) at the lease's jobserver, runs the command,
forwards signals and returns its exit status. For make and ninja it drops a
-j or -l that would take them out of the jobserver, and says so. If tokend
is not reachable, the command runs unchanged. With --retry-oom N, a run that
fails after tokend saw the OOM killer take a job of it runs again, up to N
times, once memory fits that job alone; it says so on stderr.`,
		Example: `  tokenctl run -- make
  tokenctl run --name llvm -- ninja -C build
  tokenctl run -- cargo build --release
  tokenctl run --keep-jobs -- make -j2     # keep the -j2, outside the budget
  tokenctl run --retry-oom 2 -- make       # again after an OOM kill, up to twice`,
		DisableFlagsInUseLine: true,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return errors.New("run: no command given; see tokenctl run --help")
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&o.name, "name", "", "lease name shown in status (default: the command's name)")
	cmd.Flags().StringVar(&o.style, "style", "auto", "jobserver style: fifo (make >= 4.4, ninja, cargo), pipe (make 4.3, gcc 12), or auto")
	cmd.Flags().BoolVar(&o.keepJobs, "keep-jobs", false, "keep a make or ninja command's -j and -l, which take it out of the jobserver")
	cmd.Flags().IntVar(&o.retryOOM, "retry-oom", 0, "run the command again, up to N times, after a run in which a job of it was OOM-killed, once memory fits that job alone")
	// The command's own flags are its own: tokenctl run make -j8 works
	// without "--".
	cmd.Flags().SetInterspersed(false)
	cmd.RegisterFlagCompletionFunc("style", cobra.FixedCompletions([]string{"auto", "fifo", "pipe"}, cobra.ShellCompDirectiveNoFileComp))
	cmd.RunE = c.do(func(_ *cobra.Command, args []string) int { return runCommand(c.client(), o, args) })
	return cmd
}

func topCommand(c *cli) *cobra.Command {
	var o topOptions
	cmd := &cobra.Command{
		Use:   "top",
		Short: "Watch the budget, memory and every lease, live",
		Long: `top shows, refreshed every second, the budget and why, headroom and pressure
with their recent history, one row per lease (name, age, state, jobs, tokens
held of granted, RSS and peak, compile and link estimates, OOM kills) and
tokend's last decisions. Keys: q quits; s cycles the sort, or j jobs, n name,
a age, m RSS, t state. When stdout is no terminal it prints plain frames.`,
		Example: `  tokenctl top
  tokenctl top --iterations 1 | less     # one plain frame`,
		Args: noArgs,
	}
	cmd.Flags().DurationVar(&o.interval, "interval", time.Second, "time between refreshes")
	cmd.Flags().IntVar(&o.iterations, "iterations", 0, "stop after this many frames; 0 runs until q")
	cmd.RunE = c.do(func(cmd *cobra.Command, _ []string) int {
		if o.interval < 50*time.Millisecond || o.iterations < 0 {
			fmt.Fprintln(os.Stderr, "tokenctl: top: --interval wants 50ms or more, --iterations 0 or more")
			return 2
		}
		ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return runTop(ctx, c.client(), o, os.Stdout)
	})
	return cmd
}

func eventsCommand(c *cli) *cobra.Command {
	var o eventsOptions
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Follow tokend's decisions as they happen",
		Long: `events prints tokend's decisions as they happen, one line each: budget
changes and their reasons, the memory controller's decisions, leases
starting, admitted and ending, the memory brake freezing and thawing builds,
leaked tokens reclaimed, OOM kills. --json prints one JSON object a line
(fields: docs/events-json.md). It runs until interrupted, and waits out a
restart of tokend.`,
		Example: `  tokenctl events
  tokenctl events --json | jq -r 'select(.kind == "freeze") | .name'
  tokenctl events --json | jq --unbuffered -r 'select(.kind == "freeze" or .kind == "oom-kill") | "\(.kind) \(.name)"' |
    while read -r what; do notify-send tokend "$what"; done`,
		Args: noArgs,
	}
	cmd.Flags().BoolVar(&o.json, "json", false, "print one JSON object a line")
	cmd.Flags().BoolVar(&o.backlog, "backlog", false, "start with the recent events tokend still keeps")
	cmd.RunE = c.do(func(cmd *cobra.Command, _ []string) int {
		ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return followEvents(ctx, c.client(), o, os.Stdout)
	})
	return cmd
}

func setCommand(c *cli) *cobra.Command {
	set := &cobra.Command{
		Use:   "set",
		Short: "Change tokend's settings (root)",
		Args:  noArgs,
	}
	budget := &cobra.Command{
		Use:   "budget N|auto",
		Short: "Pin the budget at N jobs, or hand it back to tokend (root)",
		Long: `set budget pins the budget at N jobs until set again; auto hands it back to
the memory controller (or to tokend's configured tokens). Only root may.`,
		Example: `  sudo tokenctl set budget 4
  sudo tokenctl set budget auto`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return errors.New("set budget takes one argument, N or auto; see tokenctl set budget --help")
			}
			return nil
		},
		ValidArgs: []string{"auto"},
	}
	budget.RunE = c.do(func(_ *cobra.Command, args []string) int { return setBudget(c.client(), args[0]) })
	set.AddCommand(budget)
	return set
}

func doctorCommand(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "doctor",
		Short: "Check that tokend's Nix hook can work on this host",
		Long: `doctor checks tokend, nix.conf's pre-build-hook and sandbox, the Nix version,
cgroups and the hook's socket, and prints one line per finding: OK, WARN or
FAIL, with the fix. It exits 1 when anything fails.`,
		Example: `  tokenctl doctor
  sudo tokenctl doctor               # as root, to read what tokend's hook reads`,
		Args: noArgs,
		RunE: c.do(func(*cobra.Command, []string) int { return runDoctor(c.socket) }),
	}
}
