package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
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

// printStatus writes the status for people: the budget and why, memory,
// and one row per lease, as aligned tables with units.
func printStatus(w io.Writer, st api.Status, now time.Time) error {
	return writeStatus(w, st, now, false)
}

// printExplained is printStatus with the arithmetic behind the budget and
// every lease's token account.
func printExplained(w io.Writer, st api.Status, now time.Time) error {
	return writeStatus(w, st, now, true)
}

func writeStatus(out io.Writer, st api.Status, now time.Time, explain bool) error {
	w := &trimmed{w: out}
	defer w.Flush()
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "budget\t%d jobs\t%s\n", st.Budget, budgetWhy(st))
	fmt.Fprintf(tw, "leases\t%d\t%s\n", len(st.Leases), leaseCounts(st))
	tokens := fmt.Sprintf("of %d allowed (the budget less one slot per active lease)", st.Allowance)
	if st.Debt > 0 {
		tokens += fmt.Sprintf("; %d over it, kept as jobs return them", st.Debt)
	}
	fmt.Fprintf(tw, "tokens\t%d granted\t%s\n", st.Granted, tokens)
	fmt.Fprintf(tw, "reclaimed\t%d tokens\tleaked by killed builds; %d excess removed\n", st.ReclaimedTotal, st.InflatedTotal)
	if st.InvariantViolations > 0 {
		fmt.Fprintf(tw, "ACCOUNTING ERRORS\t%d\tlast: %s\n", st.InvariantViolations, api.Printable(st.LastViolation))
	}
	if m := st.Memory; m != nil {
		fmt.Fprintln(tw, "\t\t") // one blank line; the columns stay aligned across it
		fmt.Fprintf(tw, "memory\t%s\t%s\n", bytesize.Human(m.Limit), api.Printable(m.Domain))
		fmt.Fprintf(tw, "headroom\t%s\twhat the domain can still take\n", bytesize.Human(m.Headroom))
		fmt.Fprintf(tw, "working set\t%s\tin use, less what the kernel drops cheaply\n", bytesize.Human(m.WorkingSet))
		fmt.Fprintf(tw, "reserve\t%s\tnever handed out\n", bytesize.Human(m.Reserve))
		fmt.Fprintf(tw, "growth\t%s\tstill to come from running jobs\n", bytesize.Human(m.Growth))
		outside := "in use outside every lease"
		if m.OutsideGrowth > 0 {
			outside += fmt.Sprintf(", growing: %s of the growth", bytesize.Human(m.OutsideGrowth))
		}
		fmt.Fprintf(tw, "outside\t%s\t%s\n", bytesize.Human(m.Outside), outside)
		fmt.Fprintf(tw, "pressure\t%.1f%% some\t%.1f%% full, over %s (%s)\n", 100*m.PressureSome, 100*m.PressureFull,
			m.PressureWindow.Round(100*time.Millisecond), api.Printable(m.PressureFile))
		if m.SoftCap > 0 {
			fmt.Fprintf(tw, "soft cap\t%s\tthe working set pressure appeared at\n", bytesize.Human(m.SoftCap))
		}
		fmt.Fprintf(tw, "oom kills\t%d of jobs\t%d of other processes, seen from the %s\n", m.OOMKills, m.OOMKillsOutside, m.OOMSource)
		if explain {
			fmt.Fprintf(tw, "decided\t%d jobs\t%s, %s ago\n", m.Target, m.Reason, age(now.Sub(m.Changed)))
			fmt.Fprintf(tw, "memory fits\t%d jobs\t%d running, next job %s; cpu cap %d\n", m.Fit, m.Jobs, bytesize.Human(m.NextJob), m.CPUCap)
			fmt.Fprintf(tw, "arithmetic\t\t%s\n", m.Detail)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	if len(st.Leases) == 0 {
		_, err := fmt.Fprintln(w, "no leases")
		return err
	}
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tAGE\tSTATE\tJOBS\tHELD/GRANTED\tRSS\tPEAK\tCOMPILE\tLINK\tESTIMATES\tOOM\tID")
	for _, l := range st.Leases {
		jobs, rss, peak, compile, link, source, oom := "-", "-", "-", "-", "-", "-", "-"
		if m := l.Memory; m != nil {
			jobs = fmt.Sprint(m.Jobs)
			rss, peak = bytesize.Human(m.RSS), bytesize.Human(m.Peak)
			compile, link, source = bytesize.Human(m.Estimates.Compile), bytesize.Human(m.Estimates.Link), dash(m.Source)
			if m.OOMKills > 0 {
				oom = fmt.Sprintf("%d (%s)", m.OOMKills, bytesize.Human(m.OOMKilled))
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d/%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", api.Printable(l.Name), age(now.Sub(l.Created)),
			leaseState(l, now), jobs, l.Held, l.Granted, rss, peak, compile, link, source, oom, l.ID)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if !explain {
		return nil
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tFREE\tOWED\tRECLAIMED\tEXCESS\tPROCS\tGROWTH\tUID\tCGROUP\tEND")
	for _, l := range st.Leases {
		procs, growth := "-", "-"
		if m := l.Memory; m != nil {
			procs, growth = fmt.Sprint(m.Procs), bytesize.Human(m.Growth)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\t%s\t%d\t%s\t%s\n", l.ID, l.Free, l.Owed, l.Reclaimed, l.Inflated,
			procs, growth, l.UID, dash(api.Printable(l.Cgroup)), dash(api.Printable(l.EndReason)))
	}
	return tw.Flush()
}

// budgetWhy says in words why the budget is what it is, and, while it is
// fixed, what memory would allow.
func budgetWhy(st api.Status) string {
	var why string
	switch st.BudgetReason {
	case "config":
		why = "fixed by the configuration (tokens)"
	case "operator":
		why = "pinned by an operator (tokenctl set budget)"
	case "cpu count":
		why = "the CPU count; no memory controller has decided"
	default:
		why = "memory controller: " + reasonWords(st.BudgetReason)
	}
	if m := st.Memory; m != nil && m.Target != st.Budget {
		why += fmt.Sprintf("; memory would allow %d (%s)", m.Target, m.Reason)
	}
	return why
}

// reasonWords explains a memory controller's reason.
func reasonWords(reason string) string {
	switch reason {
	case "headroom":
		return "headroom, memory fits no more"
	case "growth reserve":
		return "growth reserve, running jobs will grow into the rest"
	case "pressure":
		return "pressure, memory stalls or the soft cap they left"
	case "cpu cap":
		return "cpu cap, the CPUs justify no more"
	}
	return api.Printable(reason)
}

// leaseCounts counts the leases by state: "2 running, 1 waiting".
func leaseCounts(st api.Status) string {
	counts := map[string]int{}
	var order []string
	for _, l := range st.Leases {
		s := stateName(l)
		if counts[s] == 0 {
			order = append(order, s)
		}
		counts[s]++
	}
	parts := make([]string, len(order))
	for i, s := range order {
		parts[i] = fmt.Sprintf("%d %s", counts[s], s)
	}
	return strings.Join(parts, ", ")
}

// stateName is the lease's state, with the memory brake's freeze.
func stateName(l api.LeaseStatus) string {
	if l.Memory != nil && l.Memory.Frozen && !l.Ending {
		return "frozen"
	}
	return l.State
}

// leaseState is stateName with how long a waiting build has waited.
func leaseState(l api.LeaseStatus, now time.Time) string {
	s := stateName(l)
	if s == api.StateWaiting {
		since := l.Asked
		if since.IsZero() {
			since = l.Created
		}
		s += " " + age(now.Sub(since))
	}
	if !l.OverShareSince.IsZero() {
		s += fmt.Sprintf(", %d over share %s", l.Granted-l.Share, age(now.Sub(l.OverShareSince)))
	}
	if l.Reissued > 0 {
		s += fmt.Sprintf(", %d reissued", l.Reissued)
	}
	if l.First {
		s += ", served first"
	}
	return s
}

// age writes a duration the way a table has room for: 45s, 3m12s, 2h05m.
func age(d time.Duration) string {
	d = max(d, 0).Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	}
	return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
}

// trimmed cuts the blanks tabwriter pads the last cell of a line with.
type trimmed struct {
	w   io.Writer
	buf []byte
}

func (t *trimmed) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	for {
		i := bytes.IndexByte(t.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		line := bytes.TrimRight(t.buf[:i], " ")
		if _, err := fmt.Fprintf(t.w, "%s\n", line); err != nil {
			return 0, err
		}
		t.buf = t.buf[i+1:]
	}
}

// Flush writes what is left after the last line break.
func (t *trimmed) Flush() error {
	_, err := t.w.Write(t.buf)
	t.buf = nil
	return err
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
