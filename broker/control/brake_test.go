package control

import (
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// TestFrozenKeeperIsThawed: when the keeper is frozen (frozen while
// another lease was the keeper) behind an older frozen lease that memory
// does not let go, the keeper is thawed after a growth interval, so that
// a lease runs.
func TestFrozenKeeperIsThawed(t *testing.T) {
	h := newTestHistory(t)
	h.record(0, "a", run(252*mib, 2000*mib), t0)
	h.record(0, "b", run(252*mib, 1100*mib), t0)
	p := Params{}.withDefaults()
	e := newEngine(p, 2, "keeper", "", h, hclog.NewNullLogger())
	in := []leaseInput{
		{ID: "a", Name: "a", Created: t0, Admitted: true, Freezable: true},
		{ID: "b", Name: "b", Created: t0.Add(time.Millisecond), Admitted: true, Freezable: true},
	}
	now := t0.Add(time.Minute)
	e.track(in, 4<<30, now)
	if keeper, bySize := e.keeper(in); keeper != "b" || !bySize {
		t.Fatalf("keeper %q (by size %v), want b, whose links are the smaller", keeper, bySize)
	}
	for _, li := range in {
		e.leases[li.ID].frozen, e.leases[li.ID].frozenAt = true, now.Add(-2*p.GrowthInterval)
	}
	// Memory has not recovered: headroom at the reserve, growth to come
	// over it.
	m := measure{head: 512 * mib, reserve: 512 * mib, free: -100 * mib}
	acts := e.brake(in, m, e.frozen(in), now)
	if len(acts) != 1 || acts[0].Lease != "b" || acts[0].Freeze {
		t.Fatalf("actions %+v, want b thawed", acts)
	}
}
