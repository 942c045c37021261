package main

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/tokend/tokend/internal/buildtest"
)

// slotHolder is a make under tokenctl run whose jobs hold their slots
// until the test releases them: a lease in a known, steady state.
type slotHolder struct {
	build *build
	gate  string
	log   *buildtest.Log
}

// holdSlots runs, under d, a make named name with n jobs that hold their
// slots, and waits until all n run.
func holdSlots(ctx context.Context, t *testing.T, d *daemon, name string, n int) *slotHolder {
	t.Helper()
	make44 := buildtest.Make44(t)
	p, log := buildtest.BuildProbe(t), buildtest.NewLog(t)
	dir := t.TempDir()
	h := &slotHolder{gate: filepath.Join(dir, "gate"), log: log}
	buildtest.WriteMakefile(t, dir, p, log, buildtest.Gated(buildtest.Independent("job", n, 0), h.gate))
	h.build = &build{name: name, prefix: "job", jobs: n, argv: []string{make44, "-s", "-C", dir}}
	h.build.start(t, d)
	log.WaitFor(ctx, t, "every job of "+name+" running", func(r buildtest.Run) bool { return r.Running() == n })
	return h
}

// release lets the jobs end and waits for the build to succeed.
func (h *slotHolder) release(ctx context.Context, t *testing.T) {
	t.Helper()
	buildtest.OpenGate(t, h.gate)
	h.build.wait(ctx, t, h.log)
}
