package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/tokend/tokend/api"
)

// statusOptions are the flags of tokenctl status.
type statusOptions struct {
	json, explain bool
}

func status(c *api.Client, o statusOptions) int {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	st, err := c.Status(ctx)
	if err != nil {
		return fail(err)
	}
	switch {
	case o.json:
		err = printJSON(os.Stdout, st)
	case o.explain:
		err = printExplained(os.Stdout, st, time.Now())
	default:
		err = printStatus(os.Stdout, st, time.Now())
	}
	if err != nil {
		return fail(err)
	}
	return 0
}

// setBudget pins the budget at arg jobs, or hands it back with "auto".
func setBudget(c *api.Client, arg string) int {
	tokens := 0
	if arg != "auto" {
		n, err := strconv.Atoi(arg)
		if err != nil || n <= 0 {
			fmt.Fprintf(os.Stderr, "tokenctl: budget %q: want a positive number of jobs, or auto\n", arg)
			return 2
		}
		tokens = n
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	st, err := c.SetBudget(ctx, tokens)
	if err != nil {
		return fail(err)
	}
	fmt.Printf("budget %d (%s)\n", st.Budget, st.BudgetReason)
	return 0
}
