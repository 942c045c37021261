package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/tokend/tokend/broker"
)

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printStatus writes the status as a table for people.
func printStatus(w io.Writer, st broker.Status, now time.Time) error {
	fmt.Fprintf(w, "budget %d (%s), %d active leases, %d tokens granted of %d allowed",
		st.Budget, st.BudgetReason, st.ActiveLeases, st.Granted, st.Allowance)
	if st.Debt > 0 {
		fmt.Fprintf(w, ", %d in debt", st.Debt)
	}
	fmt.Fprintf(w, "; %d reclaimed", st.ReclaimedTotal)
	if st.InflatedTotal > 0 {
		fmt.Fprintf(w, ", %d excess removed", st.InflatedTotal)
	}
	fmt.Fprintln(w)
	if st.InvariantViolations > 0 {
		fmt.Fprintf(w, "ACCOUNTING ERRORS: %d, last: %s\n", st.InvariantViolations, st.LastViolation)
	}
	if len(st.Leases) == 0 {
		_, err := fmt.Fprintln(w, "no leases")
		return err
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tGRANTED\tFREE\tHELD\tOWED\tRECLAIMED\tAGE\tSTATE")
	for _, l := range st.Leases {
		state := "active"
		if l.Ending {
			state = "ending: " + l.EndReason
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n",
			l.ID, l.Name, l.Granted, l.Free, l.Held, l.Owed, l.Reclaimed, now.Sub(l.Created).Round(time.Second), state)
	}
	return tw.Flush()
}
