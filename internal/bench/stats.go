package bench

import (
	"fmt"
	"io"
	"slices"
	"strings"
)

// Median is the median of xs (the mean of the middle two for an even
// count); 0 for none.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// Summary is one strategy in one scenario over its repetitions: medians,
// with the makespan's range and the worst OOM count.
type Summary struct {
	Scenario, Strategy         string
	Reps                       int
	Makespan, MakespanMin      float64
	MakespanMax                float64
	OOMKills, MaxOOMKills      float64
	Failed, Reruns, WastedCPU  float64
	PeakMiB, StallSome         float64
	StallFull, CPUIdle         float64
	TokendCPUPct, TokendRSSMiB float64
	TimedOut                   int     // repetitions stopped at the timeout
	MaxOtherCPU                float64 // cores other processes used, worst rep
	Loaded                     int     // repetitions taken under other load
}

// Summarize groups results by scenario and strategy, in the order given.
func Summarize(results []Result, scenarios []Scenario, strategies []Strategy) []Summary {
	var out []Summary
	for _, sc := range scenarios {
		for _, st := range strategies {
			var rs []Result
			for _, r := range results {
				if r.Scenario == sc.Name && r.Strategy == st.Name {
					rs = append(rs, r)
				}
			}
			if len(rs) == 0 {
				continue
			}
			med := func(f func(Result) float64) float64 {
				xs := make([]float64, len(rs))
				for i, r := range rs {
					xs[i] = f(r)
				}
				return Median(xs)
			}
			s := Summary{Scenario: sc.Name, Strategy: st.Name, Reps: len(rs),
				Makespan:     med(func(r Result) float64 { return r.Makespan }),
				OOMKills:     med(func(r Result) float64 { return float64(r.OOMKills) }),
				Failed:       med(func(r Result) float64 { return float64(r.Failed) }),
				Reruns:       med(func(r Result) float64 { return float64(r.Reruns) }),
				WastedCPU:    med(func(r Result) float64 { return r.WastedCPU }),
				PeakMiB:      med(func(r Result) float64 { return r.PeakMiB }),
				StallSome:    med(func(r Result) float64 { return r.StallSome }),
				StallFull:    med(func(r Result) float64 { return r.StallFull }),
				CPUIdle:      med(func(r Result) float64 { return r.CPUIdle }),
				TokendCPUPct: med(func(r Result) float64 { return r.TokendCPUPct }),
				TokendRSSMiB: med(func(r Result) float64 { return r.TokendRSSMiB }),
			}
			s.MakespanMin, s.MakespanMax = rs[0].Makespan, rs[0].Makespan
			for _, r := range rs {
				s.MakespanMin = min(s.MakespanMin, r.Makespan)
				s.MakespanMax = max(s.MakespanMax, r.Makespan)
				s.MaxOOMKills = max(s.MaxOOMKills, float64(r.OOMKills))
				s.MaxOtherCPU = max(s.MaxOtherCPU, r.OtherCPU)
				if r.TimedOut {
					s.TimedOut++
				}
				if r.Loaded {
					s.Loaded++
				}
			}
			out = append(out, s)
		}
	}
	return out
}

// WriteTable writes the summaries as a Markdown table.
func WriteTable(w io.Writer, sums []Summary) error {
	var b strings.Builder
	b.WriteString("| scenario | strategy | reps | makespan s (min-max) | timed out | OOM kills (max) | failed pkgs | re-runs | wasted CPU s | peak MiB | stall some s | stall full s | CPU unused by the run | tokend CPU % of a core | tokend RSS MiB | other load, cores (max) | reps under other load |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range sums {
		td, rss := "", ""
		if s.TokendRSSMiB > 0 {
			td, rss = fmt.Sprintf("%.2f", s.TokendCPUPct), fmt.Sprintf("%.1f", s.TokendRSSMiB)
		}
		fmt.Fprintf(&b, "| %s | %s | %d | %.1f (%.1f-%.1f) | %d | %g (%g) | %g | %g | %.1f | %.0f | %.2f | %.2f | %.0f%% | %s | %s | %.2f | %d |\n",
			s.Scenario, s.Strategy, s.Reps, s.Makespan, s.MakespanMin, s.MakespanMax, s.TimedOut, s.OOMKills, s.MaxOOMKills,
			s.Failed, s.Reruns, s.WastedCPU, s.PeakMiB, s.StallSome, s.StallFull, 100*s.CPUIdle, td, rss, s.MaxOtherCPU, s.Loaded)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Verdict is one tokend strategy's (cold or warm) standing against the
// targets in one scenario.
type Verdict struct {
	Scenario   string
	Strategy   string
	BestStatic string  // fastest static -jN with no OOM kill in any rep; "" if none
	VsBest     float64 // tokend's makespan over BestStatic's; 0 if none
	VsSerial   float64 // serial's makespan over tokend's
	OOMKills   float64 // tokend's, worst rep
	CPUPct     float64 // tokend's own CPU, % of one core
	Misses     []string
}

// MaxVsBest is the target for tokend's makespan over the best static -jN
// that had no OOM kill.
const MaxVsBest = 1.05

// Targets checks each tokend strategy, cold and warm, against the targets:
// no OOM kill and no failed package, within MaxVsBest of the best static
// -jN that had no OOM kill and no failure, at least 1.5x faster than
// serial, and under 1% of a core.
func Targets(sums []Summary, scenarios []Scenario) []Verdict {
	var out []Verdict
	for _, sc := range scenarios {
		var tds []*Summary
		var serial *Summary
		bestName, best := "", -1.0
		for i := range sums {
			s := &sums[i]
			if s.Scenario != sc.Name {
				continue
			}
			switch {
			case strings.HasPrefix(s.Strategy, ColdName):
				tds = append(tds, s)
			case s.Strategy == "serial":
				serial = s
			case strings.HasPrefix(s.Strategy, "static-") && s.MaxOOMKills == 0 && s.Failed == 0 && s.TimedOut == 0:
				if best < 0 || s.Makespan < best {
					best, bestName = s.Makespan, s.Strategy
				}
			}
		}
		for _, td := range tds {
			out = append(out, verdict(sc.Name, td, serial, bestName, best))
		}
	}
	return out
}

func verdict(scenario string, td, serial *Summary, bestName string, best float64) Verdict {
	v := Verdict{Scenario: scenario, Strategy: td.Strategy, BestStatic: bestName, OOMKills: td.MaxOOMKills, CPUPct: td.TokendCPUPct}
	if v.OOMKills > 0 {
		v.Misses = append(v.Misses, fmt.Sprintf("%g OOM kills", v.OOMKills))
	}
	if td.Failed > 0 {
		v.Misses = append(v.Misses, fmt.Sprintf("%g failed packages", td.Failed))
	}
	if best > 0 {
		v.VsBest = td.Makespan / best
		if v.VsBest > MaxVsBest {
			v.Misses = append(v.Misses, fmt.Sprintf("%.2fx the best safe static (%s)", v.VsBest, v.BestStatic))
		}
	}
	if serial != nil {
		v.VsSerial = serial.Makespan / td.Makespan
		if v.VsSerial < 1.5 {
			v.Misses = append(v.Misses, fmt.Sprintf("only %.2fx faster than serial", v.VsSerial))
		}
	}
	if v.CPUPct >= 1 {
		v.Misses = append(v.Misses, fmt.Sprintf("tokend used %.2f%% of a core", v.CPUPct))
	}
	return v
}

// WriteVerdicts writes the verdicts as a Markdown table.
func WriteVerdicts(w io.Writer, vs []Verdict) error {
	var b strings.Builder
	b.WriteString("| scenario | tokend | OOM kills (worst rep) | best static -jN without OOM kill | tokend / that | serial / tokend | tokend CPU % of a core | missed targets |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|\n")
	for _, v := range vs {
		best, ratio := "none", "n/a"
		if v.BestStatic != "" {
			best, ratio = v.BestStatic, fmt.Sprintf("%.2f", v.VsBest)
		}
		miss := "none"
		if len(v.Misses) > 0 {
			miss = strings.Join(v.Misses, "; ")
		}
		vsSerial := "n/a"
		if v.VsSerial > 0 {
			vsSerial = fmt.Sprintf("%.2f", v.VsSerial)
		}
		fmt.Fprintf(&b, "| %s | %s | %g | %s | %s | %s | %.2f | %s |\n", v.Scenario, v.Strategy, v.OOMKills, best, ratio, vsSerial, v.CPUPct, miss)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Pareto returns, for one scenario's summaries, the strategies no other
// strategy beats on both makespan and failures (OOM kills plus failed
// packages), fastest first.
func Pareto(sums []Summary) []Summary {
	var front []Summary
	for _, s := range sums {
		dominated := false
		for _, o := range sums {
			if o.Makespan <= s.Makespan && failures(o) <= failures(s) &&
				(o.Makespan < s.Makespan || failures(o) < failures(s)) {
				dominated = true
				break
			}
		}
		if !dominated {
			front = append(front, s)
		}
	}
	slices.SortFunc(front, func(a, b Summary) int {
		switch {
		case a.Makespan < b.Makespan:
			return -1
		case a.Makespan > b.Makespan:
			return 1
		}
		return 0
	})
	return front
}

func failures(s Summary) float64 { return s.OOMKills + s.Failed }
