package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/bytesize"
)

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printStatus writes the status as a table for people.
func printStatus(w io.Writer, st api.Status, now time.Time) error {
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
	if m := st.Memory; m != nil {
		printMemory(w, m, now)
	}
	if len(st.Leases) == 0 {
		_, err := fmt.Fprintln(w, "no leases")
		return err
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tGRANTED\tFREE\tHELD\tOWED\tRECLAIMED\tAGE\tSTATE")
	for _, l := range st.Leases {
		state := l.State
		switch {
		case l.Ending:
			state = "ending: " + api.Printable(l.EndReason)
		case l.State == api.StateWaiting && !l.Asked.IsZero():
			state = fmt.Sprintf("waiting for admission for %s", now.Sub(l.Asked).Round(100*time.Millisecond))
		case l.State == api.StateWaiting:
			state = "waiting for admission"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n",
			l.ID, api.Printable(l.Name), l.Granted, l.Free, l.Held, l.Owed, l.Reclaimed, now.Sub(l.Created).Round(time.Second), state)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if st.Memory == nil {
		return nil
	}
	tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tJOBS\tPROCS\tRSS\tPEAK\tGROWTH\tCOMPILE EST\tLINK EST\tFROM\tBRAKE")
	for _, l := range st.Leases {
		m := l.Memory
		if m == nil {
			continue
		}
		brake := "-"
		if m.Frozen {
			brake = "frozen"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", l.ID, m.Jobs, m.Procs, bytesize.Human(m.RSS), bytesize.Human(m.Peak),
			bytesize.Human(m.Growth), bytesize.Human(m.Estimates.Compile), bytesize.Human(m.Estimates.Link), m.Source, brake)
	}
	return tw.Flush()
}

// printMemory writes the memory controller's view: what the domain has,
// what running jobs will still take, and why the budget is what it is.
func printMemory(w io.Writer, m *api.MemoryStatus, now time.Time) {
	fmt.Fprintf(w, "memory %s: headroom %s of %s (working set %s), reserve %s, growth to come %s, next job %s\n",
		m.Domain, bytesize.Human(m.Headroom), bytesize.Human(m.Limit), bytesize.Human(m.WorkingSet), bytesize.Human(m.Reserve), bytesize.Human(m.Growth), bytesize.Human(m.NextJob))
	fmt.Fprintf(w, "pressure some %.1f%% full %.1f%% over %s (%s)", 100*m.PressureSome, 100*m.PressureFull,
		m.PressureWindow.Round(10*time.Millisecond), m.PressureFile)
	if m.SoftCap > 0 {
		fmt.Fprintf(w, ", soft cap %s", bytesize.Human(m.SoftCap))
	}
	fmt.Fprintf(w, "\ncontroller: %d jobs running, memory fits %d, cpu cap %d, wants budget %d (%s, %s ago): %s\n",
		m.Jobs, m.Fit, m.CPUCap, m.Target, m.Reason, now.Sub(m.Changed).Round(time.Second), m.Detail)
}
