package control

import (
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tokend/tokend/broker/memory"
)

// compile is one job of a simulated build: it grows linearly to peak MiB
// over the first 70% of its secs seconds (g++'s cc1plus, sampled here,
// reached 90% of its peak at 55 to 80% of its run), then holds.
type compile struct {
	peak, secs float64
}

// coldRun drives an engine on its defaults, closed loop, with no history,
// over leases of one user in a v1 group of limit MiB: a lease is admitted
// once the budget covers it (oldest first) and then runs its compiles one
// after another on its implicit slot. It returns when each lease was
// admitted, in seconds from the start (-1: never), and fails t if the
// compiles running at any tick could together outgrow the group.
func coldRun(t *testing.T, limit uint64, builds [][]compile, secs int) []float64 {
	t.Helper()
	p := Params{}.withDefaults()
	e := newEngine(p, 2, "cold", "", newTestHistory(t), hclog.NewNullLogger())
	admittedAt := make([]float64, len(builds))
	for i := range admittedAt {
		admittedAt[i] = -1
	}
	admitted := 0
	for tick := 0; tick <= secs*int(time.Second/p.Tick); tick++ {
		now := t0.Add(time.Duration(tick) * p.Tick)
		usage := uint64(30 * mib) // the makes and shells
		var peaks float64
		var in []leaseInput
		for n, jobs := range builds {
			li := leaseInput{ID: string(rune('a' + n)), Created: t0.Add(time.Duration(n) * time.Millisecond), Freezable: true}
			li.Name = "pkg-" + li.ID
			if n < admitted {
				li.Admitted = true
				at := now.Sub(t0).Seconds() - admittedAt[n]
				for j, c := range jobs {
					if at >= c.secs {
						at -= c.secs
						continue
					}
					rss := uint64(min(c.peak*at/(0.7*c.secs), c.peak) * mib)
					li.Procs = []proc{{Proc: memory.Proc{PID: 100*(n+1) + j, Name: "cc1plus", RSS: rss, Peak: rss}, class: classCompile}}
					usage += rss
					peaks += c.peak
					break
				}
			}
			in = append(in, li)
		}
		if peaks*mib+30*mib > float64(limit) {
			t.Fatalf("at %v: the compiles running peak at %.0f MiB together, more than the %d MiB group", now.Sub(t0), peaks, limit/mib)
		}
		r := memory.Reading{At: now, MemTotal: 24 << 30, MemAvailable: 20 << 30,
			Cgroup: &memory.Memcg{Version: 1, Max: limit, High: memory.Unlimited, Usage: usage}}
		d := e.step(tickInput{Reading: r, Leases: in})
		for ; admitted < min(d.Budget, len(builds)); admitted++ {
			admittedAt[admitted] = now.Sub(t0).Seconds()
		}
	}
	return admittedAt
}

// A cold tokend learns within the run from the compiles of its user's
// other leases: once one has finished, a lease that nothing else shows
// the size of expects its compiles at that size rather than at the 1 GiB
// default, and is admitted beside the first, where before it waited for
// the whole first build. The builds are those of the bench's gcc-small
// (a 1 GiB machine, nlohmann-json's small units: 0.29 to 0.42 GiB each,
// peaks and CPU seconds as measured for them) and gcc-pkgs (2 GiB, the
// large units first).
func TestColdStartLearnsFromOtherLeases(t *testing.T) {
	for _, tt := range []struct {
		name   string
		limit  uint64
		builds [][]compile
		// by is when the second lease must be admitted: a little after
		// the first lease's first compile ends.
		by float64
	}{
		{"gcc-small", 1 << 30, [][]compile{
			{{322, 9}, {358, 9}, {320, 8}, {318, 8}, {288, 5}, {210, 5}},
			{{319, 10}, {321, 11}, {382, 14}, {415, 11}, {394, 18}, {210, 5}},
		}, 9 + 4},
		{"gcc-pkgs", 2 << 30, [][]compile{
			{{765, 46}, {415, 11}, {210, 5}},
			{{671, 30}, {382, 14}, {210, 5}},
			{{668, 27}, {394, 18}, {210, 5}},
		}, 46 + 4},
	} {
		t.Run(tt.name, func(t *testing.T) {
			at := coldRun(t, tt.limit, tt.builds, 60)
			if at[1] < 0 || at[1] > tt.by {
				t.Errorf("second lease admitted at %.2f s, want by %.0f s; all: %v", at[1], tt.by, at)
			}
		})
	}
}

// A lease whose compile fits is admitted however little room it leaves
// beside the reserve: the reserve is the margin. Two builds of
// gcc-thrash's large units in a group where, once the first build's first
// compile has finished and shown the size of a compile, a second compile
// fits beside the first build's next one with 26 MiB to spare (1600 less
// the 200 MiB reserve, 30 MiB of makes and two 672 MiB compiles). With a
// margin of an eighth of a job (84 MiB) beyond the fit, as before, the
// second lease was not admitted in the whole 60 s.
func TestAdmitsWithLittleToSpare(t *testing.T) {
	builds := [][]compile{
		{{672, 20}, {672, 20}, {210, 5}},
		{{668, 20}, {668, 20}, {210, 5}},
	}
	at := coldRun(t, 1600<<20, builds, 60)
	if at[1] < 20 || at[1] > 24 {
		t.Errorf("second lease admitted at %.2f s, want 20 to 24 s: once the first compile has finished, within a growth interval; all: %v", at[1], at)
	}
}
