package broker

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/api"
)

// readGate reads a gate as the setup hook does: state, stamp, adj.
func readGate(t *testing.T, path string) (string, int64, int) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(raw))
	if len(raw) != gateLine || len(f) != 3 {
		t.Fatalf("gate line %q: want %d bytes of state, stamp and adj", raw, gateLine)
	}
	stamp, err1 := strconv.ParseInt(f[1], 10, 64)
	adj, err2 := strconv.Atoi(f[2])
	if err1 != nil || err2 != nil {
		t.Fatalf("gate line %q: %v %v", raw, err1, err2)
	}
	return f[0], stamp, adj
}

func TestNixBuildHoldsNoSlotUntilItAsksAndWaitsForRoom(t *testing.T) {
	const budget = 4
	b := startBrokerWith(t, Options{RuntimeDir: t.TempDir(), Budget: budget, OOMScoreAdj: 500})
	j := newJobs()
	defer j.close()

	a, err := b.Register(LeaseRequest{Name: "a", Owner: self(), GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	j.run(t, dial(t, a.fifo.Path()), 6, 5*time.Millisecond)
	n, err := b.Register(LeaseRequest{Name: "nix", Owner: api.Owner{Dir: t.TempDir()}, GID: os.Getgid(), Gate: true})
	if err != nil {
		t.Fatal(err)
	}
	// Registered, not joined, not asking: a keeps the whole allowance.
	st := waitStatus(t, b, "a holding the whole allowance", func(st api.Status) bool { return leaseByID(st, a.ID).Granted == budget-1 })
	if got := leaseByID(st, n.ID); got.State != api.StateNotJoined || got.Admitted || st.ActiveLeases != 1 {
		t.Fatalf("nix lease %+v with %d active leases, want not joined and not counted", got, st.ActiveLeases)
	}
	nc := dial(t, n.fifo.Path())
	waitStatus(t, b, "the nix build joined", func(st api.Status) bool { return leaseByID(st, n.ID).State == api.StateStarting })
	// This read asks (and may race the answer): room is kept for the
	// build, a gives a token back, and only then is the build let in. Its
	// jobs and a's never exceed the budget together.
	if state, _, adj := readGate(t, n.gate.path); (state != "wait" && state != "go") || adj != 500 {
		t.Fatalf("gate %s %d, want wait or go, and 500", state, adj)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		state, _, _ := readGate(t, n.gate.path)
		if state == "go" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("gate never opened; status %+v", b.Status())
		}
		time.Sleep(5 * time.Millisecond)
	}
	st = b.Status()
	if got := leaseByID(st, n.ID); got.State != api.StateRunning || got.Asked.IsZero() || st.ActiveLeases != 2 {
		t.Fatalf("nix lease %+v with %d active leases, want running, counted, with the time it asked", got, st.ActiveLeases)
	}
	j.run(t, nc, 6, 5*time.Millisecond)
	waitStatus(t, b, "both leases holding tokens", func(st api.Status) bool {
		return leaseByID(st, a.ID).Held > 0 && leaseByID(st, n.ID).Held > 0
	})
	time.Sleep(200 * time.Millisecond)
	if p := j.peak.Load(); p > budget {
		t.Fatalf("%d jobs ran at once over a budget of %d", p, budget)
	}
}

func TestWaitingGateBeatsAndSurvivesARestart(t *testing.T) {
	dir := t.TempDir()
	first, err := New(Options{RuntimeDir: dir, Budget: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- first.Run(ctx) }()
	a, err := first.Register(LeaseRequest{Name: "a", Owner: self(), GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	n, err := first.Register(LeaseRequest{Name: "nix", Owner: api.Owner{Dir: t.TempDir()}, GID: os.Getgid(), Gate: true})
	if err != nil {
		t.Fatal(err)
	}
	dial(t, n.fifo.Path())
	gate := n.gate.path
	readGate(t, gate) // asks
	waitStatus(t, first, "the nix build waiting", func(st api.Status) bool { return leaseByID(st, n.ID).State == api.StateWaiting })
	_, s1, _ := readGate(t, gate)
	time.Sleep(300 * time.Millisecond)
	if state, s2, _ := readGate(t, gate); state != "wait" || s2 <= s1 {
		t.Fatalf("gate %s, stamp %d then %d: a waiting build's stamp must move", state, s1, s2)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	second := startBroker(t, dir, 1)
	if got := leaseByID(second.Status(), n.ID); got.State != api.StateWaiting || got.Asked.IsZero() {
		t.Fatalf("adopted nix lease %+v, want still waiting, with the time it asked", got)
	}
	_, s3, _ := readGate(t, gate)
	time.Sleep(300 * time.Millisecond)
	if _, s4, _ := readGate(t, gate); s4 <= s3 {
		t.Fatalf("adopted gate's stamp stuck at %d", s3)
	}
	if err := second.End(0, a.ID, "test"); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, second, "the nix build admitted once a is gone", func(st api.Status) bool { return leaseByID(st, n.ID).Admitted })
	if state, _, _ := readGate(t, gate); state != "go" {
		t.Fatalf("gate says %s after admission, want go", state)
	}
}
