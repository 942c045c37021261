package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/bytesize"
)

const historyUsage = "usage: tokenctl history [--json] | tokenctl history forget [--uid N] NAME"

// history lists what tokend learned of past builds, or forgets a name.
func history(c *api.Client, args []string) error {
	if len(args) > 0 && args[0] == "forget" {
		return forget(c, args[1:])
	}
	fs := flag.NewFlagSet("history", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print the history as JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q; %s", fs.Arg(0), historyUsage)
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	h, err := c.History(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(os.Stdout, h)
	}
	return printHistory(os.Stdout, h, time.Now())
}

func forget(c *api.Client, args []string) error {
	fs := flag.NewFlagSet("history forget", flag.ContinueOnError)
	uidFlag := fs.String("uid", "", "forget only this user's entry (default: every user's)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New(historyUsage)
	}
	var uid *int
	if *uidFlag != "" {
		n, err := strconv.Atoi(*uidFlag)
		if err != nil || n < 0 {
			return fmt.Errorf("--uid %q: want a user id", *uidFlag)
		}
		uid = &n
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	f, err := c.Forget(ctx, fs.Arg(0), uid)
	if err != nil {
		return err
	}
	fmt.Printf("forgot %s (%d user(s)); its next build starts from the default estimates\n", fs.Arg(0), f.Entries)
	return nil
}

// printHistory writes the history as a table for people.
func printHistory(w io.Writer, h []api.HistoryEntry, now time.Time) error {
	if len(h) == 0 {
		_, err := fmt.Fprintln(w, "no job history")
		return err
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "UID\tNAME\tCOMPILE\tLINK\tRUNS\tOOM KILLS\tLAST SEEN")
	for _, e := range h {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%d\t%s ago\n", e.UID, e.Name, orNone(e.Compile), orNone(e.Link),
			e.Runs, e.OOMKills, now.Sub(e.LastSeen).Round(time.Second))
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
