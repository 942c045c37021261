package main

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/api"
)

// table reads the aligned table whose header starts with first: for each
// row, its cells by header, cut at the columns the header starts. It
// fails t when a cell does not start where its header does.
func table(t *testing.T, out, first string) []map[string]string {
	t.Helper()
	lines := strings.Split(out, "\n")
	start := -1
	for i, l := range lines {
		if strings.HasPrefix(l, first+" ") {
			start = i
			break
		}
	}
	if start < 0 {
		t.Fatalf("no table headed %s in:\n%s", first, out)
	}
	header := lines[start]
	var names []string
	var cols []int
	for _, m := range regexp.MustCompile(`\S+`).FindAllStringIndex(header, -1) {
		names = append(names, header[m[0]:m[1]])
		cols = append(cols, m[0])
	}
	var rows []map[string]string
	for _, l := range lines[start+1:] {
		if l == "" {
			break
		}
		row := map[string]string{}
		for i, c := range cols {
			if c > 0 && (len(l) <= c || l[c] == ' ' || l[c-1] != ' ') {
				t.Errorf("column %s does not line up in row %q (header %q)", names[i], l, header)
				continue
			}
			end := len(l)
			if i+1 < len(cols) {
				end = min(cols[i+1], len(l))
			}
			row[names[i]] = strings.TrimSpace(l[c:end])
		}
		rows = append(rows, row)
	}
	return rows
}

// field is the value of a key/value row such as "budget   6 jobs   ...".
func field(t *testing.T, out, key string) string {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(l, key+"  "); ok {
			return strings.TrimSpace(rest)
		}
	}
	t.Fatalf("no %q row in:\n%s", key, out)
	return ""
}

var unit = regexp.MustCompile(`^\d+(\.\d)?(MiB|GiB)$`)

// Issue 12: tokenctl status shows the budget and why, memory with units,
// and one aligned row per lease with what the JSON says; the arithmetic
// only with --explain.
func TestStatusTables(t *testing.T) {
	const budget = 4
	d := startDaemon(t, t.TempDir(), budget)
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	holder := holdSlots(ctx, t, d, "tables", budget)
	st, _ := d.waitStatus(t, "the lease's memory sampled", func(st api.Status) bool {
		return len(st.Leases) == 1 && st.Leases[0].Memory != nil && st.Leases[0].Memory.Jobs == budget && st.Memory != nil
	})

	out, errOut, code := d.ctl(t, nil, "status")
	if code != 0 {
		t.Fatalf("tokenctl status: exit %d: %s", code, errOut)
	}
	t.Logf("tokenctl status:\n%s", out)
	if got := field(t, out, "budget"); !strings.HasPrefix(got, fmt.Sprintf("%d jobs", budget)) ||
		!strings.Contains(got, "fixed by the configuration") ||
		st.Memory.Target != budget && !strings.Contains(got, fmt.Sprintf("memory would allow %d (%s)", st.Memory.Target, st.Memory.Reason)) {
		t.Errorf("budget row %q: want %d jobs, fixed by the configuration, and what memory would allow (%d, %s)", got, budget, st.Memory.Target, st.Memory.Reason)
	}
	if got := field(t, out, "leases"); !strings.HasPrefix(got, "1 ") || !strings.HasSuffix(got, "1 running") {
		t.Errorf("leases row %q, want 1 lease, 1 running", got)
	}
	for _, key := range []string{"memory", "headroom", "working set", "reserve", "growth"} {
		if v, _, _ := strings.Cut(field(t, out, key), " "); !unit.MatchString(v) {
			t.Errorf("%s row: %q has no unit", key, field(t, out, key))
		}
	}
	if !regexp.MustCompile(`^\d+\.\d% some +\d+\.\d% full`).MatchString(field(t, out, "pressure")) {
		t.Errorf("pressure row %q", field(t, out, "pressure"))
	}
	rows := table(t, out, "NAME")
	if len(rows) != 1 {
		t.Fatalf("%d lease rows, want 1:\n%s", len(rows), out)
	}
	l, row := st.Leases[0], rows[0]
	want := map[string]string{
		"NAME": "tables", "STATE": "running", "JOBS": fmt.Sprint(budget), "HELD/GRANTED": fmt.Sprintf("%d/%d", l.Held, l.Granted),
		"ESTIMATES": l.Memory.Source, "ID": l.ID,
	}
	for k, v := range want {
		if row[k] != v {
			t.Errorf("lease row %s = %q, want %q; row %v", k, row[k], v, row)
		}
	}
	for _, k := range []string{"RSS", "PEAK", "COMPILE", "LINK"} {
		if !unit.MatchString(row[k]) {
			t.Errorf("lease row %s = %q, want a size with its unit", k, row[k])
		}
	}
	if l.Held != budget-1 {
		t.Errorf("lease holds %d tokens, want %d", l.Held, budget-1)
	}
	if strings.Contains(out, "arithmetic") || strings.Contains(out, st.Memory.Detail[:20]) {
		t.Errorf("tokenctl status shows the arithmetic without --explain:\n%s", out)
	}

	out, errOut, code = d.ctl(t, nil, "status", "--explain")
	if code != 0 {
		t.Fatalf("tokenctl status --explain: exit %d: %s", code, errOut)
	}
	t.Logf("tokenctl status --explain:\n%s", out)
	if got := field(t, out, "arithmetic"); !strings.HasPrefix(got, "headroom ") || !strings.Contains(got, " fit; cpu cap ") {
		t.Errorf("arithmetic row %q, want the controller's arithmetic", got)
	}
	accounts := table(t, out, "ID")
	if len(accounts) != 1 || accounts[0]["ID"] != l.ID || accounts[0]["OWED"] != "0" || accounts[0]["FREE"] != fmt.Sprint(l.Free) {
		t.Errorf("token accounts %v, want lease %s with %d free and 0 owed", accounts, l.ID, l.Free)
	}
	holder.release(ctx, t)
	d.waitIdle(t)
}

// The states a person must tell apart read as words, with how long a
// build has waited or kept tokens above its share while others waited,
// and the names of leases are escaped.
func TestStatusStates(t *testing.T) {
	now := time.Now()
	st := api.Status{Budget: 3, BudgetReason: "cpu cap", Leases: []api.LeaseStatus{
		{Registration: api.Registration{ID: "a", Name: "frozen-one", Created: now.Add(-90 * time.Second)}, State: api.StateRunning,
			Memory: &api.LeaseMemory{Frozen: true}},
		{Registration: api.Registration{ID: "b", Name: "waits", Created: now.Add(-time.Hour)}, State: api.StateWaiting, Asked: now.Add(-12 * time.Second)},
		{Registration: api.Registration{ID: "c", Name: "nix\x1b[2Jbuild", Created: now.Add(-2 * time.Hour)}, State: api.StateNotJoined},
		{Registration: api.Registration{ID: "d", Name: "hoards", Created: now.Add(-time.Minute)}, State: api.StateRunning,
			Granted: 5, Share: 2, OverShareSince: now.Add(-45 * time.Second)},
	}}
	var out strings.Builder
	if err := printStatus(&out, st, now); err != nil {
		t.Fatal(err)
	}
	rows := table(t, out.String(), "NAME")
	for i, want := range []struct{ name, age, state string }{
		{"frozen-one", "1m30s", "frozen"}, {"waits", "1h00m", "waiting 12s"}, {`"nix\x1b[2Jbuild"`, "2h00m", "not joined"},
		{"hoards", "1m00s", "running, 3 over share 45s"},
	} {
		if rows[i]["NAME"] != want.name || rows[i]["AGE"] != want.age || rows[i]["STATE"] != want.state {
			t.Errorf("row %d: %v, want name %s, age %s, state %s", i, rows[i], want.name, want.age, want.state)
		}
	}
	words := func(s string) string { return strings.Join(strings.Fields(s), " ") }
	if got := words(field(t, out.String(), "budget")); got != "3 jobs memory controller: cpu cap, the CPUs justify no more" {
		t.Errorf("budget row %q", got)
	}
	if got := words(field(t, out.String(), "leases")); got != "4 1 frozen, 1 waiting, 1 not joined, 1 running" {
		t.Errorf("leases row %q", got)
	}
}
