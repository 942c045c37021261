package main

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/termtest"
)

// topLeases runs two builds under a tokend with a budget of 4: zeta, a
// make whose four jobs hold every slot until finish, and beta, which
// waits for admission meanwhile.
func topLeases(t *testing.T) (d *daemon, finish func()) {
	t.Helper()
	d = startDaemon(t, t.TempDir(), 4)
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	zeta := holdSlots(ctx, t, d, "zeta", 4)
	beta := &build{name: "beta", argv: []string{"true"}}
	beta.start(t, d)
	d.waitStatus(t, "zeta running and measured, beta waiting", func(st api.Status) bool {
		return len(st.Leases) == 2 && st.Leases[0].Memory != nil && st.Leases[0].Memory.Jobs == 4 &&
			st.Leases[1].State == api.StateWaiting && st.Memory != nil
	})
	return d, func() {
		zeta.release(ctx, t)
		if err := beta.proc.Wait(ctx, t); err != nil {
			t.Errorf("beta: %v", err)
		}
		cancel()
	}
}

// checkWidth fails t for a line wider than 80 columns.
func checkWidth(t *testing.T, screen string) {
	t.Helper()
	for _, l := range strings.Split(screen, "\n") {
		if n := utf8.RuneCountInString(l); n > topWidth {
			t.Errorf("line of %d columns: %q", n, l)
		}
	}
}

// row is the screen's line for the lease name.
func row(screen, name string) string {
	for _, l := range strings.Split(screen, "\n") {
		if strings.HasPrefix(l, name+" ") {
			return l
		}
	}
	return ""
}

// Issue 12: tokenctl top in a real terminal (tmux, 80×24) against a real
// tokend with leases: the budget and why, memory with its sparklines, one
// row per lease with its state, jobs and tokens, the last events; it
// refreshes by itself, sorts on a key, follows the builds as they end,
// quits on q and gives the terminal back.
func TestTopInATerminal(t *testing.T) {
	d, finish := topLeases(t)
	term := termtest.Start(t, 80, 24, nil, d.tokenctl, "--socket", d.sock, "top")
	// The first frame comes at once, the events a moment later.
	screen := term.WaitFor("both leases and their events", func(s string) bool {
		return row(s, "zeta") != "" && row(s, "beta") != "" && strings.Contains(s, "beta started")
	})
	t.Logf("tokenctl top:\n%s", screen)
	checkWidth(t, screen)
	for _, want := range []string{"budget 4, fixed by config", "headroom ", "pressure ", "NAME ", "q quit  s sort: jobs"} {
		if !strings.Contains(screen, want) {
			t.Errorf("screen lacks %q", want)
		}
	}
	if !regexp.MustCompile(`headroom \S+ of \S+ +[▁▂▃▄▅▆▇█]+ `).MatchString(screen) {
		t.Errorf("no headroom sparkline")
	}
	zeta, beta := strings.Fields(row(screen, "zeta")), strings.Fields(row(screen, "beta"))
	if len(zeta) < 8 || zeta[2] != "running" || zeta[3] != "4" || zeta[4] != "3/3" {
		t.Errorf("zeta row %q, want running, 4 jobs, 3/3 tokens", zeta)
	}
	if len(beta) < 3 || beta[2] != "waiting" {
		t.Errorf("beta row %q, want waiting", beta)
	}
	if strings.Index(screen, "\nzeta ") > strings.Index(screen, "\nbeta ") {
		t.Errorf("sorted by jobs, zeta (4) comes after beta (0)")
	}
	clock := regexp.MustCompile(`\d\d:\d\d:\d\d\n`).FindString(screen)
	term.WaitFor("the next refresh", func(s string) bool { return !strings.Contains(s, clock) })

	term.Keys("n")
	screen = term.WaitForText("sort: name")
	if strings.Index(screen, "\nzeta ") < strings.Index(screen, "\nbeta ") {
		t.Errorf("sorted by name, beta comes after zeta:\n%s", screen)
	}
	finish()
	term.WaitFor("the builds gone, and beta's end among the last events", func(s string) bool {
		return strings.Contains(s, "no leases") && strings.Contains(s, "beta ended")
	})
	term.Keys("q")
	if code := term.WaitExit(); code != 0 {
		t.Errorf("top exited %d, want 0", code)
	}
	if s := term.Screen(); strings.Contains(s, "NAME ") {
		t.Errorf("top left its screen behind:\n%s", s)
	}
	d.waitIdle(t)
}

// Not on a terminal, top writes plain frames: no escape sequences, 80
// columns, as many frames as asked for.
func TestTopPlainText(t *testing.T) {
	d, finish := topLeases(t)
	defer finish()
	out, err := exec.Command(d.tokenctl, "--socket", d.sock, "top", "--iterations", "2", "--interval", "200ms").Output()
	if err != nil {
		t.Fatalf("tokenctl top: %v", err)
	}
	t.Logf("tokenctl top | cat:\n%s", out)
	if strings.Contains(string(out), "\x1b") {
		t.Errorf("escape sequences in plain output: %q", out)
	}
	checkWidth(t, string(out))
	if n := strings.Count(string(out), "\nNAME "); n != 2 {
		t.Errorf("%d frames, want 2", n)
	}
	if row(string(out), "zeta") == "" || row(string(out), "beta") == "" {
		t.Errorf("frames lack the leases")
	}
}

// A screen of 24 rows holds however many leases there are, saying how
// many it leaves out; the OOM column counts the oom-kill events of each
// lease; every line fits 80 columns even in a wider terminal.
func TestTopFrameFits(t *testing.T) {
	now := time.Now()
	v := newTopView()
	st := api.Status{Budget: 8, BudgetReason: "headroom", Memory: &api.MemoryStatus{Limit: 8 << 30, Headroom: 2 << 30, Target: 8, Reason: "headroom"}}
	for i := range 30 {
		st.Leases = append(st.Leases, api.LeaseStatus{
			Registration: api.Registration{ID: fmt.Sprintf("id%02d", i), Name: fmt.Sprintf("a-very-long-package-name-%02d", i), Created: now.Add(-time.Duration(i) * time.Minute)},
			State:        api.StateRunning, Memory: &api.LeaseMemory{Jobs: 30 - i, RSS: uint64(i) << 28},
		})
	}
	v.update(st, nil)
	v.event(api.Event{Kind: api.EventOOMKill, Lease: "id00", Name: "a-very-long-package-name-00", Kills: 2, Time: now})
	lines := v.frame(200, 24, now)
	screen := strings.Join(lines, "\n")
	t.Logf("\n%s", screen)
	if len(lines) != 24 {
		t.Errorf("%d lines on a screen of 24", len(lines))
	}
	checkWidth(t, screen)
	if !strings.Contains(screen, "more leases") {
		t.Errorf("no line says how many leases are left out")
	}
	first := strings.Fields(row(screen, "a-very-long-pac…"))
	if len(first) == 0 || first[len(first)-1] != "2" {
		t.Errorf("first row %q, want the most jobs first with its 2 OOM kills", first)
	}
	if !strings.Contains(screen, "2 jobs of a-very-long-package-name-00 OOM-killed") {
		t.Errorf("the last events lack the OOM kill")
	}
}
