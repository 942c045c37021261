package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/bytesize"
)

func historyCommand(c *cli) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "history",
		Short: "Show what tokend learned of past builds' jobs",
		Long: `history shows, per user and lease name, what the next build's jobs are
expected to peak at (compile and link), how many runs taught it, when it
last saw one, and how many of their jobs the OOM killer took. Anyone may
read it.`,
		Example: `  tokenctl history
  tokenctl history --json | jq '.[] | select(.oom_kills > 0)'
  sudo tokenctl history forget chromium`,
		Args: noArgs,
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the history as JSON")
	cmd.RunE = c.do(func(*cobra.Command, []string) int { return showHistory(c.client(), asJSON) })
	var uid int
	forget := &cobra.Command{
		Use:   "forget [--uid N] NAME",
		Short: "Forget what tokend learned of a name's builds (root)",
		Long: `history forget forgets a name's job history, for every user, or with --uid
for one: its next build starts from the default estimates. Only root may.`,
		Example: `  sudo tokenctl history forget chromium
  sudo tokenctl history forget --uid 1000 chromium`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return errors.New("history forget takes one name; see tokenctl history forget --help")
			}
			return nil
		},
	}
	forget.Flags().IntVar(&uid, "uid", -1, "forget only this user's entry (default: every user's)")
	forget.RunE = c.do(func(cmd *cobra.Command, args []string) int {
		var who *int
		if cmd.Flags().Changed("uid") {
			if uid < 0 {
				fmt.Fprintf(os.Stderr, "tokenctl: --uid %d: want a user id\n", uid)
				return 2
			}
			who = &uid
		}
		return forgetHistory(c.client(), args[0], who)
	})
	cmd.AddCommand(forget)
	return cmd
}

func showHistory(c *api.Client, asJSON bool) int {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	h, err := c.History(ctx)
	if err != nil {
		return fail(err)
	}
	if asJSON {
		err = printJSON(os.Stdout, h)
	} else {
		err = printHistory(os.Stdout, h, time.Now())
	}
	if err != nil {
		return fail(err)
	}
	return 0
}

func forgetHistory(c *api.Client, name string, uid *int) int {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	f, err := c.Forget(ctx, name, uid)
	if err != nil {
		return fail(err)
	}
	fmt.Printf("forgot %s (%d user(s)); its next build starts from the default estimates\n", api.Printable(name), f.Entries)
	return 0
}

// printHistory writes the history as a table for people.
func printHistory(w io.Writer, h []api.HistoryEntry, now time.Time) error {
	if len(h) == 0 {
		_, err := fmt.Fprintln(w, "no job history")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "UID\tNAME\tCOMPILE\tLINK\tRUNS\tOOM KILLS\tLAST SEEN")
	for _, e := range h {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%d\t%s ago\n", e.UID, api.Printable(e.Name), orNone(e.Compile), orNone(e.Link),
			e.Runs, e.OOMKills, age(now.Sub(e.LastSeen)))
	}
	return tw.Flush()
}

// orNone writes a size, or "-" for none learned.
func orNone(b uint64) string {
	if b == 0 {
		return "-"
	}
	return bytesize.Human(b)
}
