package memory

import (
	"github.com/tokend/tokend/internal/cgtest"

	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

func TestTriggerString(t *testing.T) {
	for _, c := range []struct {
		t    Trigger
		want string
	}{
		{Trigger{Stall: 150 * time.Millisecond, Window: 2 * time.Second}, "some 150000 2000000"},
		{Trigger{Full: true, Stall: time.Second, Window: 10 * time.Second}, "full 1000000 10000000"},
	} {
		if got := c.t.String(); got != c.want {
			t.Errorf("%+v.String() = %q, want %q", c.t, got, c.want)
		}
	}
}

// A real workload thrashes a 128 MiB v1 memcg: 96 MiB of anonymous memory
// leave too little room for the 64 MiB file it keeps reading, so its pages
// are evicted and read back. The trigger on the cgroup2 group holding the
// same process must fire, and removing that group must stop the watcher
// with ErrGone.
func TestTriggerFiresOnThrash(t *testing.T) {
	m := cgtest.Need(t)
	v1 := cgtest.MakeT(t, m.V1Memory, 128<<20)
	v2 := cgtest.MakeT(t, m.V2, 0)
	file := smallFile(t, 64)
	d, err := NewDomain(Config{Cgroup: string(v1), Pressure: v2.File("memory.pressure")})
	if err != nil {
		t.Fatal(err)
	}
	trig := Trigger{Stall: 150 * time.Millisecond, Window: 2 * time.Second}
	w, err := d.Watch(t.Context(), trig)
	if err != nil {
		t.Fatal(err)
	}
	before, err := d.Read()
	if err != nil {
		t.Fatal(err)
	}
	startThrash(t, file, 96, v1, v2)

	var fired time.Time
	select {
	case fired = <-w.C:
	case <-time.After(15 * time.Second):
		r, _ := d.Read()
		t.Fatalf("trigger %q did not fire within 15s; pressure went %+v -> %+v", trig, before.Pressure, r.Pressure)
	}
	after, err := d.Read()
	if err != nil {
		t.Fatal(err)
	}
	st, err := after.StallSince(before)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("trigger %q fired %v after the workload started; stall since: some %.1f%%, full %.1f%% over %v; limit hits %d",
		trig, fired.Sub(before.At).Round(time.Millisecond), 100*st.Some, 100*st.Full, st.Interval.Round(time.Millisecond), after.Cgroup.LimitHits)
	// The kernel fires only after Stall within one Window.
	if stalled := after.Pressure.Some - before.Pressure.Some; stalled < trig.Stall {
		t.Errorf("fired after only %v of stall, want at least %v", stalled, trig.Stall)
	}

	removed := time.Now()
	if err := v2.Remove(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.done:
	case <-time.After(5 * time.Second):
		t.Fatal("watcher still running 5s after its cgroup was removed")
	}
	if err := w.Wait(); !errors.Is(err, ErrGone) {
		t.Errorf("Wait after rmdir = %v, want ErrGone", err)
	}
	t.Logf("watcher saw the removal after %v", time.Since(removed).Round(time.Microsecond))
	for range w.C {
		// Drain events sent before the removal; C must then be closed.
	}
}

func TestTriggerCancel(t *testing.T) {
	d, err := NewDomain(Config{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	w, err := d.Watch(ctx, Trigger{Stall: 500 * time.Millisecond, Window: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case <-w.done:
	case <-time.After(time.Second):
		t.Fatal("watcher still running 1s after cancel")
	}
	if err := w.Wait(); err != nil {
		t.Errorf("Wait after cancel = %v, want nil", err)
	}
	for range w.C {
		// Drain: C must be closed.
	}

	// A watcher started on a finished context stops at once.
	w, err = d.Watch(ctx, Trigger{Stall: 500 * time.Millisecond, Window: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Wait(); err != nil {
		t.Errorf("Wait on a cancelled context = %v, want nil", err)
	}
}

func TestTriggerRejected(t *testing.T) {
	d, err := NewDomain(Config{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.Watch(t.Context(), Trigger{Stall: 3 * time.Second, Window: 2 * time.Second})
	if !errors.Is(err, unix.EINVAL) {
		t.Fatalf("stall above window: err = %v, want EINVAL", err)
	}
	wantErr(t, err, "/proc/pressure/memory", "some 3000000 2000000", "0 < stall <= window")

	self, err := procfs.Self()
	if err != nil {
		t.Fatal(err)
	}
	st, err := self.NewStatus()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	w, err := d.Watch(ctx, Trigger{Stall: 100 * time.Millisecond, Window: time.Second})
	if st.CapEff&(1<<unix.CAP_SYS_RESOURCE) != 0 {
		// With the capability any window from 500ms to 10s is allowed.
		if err != nil {
			t.Fatalf("with CAP_SYS_RESOURCE: %v", err)
		}
		cancel()
		if err := w.Wait(); err != nil {
			t.Error(err)
		}
		return
	}
	if !errors.Is(err, unix.EINVAL) {
		t.Fatalf("1s window without CAP_SYS_RESOURCE: err = %v, want EINVAL", err)
	}
	wantErr(t, err, "multiple of 2s")
}
