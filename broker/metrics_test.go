package broker

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/tokend/tokend/api"
)

// However many leases run, each per-lease metric has at most
// leaseSeries+1 series: the leases running the most jobs by name, and the
// rest added up as _other. Leases of one name add up, and a lease named
// _other does not collide with the rest's series.
func TestLeaseSeriesAreBounded(t *testing.T) {
	var leases []api.LeaseStatus
	for i := range 40 {
		leases = append(leases, api.LeaseStatus{
			Registration: api.Registration{Name: fmt.Sprintf("pkg%02d", i%30)}, Held: 1, Granted: 2,
			Memory: &api.LeaseMemory{Jobs: i % 30, RSS: 1 << 20},
		})
	}
	leases = append(leases, api.LeaseStatus{Registration: api.Registration{Name: otherLeases}, Held: 5})
	series := byName(leases)
	if len(series) != leaseSeries+1 {
		t.Fatalf("%d series, want %d", len(series), leaseSeries+1)
	}
	held, names := 0, map[string]bool{}
	for _, s := range series {
		held += s.held
		if names[s.name] {
			t.Errorf("two series named %s", s.name)
		}
		names[s.name] = true
	}
	if held != 45 {
		t.Errorf("series hold %d tokens in all, the leases 45", held)
	}
	// pkg29 runs the most jobs (29), in two leases.
	if first := series[0]; first.name != "pkg29" || first.jobs != 29 || first.held != 1 {
		t.Errorf("first series %+v, want pkg29 with 29 jobs", first)
	}
	if s := series[1]; s.name != "pkg28" || s.held != 1 {
		t.Errorf("second series %+v", s)
	}
	if last := series[leaseSeries]; last.name != otherLeases || !names[`"_other"`] && last.held < 5 {
		t.Errorf("last series %+v, want the rest as %s, the lease named _other in it or apart", last, otherLeases)
	}
	jobs, want := 0, 0
	for _, s := range series {
		jobs += s.jobs
	}
	for _, l := range leases {
		if l.Memory != nil {
			want += l.Memory.Jobs
		}
	}
	if jobs != want {
		t.Errorf("series run %d jobs in all, the leases %d", jobs, want)
	}
}

// An oom-kill event, the hook for whoever watches the OOM killer, counts
// in tokend_oom_kills_total, and the exposition parses.
func TestOOMKillEventsAreCounted(t *testing.T) {
	b, err := New(Options{RuntimeDir: t.TempDir(), Budget: 2})
	if err != nil {
		t.Fatal(err)
	}
	b.Record(api.Event{Kind: api.EventOOMKill, Lease: "0123456789ab", Name: "llvm", Kills: 2})
	b.Record(api.Event{Kind: api.EventOOMKill, Lease: "0123456789ab", Name: "llvm", Kills: 1})
	rec := httptest.NewRecorder()
	b.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(rec.Body.String()))
	if err != nil {
		t.Fatalf("exposition does not parse: %v\n%s", err, rec.Body.String())
	}
	if got := families["tokend_oom_kills_total"].Metric[0].Counter.GetValue(); got != 3 {
		t.Errorf("tokend_oom_kills_total = %v, want 3", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	evs := b.Events(ctx, 0)
	if n := len(evs.Events); n < 2 || evs.Events[n-1].Kind != api.EventOOMKill || evs.Events[n-1].Kills != 1 || evs.Next != evs.Events[n-1].Seq {
		t.Errorf("events %+v, want the two oom-kill events last", evs)
	}
}

// A client that fell behind is told how many events it missed, and one
// that asks after the last event waits for the next.
func TestEventsMissedAndWaited(t *testing.T) {
	b, err := New(Options{RuntimeDir: t.TempDir(), Budget: 2})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	first := b.Events(ctx, 0).Next
	for i := range eventsKept + 10 {
		b.Record(api.Event{Kind: api.EventReclaim, Tokens: i + 1})
	}
	evs := b.Events(context.Background(), first)
	if len(evs.Events) != eventsKept || evs.Missed != 10 || evs.Events[0].Tokens != 11 {
		t.Errorf("%d events, %d missed, first reclaims %d; want %d, 10, 11", len(evs.Events), evs.Missed, evs.Events[0].Tokens, eventsKept)
	}
	got := make(chan api.Events)
	go func() { got <- b.Events(context.Background(), evs.Next) }()
	b.Record(api.Event{Kind: api.EventThaw, Name: "late"})
	if e := <-got; len(e.Events) != 1 || e.Events[0].Name != "late" || e.Missed != 0 {
		t.Errorf("waiting client got %+v, want the one event recorded after", e)
	}
}
