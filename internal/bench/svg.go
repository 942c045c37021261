package bench

import (
	"fmt"
	"html"
	"io"
	"math"
	"strings"
)

// Trace is one run's samples, labelled, for a timeline plot.
type Trace struct {
	Label   string
	Samples []Sample
}

const (
	plotW    = 760
	panelH   = 110
	marginL  = 70
	marginR  = 60
	marginT  = 40
	panelGap = 28
)

// WriteTimeline draws, for one scenario, a panel per strategy of memory
// charged to the limit (blue, left axis) and running jobs (orange, right
// axis) over time, with the memory limit dashed in red and OOM kills as red
// marks on the time axis. Every panel shares the time axis.
func WriteTimeline(w io.Writer, title string, limitMiB int, traces []Trace) error {
	tMax, jMax := 1.0, 1
	for _, tr := range traces {
		for _, s := range tr.Samples {
			tMax = math.Max(tMax, s.T)
			jMax = max(jMax, s.Jobs)
		}
	}
	tMax = niceCeil(tMax)
	jMax = int(niceCeil(float64(jMax)))
	memMax := float64(limitMiB) * 1.1
	h := marginT + len(traces)*(panelH+panelGap) + 20
	var b strings.Builder
	header(&b, plotW, h, title)
	for i, tr := range traces {
		top := float64(marginT + i*(panelH+panelGap))
		x := func(t float64) float64 { return marginL + t/tMax*(plotW-marginL-marginR) }
		yMem := func(m float64) float64 { return top + panelH - m/memMax*panelH }
		yJobs := func(j int) float64 { return top + panelH - float64(j)/float64(jMax)*panelH }
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" font-weight="bold">%s</text>`+"\n", marginL, top-6, html.EscapeString(tr.Label))
		fmt.Fprintf(&b, `<rect x="%d" y="%.1f" width="%d" height="%d" fill="none" stroke="#999"/>`+"\n", marginL, top, plotW-marginL-marginR, panelH)
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="red" stroke-dasharray="4,3"/>`+"\n",
			marginL, yMem(float64(limitMiB)), plotW-marginR, yMem(float64(limitMiB)))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end" fill="#1f77b4">%.1f GiB</text>`+"\n", marginL-4, yMem(float64(limitMiB))+4, float64(limitMiB)/1024)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end" fill="#1f77b4">0</text>`+"\n", marginL-4, top+panelH)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" fill="#ff7f0e">%d jobs</text>`+"\n", plotW-marginR+4, top+10, jMax)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" fill="#ff7f0e">0</text>`+"\n", plotW-marginR+4, top+panelH)
		var mem, jobs []string
		prevOOM := 0
		for k, s := range tr.Samples {
			mem = append(mem, fmt.Sprintf("%.1f,%.1f", x(s.T), yMem(s.MemMiB)))
			if k > 0 {
				jobs = append(jobs, fmt.Sprintf("%.1f,%.1f", x(s.T), yJobs(tr.Samples[k-1].Jobs)))
			}
			jobs = append(jobs, fmt.Sprintf("%.1f,%.1f", x(s.T), yJobs(s.Jobs)))
			if s.OOM > prevOOM {
				fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="red" stroke-width="2"><title>%d OOM kill(s) by %.1f s</title></line>`+"\n",
					x(s.T), top+panelH, x(s.T), top+panelH-12, s.OOM, s.T)
				prevOOM = s.OOM
			}
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="%s"/>`+"\n", strings.Join(mem, " "))
		fmt.Fprintf(&b, `<polyline fill="none" stroke="#ff7f0e" stroke-width="1" points="%s"/>`+"\n", strings.Join(jobs, " "))
		for _, t := range ticks(tMax) {
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle" font-size="10">%g</text>`+"\n", x(t), top+panelH+11, t)
		}
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">seconds since the builds started; blue: memory charged (limit dashed), orange: jobs running, red marks: OOM kills</text>`+"\n", plotW/2, h-4)
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// WritePareto draws a panel per scenario of median makespan against
// failures (OOM kills plus failed packages) for each strategy; the Pareto
// front is joined by a line and tokend drawn in green.
func WritePareto(w io.Writer, sums []Summary, scenarios []Scenario) error {
	const ph, pw = 220, plotW
	h := marginT + len(scenarios)*(ph+panelGap+20) + 10
	var b strings.Builder
	header(&b, pw, h, "makespan against failures, medians per strategy (lower left is better)")
	for i, sc := range scenarios {
		var ss []Summary
		for _, s := range sums {
			if s.Scenario == sc.Name {
				ss = append(ss, s)
			}
		}
		top := float64(marginT + i*(ph+panelGap+20))
		tMax, fMax := 1.0, 1.0
		for _, s := range ss {
			tMax, fMax = math.Max(tMax, s.Makespan), math.Max(fMax, failures(s))
		}
		tMax, fMax = niceCeil(tMax), niceCeil(fMax)
		x := func(t float64) float64 { return marginL + t/tMax*(pw-marginL-marginR) }
		// The top 50 px stay clear for the labels of the worst points.
		y := func(f float64) float64 { return top + ph - f/fMax*(ph-50) }
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" font-weight="bold">%s</text>`+"\n", marginL, top-6, html.EscapeString(sc.Name))
		fmt.Fprintf(&b, `<rect x="%d" y="%.1f" width="%d" height="%d" fill="none" stroke="#999"/>`+"\n", marginL, top, pw-marginL-marginR, ph)
		for _, t := range ticks(tMax) {
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle" font-size="10">%g s</text>`+"\n", x(t), top+ph+12, t)
		}
		for _, f := range ticks(fMax) {
			fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end" font-size="10">%g</text>`+"\n", marginL-4, y(f)+3, f)
		}
		var front []string
		for _, s := range Pareto(ss) {
			front = append(front, fmt.Sprintf("%.1f,%.1f", x(s.Makespan), y(failures(s))))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="#888" stroke-dasharray="3,3" points="%s"/>`+"\n", strings.Join(front, " "))
		for k, s := range ss {
			color := "#1f77b4"
			if strings.HasPrefix(s.Strategy, ColdName) {
				color = "#2ca02c"
			}
			px, py := x(s.Makespan), y(failures(s))
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="4" fill="%s"><title>%s: %.1f s, %g OOM kills, %g failed</title></circle>`+"\n",
				px, py, color, html.EscapeString(s.Strategy), s.Makespan, s.OOMKills, s.Failed)
			// Stagger labels so that strategies on one spot stay legible.
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="10" fill="%s">%s</text>`+"\n", px+6, py-4-float64(k%4)*10, color, html.EscapeString(s.Strategy))
		}
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">x: median makespan; y: median OOM kills + failed packages; dashed: Pareto front</text>`+"\n", pw/2, h-4)
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func header(b *strings.Builder, w, h int, title string) {
	fmt.Fprintf(b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", w, h, w, h)
	fmt.Fprintf(b, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	fmt.Fprintf(b, `<text x="%d" y="18" text-anchor="middle" font-size="14">%s</text>`+"\n", w/2, html.EscapeString(title))
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

// ticks are five evenly spaced values from 0 to top.
func ticks(top float64) []float64 {
	out := make([]float64, 0, 6)
	for i := range 6 {
		out = append(out, top*float64(i)/5)
	}
	return out
}
