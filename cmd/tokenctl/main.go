// Command tokenctl controls and inspects tokend.
//
//	tokenctl [--socket PATH] status [--json]
//	tokenctl [--socket PATH] run [--name N] [--style auto|fifo|pipe] -- CMD ARGS...
//	tokenctl [--socket PATH] set budget N|auto
//
// The socket defaults to $TOKEND_SOCKET, else tokend's default.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/tokend/tokend/api"
)

const usage = `usage:
  tokenctl [--socket PATH] status [--json]     the budget and every lease
  tokenctl [--socket PATH] run [--name N] [--style auto|fifo|pipe] -- CMD ARGS...
                                               run CMD under the broker
  tokenctl [--socket PATH] set budget N|auto   pin the budget (root), or hand it back
  tokenctl [--socket PATH] doctor              can tokend's Nix hook work on this host?
`

// callTimeout bounds every API call: tokend answers in milliseconds, and
// tokenctl must never hang a user's build on a wedged broker.
const callTimeout = 3 * time.Second

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("tokenctl", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage) }
	socket := fs.String("socket", api.DefaultSocket(), "tokend's control socket (also $TOKEND_SOCKET)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	c := api.NewClient(*socket)
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	var err error
	switch cmd {
	case "status":
		err = status(c, rest)
	case "run":
		return runCommand(c, rest)
	case "doctor":
		return runDoctor(*socket, rest)
	case "set":
		err = set(c, rest)
	default:
		fmt.Fprintf(os.Stderr, "tokenctl: unknown command %q\n%s", cmd, usage)
		return 2
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "tokenctl:", err)
		return 1
	}
	return 0
}

func status(c *api.Client, args []string) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print the status as JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	st, err := c.Status(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(os.Stdout, st)
	}
	return printStatus(os.Stdout, st, time.Now())
}

func set(c *api.Client, args []string) error {
	if len(args) != 2 || args[0] != "budget" {
		return errors.New("usage: tokenctl set budget N|auto")
	}
	tokens := 0
	if args[1] != "auto" {
		n, err := strconv.Atoi(args[1])
		if err != nil || n <= 0 {
			return fmt.Errorf("budget %q: want a positive number of jobs, or auto", args[1])
		}
		tokens = n
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	st, err := c.SetBudget(ctx, tokens)
	if err != nil {
		return err
	}
	fmt.Printf("budget %d (%s)\n", st.Budget, st.BudgetReason)
	return nil
}
