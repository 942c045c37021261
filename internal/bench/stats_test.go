package bench

import (
	"math"
	"strings"
	"testing"
)

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		if got := Median(c.in); got != c.want {
			t.Errorf("Median(%v) = %g, want %g", c.in, got, c.want)
		}
	}
	in := []float64{3, 1, 2}
	Median(in)
	if in[0] != 3 || in[1] != 1 {
		t.Errorf("Median reordered its input: %v", in)
	}
}

func testResults() ([]Result, []Scenario, []Strategy) {
	scs := []Scenario{{Name: "s"}}
	sts := []Strategy{{Name: "serial"}, {Name: "static-j2"}, {Name: "static-j8"}, {Name: "tokend"}, {Name: "tokend-warm"}}
	rs := []Result{
		{Scenario: "s", Strategy: "serial", Makespan: 100},
		{Scenario: "s", Strategy: "serial", Makespan: 90},
		{Scenario: "s", Strategy: "static-j2", Makespan: 50},
		{Scenario: "s", Strategy: "static-j2", Makespan: 54},
		{Scenario: "s", Strategy: "static-j8", Makespan: 30, OOMKills: 3, Failed: 1},
		{Scenario: "s", Strategy: "static-j8", Makespan: 40, OOMKills: 0},
		{Scenario: "s", Strategy: "tokend", Makespan: 53, TokendCPUPct: 0.2, TokendRSSMiB: 9, OtherCPU: 0.1},
		{Scenario: "s", Strategy: "tokend", Makespan: 55, TokendCPUPct: 0.4, TokendRSSMiB: 9, OtherCPU: 0.5, Loaded: true},
		{Scenario: "s", Strategy: "tokend-warm", Makespan: 60, TokendCPUPct: 0.3, TokendRSSMiB: 9, Failed: 1, TimedOut: true},
	}
	return rs, scs, sts
}

func TestSummarizeAndTargets(t *testing.T) {
	rs, scs, sts := testResults()
	sums := Summarize(rs, scs, sts)
	if len(sums) != 5 {
		t.Fatalf("%d summaries, want 5", len(sums))
	}
	j8 := sums[2]
	if j8.Makespan != 35 || j8.MakespanMin != 30 || j8.MakespanMax != 40 || j8.OOMKills != 1.5 || j8.MaxOOMKills != 3 {
		t.Errorf("static-j8 summary %+v", j8)
	}
	if td := sums[3]; td.MaxOtherCPU != 0.5 || td.Loaded != 1 || td.TimedOut != 0 {
		t.Errorf("tokend summary %+v: want other load 0.5 cores in 1 loaded rep", td)
	}
	vs := Targets(sums, scs)
	if len(vs) != 2 {
		t.Fatalf("%d verdicts, want cold and warm", len(vs))
	}
	v := vs[0]
	// static-j8 had an OOM kill in one rep, so static-j2 is the best safe N.
	if v.Strategy != "tokend" || v.BestStatic != "static-j2" || v.VsBest != 54.0/52 {
		t.Errorf("%s: best %s at %g, want static-j2 at %g", v.Strategy, v.BestStatic, v.VsBest, 54.0/52)
	}
	if v.VsSerial != 95.0/54 || math.Abs(v.CPUPct-0.3) > 1e-9 {
		t.Errorf("verdict %+v", v)
	}
	if len(v.Misses) != 0 {
		t.Errorf("misses %v, want none", v.Misses)
	}
	warm := vs[1]
	if want := "1 failed packages|1.15x the best safe static (static-j2)"; warm.Strategy != "tokend-warm" || strings.Join(warm.Misses, "|") != want {
		t.Errorf("warm verdict %+v, want misses %q", warm, want)
	}
	var b strings.Builder
	if err := WriteTable(&b, sums); err != nil {
		t.Fatal(err)
	}
	if err := WriteVerdicts(&b, vs); err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(b.String(), "\n"); got != 2+5+2+2 {
		t.Errorf("tables have %d lines:\n%s", got, b.String())
	}
}

func TestTargetsMisses(t *testing.T) {
	scs := []Scenario{{Name: "s"}}
	sums := []Summary{
		{Scenario: "s", Strategy: "serial", Makespan: 60},
		{Scenario: "s", Strategy: "static-j1", Makespan: 40},
		{Scenario: "s", Strategy: "tokend", Makespan: 50, OOMKills: 1, MaxOOMKills: 2, TokendCPUPct: 1.5},
	}
	v := Targets(sums, scs)[0]
	want := []string{"2 OOM kills", "1.25x the best safe static (static-j1)", "only 1.20x faster than serial", "tokend used 1.50% of a core"}
	if strings.Join(v.Misses, "|") != strings.Join(want, "|") {
		t.Errorf("misses %q, want %q", v.Misses, want)
	}
}

func TestPareto(t *testing.T) {
	sums := []Summary{
		{Strategy: "a", Makespan: 10, OOMKills: 4},
		{Strategy: "b", Makespan: 20, OOMKills: 0},
		{Strategy: "c", Makespan: 15, OOMKills: 1, Failed: 1},
		{Strategy: "d", Makespan: 25, OOMKills: 0},
		{Strategy: "e", Makespan: 12, OOMKills: 5},
	}
	var got []string
	for _, s := range Pareto(sums) {
		got = append(got, s.Strategy)
	}
	if strings.Join(got, ",") != "a,c,b" {
		t.Errorf("front %v, want a,c,b", got)
	}
}
