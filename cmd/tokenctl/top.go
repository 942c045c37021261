package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"golang.org/x/term"

	"github.com/tokend/tokend/api"
)

// topOptions are the flags of tokenctl top.
type topOptions struct {
	interval   time.Duration
	iterations int
}

// The widest screen top draws: it fits 80 columns, and a wider terminal
// gets no wider lines.
const topWidth = 80

// historyLen is how many refreshes top remembers, sparkWidth how many of
// them the sparklines show.
const (
	historyLen = 60
	sparkWidth = 20
)

// recentEvents is how many of the last events top shows.
const recentEvents = 4

// sortKey orders top's lease rows.
type sortKey int

const (
	byJobs sortKey = iota
	byName
	byAge
	byRSS
	byState
	sortKeys
)

func (k sortKey) String() string {
	return [...]string{"jobs", "name", "age", "rss", "state"}[k]
}

// topView is what top shows: the last status, the memory history, the
// last events and the order of the rows.
type topView struct {
	status    api.Status
	statusErr error
	headroom  []float64 // shares of the domain, oldest first
	pressure  []float64 // some-stall shares, oldest first
	events    []api.Event
	oomKills  map[string]int // by lease ID, from oom-kill events
	sort      sortKey
}

func newTopView() *topView { return &topView{oomKills: map[string]int{}} }

// update takes a new status, or the error that came instead.
func (v *topView) update(st api.Status, err error) {
	v.statusErr = err
	if err != nil {
		return
	}
	v.status = st
	if m := st.Memory; m != nil && m.Limit > 0 {
		v.headroom = appendHistory(v.headroom, float64(m.Headroom)/float64(m.Limit))
		v.pressure = appendHistory(v.pressure, m.PressureSome)
	}
}

func appendHistory(h []float64, x float64) []float64 {
	h = append(h, x)
	if len(h) > historyLen {
		h = h[len(h)-historyLen:]
	}
	return h
}

// event takes one event from tokend's stream.
func (v *topView) event(e api.Event) {
	if e.Kind == api.EventOOMKill {
		v.oomKills[e.Lease] += e.Kills
	}
	v.events = append(v.events, e)
	if len(v.events) > recentEvents {
		v.events = v.events[len(v.events)-recentEvents:]
	}
}

// key handles a key press; it reports whether top should quit.
func (v *topView) key(b byte) (quit bool) {
	switch b {
	case 'q', 'Q', 3, 4: // q, Ctrl-C, Ctrl-D
		return true
	case 's':
		v.sort = (v.sort + 1) % sortKeys
	case 'j':
		v.sort = byJobs
	case 'n':
		v.sort = byName
	case 'a':
		v.sort = byAge
	case 'm':
		v.sort = byRSS
	case 't':
		v.sort = byState
	}
	return false
}

// frame draws the view as lines of at most width columns (80 at most),
// as many as fit in height rows: the budget and why, tokens and leases,
// memory with its history, one row per lease, the last events, the keys.
func (v *topView) frame(width, height int, now time.Time) []string {
	width = min(width, topWidth)
	line := func(format string, args ...any) string { return clip(fmt.Sprintf(format, args...), width) }
	st := v.status
	clock := now.Format("15:04:05")
	head := clip(fmt.Sprintf("tokend  budget %d, %s", st.Budget, budgetBrief(st)), width-len(clock)-1)
	top := []string{head + strings.Repeat(" ", max(1, width-runes(head)-len(clock))) + clock}
	if v.statusErr != nil {
		top = append(top, line("tokend: %v", v.statusErr))
	}
	top = append(top, line("tokens %d granted (%d allowed, %d debt)  leases: %s  reclaimed %d",
		st.Granted, st.Allowance, st.Debt, dash(leaseCounts(st)), st.ReclaimedTotal))
	if m := st.Memory; m != nil {
		top = append(top,
			// The sparklines start in one column.
			line("%-23s %s  working set %s, reserve %s", fmt.Sprintf("headroom %s of %s", short(m.Headroom), short(m.Limit)),
				sparkline(v.headroom, 1), short(m.WorkingSet), short(m.Reserve)),
			line("%-23s %s  full %.1f%%; memory fits %d, cpus %d", fmt.Sprintf("pressure some %.1f%%", 100*m.PressureSome),
				sparkline(v.pressure, max(0.1, slices.Max(append([]float64{0}, v.pressure...)))), 100*m.PressureFull, m.Fit, m.CPUCap))
	}
	top = append(top, "", line("%-16s %6s %-10s %4s %6s %11s %11s %3s", "NAME", "AGE", "STATE", "JOBS", "TOKENS", "RSS/PEAK", "EST C/L", "OOM"))

	bottom := []string{""}
	for i := range recentEvents {
		if i >= len(v.events) {
			bottom = append(bottom, "")
			continue
		}
		e := v.events[i]
		bottom = append(bottom, line("%s %-8s %s", e.Time.Local().Format("15:04:05"), e.Kind, eventText(e)))
	}
	bottom = append(bottom, line("q quit  s sort: %-5s (j jobs, n name, a age, m rss, t state)", v.sort))

	rows := v.rows()
	room := len(rows) + 1 // no height: every row
	if height > 0 {
		room = max(1, height-len(top)-len(bottom))
	}
	var table []string
	for i, l := range rows {
		if i == room-1 && len(rows) > room {
			table = append(table, line("… and %d more leases", len(rows)-i))
			break
		}
		jobs, mem, est := "-", "-", "-"
		if m := l.Memory; m != nil {
			jobs = fmt.Sprint(m.Jobs)
			mem = short(m.RSS) + "/" + short(m.Peak)
			est = short(m.Estimates.Compile) + "/" + short(m.Estimates.Link)
		}
		table = append(table, line("%-16s %6s %-10s %4s %6s %11s %11s %3d", clip(api.Printable(l.Name), 16), age(now.Sub(l.Created)),
			clip(stateName(l), 10), jobs, fmt.Sprintf("%d/%d", l.Held, l.Granted), mem, est, v.oomKills[l.ID]))
	}
	if len(rows) == 0 {
		table = append(table, "no leases")
	}
	out := append(append(top, table...), bottom...)
	if height > 0 && len(out) > height {
		out = out[:height]
	}
	return out
}

// rows are the leases in the view's order.
func (v *topView) rows() []api.LeaseStatus {
	rows := slices.Clone(v.status.Leases)
	val := func(l api.LeaseStatus) (jobs int, rss uint64) {
		if l.Memory != nil {
			return l.Memory.Jobs, l.Memory.RSS
		}
		return 0, 0
	}
	slices.SortStableFunc(rows, func(a, b api.LeaseStatus) int {
		aj, ar := val(a)
		bj, br := val(b)
		switch v.sort {
		case byName:
			return strings.Compare(a.Name, b.Name)
		case byAge:
			return a.Created.Compare(b.Created)
		case byRSS:
			return cmpDesc(ar, br)
		case byState:
			return strings.Compare(stateName(a), stateName(b))
		}
		return cmpDesc(uint64(aj), uint64(bj))
	})
	return rows
}

func cmpDesc(a, b uint64) int {
	switch {
	case a > b:
		return -1
	case a < b:
		return 1
	}
	return 0
}

// sparkline draws the last sparkWidth shares of scale as one block
// character each, oldest first, padded to sparkWidth.
func sparkline(h []float64, scale float64) string {
	blocks := []rune("▁▂▃▄▅▆▇█")
	var b strings.Builder
	h = h[max(0, len(h)-sparkWidth):]
	for _, x := range h {
		b.WriteRune(blocks[max(0, min(7, int(x/scale*8)))])
	}
	return b.String() + strings.Repeat(" ", sparkWidth-len(h))
}

// budgetBrief is budgetWhy short enough for top's first line.
func budgetBrief(st api.Status) string {
	why := st.BudgetReason
	switch st.BudgetReason {
	case "config":
		why = "fixed by config"
	case "operator":
		why = "pinned by an operator"
	}
	if m := st.Memory; m != nil && m.Target != st.Budget {
		why += fmt.Sprintf("; memory would allow %d (%s)", m.Target, m.Reason)
	}
	return api.Printable(why)
}

// short writes a size in at most 5 columns: 812M, 2.1G, 24G.
func short(b uint64) string {
	switch {
	case b < 1000<<20:
		return fmt.Sprintf("%dM", b>>20)
	case b < 10<<30:
		return fmt.Sprintf("%.1fG", float64(b)/(1<<30))
	}
	return fmt.Sprintf("%dG", b>>30)
}

func runes(s string) int { return utf8.RuneCountInString(s) }

// clip cuts s to width columns (runes), marking the cut with "…".
func clip(s string, width int) string {
	if runes(s) <= width {
		return s
	}
	r := []rune(s)
	if width < 1 {
		return ""
	}
	return string(r[:width-1]) + "…"
}

// runTop shows the live view until q (or Ctrl-C): on a terminal full
// screen, redrawn every interval, at each event and at each key; when
// stdout is no terminal, as plain text, one frame every interval
// (iterations of them, if given).
func runTop(ctx context.Context, c *api.Client, o topOptions, out *os.File) int {
	v := newTopView()
	events := make(chan api.Event, 64)
	go eachEvent(ctx, c, true, func(e api.Event) error {
		select {
		case events <- e:
		case <-ctx.Done():
		}
		return ctx.Err()
	}, func(string) {})
	in := int(os.Stdin.Fd())
	tty := term.IsTerminal(int(out.Fd())) && term.IsTerminal(in)
	keys := make(chan byte, 16)
	resized := make(chan os.Signal, 1)
	if tty {
		old, err := term.MakeRaw(in)
		if err != nil {
			return fail(fmt.Errorf("put the terminal in raw mode: %w", err))
		}
		defer term.Restore(in, old)
		// The alternate screen, without the cursor, left as it was on exit.
		fmt.Fprint(out, "\x1b[?1049h\x1b[?25l")
		defer fmt.Fprint(out, "\x1b[?25h\x1b[?1049l")
		go readKeys(os.Stdin, keys)
		signal.Notify(resized, syscall.SIGWINCH)
		defer signal.Stop(resized)
	}
	refresh := func() {
		callCtx, cancel := context.WithTimeout(ctx, callTimeout)
		defer cancel()
		st, err := c.Status(callCtx)
		v.update(st, err)
	}
	draw := func() error {
		if !tty {
			_, err := fmt.Fprintf(out, "%s\n\n", strings.Join(v.frame(topWidth, 0, time.Now()), "\n"))
			return err
		}
		width, height, err := term.GetSize(int(out.Fd()))
		if err != nil {
			width, height = topWidth, 24
		}
		return drawScreen(out, v.frame(width, height, time.Now()))
	}
	tick := time.NewTicker(o.interval)
	defer tick.Stop()
	refresh()
	if err := draw(); err != nil {
		return fail(err)
	}
	for frames := 1; o.iterations == 0 || frames < o.iterations; {
		var err error
		select {
		case <-ctx.Done():
			return 0
		case e := <-events:
			v.event(e)
			if tty {
				err = draw()
			}
		case k := <-keys:
			if v.key(k) {
				return 0
			}
			err = draw()
		case <-resized:
			err = draw()
		case <-tick.C:
			refresh()
			err = draw()
			frames++
		}
		if err != nil {
			return fail(err)
		}
	}
	return 0
}

// drawScreen writes lines over the screen from its top left corner,
// clearing what each line and the screen leave over. In raw mode a line
// break is "\r\n", and the last line gets none, so nothing scrolls.
func drawScreen(w io.Writer, lines []string) error {
	var b strings.Builder
	b.WriteString("\x1b[H")
	for i, l := range lines {
		b.WriteString(l)
		b.WriteString("\x1b[K")
		if i < len(lines)-1 {
			b.WriteString("\r\n")
		}
	}
	b.WriteString("\x1b[J")
	_, err := io.WriteString(w, b.String())
	return err
}

// readKeys sends every byte read from r to keys, until r fails.
func readKeys(r io.Reader, keys chan<- byte) {
	buf := make([]byte, 16)
	for {
		n, err := r.Read(buf)
		for _, b := range buf[:n] {
			keys <- b
		}
		if err != nil {
			return
		}
	}
}
